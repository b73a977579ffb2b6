//! [`Barrier`], a port of Python's `threading.Barrier`.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{lock, wait, wait_until};
use crate::util::deadline_after;

/// Returned by [`Barrier::new`] and [`BarrierBuilder::build`] for an
/// invalid configuration (Python raises `ValueError`).
///
/// # Examples
///
/// ```
/// use custody::sync::{Barrier, BarrierError};
///
/// assert_eq!(Barrier::new(0).unwrap_err(), BarrierError::ZeroParties);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// A barrier needs at least one party.
    #[error("a barrier needs at least one party")]
    ZeroParties,
}

/// Returned by [`Barrier::wait`] and [`Barrier::wait_timeout`] when the
/// barrier is or becomes broken while the thread waits, like Python's
/// `threading.BrokenBarrierError`.
///
/// A barrier breaks when a waiter times out, when [`Barrier::abort`] is
/// called, when the action panics, and (for the threads waiting at that
/// moment) when [`Barrier::reset`] is called.
///
/// # Examples
///
/// ```
/// use custody::sync::{Barrier, BrokenBarrierError};
///
/// let barrier = Barrier::new(2)?;
/// barrier.abort();
/// assert_eq!(barrier.wait(), Err(BrokenBarrierError));
/// # Ok::<(), custody::sync::BarrierError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("barrier is broken")]
pub struct BrokenBarrierError;

type Action = Box<dyn FnMut() + Send + 'static>;

/// Where the barrier is in its cycle (Python's `_state`, plus `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Threads are arriving.
    Filling,
    /// The last thread is running the action, without holding the lock.
    Action,
    /// The barrier tripped; the released threads are leaving.
    Draining,
    /// `reset` was called while threads were waiting; they are leaving
    /// with an error.
    Resetting,
    /// Broken until `reset`.
    Broken,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Threads inside `wait` for the current trip.
    count: usize,
}

/// A rendezvous point for a fixed number of threads, like Python's
/// `threading.Barrier`.
///
/// Each of the `parties` threads calls [`wait`](Barrier::wait); the last
/// one to arrive runs the optional action and then releases all of them.
/// Every call returns an index distinct among the threads of one trip, in
/// `0..parties`. The barrier can then be used again.
///
/// If a waiter times out, [`abort`](Barrier::abort) is called or the action
/// panics, the barrier is *broken*: current and future waiters get
/// [`BrokenBarrierError`] until [`reset`](Barrier::reset).
///
/// `Barrier` is `Send + Sync`; share it by reference or through an
/// [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::thread;
/// use std::time::Duration;
/// use custody::sync::Barrier;
///
/// static TRIPS: AtomicUsize = AtomicUsize::new(0);
///
/// let barrier = Barrier::builder(3)
///     .action(|| {
///         TRIPS.fetch_add(1, Ordering::SeqCst);
///     })
///     .timeout(Duration::from_secs(30))
///     .build()?;
/// let mut indices: Vec<usize> = thread::scope(|s| {
///     let handles: Vec<_> = (0..3).map(|_| s.spawn(|| barrier.wait())).collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// indices.sort();
/// assert_eq!(indices, [0, 1, 2]);
/// assert_eq!(TRIPS.load(Ordering::SeqCst), 1);
/// # Ok::<(), custody::sync::BarrierError>(())
/// ```
pub struct Barrier {
    parties: usize,
    timeout: Option<Duration>,
    action: Option<Mutex<Action>>,
    state: Mutex<State>,
    condvar: Condvar,
}

impl Barrier {
    /// Creates a barrier for `parties` threads, without action or default
    /// timeout. Use [`Barrier::builder`] for those.
    ///
    /// # Errors
    ///
    /// Returns [`BarrierError::ZeroParties`] if `parties` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(1)?;
    /// assert_eq!(barrier.wait(), Ok(0));
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn new(parties: usize) -> Result<Self, BarrierError> {
        Self::builder(parties).build()
    }

    /// Starts configuring a barrier for `parties` threads.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let barrier = custody::sync::Barrier::builder(2)
    ///     .timeout(Duration::from_secs(1))
    ///     .build()?;
    /// assert_eq!(barrier.timeout(), Some(Duration::from_secs(1)));
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn builder(parties: usize) -> BarrierBuilder {
        BarrierBuilder {
            parties,
            action: None,
            timeout: None,
        }
    }

    /// Returns the number of threads needed to trip the barrier.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(4)?;
    /// assert_eq!(barrier.parties(), 4);
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    #[must_use]
    pub fn parties(&self) -> usize {
        self.parties
    }

