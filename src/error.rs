//! Every error type of the runtime.
//!
//! A refused message always comes back inside the error (`into_inner`), and no
//! error's `Debug` needs the message type to be `Debug`.

use std::fmt;
use std::io;

use thiserror::Error;

/// A [`Handle::tell`](crate::Handle::tell) refused; the message comes back.
///
/// # Examples
///
/// ```
/// use custody::{Owner, Runtime, SendError};
///
/// let rt = Runtime::new();
/// let owner = rt.own("n", 0u32)?;
/// owner.handle().stop();
/// let refused = owner.handle().tell(custody::Job::new(|n: &mut u32| *n += 1)).unwrap_err();
/// assert!(matches!(refused, SendError::Stopped(_)));
/// let _message_back = refused.into_inner();
/// # Ok::<(), custody::SpawnError>(())
/// ```
#[derive(Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<T> {
    /// The manager is stopping or stopped.
    #[error("sending on a stopped manager")]
    Stopped(T),
    /// A manager's `tell` found the bounded mailbox full, and waiting for room
    /// would never end: the receiving manager is (through a chain of asks,
    /// joins or blocked tells) waiting on the sender. Also returned by
    /// [`Reply::forward`](crate::Reply::forward) to a manager that waits on
    /// the asker.
    #[error("sending would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The message that was not sent.
        msg: T,
        /// The managers around the cycle, the sender first and last.
        cycle: Vec<String>,
    },
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Stopped(m) | SendError::Deadlock { msg: m, .. } => m,
        }
    }

    /// Whether the manager was stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, SendError::Stopped(_))
    }

    /// Whether waiting would have deadlocked.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, SendError::Deadlock { .. })
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Stopped(_) => f.write_str("Stopped(..)"),
            SendError::Deadlock { cycle, .. } => f
                .debug_struct("Deadlock")
                .field("cycle", cycle)
                .finish_non_exhaustive(),
        }
    }
}

/// A [`Handle::try_tell`](crate::Handle::try_tell) refused; the message comes back.
#[derive(Error, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The bounded mailbox is full.
    #[error("sending on a full mailbox")]
    Full(T),
    /// The manager is stopping or stopped.
    #[error("sending on a stopped manager")]
    Stopped(T),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(m) | TrySendError::Stopped(m) => m,
        }
    }

    /// Whether the mailbox was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether the manager was stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, TrySendError::Stopped(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Stopped(_) => f.write_str("Stopped(..)"),
        }
    }
}

/// A [`Handle::tell_timeout`](crate::Handle::tell_timeout) refused; the message comes back.
#[derive(Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendTimeoutError<T> {
    /// The bounded mailbox stayed full until the deadline.
    #[error("timed out sending on a full mailbox")]
    Timeout(T),
    /// The manager is stopping or stopped.
    #[error("sending on a stopped manager")]
    Stopped(T),
    /// Waiting for room would never end (see [`SendError::Deadlock`]).
    #[error("sending would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The message that was not sent.
        msg: T,
        /// The managers around the cycle, the sender first and last.
        cycle: Vec<String>,
    },
}

/// Every way a `tell` can fail is a way a `tell_timeout` can fail: `?` turns
/// one into the other.
///
/// # Examples
///
/// ```
/// use custody::{SendError, SendTimeoutError};
///
/// let refused: SendTimeoutError<u32> = SendError::Stopped(7).into();
/// assert!(matches!(refused, SendTimeoutError::Stopped(7)));
/// ```
impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(error: SendError<T>) -> Self {
        match error {
            SendError::Stopped(msg) => SendTimeoutError::Stopped(msg),
            SendError::Deadlock { msg, cycle } => SendTimeoutError::Deadlock { msg, cycle },
        }
    }
}

impl<T> SendTimeoutError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(m)
            | SendTimeoutError::Stopped(m)
            | SendTimeoutError::Deadlock { msg: m, .. } => m,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }

    /// Whether the manager was stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, SendTimeoutError::Stopped(_))
    }

    /// Whether waiting would have deadlocked.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, SendTimeoutError::Deadlock { .. })
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Stopped(_) => f.write_str("Stopped(..)"),
            SendTimeoutError::Deadlock { cycle, .. } => f
                .debug_struct("Deadlock")
                .field("cycle", cycle)
                .finish_non_exhaustive(),
        }
    }
}

