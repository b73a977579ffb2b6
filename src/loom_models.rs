//! Loom models of the protocols where a lost wake-up would hang a caller:
//! the gate (`src/mailbox/gate.rs`), the reply slot (`src/reply.rs`), and
//! their awaitable sides: an awaited join, an awaited answer, and the list of
//! async senders waiting for room in a bounded mailbox (`src/wakers.rs`, used
//! by `Room` in `src/mailbox/mod.rs` and by `src/future/post.rs`).
//!
//! Built only with `RUSTFLAGS="--cfg loom"` (`.ci/loom` runs them). The models
//! drive the production types, whose atomics, locks, parking and clock come
//! from `src/sync_shim.rs`; loom then runs each model under every
//! interleaving of its threads (up to a bound on preemptions) and every value
//! a load may see under the memory model. A thread left blocked forever fails
//! the model ("deadlock"), as does a failed assertion.
//!
//! Under loom, time is logical and a timed wait times out at once (see
//! `src/sync_shim.rs`): the models with a deadline check the timeout path,
//! the untimed ones the wake-ups.
//!
//! Each model was seen to fail on a broken protocol: without either `SeqCst`
//! fence of the gate (or with `AcqRel` ones), or without the wake-up in
//! `leave`, the joiner sleeps forever; without the refused sender's nudge,
//! the manager does; without the wake-up in `mark_exited`, the joiner; without
//! the `unpark` in `Slot::complete`, the asker; an asker that trusts any
//! wake-up gets no value after a stray one; one that claims an answer at its
//! deadline without looking ends with neither value nor timeout; without the
//! fence after a sender registers, or without a dropped sender passing on
//! its wake-up, a waiting sender sleeps beside a free slot.
//!
//! What loom cannot see, and the models work around:
//!
//! - it treats `SeqCst` loads and stores as `AcqRel` (only `SeqCst` fences are
//!   modelled as such), so a store-load handshake must use fences to be
//!   checked: the gate's does;
//! - its `yield_now` drops an `unpark` that arrives meanwhile, and its `join`
//!   is woken by any `unpark`: the models that unpark an asker that may have
//!   moved on do not `join` that asker's thread.

use std::sync::Arc as StdArc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::Ordering::{Acquire, Release};
use loom::sync::mpsc::channel;
use loom::thread;

use crate::mailbox::Gate;
use crate::reply::{self, Ending};
use crate::sync_shim::time;

/// Runs `model` under loom with a preemption bound: enough for the races
/// below, small enough to finish in seconds. `LOOM_MAX_PREEMPTIONS` in the
/// environment overrides it (loom reads it first).
///
/// Prints how many executions loom explored, so that a model that shrank to
/// a handful (a race no longer reachable) shows in the log.
fn check(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    let executions = StdArc::new(AtomicUsize::new(0));
    let counter = StdArc::clone(&executions);
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        model();
    });
    println!(
        "{} executions (preemption bound {:?})",
        executions.load(Ordering::Relaxed),
        builder.preemption_bound
    );
}

/// What a manager's mailbox carries in the gate models.
enum Envelope {
    Message,
    Wake,
}

/// The last message leaves while a joiner is going to sleep, and a send
/// enters and is undone meanwhile (as when its channel refuses it): the
/// joiner must be woken, or see the count at zero, whichever comes first.
#[test]
fn gate_joiner_wakes_when_the_count_reaches_zero() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());

        let manager = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                assert!(!gate.leave(1), "an open gate never asks for a nudge");
            })
        };
        let sender = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                assert!(gate.enter().is_ok(), "an open gate admits a send");
                assert!(!gate.leave(1), "an open gate never asks for a nudge");
            })
        };

        assert!(gate.wait_empty(None).is_ok());

        manager.join().unwrap();
        sender.join().unwrap();
        assert_eq!(gate.unfinished(), 0);
    });
}

/// The manager thread exits while a message is still counted, so the count
/// never reaches zero: a joiner going to sleep meanwhile must be woken by the
/// exit itself.
#[test]
fn gate_joiner_wakes_when_the_manager_exits() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());

        let manager = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || gate.mark_exited())
        };

        assert!(gate.wait_empty(None).is_ok());
        assert!(gate.has_exited());
        assert_eq!(gate.unfinished(), 1);
        manager.join().unwrap();
    });
}

/// A `join_timeout` racing the last leave ends either way: `Ok` only once the
/// count has reached zero, `WaitTimedOut` otherwise.
#[test]
fn gate_timed_join_ends_with_the_count_or_the_deadline() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());

        let manager = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                gate.leave(1);
            })
        };

        let deadline = time::now() + Duration::from_millis(1);
        if gate.wait_empty(Some(deadline)).is_ok() {
            // Nothing enters again: a count seen at zero stays at zero.
            assert_eq!(gate.unfinished(), 0);
        }

        manager.join().unwrap();
        assert_eq!(gate.unfinished(), 0);
    });
}

