//! Scheduled messages: `tell_after` and `tell_every`, served by one timer
//! manager per runtime.
//!
//! The timer heap is a resource like any other, so it lives on one manager
//! thread (`custody.timers`, spawned on first use). Each `tell_after` or
//! `tell_every` sends it an entry; the manager's `next_wake` is the earliest
//! entry, and its `wake` fires every entry that has come due, which tells the
//! target manager the message.
//!
//! The manager keeps each live entry once, in a map by id, and a heap of
//! `(due time, id)` keys. Cancelling flips the entry's status and tells the
//! timer manager the id, which removes the entry from the map at once, so the
//! message (or the closure making them) is dropped then, not at its due time.
//! (An entry cancelled while still on its way to the timer manager needs no
//! message: the manager sees the status when the entry arrives, and drops it.)
//! The entry's heap key stays behind (a few bytes) and is skipped when it
//! surfaces; when such stale keys outnumber the live entries, the heap is
//! rebuilt without them, so its size stays within twice the live entries
//! (plus a small slack) whatever the pattern of cancels.
//!
//! Nothing is lost silently: an entry whose target has stopped is marked
//! `Refused` and traced, one whose message factory panicked is marked
//! `Panicked`, and entries still pending when the runtime shuts down are
//! marked `Abandoned`. The guard a schedule call returns reads the status.
//!
//! Every call into user code on the timer thread (a factory, and the `Drop`
//! of a message or of a factory) runs under `catch_unwind`: a panic is traced
//! and counted in the timer manager's `panicked` stat, and the timer manager
//! carries on with every other schedule.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::ScheduleError;
use crate::handle::{Handle, Shared};
use crate::manager::{Context, Manager};
use crate::manager_thread::panic_message;
use crate::util::instant_after;

/// The reserved name of each runtime's timer manager.
pub(crate) const TIMERS: &str = "custody.timers";

/// Ids of scheduled entries, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Stale heap keys tolerated beyond the live entries before a rebuild.
const STALE_SLACK: usize = 64;

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
    /// The message factory of a [`tell_every`](crate::Handle::tell_every)
    /// panicked: the schedule ended there. The panic's message is in
    /// [`Scheduled::panic_message`].
    Panicked,
}

impl ScheduleStatus {
    fn from_u8(v: u8) -> ScheduleStatus {
        match v {
            0 => ScheduleStatus::Pending,
            1 => ScheduleStatus::Delivered,
            2 => ScheduleStatus::Cancelled,
            3 => ScheduleStatus::Refused,
            4 => ScheduleStatus::Abandoned,
            _ => ScheduleStatus::Panicked,
        }
    }
}

/// Set in the status word once the timer manager holds the entry: from then
/// on a cancel must tell it to drop the entry; before, it sees the cancel
/// when the entry arrives and drops it there, so no message is needed.
const HELD: u8 = 0x80;

/// The status shared by an entry and its guard.
pub(crate) struct TimerState {
    /// A `ScheduleStatus` in the low bits, and the `HELD` bit.
    status: AtomicU8,
    delivered: AtomicU64,
    /// Set (before the status becomes `Panicked`) when the factory panicked.
    panic: OnceLock<String>,
}

impl TimerState {
    fn new() -> Arc<TimerState> {
        Arc::new(TimerState {
            status: AtomicU8::new(ScheduleStatus::Pending as u8),
            delivered: AtomicU64::new(0),
            panic: OnceLock::new(),
        })
    }

    fn status(&self) -> ScheduleStatus {
        ScheduleStatus::from_u8(self.status.load(Ordering::Acquire) & !HELD)
    }

    /// Moves from Pending to `to`; a final status never changes again.
    /// `Some(held)` if it moved, `held` telling whether the timer manager
    /// held the entry then.
    fn finish_held(&self, to: ScheduleStatus) -> Option<bool> {
        let mut current = self.status.load(Ordering::Acquire);
        loop {
            if current & !HELD != ScheduleStatus::Pending as u8 {
                return None;
            }
            match self.status.compare_exchange_weak(
                current,
                (current & HELD) | to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(current & HELD != 0),
                Err(now) => current = now,
            }
        }
    }

    /// Moves from Pending to `to`; `false` if it had a final status already.
    fn finish(&self, to: ScheduleStatus) -> bool {
        self.finish_held(to).is_some()
    }

    /// Marks the entry held by the timer manager; `false` if it was
    /// cancelled before.
    fn hold(&self) -> bool {
        self.status.fetch_or(HELD, Ordering::AcqRel) & !HELD == ScheduleStatus::Pending as u8
    }
}

