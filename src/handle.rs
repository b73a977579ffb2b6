//! `Handle<M>`: the cloneable address of one manager, and the state it shares
//! with the manager thread.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::current;
use crate::deadlock::{Cycle, Token, WaitNode};
use crate::error::{AskError, JoinError, SendError, SendTimeoutError, TrySendError};
use crate::future::{Ask, Join, Tell};
use crate::fuzz;
use crate::mailbox::{Backend, Capacity, Envelope, Mailbox, SendFailure};
use crate::observe::{self, Observed};
use crate::reply::{self, Ending, HoldsSlot, Reply, Waiter};
use crate::runtime::Inner;
use crate::stats::{Counters, ManagerStats};
use crate::util::{Padded, deadline_after};

/// What a manager's handles and its thread share.
pub(crate) struct Shared<M> {
    /// The send side of its mailbox: a channel plus a gate.
    pub(crate) mailbox: Mailbox<M>,
    /// The runtime that spawned this manager (for its timer service).
    pub(crate) runtime: Weak<Inner>,
    /// Written by the manager thread only; kept off the gate's line.
    pub(crate) counters: Padded<Counters>,
    /// Fuzz mode: pause at random on each send.
    pub(crate) fuzz: bool,
    pub(crate) name: String,
    /// This manager in the wait-for graph of asks.
    pub(crate) waits: Arc<WaitNode>,
    pub(crate) backend: Backend,
    pub(crate) capacity: Capacity,
    /// What observers see: samples, stall watch, refusals, tracing.
    pub(crate) observed: Observed,
}

impl<M> Shared<M> {
    /// A graceful stop: see [`Mailbox::stop`].
    pub(crate) fn stop(&self) {
        self.mailbox.stop();
    }

    /// An immediate stop: see [`Mailbox::abort`].
    pub(crate) fn abort(&self) {
        self.mailbox.abort();
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.mailbox.is_aborted()
    }
}

/// How `post` may wait for room in a bounded mailbox.
#[derive(Clone, Copy)]
pub(crate) enum Wait {
    Until(Option<Instant>),
    /// As `Until`, for an ask whose wait on this manager is already an edge
    /// of the wait-for graph: waiting for room adds none of its own (a second
    /// edge would replace the ask's, and ending it would leave the ask's
    /// wait for the answer out of the graph).
    Asking(Option<Instant>),
    No,
}

/// Why `post` gave the message back.
pub(crate) enum Refusal<M> {
    Stopped(M),
    Full(M),
    Timeout(M),
    /// A manager would block on a full mailbox whose manager waits on it.
    Deadlock(M, Cycle),
}

/// The address of one manager: `Clone + Send + Sync`, cheap to clone, and the
/// only way to reach the resource the manager owns.
///
/// Every message a send accepts is counted until the manager has handled it;
/// [`join`](Handle::join) waits for that count to reach zero (Python's
/// `queue.join()`; `task_done` is implicit when `handle` returns or panics).
///
/// # Examples
///
/// ```
/// use custody::{Context, Manager, Runtime};
///
/// struct Log(Vec<String>);
/// impl Manager for Log {
///     type Msg = String;
///     fn handle(&mut self, line: String, _ctx: &mut Context<'_, String>) {
///         self.0.push(line);
///     }
/// }
///
/// let rt = Runtime::new();
/// let log = rt.spawn("log", Log(Vec::new()))?;
/// let from_another_thread = log.clone();
/// std::thread::spawn(move || from_another_thread.tell("hello".to_owned()).unwrap())
///     .join()
///     .unwrap();
/// log.join()?; // every accepted message has been handled
/// assert_eq!(log.len(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Handle<M: Send + 'static> {
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M: Send + 'static> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Send + 'static> fmt::Debug for Handle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<M> Refusal<M> {
    pub(crate) fn into_msg(self) -> M {
        match self {
            Refusal::Stopped(m)
            | Refusal::Full(m)
            | Refusal::Timeout(m)
            | Refusal::Deadlock(m, _) => m,
        }
    }
}

