//! `Reply<T>`: the one-shot slot an `ask` hands to the manager.
//!
//! The asker allocates one `Arc<Slot<T>>` and keeps a [`Waiter`]; the manager
//! gets the [`Reply`] inside its message. The answer travels under an
//! uncontended mutex and is announced by the slot's `state`, which the asker
//! polls for a short, bounded while (about 20 µs: a round trip to a manager on
//! another core usually completes within it), then parks. After a first burst
//! of polls it yields its core once, in case the manager is waiting for this
//! very core, and then now and then; the burst is short (half a microsecond)
//! when the thread's last answer came only after a yield, long (4 µs) when it
//! came while polling. Only an asker about to park registers
//! its `Thread` and moves the state to `PARKED`; the manager's single `swap` to
//! `READY` tells it whether anyone must be unparked. So the fast path touches
//! one cache line besides the value and makes no system call.
//!
//! An awaited ask (`ask_async`) uses the same slot: instead of parking, the
//! future stores its task's `Waker` where a parked asker stores its `Thread`,
//! and moves the state to `PARKED` the same way; the manager's `swap` to
//! `READY` finds either kind of waiter in the one `asker` field and wakes it.
//! A future polled again with another waker replaces it under the lock, and
//! then looks at the state again, so an answer that landed in between is not
//! missed.
//!
//! A `Reply` dropped without an answer still ends the ask: with `Stopped` when
//! its message was discarded by an immediate stop, with `Panicked` when the
//! handler unwound, and with `NoReply` when a handler simply forgot it. To carry
//! the panic message, a `Reply` dropped while its manager's handler unwinds is
//! parked in a thread-local list; the manager loop fills them in once
//! `catch_unwind` hands it the payload.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::deadlock::WaitLink;
use crate::error::SendError;
use crate::handle::Handle;
use crate::sync_shim::atomic::{AtomicU8, Ordering};
use crate::sync_shim::thread::{self, Thread};
use crate::sync_shim::{Mutex, time};

/// How long an asker polls before it parks: long enough for a manager on
/// another core to answer an ordinary request, short enough not to matter
/// next to a parked wait.
const SPIN_FOR: Duration = Duration::from_micros(20);
/// Polls before the asker first yields, when its last answer came only
/// after a yield (about half a microsecond here: a manager already running on
/// another core answers within it).
const SHORT_SPINS: u32 = if cfg!(loom) { 1 } else { 16 };
/// Polls before the asker first yields otherwise (about 4 µs here).
const LONG_SPINS: u32 = if cfg!(loom) { 1 } else { 128 };
/// Polls between two later looks at the clock; every fourth look also yields
/// the core. (One under loom, where every poll multiplies the interleavings
/// to explore.)
const SPINS_PER_LOOK: u32 = if cfg!(loom) { 1 } else { 32 };

thread_local! {
    /// Whether this thread's last answer came only after it yielded its core
    /// (the manager shares the core, or was slow): then its next wait
    /// yields after a short burst of polls instead of a long one.
    static YIELD_EARLY: Cell<bool> = const { Cell::new(false) };
}

/// Polls an awaited answer may spend before its task registers its waker
/// (about 2 µs here). A manager on another core that is awake answers
/// within it, and then the task is spared a trip through its executor (the
/// manager waking it, the executor's thread unparked: tens of µs when the
/// executor was idle). Short enough to be no blocking call on an executor.
const TASK_SPINS: u32 = if cfg!(loom) { 0 } else { 64 };
/// Spins in a row that found nothing (the manager slow, or asleep) after
/// which an executor thread skips the spin for [`TASK_SPIN_SKIP`] awaited
/// answers. One miss is not enough: a manager that was asleep is awake
/// after the ask that woke it, and the next spin finds its answer.
const TASK_SPIN_MISSES: u32 = 4;
/// Awaited answers an executor thread skips the spin for after
/// [`TASK_SPIN_MISSES`] misses: a thread whose answers do not come within
/// the spin wastes at most 4 spins (about 8 µs) in 20 asks.
const TASK_SPIN_SKIP: u32 = 16;

