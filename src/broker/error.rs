//! The broker's error types.
//!
//! No error names the password of the URL it came from, and none exposes the
//! AMQP client's own types: causes are kept as boxed `std::error::Error`s.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::error::SpawnError;

/// The cause of a broker error, as the AMQP client reported it.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// Connecting to the broker, declaring queues, or serving a manager failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL could not be parsed (its password, if any, is masked).
    #[error("invalid AMQP url: {reason}")]
    InvalidUrl {
        /// What was wrong with it.
        reason: String,
    },
    /// No connection could be made: nothing listens there, the address does
    /// not resolve, or the handshake did not finish in time.
    #[error("cannot reach the AMQP broker at {host}")]
    Unreachable {
        /// `host:port` of the broker (never the credentials).
        host: String,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// The TLS handshake of an `amqps://` URL failed (feature `amqps`): the
    /// port does not speak TLS (a plain AMQP port, 5672, rather than 5671),
    /// or the broker's certificate is not trusted or does not name the host.
    #[error("the TLS handshake with the AMQP broker at {host} failed")]
    Tls {
        /// `host:port` of the broker (never the credentials).
        host: String,
        /// The TLS stack's reason.
        #[source]
        source: Cause,
    },
    /// None of the nodes of a cluster could be connected to: each node's
    /// error ([`Unreachable`](BrokerError::Unreachable) or
    /// [`Refused`](BrokerError::Refused), naming its `host:port`), in the
    /// order they were tried.
    #[error(
        "no node of the AMQP broker could be connected to: {}",
        describe_attempts(attempts)
    )]
    NoNodeReachable {
        /// Each node's error, in the order tried.
        attempts: Vec<BrokerError>,
    },
    /// The broker answered but refused the connection (credentials, vhost).
    #[error("the AMQP broker at {host} refused the connection")]
    Refused {
        /// `host:port` of the broker.
        host: String,
        /// The broker's reason.
        #[source]
        source: Cause,
    },
    /// An operation on the broker failed: `what` says which.
    #[error("{what} on the AMQP broker at {host} failed")]
    Operation {
        /// The operation, e.g. "declaring queue `custody.jobs`".
        what: String,
        /// `host:port` of the broker.
        host: String,
        /// The cause (a queue declared with other arguments elsewhere is
        /// [`QueueMismatch`](BrokerError::QueueMismatch) instead).
        #[source]
        source: Cause,
    },
    /// A queue of the manager exists already with other arguments than this
    /// declaration asks for: what differs, and how to change it, in the
    /// [`QueueMismatch`].
    #[error("{0}")]
    QueueMismatch(Box<QueueMismatch>),
    /// A sharded kind's partition count is out of range: it must be 1 to
    /// [`MAX_PARTITIONS`](super::shard::MAX_PARTITIONS).
    #[error("a sharded kind needs 1 to 4096 partitions; `{kind}` was given {partitions}")]
    InvalidPartitions {
        /// The kind.
        kind: String,
        /// The count asked for.
        partitions: u32,
    },
    /// The sharded kind exists on the broker with another partition count
    /// (recorded by the first process that declared it): routing with
    /// another count would send a key to another partition. Keep the
    /// recorded count, or drain the kind, delete its queues and declare it
    /// again.
    #[error(
        "the sharded kind `{kind}` has {} on the broker; this process asked for {asked}",
        match recorded { Some(n) => format!("{n} partitions"), None => "another partition count".to_owned() }
    )]
    PartitionMismatch {
        /// The kind.
        kind: String,
        /// The count recorded on the broker, when its reply could be read.
        recorded: Option<u32>,
        /// The count this process asked for.
        asked: u32,
    },
    /// The broker did not answer an operation in time.
    #[error("{what} on the AMQP broker at {host} got no answer within {waited:?}")]
    Timeout {
        /// The operation.
        what: String,
        /// `host:port` of the broker.
        host: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The manager name cannot make a queue name: empty, or too long for AMQP
    /// (queue names are at most 255 bytes).
    #[error("invalid manager name {0:?} for a broker queue: it must be 1 to 200 bytes")]
    InvalidName(String),
    /// Spawning the served manager on the runtime failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The connection is lost: with `reconnecting`, it was not replaced
    /// before the deadline of the call (it may be later); without, the
    /// broker was built with reconnecting off and the loss is final.
    #[error(
        "the connection to the AMQP broker at {host} is lost{}: {reason}",
        if *reconnecting { " (still reconnecting)" } else { " for good" }
    )]
    Disconnected {
        /// `host:port` of the node last connected to.
        host: String,
        /// Why: the loss, or the last reconnect attempt's failure.
        reason: String,
        /// Whether the broker is still trying to reconnect.
        reconnecting: bool,
    },
    /// The application closed the broker ([`Broker::close`](super::Broker::close)).
    #[error("the AMQP broker connection was closed")]
    Closed,
}

