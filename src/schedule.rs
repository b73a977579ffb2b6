//! Scheduled messages: `tell_after` and `tell_every`, served by one timer
//! manager per runtime.
//!
//! The timer heap is a resource like any other, so it lives on one manager
//! thread (`custody.timers`, spawned on first use). Each `tell_after` or
//! `tell_every` sends it an entry; the manager's `next_wake` is the earliest
//! entry, and its `wake` fires every entry that has come due, which tells the
//! target manager the message. Cancelling only flips the entry's status; the
//! timer manager drops cancelled entries when they come due.
//!
//! Nothing is lost silently: an entry whose target has stopped is marked
//! `Refused` and traced, and entries still pending when the runtime shuts down
//! are marked `Abandoned`. The guard a schedule call returns reads the status.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::handle::Handle;
use crate::manager::{Context, Manager};

/// The reserved name of each runtime's timer manager.
pub(crate) const TIMERS: &str = "custody.timers";

/// Where a scheduled message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScheduleStatus {
    /// Waiting for its time (a periodic one stays here between ticks).
    Pending,
    /// A one-shot message was delivered to the target's mailbox.
    Delivered,
    /// Cancelled (explicitly, or by dropping its guard) before it was due.
    Cancelled,
    /// It came due, but the target manager was stopped and refused it.
    Refused,
    /// The runtime shut down before it came due.
    Abandoned,
}

impl ScheduleStatus {
    fn from_u8(v: u8) -> ScheduleStatus {
        match v {
            0 => ScheduleStatus::Pending,
            1 => ScheduleStatus::Delivered,
            2 => ScheduleStatus::Cancelled,
            3 => ScheduleStatus::Refused,
            _ => ScheduleStatus::Abandoned,
        }
    }
}

/// The status shared by an entry and its guard.
pub(crate) struct TimerState {
    status: AtomicU8,
    delivered: AtomicU64,
}

impl TimerState {
    fn new() -> Arc<TimerState> {
        Arc::new(TimerState {
            status: AtomicU8::new(ScheduleStatus::Pending as u8),
            delivered: AtomicU64::new(0),
        })
    }

    fn status(&self) -> ScheduleStatus {
        ScheduleStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    /// Moves from Pending to `to`; a final status never changes again.
    fn finish(&self, to: ScheduleStatus) -> bool {
        self.status
            .compare_exchange(
                ScheduleStatus::Pending as u8,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// A scheduled message; dropping it cancels the schedule.
///
/// Returned by [`Handle::tell_after`](crate::Handle::tell_after) and
/// [`Handle::tell_every`](crate::Handle::tell_every). Call
/// [`detach`](Scheduled::detach) to let the schedule run without the guard.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::{Runtime, ScheduleStatus};
///
/// let rt = Runtime::new();
/// let ticks = rt.own("ticks", 0u32)?;
/// let soon = ticks
///     .handle()
///     .tell_after(Duration::from_millis(10), custody::Job::new(|n: &mut u32| *n += 1))?;
/// let never = ticks
///     .handle()
///     .tell_after(Duration::from_secs(3600), custody::Job::new(|n: &mut u32| *n += 100))?;
/// never.cancel();
/// while soon.status() == ScheduleStatus::Pending {
///     std::thread::sleep(Duration::from_millis(1));
/// }
/// ticks.join()?;
/// assert_eq!(ticks.call(|n| *n)?, 1);
/// assert_eq!(never.status(), ScheduleStatus::Cancelled);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a Scheduled cancels it; call detach() to let it run"]
pub struct Scheduled {
    state: Arc<TimerState>,
    detached: bool,
}

impl Scheduled {
    /// Cancels the schedule if it has not completed. A no-op afterwards.
    pub fn cancel(&self) {
        self.state.finish(ScheduleStatus::Cancelled);
    }

    /// Lets the schedule run on without this guard.
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Where the schedule is now.
    pub fn status(&self) -> ScheduleStatus {
        self.state.status()
    }

    /// How many messages it has delivered so far.
    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::Acquire)
    }
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel();
        }
    }
}

impl fmt::Debug for Scheduled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduled")
            .field("status", &self.status())
            .field("delivered", &self.delivered())
            .finish()
    }
}

/// Delivers one message to the target; `false` if the target refused it.
pub(crate) type Fire = Box<dyn FnMut() -> bool + Send>;

/// One entry of the timer heap.
pub(crate) struct Entry {
    at: Instant,
    seq: u64,
    period: Option<Duration>,
    fire: Fire,
    state: Arc<TimerState>,
    target: String,
}

impl Entry {
    /// A new entry and the guard that watches it.
    pub(crate) fn new(
        at: Instant,
        period: Option<Duration>,
        target: String,
        fire: Fire,
    ) -> (Entry, Scheduled) {
        let state = TimerState::new();
        let guard = Scheduled {
            state: Arc::clone(&state),
            detached: false,
        };
        let entry = Entry {
            at,
            seq: 0,
            period,
            fire,
            state,
            target,
        };
        (entry, guard)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest entry first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The timer manager: owns the heap of scheduled entries.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
}

impl Manager for Timers {
    type Msg = Entry;

    fn handle(&mut self, mut entry: Entry, _ctx: &mut Context<'_, Entry>) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(entry);
    }

