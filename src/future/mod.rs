//! The awaitable calls' futures: [`Tell`], [`Ask`], [`Join`] and
//! [`Shutdown`].
//!
//! Every call that waits has an awaitable twin: [`Handle::tell_async`],
//! [`Handle::ask_async`], [`Handle::join_async`], [`Owner::call_async`],
//! [`Runtime::shutdown_async`], the resources' `_async` methods, and (feature
//! `amqp`) a `RemoteHandle`'s. They
//! never block the thread that polls them, and they need no particular
//! executor: the library depends on none, and the futures only use the
//! `Waker` they are given (tested on tokio's current-thread and multi-thread
//! runtimes and on `futures-lite`'s `block_on`).
//!
//! The promises carry over: every future resolves, with its answer or a typed
//! error, whatever happens to the manager or the runtime (a panic, a stop, a
//! restart, a shutdown graceful or immediate); a message accepted is handled;
//! an awaited ask or join polled on a manager thread is an edge of the
//! wait-for graph while it waits, so a cycle is reported as
//! [`AskError::Deadlock`] instead of hanging.
//!
//! # Cancel safety
//!
//! Dropping one of these futures before it completes (as `select!` or a
//! timeout does) is always safe, and means:
//!
//! - [`Tell`]: the message was **not** accepted. It is dropped with the
//!   future, and `join` does not wait for it. A `Tell` that completed with
//!   `Ok` had its message accepted; it is never taken back. So a message is
//!   never both reported refused (or dropped) and handled, and never lost
//!   once reported accepted.
//! - [`Ask`]: if the request was still waiting for room in a full mailbox, it
//!   was not sent (as for `Tell`). If it was sent, it may still be handled;
//!   its answer is dropped ([`Reply::is_awaited`](crate::Reply::is_awaited)
//!   tells the manager nobody waits any more).
//! - [`Join`]: nothing happens to the manager or its messages.
//! - [`Shutdown`]: the shutdown goes on; [`Runtime::wait`] (or another
//!   `shutdown_async`) still learns its report.
//!
//! # Which call where
//!
//! In async code, await the `_async` twins. A blocking call (`ask`, `join`,
//! `tell` into a full bounded mailbox, dropping the last [`Runtime`], whose
//! drop shuts it down gracefully and waits) blocks an executor's worker
//! thread; finish a runtime with `rt.shutdown_async().await` before its last
//! clone is dropped inside a task (the drop then has nothing left to wait
//! for).
//!
//! # Examples
//!
//! ```
//! use custody::resources::Counter;
//! use custody::Runtime;
//!
//! # futures_lite::future::block_on(async {
//! let rt = Runtime::new();
//! let counter = Counter::new().spawn(&rt, "counter")?;
//! counter.handle().tell_async(custody::resources::CounterMsg::Add(2)).await?;
//! counter.join_async().await?;
//! assert_eq!(counter.get_async().await?, 2);
//! rt.shutdown_async().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! [`Handle::tell_async`]: crate::Handle::tell_async
//! [`Handle::ask_async`]: crate::Handle::ask_async
//! [`Handle::join_async`]: crate::Handle::join_async
//! [`Owner::call_async`]: crate::Owner::call_async
//! [`Runtime::shutdown_async`]: crate::Runtime::shutdown_async
//! [`Runtime::wait`]: crate::Runtime::wait
//! [`Runtime`]: crate::Runtime
//! [`AskError::Deadlock`]: crate::AskError::Deadlock

mod post;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub(crate) use post::Posting;

use crate::current;
use crate::deadlock::{Token, WaitNode};
use crate::error::{AskError, JoinError, SendError};
use crate::handle::{Handle, Refusal};
use crate::reply::{HoldsSlot, Waiter};
use crate::runtime::ShutdownReport;
use crate::wakers::Key;