/// A queue of the manager exists already with other arguments than this
/// declaration asks for (the broker's `PRECONDITION_FAILED`): another
/// [`delivery_limit`](super::BrokerBuilder::delivery_limit), another
/// queue type (a classic queue of that name), other dead-letter
/// settings. Queue arguments are fixed when a queue is first declared:
/// every process declaring it must ask for the same ones. The broker
/// closes the channel of the declaration; the connection stays usable.
///
/// **Changing a queue's arguments.** Either keep the old setting (build
/// the [`Broker`](super::Broker) with the value in `current`; for
/// `x-delivery-limit`, that value less
/// [`BROKER_LIMIT_MARGIN`](super::BROKER_LIMIT_MARGIN), so a queue declared
/// by a version without the margin must be migrated), or
/// migrate: stop every owner and sender of the manager, let the queue
/// drain (or move what is left, for example with
/// [`take_dead_letters`](super::Broker::take_dead_letters) for the dead
/// letters), delete both queues with
/// [`delete_queues`](super::Broker::delete_queues) (their messages go
/// with them), and serve again with the new setting, which declares
/// them anew.
///
/// # Examples
///
/// ```no_run
/// use custody::broker::{Broker, BrokerError};
/// use custody::{Context, Manager, Runtime};
///
/// struct Total(u64);
/// impl Manager for Total {
///     type Msg = u64;
///     fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
///         self.0 += n;
///     }
/// }
///
/// let rt = Runtime::new();
/// let broker = Broker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .delivery_limit(10)
///     .connect()?;
/// match broker.serve(&rt, "total", Total(0)) {
///     Err(BrokerError::QueueMismatch(mismatch)) => {
///         // For example `x-delivery-limit`, 1005: the queue keeps its old limit.
///         eprintln!("{:?} is {:?} on the broker", mismatch.argument, mismatch.current);
///     }
///     other => drop(other?),
/// }
/// # Ok::<(), BrokerError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueMismatch {
    /// The queue, `custody.<name>` or `custody.<name>.dead`.
    pub queue: String,
    /// `host:port` of the broker.
    pub host: String,
    /// The argument that differs, as the broker names it
    /// (`x-delivery-limit`, `x-queue-type`, `x-dead-letter-routing-key`,
    /// `durable`, ...); `None` if the broker's text could not be read,
    /// which is then all there is, in `reply`.
    pub argument: Option<String>,
    /// The value the queue has, as the broker prints it; `None` when the
    /// queue has no such argument (or when `argument` is `None`).
    pub current: Option<String>,
    /// The value this declaration asked for; `None` when it asked for
    /// none (or when `argument` is `None`).
    pub requested: Option<String>,
    /// The broker's reply text, whole.
    pub reply: String,
}

impl fmt::Display for QueueMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe_mismatch(
            &self.queue,
            &self.host,
            self.argument.as_deref(),
            self.current.as_deref(),
            self.requested.as_deref(),
            &self.reply,
        ))
    }
}