thread_local! {
    /// This thread's spins that found nothing, in a row; and the awaited
    /// answers still to skip the spin for.
    static TASK_SPIN: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Before an awaited answer's task registers its waker: polls `ready` for
/// a short, bounded while, unless this thread's recent spins found nothing
/// (see [`TASK_SPIN_MISSES`]). `true` once ready.
fn spin_for_task(ready: impl Fn() -> bool) -> bool {
    if TASK_SPINS == 0 {
        return false;
    }
    let (misses, skip) = TASK_SPIN.with(Cell::get);
    if skip > 0 {
        TASK_SPIN.with(|s| s.set((misses, skip - 1)));
        return false;
    }
    for _ in 0..TASK_SPINS {
        std::hint::spin_loop();
        if ready() {
            TASK_SPIN.with(|s| s.set((0, 0)));
            return true;
        }
    }
    let misses = misses + 1;
    TASK_SPIN.with(|s| {
        s.set(if misses >= TASK_SPIN_MISSES {
            (0, TASK_SPIN_SKIP)
        } else {
            (misses, 0)
        })
    });
    false
}

/// Nobody has answered, and the asker is not parked.
const EMPTY: u8 = 0;
/// The asker registered its thread and parks (or is about to).
const PARKED: u8 = 1;
/// The outcome is in.
const READY: u8 = 2;

/// Who to wake when the answer lands.
enum Asker {
    /// A thread parked in [`Waiter::wait`].
    Thread(Thread),
    /// A task awaiting [`Waiter::poll_wait`].
    Task(Waker),
}

/// Where one answer lands: the value (or why there is none), and how the
/// asker is woken.
pub(crate) struct Slot<T> {
    state: AtomicU8,
    /// `None` until the ask is answered or ended.
    outcome: Mutex<Option<Result<T, Ending>>>,
    /// Set by the asker just before it parks, or by an awaiting future.
    asker: Mutex<Option<Asker>>,
    /// The asking manager's wait-for edge, ended as the slot completes.
    pub(crate) edge: WaitLink,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Slot<T> {
        Slot {
            state: AtomicU8::new(EMPTY),
            outcome: Mutex::new(None),
            asker: Mutex::new(None),
            edge: WaitLink::default(),
        }
    }

    /// Answers with a value.
    pub(crate) fn answer(&self, value: T) {
        self.complete(Ok(value));
    }

    fn complete(&self, outcome: Result<T, Ending>) {
        // The wait ends now, not when the asker next runs: a handler that
        // answers and then asks the asker back closes no cycle.
        self.edge.release();
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        if self.state.swap(READY, Ordering::AcqRel) == PARKED {
            // Taken out, and woken outside the lock: a waker may run its task
            // at once.
            let asker = self
                .asker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match asker {
                Some(Asker::Thread(thread)) => thread.unpark(),
                Some(Asker::Task(waker)) => crate::wakers::wake(waker),
                None => {}
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }
}

/// Why an ask ends without a value: the one outcome type of an ask, from
/// the reply slot to the public [`AskError`](crate::AskError).
#[derive(Debug)]
pub(crate) enum Ending {
    /// The handler dropped the reply without answering.
    NoReply,
    /// An immediate stop discarded the request (or the manager refused it:
    /// stopped).
    Discarded,
    /// The handler panicked, with this message.
    Panicked(String),
    /// The asker's deadline passed first (or a bounded mailbox stayed
    /// full until it).
    TimedOut,
}

/// A reply slot, seen from the side that may have to give up on it.
pub(crate) trait Unanswered: Send + Sync {
    fn end(&self, ending: Ending);
}

impl<T: Send> Unanswered for Slot<T> {
    fn end(&self, ending: Ending) {
        self.complete(Err(ending));
    }
}

/// Something that holds the slot an asker waits on (dyn-compatible, so an
/// awaitable ask can name its waiter by the answer's type alone).
pub(crate) trait HoldsSlot: Send + Sync {
    type Value;
    fn slot(&self) -> &Slot<Self::Value>;
}

impl<T: Send> HoldsSlot for Slot<T> {
    type Value = T;
    fn slot(&self) -> &Slot<T> {
        self
    }
}

/// Ends a slot that is being dropped unanswered, according to what this
/// thread is doing: a handler unwinding (answered with the panic message once
/// the loop has it), a discard (`Stopped`), or a plain drop (`NoReply`).
pub(crate) fn drop_unanswered(cell: Arc<dyn Unanswered>) {
    match MODE.with(Cell::get) {
        DropMode::Handling if thread::panicking() => {
            UNWOUND.with(|u| u.borrow_mut().push(cell));
        }
        DropMode::Discarding => cell.end(Ending::Discarded),
        _ if thread::panicking() => {
            cell.end(Ending::Panicked("panicked outside a handler".to_owned()));
        }
        _ => cell.end(Ending::NoReply),
    }
}

/// What the manager loop is doing on this thread, for replies dropped unanswered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropMode {
    /// Not inside a manager loop, or between messages.
    Normal,
    /// Running a handler: an unwinding drop means the handler panicked.
    Handling,
    /// Discarding messages left by an immediate stop.
    Discarding,
}

thread_local! {
    static MODE: Cell<DropMode> = const { Cell::new(DropMode::Normal) };
    static UNWOUND: RefCell<Vec<Arc<dyn Unanswered>>> = const { RefCell::new(Vec::new()) };
}

/// Sets what an unanswered drop on this thread means; returns the old mode.
pub(crate) fn set_drop_mode(mode: DropMode) -> DropMode {
    MODE.with(|m| m.replace(mode))
}

/// Answers every reply dropped by an unwinding handler with its panic message.
pub(crate) fn settle_unwound(message: &str) {
    let sinks = UNWOUND.with(|u| std::mem::take(&mut *u.borrow_mut()));
    for sink in sinks {
        sink.end(Ending::Panicked(message.to_owned()));
    }
}

/// The answering half of an `ask`: call [`Reply::send`] once with the result.
///
/// A manager receives a `Reply<T>` inside the message that
/// [`Handle::ask`](crate::Handle::ask) built. If it is dropped without an
/// answer the asker is not left hanging: it gets
/// [`AskError::NoReply`](crate::AskError::NoReply), or
/// [`AskError::Panicked`](crate::AskError::Panicked) if the handler panicked.
///
/// # Examples
///
/// ```
/// use custody::{Context, Manager, Reply, Runtime};
///
/// struct Doubler;
/// impl Manager for Doubler {
///     type Msg = (u32, Reply<u32>);
///     fn handle(&mut self, (n, reply): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
///         reply.send(n * 2);
///     }
/// }
///
/// let rt = Runtime::new();
/// let doubler = rt.spawn("doubler", Doubler)?;
/// assert_eq!(doubler.ask(|reply| (21, reply))?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Reply<T: Send + 'static> {
    slot: Option<Arc<Slot<T>>>,
}

/// The asking half: waits for the slot inside `C` to be completed.
pub(crate) struct Waiter<C: ?Sized> {
    cell: Arc<C>,
}

/// A fresh reply slot, owned by the calling thread.
pub(crate) fn pair<T: Send + 'static>() -> (Reply<T>, Waiter<Slot<T>>) {
    let slot = Arc::new(Slot::new());
    (
        Reply {
            slot: Some(Arc::clone(&slot)),
        },
        Waiter { cell: slot },
    )
}