    fn next_wake(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    fn wake(&mut self, _ctx: &mut Context<'_, Entry>) {
        let now = Instant::now();
        while self.heap.peek().is_some_and(|e| e.at <= now) {
            let Some(mut entry) = self.heap.pop() else {
                break;
            };
            if entry.state.status() != ScheduleStatus::Pending {
                continue;
            }
            if !(entry.fire)() {
                entry.state.finish(ScheduleStatus::Refused);
                tracing::warn!(
                    target_manager = %entry.target,
                    "a scheduled message came due but its manager is stopped"
                );
                continue;
            }
            entry.state.delivered.fetch_add(1, Ordering::AcqRel);
            match entry.period {
                None => {
                    entry.state.finish(ScheduleStatus::Delivered);
                }
                Some(period) => {
                    entry.at += period;
                    if entry.at <= now {
                        // Fell behind: skip the missed ticks rather than burst.
                        entry.at = now + period;
                    }
                    self.heap.push(entry);
                }
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Entry>) {
        let abandoned = self
            .heap
            .drain()
            .filter(|e| e.state.finish(ScheduleStatus::Abandoned))
            .count();
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "runtime shut down with scheduled messages pending"
            );
        }
    }
}

/// A message could not be scheduled; what was to be sent comes back.
#[derive(thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleError<T> {
    /// The target manager is stopping or stopped.
    #[error("scheduling a message for a stopped manager")]
    Stopped(T),
    /// The runtime is shutting down or shut down: no timer manager runs.
    #[error("scheduling a message after the runtime shut down")]
    ShutDown(T),
    /// `tell_every` was given a zero period.
    #[error("a zero period for tell_every would never let the timer rest")]
    ZeroPeriod(T),
}

impl<T> ScheduleError<T> {
    /// What was to be sent (the message, or the closure making them).
    pub fn into_inner(self) -> T {
        match self {
            ScheduleError::Stopped(t)
            | ScheduleError::ShutDown(t)
            | ScheduleError::ZeroPeriod(t) => t,
        }
    }
}

impl<T> fmt::Debug for ScheduleError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleError::Stopped(_) => "Stopped(..)",
            ScheduleError::ShutDown(_) => "ShutDown(..)",
            ScheduleError::ZeroPeriod(_) => "ZeroPeriod(..)",
        })
    }
}

/// Takes the payload back out of a shared slot.
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// `now + delay`, saturating far in the future for huge delays.
fn instant_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

impl<M: Send + 'static> Handle<M> {
    /// Tells this manager `msg` once `delay` has passed, from the runtime's
    /// timer manager. Dropping the returned guard cancels it.
    ///
    /// If the manager has stopped by then, the message is refused and the
    /// guard's status becomes [`ScheduleStatus::Refused`] (and a warning is
    /// traced): it is reported, not lost silently.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Stopped`] if the manager is already stopped,
    /// [`ScheduleError::ShutDown`] if the runtime is; the message comes back.
    pub fn tell_after(&self, delay: Duration, msg: M) -> Result<Scheduled, ScheduleError<M>> {
        let slot = Arc::new(Mutex::new(Some(msg)));
        let target = self.clone();
        let payload = Arc::clone(&slot);
        let fire: Fire = Box::new(move || match take(&payload) {
            Some(msg) => target.tell(msg).is_ok(),
            None => true,
        });
        self.schedule(instant_after(delay), None, fire)
            .map_err(|kind| kind(take(&slot).expect("the message was not sent")))
    }

    /// Tells this manager `make()` every `period`, first after one period,
    /// until the guard is dropped or cancelled. Ticks missed while the timer
    /// manager was busy are skipped, not bunched up.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::ZeroPeriod`] for a zero period, and as
    /// [`tell_after`](Handle::tell_after); the closure comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let beats = rt.own("beats", 0u32)?;
    /// let heartbeat = beats
    ///     .handle()
    ///     .tell_every(Duration::from_millis(2), || custody::Job::new(|n: &mut u32| *n += 1))?;
    /// while heartbeat.delivered() < 3 {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// drop(heartbeat); // cancels
    /// beats.join()?;
    /// assert!(beats.call(|n| *n)? >= 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_every<F>(&self, period: Duration, make: F) -> Result<Scheduled, ScheduleError<F>>
    where
        F: FnMut() -> M + Send + 'static,
    {
        if period.is_zero() {
            return Err(ScheduleError::ZeroPeriod(make));
        }
        let slot = Arc::new(Mutex::new(Some(make)));
        let target = self.clone();
        let maker = Arc::clone(&slot);
        let fire: Fire = Box::new(move || {
            let mut guard = maker.lock().unwrap_or_else(PoisonError::into_inner);
            match guard.as_mut() {
                Some(make) => target.tell(make()).is_ok(),
                None => false,
            }
        });
        self.schedule(instant_after(period), Some(period), fire)
            .map_err(|kind| kind(take(&slot).expect("the closure was not sent")))
    }

    /// Hands an entry to the runtime's timer manager.
    fn schedule<T>(
        &self,
        at: Instant,
        period: Option<Duration>,
        fire: Fire,
    ) -> Result<Scheduled, fn(T) -> ScheduleError<T>> {
        if self.is_stopped() {
            return Err(ScheduleError::Stopped);
        }
        let timers = self
            .shared
            .runtime
            .upgrade()
            .and_then(|rt| rt.timers().ok())
            .ok_or(ScheduleError::ShutDown as fn(T) -> ScheduleError<T>)?;
        let (entry, guard) = Entry::new(at, period, self.name().to_owned(), fire);
        timers
            .tell(entry)
            .map_err(|_| ScheduleError::ShutDown as fn(T) -> ScheduleError<T>)?;
        Ok(guard)
    }
}