/// Why an owner refused a delivery before handing it to the manager. Every
/// header and property of a delivery, and its body, come from whoever
/// published it: a delivery that fails these checks is dead-lettered with
/// this text in `x-custody-error`, its producer (if it names a valid one) is
/// told, and so is its asker (if it names a valid reply address).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum InvalidDelivery {
    /// The body is larger than the owner's `max_body`.
    #[error("the body is {size} bytes, over the limit of {max} bytes")]
    BodyTooLarge {
        /// The size of the body.
        size: usize,
        /// The owner's limit.
        max: usize,
    },
    /// A header or property has the wrong type, or a value that cannot be
    /// used.
    #[error("{field} is {problem}")]
    Field {
        /// Which one.
        field: Field,
        /// What is wrong with it.
        problem: FieldProblem,
    },
    /// The body is not CBOR of the manager's message type.
    #[error("the body does not decode: {0}")]
    Undecodable(String),
    /// Taking the delivery panicked (most likely a `Deserialize` impl of the
    /// message type).
    #[error("the owner panicked taking the delivery: {0}")]
    Panicked(String),
}

impl InvalidDelivery {
    pub(crate) fn field(field: Field, problem: FieldProblem) -> InvalidDelivery {
        InvalidDelivery::Field { field, problem }
    }
}

/// A header or property of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// An entry of the headers table.
    Header(&'static str),
    /// A basic property (`message-id`, `reply-to`, ...).
    Property(&'static str),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Header(name) => write!(f, "header `{name}`"),
            Field::Property(name) => write!(f, "property `{name}`"),
        }
    }
}

/// What is wrong with a header or property.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum FieldProblem {
    /// Longer than what it is used for allows.
    #[error("{len} bytes long, over the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// Present but empty.
    #[error("empty")]
    Empty,
    /// Bytes that are not UTF-8 where text belongs.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// A value of another AMQP type.
    #[error("{found} where {expected} belongs")]
    WrongType {
        /// The type it must have, with its article ("a string").
        expected: &'static str,
        /// The type it has, with its article.
        found: &'static str,
    },
    /// A negative count.
    #[error("negative ({0})")]
    Negative(i64),
    /// Missing, though another field needs it.
    #[error("missing, and {needed_by} needs it")]
    Missing {
        /// The field that needs it.
        needed_by: Field,
    },
    /// A value the owner does not handle.
    #[error("{found:?} instead of {expected:?}")]
    Unexpected {
        /// The value it has.
        found: String,
        /// The value it must have.
        expected: &'static str,
    },
}

/// The text of a [`BrokerError::QueueMismatch`].
fn describe_mismatch(
    queue: &str,
    host: &str,
    argument: Option<&str>,
    current: Option<&str>,
    requested: Option<&str>,
    reply: &str,
) -> String {
    match argument {
        Some(argument) => format!(
            "queue `{queue}` exists on the AMQP broker at {host} with `{argument}` {}, not {} as declared here: keep its setting, or drain and delete the queue to change it",
            current.unwrap_or("unset"),
            requested.unwrap_or("unset"),
        ),
        None => format!(
            "queue `{queue}` exists on the AMQP broker at {host} with other arguments than declared here: {reply}"
        ),
    }
}

/// What RabbitMQ's `PRECONDITION_FAILED` text for a queue declared with
/// other arguments says: the argument, the value received (asked for), the
/// value the queue has (`None` for `none`). RabbitMQ writes
/// `inequivalent arg 'ARG' for queue 'Q' in vhost 'V': received VALUE but
/// current is VALUE`, each value either `none`, `'v'`, or `the value 'v' of
/// type 't'`. `None` for any other text.
pub(crate) fn parse_inequivalent_arg(
    reply: &str,
) -> Option<(String, Option<String>, Option<String>)> {
    const ARG: &str = "inequivalent arg '";
    const RECEIVED: &str = ": received ";
    const CURRENT: &str = " but current is ";
    let start = reply.find(ARG)? + ARG.len();
    let rest = &reply[start..];
    let argument = &rest[..rest.find('\'')?];
    if argument.is_empty() {
        return None;
    }
    let current_at = rest.rfind(CURRENT)?;
    let received_at = rest[..current_at].rfind(RECEIVED)?;
    let received = parse_value(&rest[received_at + RECEIVED.len()..current_at])?;
    let current = parse_value(&rest[current_at + CURRENT.len()..])?;
    Some((argument.to_owned(), received, current))
}

