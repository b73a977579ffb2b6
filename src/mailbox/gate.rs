//! The gate: join accounting and the closed flags in one atomic word.
//!
//! `state` holds two flag bits and the count of *unfinished* messages:
//! accepted by a send but not yet settled by the manager. A send does one
//! `fetch_add`; if a flag refuses it, it undoes the add and the caller hands
//! the message back. The manager settles a whole drained batch with one
//! `fetch_sub`, so the shared cache line moves once per batch, not once per
//! message. Joiners sleep on a condvar and are woken only when the count
//! reaches zero while someone waits (`joiners > 0`): `leave` reads `joiners`
//! after its `fetch_sub`, `wait_empty` reads the count after raising
//! `joiners`, with a `SeqCst` fence between the write and the read on each
//! side, so one of the two always sees the other. (The fences, rather than
//! `SeqCst` accesses alone, are what loom can check: it treats `SeqCst`
//! accesses as `AcqRel`; see `src/loom_models.rs`.)
//!
//! An awaited join (`join_async`) counts itself in `joiners` the same way,
//! and registers its task's waker in `async_joiners` instead of sleeping on
//! the condvar; `wake_joiners` wakes both kinds.
//!
//! A manager exits only when the gate is closed and the count is zero. A
//! sender whose add was undone after the close may be the one that brings the
//! count to zero; `leave` tells it so, and it nudges the manager awake.

use std::sync::PoisonError;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::current;
use crate::sync_shim::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst, fence,
};
use crate::sync_shim::{Condvar, Mutex, time};
use crate::util::Padded;
use crate::wakers::{Key, Wakers};

/// Refuses every send.
const CLOSED: u64 = 1 << 63;
/// Refuses sends from threads that are not managers of the same runtime
/// (the first phase of a runtime's graceful shutdown).
const OUTSIDE_CLOSED: u64 = 1 << 62;
const COUNT: u64 = OUTSIDE_CLOSED - 1;

pub(crate) struct Gate {
    /// Written by every send: alone on its line, so that the manager's own
    /// fields do not bounce with it.
    state: Padded<AtomicU64>,
    joiners: AtomicUsize,
    lock: Mutex<()>,
    emptied: Condvar,
    /// The tasks awaiting `join_async`: counted in `joiners` too.
    async_joiners: Wakers,
    exited: AtomicBool,
    dropped: AtomicU64,
    runtime_id: u64,
}

/// The gate refused a send (and has already undone its count).
pub(crate) struct Refused {
    /// The undo left the gate closed and empty: nudge the manager awake.
    pub(crate) nudge: bool,
}

/// `wait_empty` reached its deadline.
pub(crate) struct WaitTimedOut;

impl Gate {
    pub(crate) fn new(runtime_id: u64) -> Gate {
        Gate {
            state: Padded(AtomicU64::new(0)),
            joiners: AtomicUsize::new(0),
            lock: Mutex::new(()),
            emptied: Condvar::new(),
            async_joiners: Wakers::new(),
            exited: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            runtime_id,
        }
    }

    /// Counts one message in, unless a flag refuses it.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the gate is closed to this thread.
    #[inline]
    pub(crate) fn enter(&self) -> Result<(), Refused> {
        let prev = self.state.fetch_add(1, SeqCst);
        if prev & (CLOSED | OUTSIDE_CLOSED) == 0 {
            return Ok(());
        }
        self.refused_entry(prev)
    }

    #[cold]
    fn refused_entry(&self, prev: u64) -> Result<(), Refused> {
        if prev & CLOSED == 0 && current::is_manager_of(self.runtime_id) {
            return Ok(());
        }
        Err(Refused {
            nudge: self.leave(1),
        })
    }

    /// Counts `n` messages out. Returns `true` when this left the gate closed
    /// and empty, so the manager may need a nudge to notice.
    #[inline]
    pub(crate) fn leave(&self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        let prev = self.state.fetch_sub(n, SeqCst);
        debug_assert!(prev & COUNT >= n, "gate count underflow");
        if prev & COUNT == n {
            // Pairs with the fence in `wait_empty`: either this load sees
            // the joiner, or the joiner's read of the count sees this leave.
            fence(SeqCst);
            if self.joiners.load(Relaxed) > 0 {
                self.wake_joiners();
            }
            return prev & CLOSED != 0;
        }
        false
    }