/// A stop closes the gate while a send enters and the manager settles the
/// one message it holds. A send counted before the close is delivered; a
/// refused one undoes its count and, when that undo leaves the gate closed
/// and empty, nudges the manager (the stop nudges it too, after its close).
/// The manager blocks on its mailbox until the gate is closed and empty, so
/// it must exit in every case, having handled every message the gate let in.
#[test]
fn gate_close_racing_a_send_never_strands_the_manager() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        let (mailbox, inbox) = channel();
        assert!(gate.enter().is_ok());
        mailbox.send(Envelope::Message).unwrap();

        let sender = {
            let gate = Arc::clone(&gate);
            let mailbox = mailbox.clone();
            thread::spawn(move || match gate.enter() {
                Ok(()) => {
                    mailbox.send(Envelope::Message).unwrap();
                    true
                }
                Err(refused) => {
                    if refused.nudge {
                        // Closed, and nobody else can enter: it stays empty.
                        assert!(gate.is_closed_and_empty());
                        mailbox.send(Envelope::Wake).unwrap();
                    }
                    false
                }
            })
        };
        let stopper = {
            let gate = Arc::clone(&gate);
            let mailbox = mailbox.clone();
            // `Shared::stop`: close, then make the manager look at its gate.
            thread::spawn(move || {
                assert!(gate.close(), "the gate was open");
                mailbox.send(Envelope::Wake).unwrap();
            })
        };

        // The manager loop, as in `manager_thread.rs`: settle what arrives
        // until the gate is closed and empty. It keeps a sender of its own
        // mailbox (as `Shared` does), so only a message or a nudge wakes it.
        let _keep_open = mailbox;
        let mut handled = 0;
        while !gate.is_closed_and_empty() {
            match inbox.recv().unwrap() {
                Envelope::Message => {
                    handled += 1;
                    gate.leave(1);
                }
                Envelope::Wake => {}
            }
        }

        let admitted = sender.join().unwrap();
        stopper.join().unwrap();
        // Every message the gate admitted was handled before the exit.
        assert_eq!(handled, 1 + u32::from(admitted));
        assert!(gate.is_closed_and_empty());
    });
}

/// The answer lands while the asker goes from polling to parked: it must get
/// the value, never sleep through it.
#[test]
fn reply_answer_racing_the_park_wakes_the_asker() {
    check(|| {
        let (reply, waiter) = reply::pair::<u32>();
        let manager = thread::spawn(move || reply.send(7));

        assert!(matches!(waiter.wait(None), Ok(7)));
        manager.join().unwrap();
    });
}

/// A `Reply` dropped unanswered ends the wait with `NoReply`.
#[test]
fn reply_dropped_unanswered_ends_the_wait() {
    check(|| {
        let (reply, waiter) = reply::pair::<u32>();
        let manager = thread::spawn(move || drop(reply));

        assert!(matches!(waiter.wait(None), Err(Ending::NoReply)));
        manager.join().unwrap();
    });
}

/// The asker gives up at its deadline while the answer is on its way: it gets
/// the value if it landed in time, `TimedOut` otherwise, and a late answer is
/// dropped exactly once (the token's count goes back to one).
#[test]
fn reply_late_answer_after_a_timeout_is_dropped() {
    check(|| {
        let token = StdArc::new(());
        let (reply, waiter) = reply::pair::<StdArc<()>>();
        let sent = StdArc::clone(&token);
        let done = Arc::new(AtomicBool::new(false));
        let manager_done = Arc::clone(&done);
        thread::spawn(move || {
            // Busy for a while: without it the answer would always land
            // within the asker's two yields (spin, timed park), never late.
            for _ in 0..2 {
                thread::yield_now();
            }
            reply.send(sent);
            manager_done.store(true, Release);
        });

        let deadline = time::now() + Duration::from_micros(100);
        match waiter.wait(Some(deadline)) {
            Ok(v) => assert!(StdArc::ptr_eq(&v, &token)),
            Err(Ending::TimedOut) => {}
            _ => panic!("the ask ended neither with its value nor timed out"),
        }

        // Not `join`: a late answer unparks this thread, and loom's join
        // waits on a primitive of its own that the unpark would wake.
        while !done.load(Acquire) {
            thread::yield_now();
        }
        assert_eq!(StdArc::strong_count(&token), 1);
    });
}

/// A stray wake-up reaches the asker at any moment, as the unpark of an
/// earlier ask's late answer (or a spurious wake-up) can: it must not end the
/// wait; only the answer does.
#[test]
fn reply_stray_wakeup_does_not_end_the_wait() {
    check(|| {
        let (reply, waiter) = reply::pair::<u32>();
        thread::spawn(move || reply.send(7));
        let asker = thread::current();
        thread::spawn(move || asker.unpark());

        assert!(matches!(waiter.wait(None), Ok(7)));
        // No `join`: loom's join waits on a primitive of its own that the
        // stray unpark would wake. The model ends once every thread has.
    });
}

// --- the awaitable calls' wake-ups -----------------------------------------
//
// The awaiting side runs under `loom::future::block_on`, which polls again
// only when its waker is woken: a lost wake-up leaves it blocked, which loom
// reports.