/// The future of [`Handle::tell_async`](crate::Handle::tell_async): resolves
/// once the message is accepted (or refused), waiting for room in a full
/// bounded mailbox without blocking.
///
/// See the module's [cancel safety](self#cancel-safety) section.
#[must_use = "a future does nothing unless awaited"]
pub struct Tell<'a, M: Send + 'static> {
    posting: Posting<'a, M>,
    done: bool,
}

impl<'a, M: Send + 'static> Tell<'a, M> {
    pub(crate) fn new(handle: &'a Handle<M>, msg: M) -> Tell<'a, M> {
        Tell {
            posting: Posting::new(handle, handle.envelope(msg)),
            done: false,
        }
    }
}

// Never pinned in place: the message is moved out of the future, not
// referenced, so a `Tell` may be moved between polls whatever `M` is.
impl<M: Send + 'static> Unpin for Tell<'_, M> {}

impl<M: Send + 'static> Future for Tell<'_, M> {
    type Output = Result<(), SendError<M>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        assert!(!self.done, "a Tell polled after it completed");
        let posted = std::task::ready!(self.posting.poll_post(cx));
        self.done = true;
        Poll::Ready(posted.map_err(|refusal| match refusal {
            Refusal::Deadlock(msg, cycle) => SendError::Deadlock { msg, cycle },
            Refusal::Stopped(m) | Refusal::Full(m) | Refusal::Timeout(m) => SendError::Stopped(m),
        }))
    }
}

impl<M: Send + 'static> fmt::Debug for Tell<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tell")
            .field("manager", &self.posting.handle().name())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The future of [`Handle::ask_async`](crate::Handle::ask_async) and
/// [`Owner::call_async`](crate::Owner::call_async): sends the request, then
/// resolves with the answer.
///
/// See the module's [cancel safety](self#cancel-safety) section.
#[must_use = "a future does nothing unless awaited"]
pub struct Ask<'a, M: Send + 'static, R: Send + 'static> {
    state: AskState<'a, M>,
    waiter: Waiter<dyn HoldsSlot<Value = R>>,
    /// A manager asking: its wait-for edge is recorded on the first poll.
    edge_checked: bool,
}

enum AskState<'a, M: Send + 'static> {
    Sending(Posting<'a, M>),
    Waiting(&'a Handle<M>),
    Done,
}

impl<'a, M: Send + 'static, R: Send + 'static> Ask<'a, M, R> {
    pub(crate) fn new(
        handle: &'a Handle<M>,
        msg: M,
        waiter: Waiter<dyn HoldsSlot<Value = R>>,
    ) -> Ask<'a, M, R> {
        Ask {
            state: AskState::Sending(Posting::for_ask(handle, handle.envelope(msg))),
            waiter,
            edge_checked: false,
        }
    }
}

impl<M: Send + 'static, R: Send + 'static> Unpin for Ask<'_, M, R> {}

impl<M: Send + 'static, R: Send + 'static> Future for Ask<'_, M, R> {
    type Output = Result<R, AskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                AskState::Sending(posting) => {
                    let handle = posting.handle();
                    if !this.edge_checked {
                        // The wait begins when the ask is first polled, on
                        // the thread that polls it: a manager awaiting it
                        // waits on the target from now until it resolves.
                        this.edge_checked = true;
                        if let Some(Err(cycle)) = current::with_node(|me| {
                            me.map(|me| {
                                me.begin_wait(&handle.shared.waits)
                                    .map(|token| this.waiter.slot().edge.attach(me, token))
                            })
                        }) {
                            this.state = AskState::Done;
                            return Poll::Ready(Err(AskError::Deadlock { cycle }));
                        }
                    }
                    match std::task::ready!(posting.poll_post(cx)) {
                        Ok(()) => this.state = AskState::Waiting(handle),
                        Err(refusal) => {
                            this.state = AskState::Done;
                            // Dropping the refused request (the reply inside
                            // it) ends the wait recorded above.
                            return Poll::Ready(Err(match refusal {
                                Refusal::Stopped(_) | Refusal::Full(_) | Refusal::Timeout(_) => {
                                    handle.ask_error(crate::reply::Ending::Discarded)
                                }
                                Refusal::Deadlock(_, cycle) => AskError::Deadlock { cycle },
                            }));
                        }
                    }
                }
                AskState::Waiting(handle) => {
                    let handle = *handle;
                    let outcome = std::task::ready!(this.waiter.poll_wait(cx));
                    this.state = AskState::Done;
                    return Poll::Ready(outcome.map_err(|ending| handle.ask_error(ending)));
                }
                AskState::Done => panic!("an Ask polled after it completed"),
            }
        }
    }
}