impl<T: Send + 'static> Reply<T> {
    /// Answers the ask. If the asker has given up (it timed out), the value is
    /// dropped.
    pub fn send(mut self, value: T) {
        if let Some(slot) = self.slot.take() {
            slot.complete(Ok(value));
        }
    }

    /// Hands the reply on to another manager inside the message `make`
    /// builds: that manager answers instead (the router pattern). The asker's
    /// wait moves with it, so deadlock detection follows the request: if the
    /// asker is a manager that `to` is (through a chain of asks) waiting on,
    /// the forward is refused instead of hanging both.
    ///
    /// A `Reply` moved by hand (put inside another message with `tell`) works
    /// too, but the detector keeps seeing the asker wait on the manager that
    /// received the ask; forward it with this method to keep detection exact.
    ///
    /// # Errors
    ///
    /// [`SendError::Stopped`] if `to` is stopping or stopped, and
    /// [`SendError::Deadlock`] if handing it the reply would close a cycle;
    /// the message (with this reply inside, still unanswered) comes back in
    /// both, and the asker's wait stays where it was.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Context, Handle, Manager, Reply, Runtime};
    ///
    /// struct Worker;
    /// impl Manager for Worker {
    ///     type Msg = (u32, Reply<u32>);
    ///     fn handle(&mut self, (n, reply): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
    ///         reply.send(n + 1);
    ///     }
    /// }
    ///
    /// struct Router(Handle<(u32, Reply<u32>)>);
    /// impl Manager for Router {
    ///     type Msg = (u32, Reply<u32>);
    ///     fn handle(&mut self, (n, reply): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
    ///         if let Err(refused) = reply.forward(&self.0, |reply| (n, reply)) {
    ///             let (_, reply) = refused.into_inner();
    ///             drop(reply); // the asker gets NoReply
    ///         }
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let worker = rt.spawn("worker", Worker)?;
    /// let router = rt.spawn("router", Router(worker))?;
    /// assert_eq!(router.ask(|reply| (41, reply))?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forward<N, F>(self, to: &Handle<N>, make: F) -> Result<(), SendError<N>>
    where
        N: Send + 'static,
        F: FnOnce(Reply<T>) -> N,
    {
        let moved = match &self.slot {
            Some(slot) => match slot.edge.move_to(&to.shared.waits) {
                Ok(moved) => moved.map(|m| (Arc::clone(slot), m)),
                Err(cycle) => {
                    return Err(SendError::Deadlock {
                        msg: make(self),
                        cycle,
                    });
                }
            },
            None => None,
        };
        to.tell(make(self)).inspect_err(|_| {
            if let Some((slot, moved)) = moved {
                slot.edge.undo(moved);
            }
        })
    }

    /// Whether the asker is still waiting for this answer. `false` once its
    /// `ask_timeout` has expired (and the answer would be dropped).
    pub fn is_awaited(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| Arc::strong_count(s) > 1)
    }
}