/// One value of RabbitMQ's text: `none` (`Some(None)`), `'v'` or
/// `the value 'v' of type 't'`; `None` if it is neither.
fn parse_value(text: &str) -> Option<Option<String>> {
    let text = text.trim();
    if text == "none" {
        return Some(None);
    }
    if let Some(typed) = text.strip_prefix("the value '") {
        let end = typed.rfind("' of type '")?;
        return Some(Some(typed[..end].to_owned()));
    }
    let quoted = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(Some(quoted.to_owned()))
}

/// `host (cause); host (cause)` for the nodes a connect tried.
fn describe_attempts(attempts: &[BrokerError]) -> String {
    let described: Vec<String> = attempts
        .iter()
        .map(|attempt| match attempt {
            BrokerError::Unreachable { host, source } => format!("{host} unreachable ({source})"),
            BrokerError::Refused { host, source } => format!("{host} refused ({source})"),
            BrokerError::Tls { host, source } => format!("{host} TLS failed ({source})"),
            other => other.to_string(),
        })
        .collect();
    described.join("; ")
}

/// A [`RemoteHandle::tell`](super::RemoteHandle::tell) that was not confirmed;
/// the message comes back inside.
///
/// `Timeout` and `Disconnected` are ambiguous: the broker may still have
/// taken the message, which is then handled (and its done record ignored by
/// `join`). `Unreachable` is not: nothing was sent.
#[derive(Error)]
#[non_exhaustive]
pub enum RemoteSendError<M> {
    /// No publisher confirm arrived before the deadline (a broker under a
    /// memory or disk alarm blocks publishers without saying so).
    #[error("no confirm from the broker within {waited:?} for a message to `{queue}`")]
    Timeout {
        /// The message.
        msg: M,
        /// The queue it was sent to.
        queue: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The broker refused the message (a publisher nack).
    #[error("the broker refused a message to `{queue}`")]
    Nacked {
        /// The message.
        msg: M,
        /// The queue it was sent to.
        queue: String,
    },
    /// The queue does not exist (deleted since the handle was made).
    #[error("no queue `{queue}` to take the message")]
    Unroutable {
        /// The message.
        msg: M,
        /// The queue it was sent to.
        queue: String,
    },
    /// The connection was lost after the message was published and before
    /// its confirm, and no new connection came before the deadline (or
    /// reconnecting is off, or the broker was closed). The broker may have
    /// taken it.
    #[error("lost the connection to the broker while sending to `{queue}`: {reason}")]
    Disconnected {
        /// The message.
        msg: M,
        /// The queue it was sent to.
        queue: String,
        /// What the client said.
        reason: String,
    },
    /// There was no connection to the broker, and none came before the
    /// deadline (or reconnecting is off, or the broker was closed): the
    /// message was not sent.
    #[error("not sent to `{queue}`: the broker is unreachable: {reason}")]
    Unreachable {
        /// The message.
        msg: M,
        /// The queue it was for.
        queue: String,
        /// Why: the connection's loss, or the last reconnect attempt's
        /// failure.
        reason: String,
    },
    /// The message could not be encoded as CBOR.
    #[error("cannot encode a message for `{queue}`: {reason}")]
    Encode {
        /// The message.
        msg: M,
        /// The queue it was for.
        queue: String,
        /// What the encoder said.
        reason: String,
    },
}

impl<M> RemoteSendError<M> {
    /// The message that was not confirmed.
    pub fn into_inner(self) -> M {
        match self {
            RemoteSendError::Timeout { msg, .. }
            | RemoteSendError::Nacked { msg, .. }
            | RemoteSendError::Unroutable { msg, .. }
            | RemoteSendError::Disconnected { msg, .. }
            | RemoteSendError::Unreachable { msg, .. }
            | RemoteSendError::Encode { msg, .. } => msg,
        }
    }

