//! `Posting`: one message on its way into a mailbox, without blocking a
//! thread; the core of [`Tell`](super::Tell) and [`Ask`](super::Ask).
//!
//! The steps are those of a blocking send, spread over polls:
//!
//! 1. the gate counts the message in (`gate.enter()`), or refuses it;
//! 2. `try_send` into the channel; done if it lands;
//! 3. a full bounded mailbox: register the task's waker in the mailbox's
//!    list of waiting senders, fence, `try_send` again (so a slot freed in
//!    between is not missed: see `Room` in `src/mailbox/mod.rs`), and return
//!    `Pending` until the manager, having received a message, wakes the first
//!    waiting sender.
//!
//! Dropped before the message landed, a `Posting` undoes its count at the
//! gate (so `join` does not wait for it), takes itself off the list, and, if
//! it had already been woken for a freed slot, passes the wake-up on to the
//! next waiting sender. The message is dropped with it: it was never
//! accepted. A message that landed is never taken back.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::current;
use crate::deadlock::{Token, WaitNode};
use crate::handle::{Handle, Refusal};
use crate::mailbox::{Envelope, SendFailure};
use crate::wakers::Key;

pub(crate) struct Posting<'a, M: Send + 'static> {
    handle: &'a Handle<M>,
    /// The envelope, until it lands or is refused.
    envelope: Option<Envelope<M>>,
    /// The gate has counted it in (and it has not landed yet).
    counted: bool,
    /// Its place among the mailbox's waiting senders.
    waiting: Option<Key>,
    /// A manager's wait on the receiving manager, while the mailbox is full.
    edge: Option<(Arc<WaitNode>, Token)>,
    /// The caller (an ask) has its own edge to the receiving manager: waiting
    /// for room records none (see `Wait::Asking`).
    caller_waits: bool,
}

impl<'a, M: Send + 'static> Posting<'a, M> {
    pub(crate) fn new(handle: &'a Handle<M>, envelope: Envelope<M>) -> Posting<'a, M> {
        Posting {
            handle,
            envelope: Some(envelope),
            counted: false,
            waiting: None,
            edge: None,
            caller_waits: false,
        }
    }

    /// A posting for an ask, whose wait on the receiving manager is already
    /// in the wait-for graph.
    pub(crate) fn for_ask(handle: &'a Handle<M>, envelope: Envelope<M>) -> Posting<'a, M> {
        let mut posting = Posting::new(handle, envelope);
        posting.caller_waits = true;
        posting
    }

    /// The handle this posts to.
    pub(crate) fn handle(&self) -> &'a Handle<M> {
        self.handle
    }

    /// Moves the message on: `Ready(Ok)` once it landed, `Ready(Err)` with the
    /// message if refused.
    ///
    /// # Panics
    ///
    /// If polled again after `Ready`.
    pub(crate) fn poll_post(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal<M>>> {
        let handle = self.handle;
        let shared = &*handle.shared;
        let mut envelope = self
            .envelope
            .take()
            .expect("a send future polled after it completed");
        if !self.counted {
            if let Err(refused) = shared.mailbox.gate.enter() {
                if refused.nudge {
                    shared.mailbox.nudge();
                }
                shared.observed.refused();
                let msg = envelope.into_msg().expect("posts carry messages");
                return Poll::Ready(Err(Refusal::Stopped(msg)));
            }
            self.counted = true;
        }
        let mut registered = false;
        loop {
            match shared.mailbox.tx.try_send(envelope) {
                Ok(()) => {
                    self.counted = false;
                    self.stop_waiting(false);
                    shared.observed.sent(|| shared.mailbox.len());
                    return Poll::Ready(Ok(()));
                }
                Err(SendFailure::Full(back)) => envelope = back,
                Err(failure) => {
                    self.counted = false;
                    self.stop_waiting(false);
                    return Poll::Ready(Err(handle.undo(failure)));
                }
            }
            if registered {
                self.envelope = Some(envelope);
                return Poll::Pending;
            }
            if self.edge.is_none()
                && !self.caller_waits
                && let Some(Err(cycle)) = current::with_node(|me| {
                    me.map(|me| {
                        me.begin_wait(&shared.waits)
                            .map(|token| self.edge = Some((Arc::clone(me), token)))
                    })
                })
            {
                self.counted = false;
                self.stop_waiting(false);
                let refused = handle.undo(SendFailure::Full(envelope));
                return Poll::Ready(Err(Refusal::Deadlock(refused.into_msg(), cycle)));
            }
            let room = shared
                .mailbox
                .room()
                .expect("only a bounded mailbox is ever full");
            // Pairs with `Room::freed`: the second try below sees a slot
            // freed before the manager looked at the list.
            self.waiting = Some(room.register_then_fence(self.waiting, cx.waker()));
            registered = true;
        }
    }

    /// Leaves the list of waiting senders and ends the wait-for edge. With
    /// `pass_on`, a wake-up this sender received and did not use goes to the
    /// next in line.
    fn stop_waiting(&mut self, pass_on: bool) {
        if let Some(key) = self.waiting.take()
            && let Some(room) = self.handle.shared.mailbox.room()
        {
            if pass_on {
                room.leave_passing_on(key);
            } else {
                room.remove(key);
            }
        }
        if let Some((me, token)) = self.edge.take() {
            me.end_wait(token);
        }
    }
}

impl<M: Send + 'static> Drop for Posting<'_, M> {
    fn drop(&mut self) {
        if self.counted {
            // Counted in, never landed: not accepted, so not waited for.
            let gate = &self.handle.shared.mailbox.gate;
            if gate.leave(1) {
                self.handle.shared.mailbox.nudge();
            }
        }
        self.stop_waiting(true);
    }
}