impl<T: Send + 'static> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            drop_unanswered(slot);
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("awaited", &self.is_awaited())
            .finish_non_exhaustive()
    }
}

impl<C: HoldsSlot + 'static> Waiter<C> {
    /// The same waiter, named by the answer's type alone.
    pub(crate) fn erase(self) -> Waiter<dyn HoldsSlot<Value = C::Value>> {
        Waiter { cell: self.cell }
    }
}

impl<C: HoldsSlot + ?Sized> Waiter<C> {
    /// Waits on the slot inside `cell`.
    pub(crate) fn new(cell: Arc<C>) -> Waiter<C> {
        Waiter { cell }
    }

    /// The slot this waiter waits on.
    pub(crate) fn slot(&self) -> &Slot<C::Value> {
        self.cell.slot()
    }

    /// Polls for a short, bounded while; `true` once the slot is ready.
    ///
    /// A burst of polls first, then one yield, then the longer polls,
    /// yielding every fourth look, until [`SPIN_FOR`] has passed. With both
    /// threads on one core the manager runs only when the asker yields, so
    /// every poll before the yield is wasted; with the manager running on
    /// another core the answer comes within a few hundred nanoseconds, and a
    /// yield there is wasted too (on a busy machine it may hand the core to
    /// another process for its whole turn). Where the two threads run is the
    /// scheduler's choice and changes under load, so the burst adapts: short
    /// when this thread's last answer came only after a yield, long when it
    /// came while polling.
    fn spin(&self) -> bool {
        let slot = self.cell.slot();
        let first = if YIELD_EARLY.with(Cell::get) {
            SHORT_SPINS
        } else {
            LONG_SPINS
        };
        for _ in 0..first {
            if slot.is_ready() {
                YIELD_EARLY.with(|y| y.set(false));
                return true;
            }
            std::hint::spin_loop();
        }
        thread::yield_now();
        let started = time::now();
        let mut looks = 0u32;
        let ready = loop {
            for _ in 0..SPINS_PER_LOOK {
                if slot.is_ready() {
                    break;
                }
                std::hint::spin_loop();
            }
            if slot.is_ready() {
                break true;
            }
            looks += 1;
            if looks.is_multiple_of(4) {
                thread::yield_now();
            }
            if time::now().duration_since(started) >= SPIN_FOR {
                break slot.is_ready();
            }
        };
        YIELD_EARLY.with(|y| y.set(true));
        ready
    }