    /// Whether the deadline passed (the message may still arrive).
    pub fn is_timeout(&self) -> bool {
        matches!(self, RemoteSendError::Timeout { .. })
    }
}

impl<M> fmt::Debug for RemoteSendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteSendError::Timeout { queue, waited, .. } => f
                .debug_struct("Timeout")
                .field("queue", queue)
                .field("waited", waited)
                .finish_non_exhaustive(),
            RemoteSendError::Nacked { queue, .. } => f
                .debug_struct("Nacked")
                .field("queue", queue)
                .finish_non_exhaustive(),
            RemoteSendError::Unroutable { queue, .. } => f
                .debug_struct("Unroutable")
                .field("queue", queue)
                .finish_non_exhaustive(),
            RemoteSendError::Disconnected { queue, reason, .. } => f
                .debug_struct("Disconnected")
                .field("queue", queue)
                .field("reason", reason)
                .finish_non_exhaustive(),
            RemoteSendError::Unreachable { queue, reason, .. } => f
                .debug_struct("Unreachable")
                .field("queue", queue)
                .field("reason", reason)
                .finish_non_exhaustive(),
            RemoteSendError::Encode { queue, reason, .. } => f
                .debug_struct("Encode")
                .field("queue", queue)
                .field("reason", reason)
                .finish_non_exhaustive(),
        }
    }
}

/// A [`RemoteHandle::tell_all`](super::RemoteHandle::tell_all) in which some
/// messages were not confirmed; each comes back inside its error.
#[derive(Error)]
#[error("{} messages not confirmed ({confirmed} confirmed); the first: {}", refused.len(), first_reason(refused))]
pub struct TellAllError<M> {
    /// How many messages were confirmed (and count for `join`).
    pub confirmed: usize,
    /// The messages that were not, in the order they were given.
    pub refused: Vec<RemoteSendError<M>>,
}

fn first_reason<M>(refused: &[RemoteSendError<M>]) -> String {
    refused
        .first()
        .map_or_else(String::new, ToString::to_string)
}

impl<M> TellAllError<M> {
    /// The messages that were not confirmed, in order.
    pub fn into_inner(self) -> Vec<M> {
        self.refused
            .into_iter()
            .map(RemoteSendError::into_inner)
            .collect()
    }
}

impl<M> fmt::Debug for TellAllError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TellAllError")
            .field("confirmed", &self.confirmed)
            .field("refused", &self.refused)
            .finish()
    }
}

/// A message that ended in the dead-letter queue instead of being handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id the sender gave it.
    pub id: String,
    /// Why: the decode error, or the panic of the last delivery.
    pub reason: String,
}

/// A [`RemoteHandle::join`](super::RemoteHandle::join) that did not end with
/// every message handled.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteJoinError {
    /// Messages were still unreported when the deadline passed.
    #[error("{outstanding} messages to `{queue}` not yet reported done")]
    Timeout {
        /// The queue.
        queue: String,
        /// Messages confirmed by the broker and not yet reported done.
        outstanding: usize,
    },
    /// Every message was reported, but some were dead-lettered rather than
    /// handled (reported once: the next `join` does not repeat them).
    #[error("{} messages to `{queue}` were dead-lettered", dead.len())]
    DeadLettered {
        /// The queue.
        queue: String,
        /// The dead-lettered messages.
        dead: Vec<DeadLetter>,
    },
    /// The connection to the broker is gone for good (the broker was closed,
    /// or the connection lost with reconnecting off), or the done queue was
    /// deleted, so no more done records can arrive. A connection lost and
    /// replaced is not this: `join` waits across it.
    #[error("lost the connection to the broker while joining `{queue}`: {reason}")]
    Disconnected {
        /// The queue.
        queue: String,
        /// What the client said.
        reason: String,
        /// Messages not yet reported done.
        outstanding: usize,
    },
}