/// Why an [`ask`](crate::Handle::ask) ended without an answer. Every ask ends
/// with an answer or one of these; none hangs.
#[derive(Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AskError {
    /// The manager was stopping or stopped: the request was refused, or it was
    /// queued and then discarded by an immediate stop.
    #[error("asking manager `{manager}`: it is stopped")]
    Stopped {
        /// The manager asked.
        manager: String,
    },
    /// No answer before the deadline. The request may still be handled; its
    /// answer is then dropped.
    #[error("asking manager `{manager}`: timed out")]
    Timeout {
        /// The manager asked.
        manager: String,
    },
    /// The handler panicked while handling this request.
    #[error("asking manager `{manager}`: the handler panicked: {message}")]
    Panicked {
        /// The manager asked.
        manager: String,
        /// The panic message.
        message: String,
    },
    /// Waiting would never end: a manager asked itself, or a manager that is
    /// (through a chain of asks) waiting on the asker.
    #[error("asking would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The managers around the cycle, the asker first and last:
        /// `["a", "a"]` for a self-ask, `["a", "b", "a"]` when `b` waits on `a`.
        cycle: Vec<String>,
    },
    /// The handler dropped the [`Reply`](crate::Reply) without answering.
    #[error("asking manager `{manager}`: the handler dropped the reply without answering")]
    NoReply {
        /// The manager asked.
        manager: String,
    },
}

/// Why a [`join`](crate::Handle::join) returned before every message was handled.
#[derive(Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// Messages were still unfinished at the deadline.
    #[error("joining manager `{manager}`: timed out with {unfinished} messages unfinished")]
    Timeout {
        /// The manager joined.
        manager: String,
        /// Messages accepted and not yet handled at the deadline.
        unfinished: u64,
    },
    /// The manager stopped at once and discarded messages it had accepted.
    #[error("joining manager `{manager}`: it stopped with {unhandled} messages unhandled")]
    Stopped {
        /// The manager joined.
        manager: String,
        /// Messages accepted and then discarded unhandled.
        unhandled: u64,
    },
    /// Waiting would never end: a manager joined itself (its own message in
    /// hand is unfinished until it returns), or joined a manager that is
    /// (through a chain of asks, joins or blocked tells) waiting on it.
    #[error("joining would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The managers around the cycle, the joiner first and last.
        cycle: Vec<String>,
    },
}

/// A bounded capacity that makes no sense.
#[derive(Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityError {
    /// A capacity of zero (a rendezvous mailbox) is refused.
    #[error("a mailbox capacity of zero is not allowed: use Capacity::Unbounded or at least 1")]
    Zero,
    /// More than [`Capacity::MAX`](crate::Capacity::MAX).
    #[error("mailbox capacity {requested} is larger than the maximum {max}")]
    TooLarge {
        /// The capacity asked for.
        requested: usize,
        /// The largest capacity accepted.
        max: usize,
    },
}

/// A runtime could not be built from its [`RuntimeBuilder`](crate::RuntimeBuilder).
#[derive(Error, Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The default capacity is invalid.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The thread name prefix contains a NUL byte.
    #[error("thread name prefix {0:?} contains a NUL byte")]
    ThreadName(String),
    /// The stack size is below the minimum (64 KiB).
    #[error("stack size {0} is below the minimum of 16384 bytes")]
    StackSize(usize),
}

/// A manager could not be spawned.
#[derive(Error, Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// A running manager of this runtime already has that name.
    #[error("a manager named `{0}` is already running")]
    DuplicateName(String),
    /// The name is empty or contains a NUL byte.
    #[error("invalid manager name {0:?}: names must be non-empty and contain no NUL byte")]
    InvalidName(String),
    /// The per-manager capacity is invalid.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The runtime is shutting down or shut down.
    #[error("the runtime is shut down")]
    ShutDown,
    /// `PanicPolicy::Restart` was asked for without a factory to restart from.
    #[error("manager `{0}`: PanicPolicy::Restart needs a factory: use spawn_with or own_with")]
    NoFactory(String),
    /// The operating system refused to start the thread.
    #[error("starting the thread of manager `{name}`")]
    Thread {
        /// The manager's name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A message could not be scheduled; what was to be sent comes back.
#[derive(Error, Clone, Copy, PartialEq, Eq)]
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

/// [`Runtime::shutdown_on_signals`](crate::Runtime::shutdown_on_signals) could not install its handlers.
#[derive(Error, Debug)]
#[non_exhaustive]
pub enum SignalError {
    /// `shutdown_on_signals` was already called in this process (by this
    /// runtime or another one).
    #[error("the shutdown signal handlers are already installed in this process")]
    AlreadyInstalled,
    /// The operating system refused the handlers or their thread.
    #[error("installing the shutdown signal handlers")]
    System(#[source] std::io::Error),
    /// This platform has no Unix signals.
    #[error("shutdown on signals needs unix signals, which this platform lacks")]
    Unsupported,
}