/// A scheduled message; dropping it cancels the schedule.
///
/// Returned by [`Handle::tell_after`](crate::Handle::tell_after) and
/// [`Handle::tell_every`](crate::Handle::tell_every). Call
/// [`detach`](Scheduled::detach) to let the schedule run without the guard.
/// Cancelling frees the scheduled message (or the closure making them) at
/// once, on the timer manager's thread, rather than at its due time.
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
    id: u64,
    /// The timer manager holding the entry, told of a cancel.
    timers: Handle<TimerMsg>,
    detached: bool,
}

impl Scheduled {
    /// Cancels the schedule if it has not completed, and has the timer
    /// manager drop its message (or closure) now. A no-op afterwards.
    pub fn cancel(&self) {
        if self.state.finish_held(ScheduleStatus::Cancelled) == Some(true) {
            // Refused only once the timer manager is stopping: it then drops
            // every entry anyway.
            let _ = self.timers.tell(TimerMsg::Cancel(self.id));
        }
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

    /// The message of the panic that ended the schedule, once its status is
    /// [`ScheduleStatus::Panicked`]; `None` otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::{Runtime, ScheduleStatus};
    ///
    /// let rt = Runtime::new();
    /// let beats = rt.own("beats", 0u32)?;
    /// let broken = beats.handle().tell_every(Duration::from_millis(1), || -> custody::Job<u32> {
    ///     panic!("no more beats")
    /// })?;
    /// while broken.status() == ScheduleStatus::Pending {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// assert_eq!(broken.status(), ScheduleStatus::Panicked);
    /// assert_eq!(broken.panic_message().as_deref(), Some("no more beats"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn panic_message(&self) -> Option<String> {
        if self.status() == ScheduleStatus::Panicked {
            self.state.panic.get().cloned()
        } else {
            None
        }
    }
}

// A guard may be kept anywhere, and dropped on any thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Scheduled>();
};

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

/// What the timer manager is told.
pub(crate) enum TimerMsg {
    /// A new entry for the heap.
    Add(Timer),
    /// The entry with this id was cancelled: drop it now.
    Cancel(u64),
}

/// The timer manager's message type, under the name the runtime knows it by.
pub(crate) type Entry = TimerMsg;

/// What firing a job came to.
enum Fired {
    /// The message was told to the target.
    Told,
    /// The target was stopped and refused it.
    Refused,
    /// The message factory panicked, with this message.
    Panicked(String),
}

/// The user's part of an entry, its type erased: the target and the message
/// (or the closure making them). Dropping a job drops the user's values under
/// `catch_unwind`, wherever it happens.
trait Job: Send + 'static {
    /// Tells the target its message (making it first, for a periodic one).
    fn fire(&mut self) -> Fired;
    /// The target manager's name.
    fn target(&self) -> &str;
    /// For taking the user's value back when scheduling failed.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// Runs user code, catching a panic; `Err` holds the panic's message.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        // The payload's own Drop may panic too; a payload like that is leaked.
        if let Err(worse) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(worse);
        }
        message
    })
}

/// Traces a panic caught on the timer thread and counts it in the timer
/// manager's stats.
#[cold]
fn report(timers: &Weak<Shared<TimerMsg>>, what: &str, target: &str, message: &str) {
    tracing::error!(
        target_manager = %target,
        panic = %message,
        "{what} panicked on the timer thread"
    );
    if let Some(shared) = timers.upgrade() {
        shared.counters.add_panic();
    }
}

/// Drops a user's value, catching, tracing and counting a panic in its Drop.
fn drop_caught<T>(value: T, timers: &Weak<Shared<TimerMsg>>, what: &str, target: &str) {
    if let Err(message) = caught(move || drop(value)) {
        report(timers, what, target, &message);
    }
}

/// Tells the target a message; a refused one is dropped here, caught.
fn tell<M: Send + 'static>(target: &Handle<M>, msg: M, timers: &Weak<Shared<TimerMsg>>) -> Fired {
    match target.tell(msg) {
        Ok(()) => Fired::Told,
        Err(refused) => {
            drop_caught(refused.into_inner(), timers, MESSAGE_DROP, target.name());
            Fired::Refused
        }
    }
}

const MESSAGE_DROP: &str = "the drop of a scheduled message";

/// A one-shot message (`tell_after`).
struct Once<M: Send + 'static> {
    target: Handle<M>,
    msg: Option<M>,
    timers: Weak<Shared<TimerMsg>>,
}