impl<M: Send + 'static> Handle<M> {
    /// The envelope `msg` travels in: a traced one when this manager's
    /// messages are traced.
    #[inline]
    pub(crate) fn envelope(&self, msg: M) -> Envelope<M> {
        if self.shared.observed.trace {
            observe::traced(msg)
        } else {
            Envelope::Msg(msg)
        }
    }

    #[inline]
    fn post(&self, msg: M, wait: Wait) -> Result<(), Refusal<M>> {
        let observed = &self.shared.observed;
        let envelope = self.envelope(msg);
        let posted = self.post_envelope(envelope, wait);
        if posted.is_ok() {
            observed.sent(|| self.shared.mailbox.len());
        }
        posted
    }

    #[inline]
    pub(crate) fn post_envelope(
        &self,
        envelope: Envelope<M>,
        wait: Wait,
    ) -> Result<(), Refusal<M>> {
        let shared = &*self.shared;
        if shared.fuzz {
            fuzz::pause();
        }
        if let Err(refused) = shared.mailbox.gate.enter() {
            if refused.nudge {
                shared.mailbox.nudge();
            }
            shared.observed.refused();
            let msg = envelope.into_msg().expect("post only sends messages");
            return Err(Refusal::Stopped(msg));
        }
        let sent = match wait {
            Wait::Until(deadline) if shared.capacity.is_bounded() && current::is_manager() => {
                return self.post_from_manager(envelope, deadline);
            }
            Wait::Until(deadline) | Wait::Asking(deadline) => {
                shared.mailbox.tx.send(envelope, deadline)
            }
            Wait::No => shared.mailbox.tx.try_send(envelope),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(failure) => Err(self.undo(failure)),
        }
    }

    /// A manager sending into a bounded mailbox: if it is full, the sender
    /// waits on the receiving manager, so the wait goes into the wait-for
    /// graph first, and a wait that closes a cycle is refused.
    #[cold]
    fn post_from_manager(
        &self,
        envelope: Envelope<M>,
        deadline: Option<Instant>,
    ) -> Result<(), Refusal<M>> {
        let shared = &*self.shared;
        let envelope = match shared.mailbox.tx.try_send(envelope) {
            Ok(()) => return Ok(()),
            Err(SendFailure::Full(envelope)) => envelope,
            Err(failure) => return Err(self.undo(failure)),
        };
        let waiting = current::with_node(|me| {
            me.map(|me| {
                me.begin_wait(&shared.waits)
                    .map(|token| (Arc::clone(me), token))
            })
        });
        let token = match waiting {
            None => None,
            Some(Ok(token)) => Some(token),
            Some(Err(cycle)) => {
                let refused = self.undo(SendFailure::Full(envelope));
                return Err(Refusal::Deadlock(refused.into_msg(), cycle));
            }
        };
        let sent = shared.mailbox.tx.send(envelope, deadline);
        if let Some((me, token)) = token {
            me.end_wait(token);
        }
        sent.map_err(|failure| self.undo(failure))
    }

    #[cold]
    pub(crate) fn undo(&self, failure: SendFailure<Envelope<M>>) -> Refusal<M> {
        self.shared.observed.refused();
        if self.shared.mailbox.gate.leave(1) {
            self.shared.mailbox.nudge();
        }
        let (envelope, refusal): (_, fn(M) -> Refusal<M>) = match failure {
            SendFailure::Full(e) => (e, Refusal::Full),
            SendFailure::Timeout(e) => (e, Refusal::Timeout),
            SendFailure::Disconnected(e) => (e, Refusal::Stopped),
        };
        refusal(envelope.into_msg().expect("post only sends messages"))
    }

    /// Sends a message, blocking while a bounded mailbox is full.
    ///
    /// `Ok` means the message was accepted: it will be handled, unless an
    /// immediate stop discards it (and counts it in the stop report).
    ///
    /// # Errors
    ///
    /// [`SendError::Stopped`] with the message inside if the manager is
    /// stopping or stopped. [`SendError::Deadlock`], also with the message
    /// inside, if this is called from a manager, the bounded mailbox is full,
    /// and waiting for room would never end because the receiving manager is
    /// (through a chain of asks, joins or blocked tells) waiting on the
    /// sender.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::{Counter, CounterMsg};
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// counter.handle().tell(CounterMsg::Add(2))?;
    /// counter.handle().stop();
    /// let refused = counter.handle().tell(CounterMsg::Add(3)).unwrap_err();
    /// assert!(matches!(refused.into_inner(), CounterMsg::Add(3)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn tell(&self, msg: M) -> Result<(), SendError<M>> {
        self.post(msg, Wait::Until(None)).map_err(|r| match r {
            Refusal::Deadlock(msg, cycle) => SendError::Deadlock { msg, cycle },
            Refusal::Stopped(m) | Refusal::Full(m) | Refusal::Timeout(m) => SendError::Stopped(m),
        })
    }

    /// Sends a message if there is room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if a bounded mailbox is full,
    /// [`TrySendError::Stopped`] if the manager is stopping or stopped; the
    /// message comes back in both.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.manager("slow").capacity(Capacity::bounded(1)?).own(())?;
    /// let (busy, is_busy) = std::sync::mpsc::channel();
    /// let (go, wait) = std::sync::mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     busy.send(()).unwrap();
    ///     wait.recv().ok();
    /// })?;
    /// is_busy.recv()?; // the manager is inside the first closure
    /// slow.handle().try_tell(custody::Job::new(|_| {}))?; // fills the one slot
    /// let full = slow.handle().try_tell(custody::Job::new(|_| {})).unwrap_err();
    /// assert!(full.is_full());
    /// go.send(())?;
    /// slow.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_tell(&self, msg: M) -> Result<(), TrySendError<M>> {
        self.post(msg, Wait::No).map_err(|r| match r {
            Refusal::Full(m) | Refusal::Timeout(m) => TrySendError::Full(m),
            Refusal::Stopped(m) | Refusal::Deadlock(m, _) => TrySendError::Stopped(m),
        })
    }

    /// Sends a message, waiting at most `timeout` for room in a bounded mailbox.
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if the mailbox stayed full,
    /// [`SendTimeoutError::Stopped`] if the manager is stopping or stopped,
    /// [`SendTimeoutError::Deadlock`] as [`tell`](Handle::tell); the message
    /// comes back in each.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use custody::{Capacity, Job, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.manager("slow").capacity(Capacity::bounded(1)?).own(())?;
    /// let (busy, is_busy) = mpsc::channel();
    /// let (go, wait) = mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     busy.send(()).unwrap();
    ///     wait.recv().ok();
    /// })?;
    /// is_busy.recv()?; // the manager is inside the first job
    /// let wait_a_bit = Duration::from_millis(1);
    /// slow.handle().tell_timeout(Job::new(|_| {}), wait_a_bit)?; // fills the one slot
    /// let full = slow.handle().tell_timeout(Job::new(|_| {}), wait_a_bit).unwrap_err();
    /// assert!(full.is_timeout()); // the job comes back: `full.into_inner()`
    /// go.send(())?;
    /// slow.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_timeout(&self, msg: M, timeout: Duration) -> Result<(), SendTimeoutError<M>> {
        self.post(msg, Wait::Until(deadline_after(timeout)))
            .map_err(|r| match r {
                Refusal::Full(m) | Refusal::Timeout(m) => SendTimeoutError::Timeout(m),
                Refusal::Stopped(m) => SendTimeoutError::Stopped(m),
                Refusal::Deadlock(msg, cycle) => SendTimeoutError::Deadlock { msg, cycle },
            })
    }

    /// Sends a request built around a fresh [`Reply`] and waits for the answer.
    ///
    /// # Errors
    ///
    /// - [`AskError::Deadlock`] at once when a manager asks itself, or asks a
    ///   manager that is (through a chain of asks) waiting on it;
    /// - [`AskError::Stopped`] if the manager is stopped, or discarded the
    ///   request in an immediate stop;
    /// - [`AskError::Panicked`] if the handler panicked on this request;
    /// - [`AskError::NoReply`] if the handler dropped the reply unanswered.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Context, Manager, Reply, Runtime};
    ///
    /// struct Echo;
    /// impl Manager for Echo {
    ///     type Msg = (String, Reply<String>);
    ///     fn handle(&mut self, (text, reply): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
    ///         reply.send(text.to_uppercase());
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let echo = rt.spawn("echo", Echo)?;
    /// assert_eq!(echo.ask(|reply| ("hi".to_owned(), reply))?, "HI");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ask<R, F>(&self, make: F) -> Result<R, AskError>
    where
        R: Send + 'static,
        F: FnOnce(Reply<R>) -> M,
    {
        self.ask_until(make, None)
    }

    /// Like [`ask`](Handle::ask), but gives up after `timeout` (counting both
    /// the wait for room in the mailbox and the wait for the answer).
    ///
    /// # Errors
    ///
    /// As [`ask`](Handle::ask), plus [`AskError::Timeout`]. A request that
    /// timed out may still be handled later; its answer is then dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use custody::{AskError, Context, Manager, Reply, Runtime};
    ///
    /// struct Slow(mpsc::Receiver<()>);
    /// impl Manager for Slow {
    ///     type Msg = Reply<&'static str>;
    ///     fn handle(&mut self, reply: Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
    ///         self.0.recv().ok(); // waits for the go-ahead
    ///         reply.send("done");
    ///     }
    /// }
    ///
    /// let (go, wait) = mpsc::channel();
    /// let rt = Runtime::new();
    /// let slow = rt.spawn("slow", Slow(wait))?;
    /// let late = slow.ask_timeout(|reply| reply, Duration::from_millis(1));
    /// assert!(matches!(late, Err(AskError::Timeout { manager }) if manager == "slow"));
    /// go.send(())?;
    /// slow.join()?; // the request was still handled; its answer was dropped
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ask_timeout<R, F>(&self, make: F, timeout: Duration) -> Result<R, AskError>
    where
        R: Send + 'static,
        F: FnOnce(Reply<R>) -> M,
    {
        self.ask_until(make, deadline_after(timeout))
    }

    /// The awaitable [`ask`](Handle::ask): sends the request built by `make`
    /// and resolves with the answer, without blocking the thread that polls
    /// it. The request waits for room in a full bounded mailbox the way
    /// [`tell_async`](Handle::tell_async) does.
    ///
    /// One allocation, as for `ask`: the reply slot, which holds either a
    /// parked thread or this future's waker. It has no timeout of its own:
    /// wrap it in your executor's (dropping it gives up the answer; see
    /// [cancel safety](crate::future#cancel-safety)).
    ///
    /// # Errors
    ///
    /// As [`ask`](Handle::ask), except [`AskError::Timeout`].
    /// [`AskError::Deadlock`] when polled on a manager thread whose wait on
    /// this manager would close a cycle.
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
    /// let answer = futures_lite::future::block_on(doubler.ask_async(|reply| (21, reply)))?;
    /// assert_eq!(answer, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ask_async<R, F>(&self, make: F) -> Ask<'_, M, R>
    where
        R: Send + 'static,
        F: FnOnce(Reply<R>) -> M,
    {
        let (reply, waiter) = reply::pair();
        Ask::new(self, make(reply), waiter.erase())
    }

    /// The awaitable [`tell`](Handle::tell): resolves once the message is
    /// accepted, waiting without blocking a thread while a bounded mailbox is
    /// full. Waiting senders are woken one per message the manager takes
    /// out, first come first served, beside threads blocked in `tell`.
    ///
    /// Fairness: the freed slot goes to whichever sender takes it first.
    /// The channel wakes a blocked thread for it while this list wakes the
    /// first waiting future. A future that loses the slot keeps its place
    /// at the front, and a send that finds room is never made to queue. So
    /// neither kind is shut out for good, but under sustained pressure from
    /// threads a future can wait several slots for its turn.
    ///
    /// Nothing happens until the future is polled. Dropped before it
    /// resolves, the message was not accepted: see
    /// [cancel safety](crate::future#cancel-safety).
    ///
    /// # Errors
    ///
    /// As [`tell`](Handle::tell): [`SendError::Stopped`] with the message
    /// inside if the manager is stopping or stopped (also when it stops while
    /// the send waits for room), [`SendError::Deadlock`] if polled on a
    /// manager thread whose wait for room would close a cycle.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::builder().capacity(Capacity::bounded(1)?).build()?;
    /// let total = rt.own("total", 0u64)?;
    /// futures_lite::future::block_on(async {
    ///     for n in 1..=10 {
    ///         // Waits (without blocking) whenever the one slot is taken.
    ///         total.handle().tell_async(custody::Job::new(move |t: &mut u64| *t += n)).await?;
    ///     }
    ///     total.handle().join_async().await?;
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// assert_eq!(total.call(|t| *t)?, 55);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_async(&self, msg: M) -> Tell<'_, M> {
        Tell::new(self, msg)
    }

    fn ask_until<R, F>(&self, make: F, deadline: Option<Instant>) -> Result<R, AskError>
    where
        R: Send + 'static,
        F: FnOnce(Reply<R>) -> M,
    {
        let (reply, waiter) = reply::pair();
        self.request(make(reply), waiter, deadline)
    }

    /// Sends a request whose answer lands in `waiter`'s slot, and waits for it.
    pub(crate) fn request<C: HoldsSlot>(
        &self,
        msg: M,
        waiter: Waiter<C>,
        deadline: Option<Instant>,
    ) -> Result<C::Value, AskError> {
        if let Some(Err(cycle)) = current::with_node(|me| {
            me.map(|me| {
                me.begin_wait(&self.shared.waits)
                    .map(|token| waiter.slot().edge.attach(me, token))
            })
        }) {
            return Err(AskError::Deadlock { cycle });
        }
        if let Err(refusal) = self.post(msg, Wait::Asking(deadline)) {
            // Dropping the refused request drops its reply outside a handler,
            // which ends the wait recorded above.
            return Err(match refusal {
                Refusal::Stopped(_) => self.ask_error(Ending::Discarded),
                Refusal::Full(_) | Refusal::Timeout(_) => self.ask_error(Ending::TimedOut),
                Refusal::Deadlock(_, cycle) => AskError::Deadlock { cycle },
            });
        }
        waiter
            .wait(deadline)
            .map_err(|ending| self.ask_error(ending))
    }

    /// The public error of an ask that ended without a value.
    #[cold]
    pub(crate) fn ask_error(&self, ending: Ending) -> AskError {
        let manager = self.shared.name.clone();
        match ending {
            Ending::Discarded => AskError::Stopped { manager },
            Ending::TimedOut => AskError::Timeout { manager },
            Ending::NoReply => AskError::NoReply { manager },
            Ending::Panicked(message) => AskError::Panicked { manager, message },
        }
    }

    /// Blocks until every message accepted so far has been handled.
    ///
    /// Returns at once if nothing is unfinished. Never hangs on a stopped
    /// manager: once its thread has exited, `join` returns.
    ///
    /// # Errors
    ///
    /// [`JoinError::Stopped`] if the manager stopped at once and discarded
    /// messages it had accepted. [`JoinError::Deadlock`] at once if a manager
    /// joins itself (its message in hand is unfinished until it returns), or
    /// joins a manager that is waiting on it.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// for _ in 0..100 {
    ///     counter.add(1)?;
    /// }
    /// counter.join()?; // like Python's queue.join(): every add has been handled
    /// assert_eq!(counter.handle().unfinished(), 0);
    /// assert_eq!(counter.get()?, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) -> Result<(), JoinError> {
        self.join_until(None)
    }

    /// Like [`join`](Handle::join), but gives up after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`join`](Handle::join), plus [`JoinError::Timeout`] with the number
    /// of messages still unfinished.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use custody::{JoinError, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.own("slow", ())?;
    /// let (go, wait) = mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     wait.recv().ok();
    /// })?;
    /// let early = slow.handle().join_timeout(Duration::from_millis(1));
    /// assert!(matches!(early, Err(JoinError::Timeout { unfinished: 1, .. })));
    /// go.send(())?;
    /// slow.handle().join_timeout(Duration::from_secs(60))?; // returns once the job is done
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), JoinError> {
        self.join_until(deadline_after(timeout))
    }

    /// The awaitable [`join`](Handle::join): resolves once every message
    /// accepted so far has been handled, or the manager has exited, without
    /// blocking the thread that polls it. "So far" is when the future is
    /// first polled.
    ///
    /// # Errors
    ///
    /// As [`join`](Handle::join), except [`JoinError::Timeout`]: wrap it in
    /// your executor's timeout instead (dropping it is harmless).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// for _ in 0..100 {
    ///     counter.add(1)?;
    /// }
    /// futures_lite::future::block_on(counter.handle().join_async())?;
    /// assert_eq!(counter.handle().unfinished(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join_async(&self) -> Join<'_, M> {
        Join::new(self)
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), JoinError> {
        let gate = &self.shared.mailbox.gate;
        let edge = self
            .join_edge()
            .map_err(|cycle| JoinError::Deadlock { cycle })?;
        let waited = gate.wait_empty(deadline);
        if let Some((me, token)) = edge {
            me.end_wait(token);
        }
        if waited.is_err() {
            return Err(JoinError::Timeout {
                manager: self.shared.name.clone(),
                unfinished: gate.unfinished(),
            });
        }
        self.join_result()
    }

    /// A manager joining waits on the joined one: the wait is recorded, so
    /// joining yourself, or a manager that waits on you, is an error, not a
    /// hang. `None` from a plain thread, or when there is nothing to wait for.
    pub(crate) fn join_edge(&self) -> Result<Option<(Arc<WaitNode>, Token)>, Cycle> {
        match current::with_node(|me| me.map(Arc::clone)) {
            Some(me)
                if Arc::ptr_eq(&me, &self.shared.waits)
                    || self.shared.mailbox.gate.unfinished() > 0 =>
            {
                let token = me.begin_wait(&self.shared.waits)?;
                Ok(Some((me, token)))
            }
            _ => Ok(None),
        }
    }

    /// What a join that has finished waiting reports.
    pub(crate) fn join_result(&self) -> Result<(), JoinError> {
        match self.shared.mailbox.gate.dropped() {
            0 => Ok(()),
            unhandled => Err(JoinError::Stopped {
                manager: self.shared.name.clone(),
                unhandled,
            }),
        }
    }

    /// Messages waiting in the mailbox (not counting the one being handled).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.own("slow", ())?;
    /// let (busy, is_busy) = mpsc::channel();
    /// let (go, wait) = mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     busy.send(()).unwrap();
    ///     wait.recv().ok();
    /// })?;
    /// is_busy.recv()?; // the manager is inside the first job
    /// slow.cast(|_| {})?;
    /// slow.cast(|_| {})?;
    /// assert_eq!(slow.handle().len(), 2); // the job in hand is not counted
    /// go.send(())?;
    /// slow.join()?;
    /// assert_eq!(slow.handle().len(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.shared.mailbox.tx.len()
    }

    /// Whether the mailbox holds no waiting message.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.own("slow", ())?;
    /// let (busy, is_busy) = mpsc::channel();
    /// let (go, wait) = mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     busy.send(()).unwrap();
    ///     wait.recv().ok();
    /// })?;
    /// is_busy.recv()?; // the manager is inside the first job
    /// assert!(slow.handle().is_empty()); // the job in hand is not waiting
    /// slow.cast(|_| {})?;
    /// assert!(!slow.handle().is_empty());
    /// go.send(())?;
    /// slow.join()?;
    /// assert!(slow.handle().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages accepted and not yet handled (queued, or in the current batch).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let slow = rt.own("slow", ())?;
    /// let (busy, is_busy) = mpsc::channel();
    /// let (go, wait) = mpsc::channel::<()>();
    /// slow.cast(move |_| {
    ///     busy.send(()).unwrap();
    ///     wait.recv().ok();
    /// })?;
    /// is_busy.recv()?; // the manager is inside the first job
    /// slow.cast(|_| {})?;
    /// assert_eq!(slow.handle().unfinished(), 2); // the job in hand and the queued one
    /// assert_eq!(slow.handle().len(), 1);
    /// go.send(())?;
    /// slow.join()?;
    /// assert_eq!(slow.handle().unfinished(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unfinished(&self) -> u64 {
        self.shared.mailbox.gate.unfinished()
    }

    /// Stops the manager gracefully: later sends are refused, messages already
    /// accepted are still handled, then its `stopped` hook runs and its thread
    /// ends. Returns at once; [`join`](Handle::join) waits for the drain
    /// (the `stopped` hook may still be running when it returns:
    /// [`has_exited`](Handle::has_exited) tells when the thread has finished).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let (tx, rx) = mpsc::channel();
    /// let out = rt.own("out", tx)?;
    /// out.cast(|tx| tx.send(1).unwrap())?;
    /// out.handle().stop();
    /// assert!(out.cast(|tx| tx.send(2).unwrap()).is_err()); // refused, handed back
    /// out.join()?; // the message accepted before the stop is still handled
    /// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Whether the manager refuses new messages (stopping or stopped).
    ///
    /// During a runtime's graceful shutdown, sends from threads that are not
    /// the runtime's managers are refused before this turns `true` (each
    /// manager is closed to everyone only when its turn to drain comes).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// assert!(!counter.handle().is_stopped());
    /// counter.handle().stop();
    /// assert!(counter.handle().is_stopped()); // at once, while it may still drain
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.shared.mailbox.gate.is_closed()
    }

    /// Whether the manager's thread has finished: its `stopped` hook has run
    /// and the manager has been dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// assert!(!counter.handle().has_exited());
    /// rt.shutdown(); // joins the manager's thread
    /// assert!(counter.handle().has_exited());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has_exited(&self) -> bool {
        self.shared.mailbox.gate.has_exited()
    }

    /// The manager's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let hits = Counter::new().spawn(&rt, "hits")?;
    /// assert_eq!(hits.handle().name(), "hits");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The manager's mailbox backend.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::{Backend, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let default = rt.spawn("default", Counter::new())?;
    /// let flume = rt.manager("flume").backend(Backend::Flume).spawn(Counter::new())?;
    /// assert_eq!(default.backend(), rt.backend());
    /// assert_eq!(flume.backend(), Backend::Flume);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// The manager's mailbox capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let open = rt.spawn("open", Counter::new())?;
    /// let bounded = rt.manager("bounded").capacity(Capacity::bounded(32)?).spawn(Counter::new())?;
    /// assert_eq!(open.capacity(), Capacity::Unbounded);
    /// assert_eq!(bounded.capacity(), Capacity::Bounded(32));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> Capacity {
        self.shared.capacity
    }

    /// A snapshot of this manager's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::{ManagerState, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// counter.add(1)?;
    /// counter.add(2)?;
    /// counter.join()?; // after a join the counts cover every message it waited for
    /// let stats = counter.handle().stats();
    /// assert_eq!((stats.name.as_str(), stats.handled, stats.queued), ("counter", 2, 0));
    /// assert_eq!(stats.state, ManagerState::Running);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> ManagerStats {
        self.shared.stats(false)
    }
}