    /// Parks until the slot is ready; `false` if the deadline passed first.
    #[cold]
    fn park(&self, deadline: Option<Instant>) -> bool {
        let slot = self.cell.slot();
        *slot.asker.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Asker::Thread(thread::current()));
        if slot
            .state
            .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true; // answered meanwhile
        }
        loop {
            if slot.is_ready() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(at) => {
                    let now = time::now();
                    if now >= at {
                        return slot.is_ready();
                    }
                    thread::park_timeout(at - now);
                }
            }
        }
    }

    /// Waits for the answer until `deadline` (forever when `None`).
    pub(crate) fn wait(self, deadline: Option<Instant>) -> Result<C::Value, Ending> {
        let slot = self.cell.slot();
        if !slot.is_ready() && !self.spin() && !self.park(deadline) {
            slot.edge.release(); // given up: the wait has ended
            return Err(Ending::TimedOut);
        }
        Self::take(slot)
    }

    fn take(slot: &Slot<C::Value>) -> Result<C::Value, Ending> {
        slot.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(Err(Ending::NoReply))
    }

    /// The awaitable wait: `Ready` with the outcome once the slot is
    /// complete; otherwise the task's waker is stored in the slot (replacing
    /// the one of an earlier poll) and `Pending` returned. Call it again
    /// after `Ready` and the outcome is `NoReply` (it was taken).
    pub(crate) fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<Result<C::Value, Ending>> {
        let slot = self.cell.slot();
        if !slot.is_ready() && !spin_for_task(|| slot.is_ready()) {
            {
                let mut asker = slot.asker.lock().unwrap_or_else(PoisonError::into_inner);
                match &*asker {
                    Some(Asker::Task(waker)) if waker.will_wake(cx.waker()) => {}
                    _ => *asker = Some(Asker::Task(cx.waker().clone())),
                }
            }
            // After the waker is in: either the manager's swap finds
            // `PARKED` (and then the waker, under the lock), or this sees
            // `READY`.
            match slot
                .state
                .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Poll::Pending,
                Err(PARKED) if !slot.is_ready() => return Poll::Pending,
                Err(_) => {}
            }
        }
        Poll::Ready(Self::take(slot))
    }

    /// Whether the outcome is in.
    pub(crate) fn is_ready(&self) -> bool {
        self.cell.slot().is_ready()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Arc, mpsc};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::{DropMode, Ending, pair, set_drop_mode, settle_unwound};

    /// Runs `wait` on a thread of its own and returns what it returned,
    /// failing after 60 s instead of hanging on a lost wake-up.
    fn within_a_minute<T: Send + 'static>(wait: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(wait()).unwrap());
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the wait did not end within a minute")
    }

    /// Answers after the asker has had time to stop polling and park.
    fn answer_later<T: Send + 'static>(reply: super::Reply<T>, value: T) {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            reply.send(value);
        });
    }

    #[test]
    fn answer_sent_before_the_wait_is_returned_at_once() {
        let (reply, waiter) = pair();
        assert!(reply.is_awaited());
        reply.send(5u32);
        assert!(matches!(waiter.wait(None), Ok(5)));
    }

    #[test]
    fn parked_asker_is_woken_by_the_answer() {
        let (reply, waiter) = pair();
        answer_later(reply, 6u32);
        assert!(matches!(within_a_minute(move || waiter.wait(None)), Ok(6)));
    }

    #[test]
    fn asker_with_a_deadline_gets_an_answer_that_lands_in_time() {
        let (reply, waiter) = pair();
        answer_later(reply, 7u32);
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(matches!(waiter.wait(Some(deadline)), Ok(7)));
    }

    #[test]
    fn stray_wakeup_does_not_end_the_wait() {
        let (reply, waiter) = pair();
        answer_later(reply, 8u32);
        let answer = within_a_minute(move || {
            // A wake-up already pending when the asker parks, as a late
            // answer to an earlier ask leaves it.
            thread::current().unpark();
            waiter.wait(None)
        });
        assert!(matches!(answer, Ok(8)));
    }

    #[test]
    fn wait_times_out_and_the_late_answer_is_dropped() {
        let (reply, waiter) = pair();
        let token = Arc::new(());
        assert!(matches!(
            waiter.wait(Some(Instant::now() + Duration::from_millis(1))),
            Err(Ending::TimedOut)
        ));
        assert!(!reply.is_awaited(), "the asker gave up");
        reply.send(Arc::clone(&token));
        assert_eq!(Arc::strong_count(&token), 1, "the late answer was dropped");
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn counting() -> (Arc<Count>, std::task::Waker) {
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (Arc::clone(&count), std::task::Waker::from(count))
    }
    fn woken(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn an_awaiting_task_is_woken_by_the_answer_and_then_gets_it() {
        let (reply, waiter) = pair();
        let (count, waker) = counting();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(waiter.poll_wait(&mut cx).is_pending());
        assert_eq!(woken(&count), 0);
        reply.send(9u32);
        assert_eq!(woken(&count), 1, "the answer woke the task");
        assert!(matches!(
            waiter.poll_wait(&mut cx),
            std::task::Poll::Ready(Ok(9))
        ));
    }

    #[test]
    fn a_task_polled_again_with_another_waker_is_woken_through_the_new_one() {
        let (reply, waiter) = pair();
        let (old, old_waker) = counting();
        let (new, new_waker) = counting();
        assert!(
            waiter
                .poll_wait(&mut std::task::Context::from_waker(&old_waker))
                .is_pending()
        );
        assert!(
            waiter
                .poll_wait(&mut std::task::Context::from_waker(&new_waker))
                .is_pending()
        );
        reply.send(1u32);
        assert_eq!((woken(&old), woken(&new)), (0, 1));
    }

    #[test]
    fn an_answer_that_landed_before_the_first_poll_is_ready_without_a_wake_up() {
        let (reply, waiter) = pair();
        reply.send(3u32);
        let (count, waker) = counting();
        let polled = waiter.poll_wait(&mut std::task::Context::from_waker(&waker));
        assert!(matches!(polled, std::task::Poll::Ready(Ok(3))));
        assert_eq!(woken(&count), 0);
    }

    #[test]
    fn an_awaiting_task_answered_from_another_thread_is_woken() {
        within_a_minute(|| {
            for _ in 0..200 {
                let (reply, waiter) = pair();
                let answering = thread::spawn(move || reply.send(4u32));
                let answer =
                    futures_lite::future::block_on(std::future::poll_fn(|cx| waiter.poll_wait(cx)));
                assert!(matches!(answer, Ok(4)));
                answering.join().unwrap();
            }
        });
    }

    #[test]
    fn reply_dropped_unanswered_ends_the_wait_with_no_reply() {
        let (reply, waiter) = pair::<u32>();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            drop(reply);
        });
        assert!(matches!(
            within_a_minute(move || waiter.wait(None)),
            Err(Ending::NoReply)
        ));
    }

    #[test]
    fn reply_dropped_while_discarding_ends_the_wait_as_discarded() {
        let (reply, waiter) = pair::<u32>();
        let previous = set_drop_mode(DropMode::Discarding);
        drop(reply);
        set_drop_mode(previous);
        assert!(matches!(waiter.wait(None), Err(Ending::Discarded)));
    }

    #[test]
    fn reply_dropped_by_a_panicking_handler_ends_the_wait_with_its_message() {
        let (reply, waiter) = pair::<u32>();
        let previous = set_drop_mode(DropMode::Handling);
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _reply = reply;
            panic!("handler failed");
        }));
        set_drop_mode(previous);
        assert!(unwound.is_err());
        settle_unwound("handler failed");
        match waiter.wait(None) {
            Err(Ending::Panicked(message)) => assert_eq!(message, "handler failed"),
            _ => panic!("expected the panic message"),
        }
    }
}