impl<M: Send + 'static, R: Send + 'static> Drop for Ask<'_, M, R> {
    fn drop(&mut self) {
        // Given up before the answer: the asker's wait ends here. (A request
        // never sent ends it too, when the Posting drops its reply.)
        if !matches!(self.state, AskState::Done) && !self.waiter.is_ready() {
            self.waiter.slot().edge.release();
        }
    }
}

impl<M: Send + 'static, R: Send + 'static> fmt::Debug for Ask<'_, M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            AskState::Sending(_) => "sending",
            AskState::Waiting(_) => "waiting",
            AskState::Done => "done",
        };
        f.debug_struct("Ask")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// The future of [`Handle::join_async`](crate::Handle::join_async): resolves
/// once every message accepted before it was first polled has been handled,
/// or the manager has exited.
#[must_use = "a future does nothing unless awaited"]
pub struct Join<'a, M: Send + 'static> {
    handle: &'a Handle<M>,
    waiting: Option<Key>,
    edge: Option<(Arc<WaitNode>, Token)>,
    started: bool,
    done: bool,
}

impl<'a, M: Send + 'static> Join<'a, M> {
    pub(crate) fn new(handle: &'a Handle<M>) -> Join<'a, M> {
        Join {
            handle,
            waiting: None,
            edge: None,
            started: false,
            done: false,
        }
    }

    fn end_edge(&mut self) {
        if let Some((me, token)) = self.edge.take() {
            me.end_wait(token);
        }
    }
}

impl<M: Send + 'static> Future for Join<'_, M> {
    type Output = Result<(), JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(!this.done, "a Join polled after it completed");
        let handle = this.handle;
        if !this.started {
            this.started = true;
            match handle.join_edge() {
                Ok(edge) => this.edge = edge,
                Err(cycle) => {
                    this.done = true;
                    return Poll::Ready(Err(JoinError::Deadlock { cycle }));
                }
            }
        }
        std::task::ready!(handle.shared.mailbox.gate.poll_empty(&mut this.waiting, cx));
        this.done = true;
        this.end_edge();
        Poll::Ready(handle.join_result())
    }
}

impl<M: Send + 'static> Drop for Join<'_, M> {
    fn drop(&mut self) {
        self.handle
            .shared
            .mailbox
            .gate
            .stop_waiting(&mut self.waiting);
        self.end_edge();
    }
}

impl<M: Send + 'static> fmt::Debug for Join<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Join")
            .field("manager", &self.handle.name())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The future of [`Runtime::shutdown_async`](crate::Runtime::shutdown_async):
/// resolves with the report once every non-daemon manager has drained and
/// its thread has ended.
#[must_use = "a future does nothing unless awaited"]
pub struct Shutdown {
    pub(crate) waiter: Waiter<dyn HoldsSlot<Value = ShutdownReport>>,
    pub(crate) done: bool,
}

impl Future for Shutdown {
    type Output = ShutdownReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShutdownReport> {
        assert!(!self.done, "a Shutdown polled after it completed");
        let outcome = std::task::ready!(self.waiter.poll_wait(cx));
        self.done = true;
        // The driver thread always answers; if it could not (it panicked),
        // the shutdown is still under way.
        Poll::Ready(outcome.unwrap_or_else(|_| ShutdownReport::in_progress()))
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