use std::future::poll_fn;
use std::task::{Poll, Waker};

use loom::future::block_on;

/// The answer races an awaiting task's registration: the task is woken, or
/// sees the answer when it looks again.
#[test]
fn reply_answer_racing_an_awaiting_task_wakes_it() {
    check(|| {
        let (reply, waiter) = reply::pair::<u32>();
        let answerer = thread::spawn(move || reply.send(7));
        let answer = block_on(poll_fn(|cx| waiter.poll_wait(cx)));
        assert!(matches!(answer, Ok(7)));
        answerer.join().unwrap();
    });
}

/// A task polled first with one waker, then awaited with another (a future
/// moved between tasks) while the answer lands: the new waker is woken, or
/// the poll sees the answer.
#[test]
fn reply_task_polled_with_a_new_waker_racing_the_answer_is_not_lost() {
    check(|| {
        let (reply, waiter) = reply::pair::<u32>();
        let first = waiter.poll_wait(&mut std::task::Context::from_waker(Waker::noop()));
        assert!(first.is_pending(), "nobody has answered yet");
        let answerer = thread::spawn(move || reply.send(8));
        let answer = block_on(poll_fn(|cx| waiter.poll_wait(cx)));
        assert!(matches!(answer, Ok(8)));
        answerer.join().unwrap();
    });
}

/// A full channel, stood in for by a count of free slots (the channel's own
/// synchronisation is not what is checked here): takes a slot if one is free.
fn try_take(free: &loom::sync::atomic::AtomicUsize) -> bool {
    free.fetch_update(Acquire, Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// An async sender's poll, as `Posting::poll_post` does it: try, register
/// (then fence), try again, else wait to be woken.
fn poll_send(
    room: &crate::wakers::Wakers,
    free: &loom::sync::atomic::AtomicUsize,
    key: &mut Option<crate::wakers::Key>,
    cx: &mut std::task::Context<'_>,
) -> Poll<()> {
    if !try_take(free) {
        *key = Some(room.register_then_fence(*key, cx.waker()));
        if !try_take(free) {
            return Poll::Pending;
        }
    }
    if let Some(key) = key.take() {
        room.remove(key);
    }
    Poll::Ready(())
}

/// An async sender finds the mailbox full and registers while the manager
/// frees a slot and looks for waiting senders (`Room::freed`): it takes the
/// slot on its second try, or is woken for it.
#[test]
fn room_sender_registering_racing_a_freed_slot_gets_it() {
    use crate::wakers::Wakers;
    check(|| {
        let room = Arc::new(Wakers::new());
        let free = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let manager = {
            let (room, free) = (Arc::clone(&room), Arc::clone(&free));
            thread::spawn(move || {
                free.fetch_add(1, loom::sync::atomic::Ordering::AcqRel);
                room.fence_then_wake_one();
            })
        };
        let mut key = None;
        block_on(poll_fn(|cx| poll_send(&room, &free, &mut key, cx)));
        assert!(room.is_empty());
        manager.join().unwrap();
    });
}

/// Two async senders wait; the manager frees one slot and wakes the first,
/// which is dropped without using it (`Posting`'s drop): the wake-up passes
/// to the second, which gets the slot.
#[test]
fn room_woken_sender_dropped_unused_passes_its_wake_up_on() {
    use crate::wakers::Wakers;
    check(|| {
        let room = Arc::new(Wakers::new());
        let free = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let first = room.register_then_fence(None, Waker::noop());
        let mut second = Some(room.register_then_fence(None, Waker::noop()));
        let manager = {
            let (room, free) = (Arc::clone(&room), Arc::clone(&free));
            thread::spawn(move || {
                free.fetch_add(1, loom::sync::atomic::Ordering::AcqRel);
                room.fence_then_wake_one();
            })
        };
        let dropped = {
            let room = Arc::clone(&room);
            thread::spawn(move || room.leave_passing_on(first))
        };
        block_on(poll_fn(|cx| poll_send(&room, &free, &mut second, cx)));
        manager.join().unwrap();
        dropped.join().unwrap();
    });
}

/// An awaited join registers while the last message leaves: it is woken, or
/// sees the count at zero when it looks again.
#[test]
fn gate_async_joiner_wakes_when_the_count_reaches_zero() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());
        let manager = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                gate.leave(1);
            })
        };
        let mut waiting = None;
        block_on(poll_fn(|cx| gate.poll_empty(&mut waiting, cx)));
        assert!(waiting.is_none(), "a finished join leaves no registration");
        manager.join().unwrap();
    });
}

/// An awaited join registers while the manager exits with messages still
/// counted (an immediate stop): `mark_exited` wakes it.
#[test]
fn gate_async_joiner_wakes_when_the_manager_exits() {
    check(|| {
        let gate = Arc::new(Gate::new(1));
        assert!(gate.enter().is_ok());
        let manager = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || gate.mark_exited())
        };
        let mut waiting = None;
        block_on(poll_fn(|cx| gate.poll_empty(&mut waiting, cx)));
        manager.join().unwrap();
    });
}