impl<M: Send + 'static> Job for Once<M> {
    fn fire(&mut self) -> Fired {
        // A one-shot entry fires once; a second call has nothing to tell.
        let Some(msg) = self.msg.take() else {
            return Fired::Refused;
        };
        tell(&self.target, msg, &self.timers)
    }

    fn target(&self) -> &str {
        self.target.name()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl<M: Send + 'static> Drop for Once<M> {
    fn drop(&mut self) {
        if let Some(msg) = self.msg.take() {
            drop_caught(msg, &self.timers, MESSAGE_DROP, self.target.name());
        }
    }
}

/// A periodic message (`tell_every`) and the closure that makes each one.
struct Every<M: Send + 'static, F> {
    target: Handle<M>,
    make: Option<F>,
    timers: Weak<Shared<TimerMsg>>,
}

impl<M: Send + 'static, F: FnMut() -> M + Send + 'static> Job for Every<M, F> {
    fn fire(&mut self) -> Fired {
        let Some(make) = self.make.as_mut() else {
            return Fired::Refused;
        };
        let msg = match caught(make) {
            Ok(msg) => msg,
            Err(message) => {
                report(
                    &self.timers,
                    "a tell_every factory",
                    self.target.name(),
                    &message,
                );
                return Fired::Panicked(message);
            }
        };
        tell(&self.target, msg, &self.timers)
    }

    fn target(&self) -> &str {
        self.target.name()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl<M: Send + 'static, F> Drop for Every<M, F> {
    fn drop(&mut self) {
        if let Some(make) = self.make.take() {
            drop_caught(
                make,
                &self.timers,
                "the drop of a tell_every factory",
                self.target.name(),
            );
        }
    }
}

/// An entry's status as the entry holds it: an entry dropped while still
/// pending (discarded by an immediate stop before the timer manager saw it)
/// reads `Abandoned`.
struct EntryState(Arc<TimerState>);

impl Drop for EntryState {
    fn drop(&mut self) {
        self.0.finish(ScheduleStatus::Abandoned);
    }
}

/// One entry of the timer manager.
pub(crate) struct Timer {
    id: u64,
    at: Instant,
    period: Option<Duration>,
    job: Box<dyn Job>,
    state: EntryState,
}

/// Hashes entry ids for the map: they come from a counter, so one multiply
/// (Fibonacci hashing) spreads them, at a fraction of SipHash's cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The timer manager: owns the scheduled entries.
#[derive(Default)]
pub(crate) struct Timers {
    /// Every live entry, by id.
    live: HashMap<u64, Timer, BuildHasherDefault<IdHasher>>,
    /// `(due, id)` of every live entry, earliest first, plus stale keys of
    /// entries removed since (skipped when they surface).
    due: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Timers {
    fn insert(&mut self, timer: Timer) {
        self.due.push(Reverse((timer.at, timer.id)));
        self.live.insert(timer.id, timer);
    }

    /// Rebuilds the heap without its stale keys once they outnumber the live
    /// entries, and gives memory back after a crowd of entries has gone.
    fn tidy(&mut self) {
        if self.due.len() > 2 * self.live.len() + STALE_SLACK {
            let live = &self.live;
            self.due.retain(|Reverse((_, id))| live.contains_key(id));
            if self.due.capacity() > 4 * self.due.len() + STALE_SLACK {
                self.due.shrink_to(2 * self.due.len() + STALE_SLACK);
            }
        }
        if self.live.capacity() > 4 * self.live.len() + STALE_SLACK {
            self.live.shrink_to(2 * self.live.len() + STALE_SLACK);
        }
    }
}

impl Manager for Timers {
    type Msg = TimerMsg;

