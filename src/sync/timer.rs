//! [`Timer`], a port of Python's `threading.Timer`.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{lock, wait, wait_until};
use crate::util::deadline_after;

/// Returned by [`Timer::join`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::sync::{Timer, TimerJoinError};
///
/// let timer = Timer::start(Duration::ZERO, || panic!("boom"));
/// assert_eq!(timer.join(), Err(TimerJoinError::CallbackPanicked));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum TimerJoinError {
    /// The callback panicked. The panic was caught on the timer's thread
    /// (and reported by the panic hook, as Python reports exceptions in
    /// threads through `threading.excepthook`).
    #[error("timer callback panicked")]
    CallbackPanicked,
    /// `join` was called from the timer's own callback, which would wait
    /// forever (Python raises `RuntimeError`).
    #[error("cannot join a timer from its own callback")]
    FromCallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the delay to pass.
    Pending,
    /// Cancelled before the callback started; it will never run.
    Cancelled,
    /// The callback is running.
    Running,
    /// The callback has returned or panicked.
    Done { panicked: bool },
}

impl State {
    fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Done { .. })
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    condvar: Condvar,
}

impl Shared {
    fn set(&self, state: State) {
        *lock(&self.state) = state;
        self.condvar.notify_all();
    }
}

/// Runs a function once on its own thread after a delay, unless cancelled
/// first, like Python's `threading.Timer`.
///
/// [`Timer::start`] spawns the thread at once (Python's `Timer(...)`
/// followed by `.start()`). [`cancel`](Timer::cancel) wakes the thread
/// immediately, so a cancelled timer does not keep a thread asleep for
/// the rest of its delay.
///
/// Dropping a `Timer` does not cancel it: the thread is detached and the
/// function still runs when the delay has passed, as a Python timer runs
/// even after its last reference is gone.
///
/// `Timer` is `Send + Sync`; share it by reference or through an
/// [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
/// use custody::sync::Timer;
///
/// let fired = Arc::new(AtomicBool::new(false));
/// let timer = {
///     let fired = Arc::clone(&fired);
///     Timer::start(Duration::from_millis(10), move || fired.store(true, Ordering::SeqCst))
/// };
/// timer.join().unwrap();
/// assert!(fired.load(Ordering::SeqCst));
///
/// let never = Timer::start(Duration::from_secs(3600), || unreachable!());
/// assert!(never.cancel());
/// never.join().unwrap(); // returns promptly
/// assert!(!never.has_fired());
/// ```
pub struct Timer {
    shared: Arc<Shared>,
    handle: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    delay: Duration,
}

impl Timer {
    /// Spawns a thread that calls `f` once after `delay`, unless the timer
    /// is [cancelled](Timer::cancel) first.
    ///
    /// # Panics
    ///
    /// Panics if the operating system cannot create a thread, like
    /// [`std::thread::spawn`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let _timer = custody::sync::Timer::start(Duration::from_millis(1), move || {
    ///     tx.send("fired").unwrap();
    /// });
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok("fired"));
    /// ```
    pub fn start<F>(delay: Duration, f: F) -> Self
    where
        F: FnOnce() + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Pending),
            condvar: Condvar::new(),
        });
        let deadline = deadline_after(delay);
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("custody-timer".to_owned())
            .spawn(move || run(&thread_shared, deadline, f))
            .expect("failed to spawn a timer thread");
        Self {
            thread_id: handle.thread().id(),
            handle: Mutex::new(Some(handle)),
            shared,
            delay,
        }
    }

    /// Returns the delay the timer was started with (Python's
    /// `interval`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::from_secs(60), || {});
    /// assert_eq!(timer.delay(), Duration::from_secs(60));
    /// timer.cancel();
    /// ```
    #[doc(alias = "interval")]
    #[must_use]
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Stops the timer if its function has not started yet; it will then
    /// never run, and the timer's thread exits at once.
    ///
    /// Returns `true` if this call prevented the function from running,
    /// `false` if it had already started (or finished) or the timer was
    /// already cancelled; cancelling then is a no-op, as in Python.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::from_secs(60), || {});
    /// assert!(timer.cancel());
    /// assert!(!timer.cancel());
    /// assert!(timer.is_cancelled());
    /// ```
    pub fn cancel(&self) -> bool {
        let mut state = lock(&self.shared.state);
        if *state == State::Pending {
            *state = State::Cancelled;
            drop(state);
            self.shared.condvar.notify_all();
            true
        } else {
            false
        }
    }

    /// Returns `true` if the timer was cancelled before its function
    /// started.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::from_secs(60), || {});
    /// assert!(!timer.is_cancelled());
    /// timer.cancel();
    /// assert!(timer.is_cancelled());
    /// ```
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        *lock(&self.shared.state) == State::Cancelled
    }

    /// Returns `true` once the function has started (it may still be
    /// running); from then on [`cancel`](Timer::cancel) is a no-op.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::ZERO, || {});
    /// timer.join().unwrap();
    /// assert!(timer.has_fired());
    /// ```
    #[doc(alias = "has_run")]
    #[must_use]
    pub fn has_fired(&self) -> bool {
        matches!(
            *lock(&self.shared.state),
            State::Running | State::Done { .. }
        )
    }

    /// Returns `true` if the timer is done: cancelled, or its function has
    /// returned (or panicked).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::from_secs(60), || {});
    /// assert!(!timer.is_finished());
    /// timer.cancel();
    /// assert!(timer.is_finished());
    /// ```
    #[must_use]
    pub fn is_finished(&self) -> bool {
        lock(&self.shared.state).is_final()
    }

    /// Blocks until the timer is done: cancelled, or its function has
    /// returned. May be called any number of times, from any thread.
    ///
    /// # Errors
    ///
    /// Returns [`TimerJoinError::CallbackPanicked`] if the function
    /// panicked, and [`TimerJoinError::FromCallback`] (without waiting) if
    /// called from the function itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timer = custody::sync::Timer::start(Duration::from_millis(1), || {});
    /// timer.join().unwrap();
    /// assert!(timer.is_finished());
    /// ```
    pub fn join(&self) -> Result<(), TimerJoinError> {
        if thread::current().id() == self.thread_id {
            return Err(TimerJoinError::FromCallback);
        }
        let state = {
            let mut guard = lock(&self.shared.state);
            while !guard.is_final() {
                guard = wait(&self.shared.condvar, guard);
            }
            *guard
        };
        // The thread has nothing left to do but exit; reap it.
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            // The thread catches the callback's panic itself, so this
            // cannot fail.
            let _ = handle.join();
        }
        match state {
            State::Done { panicked: true } => Err(TimerJoinError::CallbackPanicked),
            _ => Ok(()),
        }
    }
}

/// The timer thread: sleeps until the deadline unless cancelled, then
/// runs `f`.
fn run<F: FnOnce()>(shared: &Shared, deadline: Option<Instant>, f: F) {
    let mut state = lock(&shared.state);
    loop {
        if *state != State::Pending {
            return;
        }
        match wait_until(&shared.condvar, state, deadline) {
            Ok(guard) => state = guard,
            Err(guard) => {
                state = guard;
                break;
            }
        }
    }
    *state = State::Running;
    drop(state);
    let panicked = catch_unwind(AssertUnwindSafe(f)).is_err();
    shared.set(State::Done { panicked });
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timer")
            .field("delay", &self.delay)
            .field("state", &*lock(&self.shared.state))
            .finish()
    }
}