    /// Returns the default timeout used by [`wait`](Barrier::wait), if
    /// any.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(4)?;
    /// assert_eq!(barrier.timeout(), None);
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Returns the number of threads currently waiting for the barrier to
    /// trip (0 while it is tripping, resetting or broken, as in Python).
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(2)?;
    /// assert_eq!(barrier.n_waiting(), 0);
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    #[must_use]
    pub fn n_waiting(&self) -> usize {
        let state = lock(&self.state);
        if state.phase == Phase::Filling {
            state.count
        } else {
            0
        }
    }

    /// Returns `true` if the barrier is broken.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(2)?;
    /// assert!(!barrier.is_broken());
    /// barrier.abort();
    /// assert!(barrier.is_broken());
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    #[doc(alias = "broken")]
    #[must_use]
    pub fn is_broken(&self) -> bool {
        lock(&self.state).phase == Phase::Broken
    }

    /// Waits until `parties` threads are waiting, then returns this
    /// thread's index in `0..parties`, distinct within the trip. The last
    /// thread to arrive runs the action first, if there is one.
    ///
    /// Uses the barrier's default timeout, if it was built with one; if
    /// that expires, the barrier breaks.
    ///
    /// If the barrier is draining a previous trip or resetting, the thread
    /// first waits for that to finish.
    ///
    /// # Errors
    ///
    /// Returns [`BrokenBarrierError`] if the barrier is broken on entry or
    /// breaks while waiting (timeout, [`abort`](Barrier::abort), a
    /// panicking action, or [`reset`](Barrier::reset) while waiting).
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(2)?;
    /// let mut indices = std::thread::scope(|s| {
    ///     let other = s.spawn(|| barrier.wait());
    ///     vec![barrier.wait().unwrap(), other.join().unwrap().unwrap()]
    /// });
    /// indices.sort();
    /// assert_eq!(indices, [0, 1]);
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn wait(&self) -> Result<usize, BrokenBarrierError> {
        self.wait_until(self.timeout.and_then(deadline_after))
    }

    /// Like [`wait`](Barrier::wait) with an explicit timeout instead of
    /// the default one. If it expires, the barrier breaks.
    ///
    /// # Errors
    ///
    /// Returns [`BrokenBarrierError`] on timeout and in every case
    /// [`wait`](Barrier::wait) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::sync::{Barrier, BrokenBarrierError};
    ///
    /// let barrier = Barrier::new(2)?;
    /// assert_eq!(barrier.wait_timeout(Duration::from_millis(5)), Err(BrokenBarrierError));
    /// assert!(barrier.is_broken());
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrierError> {
        self.wait_until(deadline_after(timeout))
    }

    /// Puts the barrier into the broken state: current and future waiters
    /// get [`BrokenBarrierError`] until [`reset`](Barrier::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(2)?;
    /// barrier.abort();
    /// assert!(barrier.wait().is_err());
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn abort(&self) {
        let mut state = lock(&self.state);
        state.phase = Phase::Broken;
        self.condvar.notify_all();
    }

    /// Returns the barrier to its initial state. Threads waiting at that
    /// moment get [`BrokenBarrierError`]; threads that arrive meanwhile
    /// wait until they have left, and then form a new trip.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::new(1)?;
    /// barrier.abort();
    /// barrier.reset();
    /// assert!(!barrier.is_broken());
    /// assert_eq!(barrier.wait(), Ok(0));
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn reset(&self) {
        let mut state = lock(&self.state);
        if state.count == 0 {
            state.phase = Phase::Filling;
        } else if matches!(state.phase, Phase::Filling | Phase::Action | Phase::Broken) {
            // The last waiter to leave turns this back into `Filling`.
            state.phase = Phase::Resetting;
        }
        self.condvar.notify_all();
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, BrokenBarrierError> {
        let mut state = lock(&self.state);
        // Wait for the previous trip (or a reset) to finish.
        while matches!(
            state.phase,
            Phase::Action | Phase::Draining | Phase::Resetting
        ) {
            state = wait(&self.condvar, state);
        }
        if state.phase == Phase::Broken {
            return Err(BrokenBarrierError);
        }
        let index = state.count;
        state.count += 1;
        let (mut state, result) = if index + 1 == self.parties {
            self.trip(state)
        } else {
            self.await_trip(state, deadline)
        };
        state.count -= 1;
        if state.count == 0 && matches!(state.phase, Phase::Draining | Phase::Resetting) {
            state.phase = Phase::Filling;
            self.condvar.notify_all();
        }
        result.map(|()| index)
    }

    /// Run by the last thread to arrive: runs the action and releases
    /// the others.
    fn trip<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, Result<(), BrokenBarrierError>) {
        let mut action_ok = true;
        if let Some(action) = &self.action {
            state.phase = Phase::Action;
            drop(state);
            action_ok = catch_unwind(AssertUnwindSafe(|| (*lock(action))())).is_ok();
            state = lock(&self.state);
        }
        let result = match state.phase {
            Phase::Filling | Phase::Action if action_ok => {
                state.phase = Phase::Draining;
                Ok(())
            }
            Phase::Filling | Phase::Action => {
                state.phase = Phase::Broken;
                Err(BrokenBarrierError)
            }
            // Aborted or reset while the action ran.
            Phase::Draining | Phase::Resetting | Phase::Broken => Err(BrokenBarrierError),
        };
        self.condvar.notify_all();
        (state, result)
    }