    fn handle(&mut self, msg: TimerMsg, _ctx: &mut Context<'_, TimerMsg>) {
        match msg {
            TimerMsg::Add(timer) => {
                if timer.state.0.hold() {
                    self.insert(timer);
                }
                // Else cancelled on its way here: dropped now, and its guard
                // sent no cancel.
            }
            TimerMsg::Cancel(id) => {
                // Dropping the entry drops its message (caught if it panics).
                drop(self.live.remove(&id));
                self.tidy();
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    fn wake(&mut self, _ctx: &mut Context<'_, TimerMsg>) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            // A stale key: its entry was cancelled and is gone already.
            let Some(mut timer) = self.live.remove(&id) else {
                continue;
            };
            if timer.state.0.status() != ScheduleStatus::Pending {
                // Cancelled; the cancel is still on its way.
                continue;
            }
            match timer.job.fire() {
                Fired::Told => {
                    timer.state.0.delivered.fetch_add(1, Ordering::AcqRel);
                    match timer.period {
                        None => {
                            timer.state.0.finish(ScheduleStatus::Delivered);
                        }
                        Some(period) => {
                            // Fell behind: skip the missed ticks rather than
                            // burst (and saturate rather than overflow).
                            timer.at = timer
                                .at
                                .checked_add(period)
                                .filter(|&next| next > now)
                                .unwrap_or_else(|| instant_after(period));
                            self.insert(timer);
                        }
                    }
                }
                Fired::Refused => {
                    timer.state.0.finish(ScheduleStatus::Refused);
                    tracing::warn!(
                        target_manager = %timer.job.target(),
                        "a scheduled message came due but its manager is stopped"
                    );
                }
                Fired::Panicked(message) => {
                    let _ = timer.state.0.panic.set(message);
                    timer.state.0.finish(ScheduleStatus::Panicked);
                }
            }
        }
        self.tidy();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, TimerMsg>) {
        self.due.clear();
        let abandoned = self
            .live
            .drain()
            .filter(|(_, timer)| timer.state.0.finish(ScheduleStatus::Abandoned))
            .count();
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "runtime shut down with scheduled messages pending"
            );
        }
    }
}

impl<M: Send + 'static> Handle<M> {
    /// Tells this manager `msg` once `delay` has passed, from the runtime's
    /// timer manager. Dropping the returned guard cancels it, and the message
    /// is dropped then (on the timer manager's thread), not at its due time.
    ///
    /// If the manager has stopped by then, the message is refused and the
    /// guard's status becomes [`ScheduleStatus::Refused`] (and a warning is
    /// traced): it is reported, not lost silently. A message whose `Drop`
    /// panics (when it is cancelled, refused or abandoned) cannot harm the
    /// timer manager: the panic is caught, traced and counted in the
    /// `custody.timers` stats.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Stopped`] if the manager is already stopped,
    /// [`ScheduleError::ShutDown`] if the runtime is; the message comes back.
    pub fn tell_after(&self, delay: Duration, msg: M) -> Result<Scheduled, ScheduleError<M>> {
        self.schedule(
            instant_after(delay),
            None,
            msg,
            |target, msg, timers| Once {
                target,
                msg: Some(msg),
                timers,
            },
            |mut once: Once<M>| once.msg.take(),
        )
    }

    /// Tells this manager `make()` every `period`, first after one period,
    /// until the guard is dropped or cancelled. Ticks missed while the timer
    /// manager was busy are skipped, not bunched up.
    ///
    /// `make` runs on the timer manager's thread. If it panics, the panic is
    /// caught, traced (`error`) and counted in the `custody.timers` stats, and
    /// the schedule ends there: its status becomes
    /// [`ScheduleStatus::Panicked`] (with the panic's text in
    /// [`Scheduled::panic_message`]) and `make` is dropped. A factory that
    /// panicked once may have broken its own state, so it is not called
    /// again; every other schedule carries on.
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
        self.schedule(
            instant_after(period),
            Some(period),
            make,
            |target, make, timers| Every {
                target,
                make: Some(make),
                timers,
            },
            |mut every: Every<M, F>| every.make.take(),
        )
    }

    /// Hands an entry to the runtime's timer manager; on failure, `give_back`
    /// takes the user's value out of the job again.
    fn schedule<T, J: Job>(
        &self,
        at: Instant,
        period: Option<Duration>,
        value: T,
        job: impl FnOnce(Handle<M>, T, Weak<Shared<TimerMsg>>) -> J,
        give_back: impl FnOnce(J) -> Option<T>,
    ) -> Result<Scheduled, ScheduleError<T>> {
        if self.is_stopped() {
            return Err(ScheduleError::Stopped(value));
        }
        let Some(timers) = self
            .shared
            .runtime
            .upgrade()
            .and_then(|rt| rt.timers().ok())
        else {
            return Err(ScheduleError::ShutDown(value));
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let state = TimerState::new();
        let timer = Timer {
            id,
            at,
            period,
            job: Box::new(job(self.clone(), value, Arc::downgrade(&timers.shared))),
            state: EntryState(Arc::clone(&state)),
        };
        match timers.tell(TimerMsg::Add(timer)) {
            Ok(()) => Ok(Scheduled {
                state,
                id,
                timers,
                detached: false,
            }),
            Err(refused) => {
                let TimerMsg::Add(timer) = refused.into_inner() else {
                    unreachable!("the timer manager refused the entry it was told")
                };
                let value = timer
                    .job
                    .into_any()
                    .downcast::<J>()
                    .ok()
                    .and_then(|job| give_back(*job))
                    .expect("the job of a refused entry holds the value");
                Err(ScheduleError::ShutDown(value))
            }
        }
    }
}