/// A [`RemoteHandle::ask`](super::RemoteHandle::ask) that ended without an
/// answer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteAskError {
    /// No answer before the deadline. The request may still be handled; its
    /// answer is then dropped.
    #[error("asking `{queue}`: no answer within {waited:?}")]
    Timeout {
        /// The queue asked.
        queue: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The request was not confirmed by the broker (refused, unroutable, not
    /// encodable, or no confirm within the confirm timeout).
    #[error("asking `{queue}`: the request was not sent: {reason}")]
    NotSent {
        /// The queue asked.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The manager dropped the reply without answering, or the request had
    /// no [`RemoteReply`](super::RemoteReply) in it.
    #[error("asking `{queue}`: the manager dropped the reply unanswered")]
    NoReply {
        /// The queue asked.
        queue: String,
    },
    /// The request was dead-lettered: it could not be decoded, or its
    /// handler panicked on every allowed delivery (the panic is in `reason`).
    #[error("asking `{queue}`: the request was dead-lettered: {reason}")]
    DeadLettered {
        /// The queue asked.
        queue: String,
        /// The decode error or the panic.
        reason: String,
    },
    /// The answer could not be decoded as the type asked for.
    #[error("asking `{queue}`: cannot decode the answer: {reason}")]
    Decode {
        /// The queue asked.
        queue: String,
        /// What the decoder said.
        reason: String,
    },
    /// The connection was lost after the request was published: the
    /// request may still be handled, but its answer, sent to the old
    /// connection's direct reply-to, cannot come back. It is not sent again
    /// (that would handle it twice); the handle itself goes on over the new
    /// connection.
    #[error("asking `{queue}`: lost the connection to the broker: {reason}")]
    Disconnected {
        /// The queue asked.
        queue: String,
        /// What the client said.
        reason: String,
    },
    /// There was no connection to the broker, and none came before the
    /// deadline (the confirm timeout for `ask`), or reconnecting is off, or
    /// the broker was closed: the request was not sent.
    #[error("asking `{queue}`: the request was not sent: the broker is unreachable: {reason}")]
    Unreachable {
        /// The queue asked.
        queue: String,
        /// Why: the connection's loss, or the last reconnect attempt's
        /// failure.
        reason: String,
    },
}

impl RemoteAskError {
    /// Whether the deadline passed (the request may still be handled).
    pub fn is_timeout(&self) -> bool {
        matches!(self, RemoteAskError::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_inequivalent_arg_texts_are_read() {
        assert_eq!(
            parse_inequivalent_arg(
                "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'custody.a' in vhost '/': received '7' but current is '3'"
            ),
            Some((
                "x-delivery-limit".into(),
                Some("7".into()),
                Some("3".into())
            ))
        );
        assert_eq!(
            parse_inequivalent_arg(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q: received ' in vhost '/': received the value 'quorum' of type 'longstr' but current is none"
            ),
            Some(("x-queue-type".into(), Some("quorum".into()), None))
        );
        assert_eq!(
            parse_inequivalent_arg(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'"
            ),
            Some(("durable".into(), Some("false".into()), Some("true".into())))
        );
        assert_eq!(
            parse_inequivalent_arg("PRECONDITION_FAILED - something else"),
            None
        );
        assert_eq!(
            parse_inequivalent_arg("inequivalent arg 'x' for queue 'q': received garbage"),
            None
        );
    }

    #[test]
    fn an_unreadable_mismatch_gives_the_whole_reply() {
        let text = describe_mismatch(
            "custody.a",
            "h:1",
            None,
            None,
            None,
            "PRECONDITION_FAILED - odd",
        );
        assert!(text.contains("PRECONDITION_FAILED - odd"), "{text}");
        let text = describe_mismatch(
            "custody.a",
            "h:1",
            Some("x-delivery-limit"),
            Some("3"),
            Some("7"),
            "r",
        );
        assert!(text.contains("`x-delivery-limit` 3, not 7"), "{text}");
    }
}