    /// Run by the other threads: waits for the trip, a break or the
    /// deadline (which breaks the barrier).
    fn await_trip<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> (MutexGuard<'a, State>, Result<(), BrokenBarrierError>) {
        loop {
            match state.phase {
                Phase::Draining => return (state, Ok(())),
                Phase::Broken | Phase::Resetting => return (state, Err(BrokenBarrierError)),
                // The action decides; a timeout cannot break the barrier
                // while it runs (in Python the action holds the lock).
                Phase::Action => state = wait(&self.condvar, state),
                Phase::Filling => match wait_until(&self.condvar, state, deadline) {
                    Ok(guard) => state = guard,
                    Err(mut guard) => {
                        guard.phase = Phase::Broken;
                        self.condvar.notify_all();
                        return (guard, Err(BrokenBarrierError));
                    }
                },
            }
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("timeout", &self.timeout)
            .field("has_action", &self.action.is_some())
            .field("phase", &state.phase)
            .field("count", &state.count)
            .finish()
    }
}

/// Configures a [`Barrier`]: its action and default timeout. Created by
/// [`Barrier::builder`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::sync::Barrier;
///
/// let barrier = Barrier::builder(1)
///     .action(|| println!("tripped"))
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(barrier.wait(), Ok(0));
/// # Ok::<(), custody::sync::BarrierError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct BarrierBuilder {
    parties: usize,
    action: Option<Action>,
    timeout: Option<Duration>,
}

impl BarrierBuilder {
    /// Sets the action run once per trip by the last thread to arrive,
    /// before any thread is released.
    ///
    /// If the action panics, the panic is caught and the barrier breaks:
    /// every thread of that trip, including the one that ran the action,
    /// gets [`BrokenBarrierError`] (Python re-raises the exception in the
    /// thread that ran the action; a Rust panic there would take the
    /// thread down, so it is turned into the same error as the others
    /// get). The action must not wait on its own barrier.
    ///
    /// # Examples
    ///
    /// ```
    /// let barrier = custody::sync::Barrier::builder(1)
    ///     .action(|| panic!("boom"))
    ///     .build()?;
    /// assert!(barrier.wait().is_err());
    /// assert!(barrier.is_broken());
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn action(mut self, action: impl FnMut() + Send + 'static) -> Self {
        self.action = Some(Box::new(action));
        self
    }

    /// Sets the default timeout of [`Barrier::wait`]. A waiter that times
    /// out breaks the barrier.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let barrier = custody::sync::Barrier::builder(2)
    ///     .timeout(Duration::from_millis(5))
    ///     .build()?;
    /// assert!(barrier.wait().is_err());
    /// # Ok::<(), custody::sync::BarrierError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Creates the barrier.
    ///
    /// # Errors
    ///
    /// Returns [`BarrierError::ZeroParties`] if `parties` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::sync::{Barrier, BarrierError};
    ///
    /// assert!(Barrier::builder(2).build().is_ok());
    /// assert_eq!(Barrier::builder(0).build().unwrap_err(), BarrierError::ZeroParties);
    /// ```
    pub fn build(self) -> Result<Barrier, BarrierError> {
        if self.parties == 0 {
            return Err(BarrierError::ZeroParties);
        }
        Ok(Barrier {
            parties: self.parties,
            timeout: self.timeout,
            action: self.action.map(Mutex::new),
            state: Mutex::new(State {
                phase: Phase::Filling,
                count: 0,
            }),
            condvar: Condvar::new(),
        })
    }
}

impl fmt::Debug for BarrierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BarrierBuilder")
            .field("parties", &self.parties)
            .field("has_action", &self.action.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}
