//! The `Manager` trait and the `Context` a manager's hooks receive.

use std::fmt;
use std::time::Instant;

use crate::handle::Handle;

/// A resource plus the handler of its messages: the one thread that owns the
/// resource runs every method here, so the resource needs no lock.
///
/// The manager thread loops: it blocks for one message, then drains what is
/// already queued without blocking (up to the manager's batch limit), calling
/// [`handle`](Manager::handle) for each; when the mailbox has run dry it calls
/// [`idle`](Manager::idle), the place to flush or commit a batch.
///
/// # Panics
///
/// A panic in any method (and in `next_wake`, the restart factory, the
/// manager's own `Drop`, or the `Drop` of a message it discards) is caught,
/// traced and counted in [`stats`](crate::Handle::stats), and the manager's
/// [`PanicPolicy`](crate::PanicPolicy) decides what follows: by default it
/// carries on with its next message. The asker of the panicking message gets
/// [`AskError::Panicked`](crate::AskError::Panicked); `join` and every other
/// ask still end. A panic in `idle` means the batch reached no commit point:
/// a message served from a broker queue is then not acknowledged.
///
/// What cannot be caught: a build with `panic = "abort"` ends the process at
/// the first panic; a `Drop` that panics while another panic is unwinding
/// aborts the process (a rule of Rust itself); and a method that never
/// returns is not a panic (its asks end only by their own timeouts).
///
/// # Joined means idle ran
///
/// [`join`](crate::Handle::join) returns only after `idle` ran following the
/// last handled message (or `stopped`, if an immediate stop cut the batch
/// short), so for a manager that flushes or commits in `idle`, "joined" means
/// "flushed" or "committed". `idle` runs when no message is queued; a batch
/// that reaches the batch limit with more queued goes on without it.
///
/// # Examples
///
/// ```
/// use custody::{Context, Manager, Reply, Runtime};
///
/// enum Msg {
///     Add(u64),
///     Get(Reply<u64>),
/// }
///
/// #[derive(Default)]
/// struct Total(u64);
///
/// impl Manager for Total {
///     type Msg = Msg;
///     fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
///         match msg {
///             Msg::Add(n) => self.0 += n,
///             Msg::Get(reply) => reply.send(self.0),
///         }
///     }
/// }
///
/// let rt = Runtime::new();
/// let total = rt.spawn("total", Total::default())?;
/// for n in 1..=4 {
///     total.tell(Msg::Add(n))?;
/// }
/// assert_eq!(total.ask(Msg::Get)?, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Manager: Send + 'static {
    /// The messages this manager accepts.
    type Msg: Send + 'static;

    /// Handles one message. Runs on the manager's own thread.
    fn handle(&mut self, msg: Self::Msg, ctx: &mut Context<'_, Self::Msg>);

    /// Runs once on the manager's thread before the first message.
    fn started(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        let _ = ctx;
    }

    /// Runs each time the mailbox has just run dry after a batch: flush
    /// buffers, commit transactions.
    fn idle(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        let _ = ctx;
    }

    /// Runs once on the manager's thread after the last message (and, under
    /// [`PanicPolicy::Restart`](crate::PanicPolicy::Restart), on an instance
    /// about to be replaced).
    fn stopped(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        let _ = ctx;
    }

    /// Runs right after `handle` panicked, before anything else reaches the
    /// resource: roll back what the failed message half-did. `panic` is the
    /// panic message. Runs whatever the [`PanicPolicy`](crate::PanicPolicy).
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, Self::Msg>) {
        let _ = (panic, ctx);
    }

    /// When this manager next wants [`wake`](Manager::wake) called even if no
    /// message arrives (a timer, a commit deadline). Asked before each wait.
    fn next_wake(&self) -> Option<Instant> {
        None
    }

    /// Runs once the instant from [`next_wake`](Manager::next_wake) has passed.
    fn wake(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        let _ = ctx;
    }
}

/// What a manager knows about itself while it runs.
///
/// # Examples
///
/// ```
/// use custody::{Context, Manager, Runtime};
///
/// struct Countdown;
/// impl Manager for Countdown {
///     type Msg = u32;
///     fn handle(&mut self, n: u32, ctx: &mut Context<'_, u32>) {
///         if n > 0 {
///             // A manager may tell itself: the message joins the queue.
///             ctx.handle().tell(n - 1).expect("not stopped");
///         } else {
///             ctx.stop();
///         }
///     }
/// }
///
/// let rt = Runtime::new();
/// let countdown = rt.spawn("countdown", Countdown)?;
/// countdown.tell(3)?;
/// countdown.join()?;
/// assert!(countdown.is_stopped());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Context<'a, M: Send + 'static> {
    handle: &'a Handle<M>,
}

impl<'a, M: Send + 'static> Context<'a, M> {
    pub(crate) fn new(handle: &'a Handle<M>) -> Context<'a, M> {
        Context { handle }
    }

    /// The manager's name.
    pub fn name(&self) -> &str {
        self.handle.name()
    }

    /// The manager's own handle: clone it to give others its address, or tell
    /// yourself a message.
    pub fn handle(&self) -> &Handle<M> {
        self.handle
    }

    /// Stops this manager gracefully: later sends are refused, what is already
    /// queued is still handled, then `stopped` runs.
    pub fn stop(&self) {
        self.handle.stop();
    }
}

impl<M: Send + 'static> fmt::Debug for Context<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}