    #[cold]
    fn wake_joiners(&self) {
        {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.emptied.notify_all();
        }
        self.async_joiners.wake_all();
    }

    /// Refuses every later send. Returns `true` if it was open.
    pub(crate) fn close(&self) -> bool {
        self.state.fetch_or(CLOSED, SeqCst) & CLOSED == 0
    }

    /// Refuses later sends from outside the runtime's managers.
    pub(crate) fn close_to_outside(&self) {
        self.state.fetch_or(OUTSIDE_CLOSED, SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(SeqCst) & CLOSED != 0
    }

    /// Messages accepted and not yet settled.
    pub(crate) fn unfinished(&self) -> u64 {
        self.state.load(SeqCst) & COUNT
    }

    /// Closed, and every accepted message settled: the manager may exit.
    pub(crate) fn is_closed_and_empty(&self) -> bool {
        let state = self.state.load(SeqCst);
        state & CLOSED != 0 && state & COUNT == 0
    }

    /// Records messages that were discarded unhandled (an immediate stop).
    /// Call before `leave` for the same messages, so a woken joiner sees them.
    pub(crate) fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, SeqCst);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(SeqCst)
    }

    /// The manager thread has finished; wakes every joiner.
    pub(crate) fn mark_exited(&self) {
        self.exited.store(true, SeqCst);
        self.wake_joiners();
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(SeqCst)
    }

    /// Blocks until the count is zero or the manager has exited.
    pub(crate) fn wait_empty(&self, deadline: Option<Instant>) -> Result<(), WaitTimedOut> {
        if self.unfinished() == 0 {
            return Ok(());
        }
        self.joiners.fetch_add(1, Relaxed);
        // Pairs with the fence in `leave` (see there).
        fence(SeqCst);
        let result = self.wait_empty_slow(deadline);
        self.joiners.fetch_sub(1, SeqCst);
        result
    }

    /// The awaitable `wait_empty`: `Ready` once the count is zero or the
    /// manager has exited. `waiting` is the caller's registration, kept
    /// between polls; pass it to [`Gate::stop_waiting`] if the wait is given
    /// up before `Ready`.
    pub(crate) fn poll_empty(&self, waiting: &mut Option<Key>, cx: &mut Context<'_>) -> Poll<()> {
        if self.unfinished() == 0 || self.has_exited() {
            self.stop_waiting(waiting);
            return Poll::Ready(());
        }
        if waiting.is_none() {
            self.joiners.fetch_add(1, Relaxed);
        }
        *waiting = Some(self.async_joiners.register(*waiting, cx.waker()));
        // Pairs with the fence in `leave`, as `wait_empty`'s does.
        fence(SeqCst);
        if self.unfinished() == 0 || self.has_exited() {
            self.stop_waiting(waiting);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Ends an awaited join's registration, if it has one.
    pub(crate) fn stop_waiting(&self, waiting: &mut Option<Key>) {
        if let Some(key) = waiting.take() {
            self.async_joiners.remove(key);
            self.joiners.fetch_sub(1, SeqCst);
        }
    }

    fn wait_empty_slow(&self, deadline: Option<Instant>) -> Result<(), WaitTimedOut> {
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.unfinished() == 0 || self.has_exited() {
                return Ok(());
            }
            guard = match deadline {
                None => self
                    .emptied
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let now = time::now();
                    if now >= at {
                        return Err(WaitTimedOut);
                    }
                    time::wait_timeout(&self.emptied, &self.lock, guard, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::{Arc, mpsc};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::Gate;
    use crate::current;
    use crate::deadlock::WaitNode;

    /// Runs an untimed `wait_empty` on a thread of its own and returns whether
    /// it succeeded, failing after 60 s instead of hanging on a lost wake-up.
    fn join_within_a_minute(gate: &Arc<Gate>) -> bool {
        let (tx, rx) = mpsc::channel();
        let joiner = Arc::clone(gate);
        thread::spawn(move || tx.send(joiner.wait_empty(None).is_ok()).unwrap());
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the joiner was not woken within a minute")
    }

    #[test]
    fn enter_counts_a_message_and_leave_settles_it() {
        let gate = Gate::new(1);
        assert!(gate.enter().is_ok());
        assert!(gate.enter().is_ok());
        assert_eq!(gate.unfinished(), 2);
        assert!(!gate.leave(0));
        assert_eq!(gate.unfinished(), 2);
        assert!(!gate.leave(2), "an open gate never asks for a nudge");
        assert_eq!(gate.unfinished(), 0);
    }

    #[test]
    fn close_refuses_later_sends_and_undoes_their_count() {
        let gate = Gate::new(1);
        assert!(gate.enter().is_ok());
        assert!(gate.close(), "the first close finds the gate open");
        assert!(!gate.close(), "a second close finds it closed");
        assert!(gate.is_closed());

        let refused = gate.enter().expect_err("a closed gate refuses");
        assert!(!refused.nudge, "one message is still unfinished");
        assert_eq!(gate.unfinished(), 1);
        assert!(!gate.is_closed_and_empty());

        assert!(gate.leave(1), "settling the last message of a closed gate");
        assert!(gate.is_closed_and_empty());
    }

    #[test]
    fn refused_send_that_leaves_a_closed_gate_empty_asks_for_a_nudge() {
        let gate = Gate::new(1);
        gate.close();
        let refused = gate.enter().expect_err("a closed gate refuses");
        assert!(refused.nudge);
        assert!(gate.is_closed_and_empty());
    }

    #[test]
    fn closed_to_outside_admits_only_the_runtimes_own_managers() {
        let gate = Arc::new(Gate::new(7));
        gate.close_to_outside();
        assert!(!gate.is_closed(), "closed to outsiders is not closed");

        let refused = gate.enter().expect_err("this thread is no manager");
        assert!(!refused.nudge, "the gate is not closed");
        assert_eq!(gate.unfinished(), 0);

        let inside = Arc::clone(&gate);
        let other = Arc::clone(&gate);
        thread::spawn(move || {
            let node = Arc::new(WaitNode::new("manager"));
            let _current = current::enter(7, &node);
            assert!(inside.enter().is_ok(), "a manager of the same runtime");
        })
        .join()
        .unwrap();
        thread::spawn(move || {
            let node = Arc::new(WaitNode::new("stranger"));
            let _current = current::enter(8, &node);
            assert!(other.enter().is_err(), "a manager of another runtime");
        })
        .join()
        .unwrap();
        assert_eq!(gate.unfinished(), 1);

        gate.close();
        let node = Arc::new(WaitNode::new("manager"));
        let _current = current::enter(7, &node);
        assert!(
            gate.enter().is_err(),
            "closed refuses even the runtime's managers"
        );
    }

    #[test]
    fn wait_empty_returns_at_once_when_nothing_is_unfinished() {
        let gate = Gate::new(1);
        assert!(gate.wait_empty(None).is_ok());
        assert!(gate.wait_empty(Some(Instant::now())).is_ok());
    }

    #[test]
    fn wait_empty_times_out_while_a_message_is_unfinished() {
        let gate = Gate::new(1);
        assert!(gate.enter().is_ok());
        assert!(gate.wait_empty(Some(Instant::now())).is_err());
        let later = Instant::now() + Duration::from_millis(10);
        assert!(gate.wait_empty(Some(later)).is_err());
        assert!(
            Instant::now() >= later,
            "the wait lasted until its deadline"
        );
        assert_eq!(gate.unfinished(), 1);
    }

    #[test]
    fn wait_empty_wakes_when_the_last_message_leaves() {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());
        assert!(gate.enter().is_ok());
        let manager = Arc::clone(&gate);
        let settler = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            manager.leave(1);
            thread::sleep(Duration::from_millis(20));
            manager.leave(1);
        });
        assert!(join_within_a_minute(&gate));
        assert_eq!(gate.unfinished(), 0);
        settler.join().unwrap();
    }

    #[test]
    fn wait_empty_wakes_when_the_manager_exits_with_messages_left() {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());
        let manager = Arc::clone(&gate);
        let exiting = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            manager.add_dropped(1);
            manager.mark_exited();
        });
        assert!(join_within_a_minute(&gate));
        assert!(gate.has_exited());
        assert_eq!(gate.dropped(), 1);
        assert_eq!(gate.unfinished(), 1);
        exiting.join().unwrap();
    }
}
