//! `RemoteReply<T>`: the answering half of a [`RemoteHandle::ask`], carried
//! inside the request message.
//!
//! On the wire a `RemoteReply` is nothing (a CBOR `null`): the sender puts an
//! unbound placeholder in the message. The owner's consumer thread decodes a
//! request with a *binding* set on its thread (the delivery tag, and the
//! `reply_to` and `correlation_id` properties); the first `RemoteReply`
//! deserialized takes it. So the manager receives a reply that knows where
//! its answer goes, and the message type stays an ordinary serde type.
//!
//! [`RemoteHandle::ask`]: super::RemoteHandle::ask

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec;

/// Where an answer goes: the asker's reply queue and its correlation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) reply_to: String,
    pub(crate) correlation_id: String,
}

/// The owner side that publishes answers (held back until the request's
/// batch is settled, and published before it is acknowledged).
pub(crate) trait AnswerSink: Send + Sync {
    /// An answer (an encoded [`WireAnswer`]) for the request delivered as `tag`.
    fn answer(&self, tag: u64, target: &Target, body: Vec<u8>);
}

/// What an owner sends back to an asker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireAnswer<T> {
    /// The handler's answer.
    Value(T),
    /// The reply was dropped unanswered, or the message had none.
    NoReply,
    /// The request was dead-lettered: it could not be decoded, or its handler
    /// panicked on every delivery.
    DeadLettered(String),
}

/// What the consumer thread hands to the next `RemoteReply` deserialized.
pub(crate) struct Binding {
    pub(crate) sink: Arc<dyn AnswerSink>,
    pub(crate) tag: u64,
    pub(crate) target: Target,
}

thread_local! {
    static BINDING: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

/// Decodes with `binding` available to a `RemoteReply` inside the message;
/// returns the result and whether a reply took the binding.
pub(crate) fn decode_bound<M: serde::de::DeserializeOwned>(
    bytes: &[u8],
    binding: Option<Binding>,
) -> (Result<M, String>, bool) {
    /// Takes back a binding no reply took, also when the decode unwinds
    /// (a `Deserialize` impl that panics), so none outlives its delivery.
    struct Unbind;
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = BINDING.try_with(|b| b.borrow_mut().take());
        }
    }
    let had = binding.is_some();
    BINDING.with(|b| *b.borrow_mut() = binding);
    let unbind = Unbind;
    let decoded = codec::decode::<M>(bytes);
    let left = BINDING.with(|b| b.borrow_mut().take()).is_some();
    drop(unbind);
    (decoded, had && !left)
}

/// The answering half of a remote ask: [`send`](RemoteReply::send) it once.
///
/// Put a `RemoteReply<T>` in the served manager's message type; the sender's
/// [`RemoteHandle::ask`](super::RemoteHandle::ask) builds the message around
/// a placeholder, and the owner binds it to the asker when it decodes the
/// request. The answer is held back until the request's batch is settled
/// (the manager's `idle` hook ran), so an asker that gets an answer knows its
/// request was committed, as with a local [`Database`](crate::resources)
/// write; it is published before the batch is acknowledged, so an owner
/// that dies in between leaves the request to be redelivered and answered
/// again (the asker keeps the first answer). A reply kept past its batch is
/// sent as soon as it is answered.
///
/// Dropped unanswered, it answers [`RemoteAskError::NoReply`]; if its handler
/// panicked, the request is redelivered like any other message, and the
/// asker hears [`RemoteAskError::DeadLettered`] only once it panicked on
/// every allowed delivery. A reply in a message sent with `tell`, or a
/// second reply in one message, is unbound: answering it does nothing.
///
/// [`RemoteAskError::NoReply`]: super::RemoteAskError::NoReply
/// [`RemoteAskError::DeadLettered`]: super::RemoteAskError::DeadLettered
///
/// # Examples
///
/// ```no_run
/// use custody::broker::{Broker, RemoteReply};
/// use custody::{Context, Manager, Runtime};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum Msg {
///     Add(u64),
///     Total(RemoteReply<u64>),
/// }
///
/// struct Sum(u64);
/// impl Manager for Sum {
///     type Msg = Msg;
///     fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
///         match msg {
///             Msg::Add(n) => self.0 += n,
///             Msg::Total(reply) => reply.send(self.0),
///         }
///     }
/// }
///
/// let rt = Runtime::new();
/// let owner = Broker::from_env()?;
/// let _served = owner.serve(&rt, "sum", Sum(0))?;
///
/// let sender = Broker::from_env()?;
/// let sum = sender.remote_handle::<Msg>("sum")?;
/// sum.tell(Msg::Add(2))?;
/// assert_eq!(sum.ask(Msg::Total)?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteReply<T> {
    bound: Option<Binding>,
    _answer: PhantomData<fn(T)>,
}

impl<T> RemoteReply<T> {
    /// An unbound reply: what the sender puts in a request (answering it
    /// does nothing).
    pub fn placeholder() -> RemoteReply<T> {
        RemoteReply {
            bound: None,
            _answer: PhantomData,
        }
    }

    /// Whether this reply is bound to an asker (on the owner's side).
    pub fn is_bound(&self) -> bool {
        self.bound.is_some()
    }
}

impl<T: Serialize> RemoteReply<T> {
    /// Answers the ask. The answer leaves once the request's batch is
    /// settled (at once if it already was); if the asker has given up, the
    /// broker drops it.
    pub fn send(mut self, value: T) {
        if let Some(bound) = self.bound.take() {
            match codec::encode(&WireAnswer::Value(value)) {
                Ok(body) => bound.sink.answer(bound.tag, &bound.target, body),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an answer: answering NoReply");
                    answer_no_reply(&bound);
                }
            }
        }
    }
}

fn answer_no_reply(bound: &Binding) {
    if let Ok(body) = codec::encode(&WireAnswer::<()>::NoReply) {
        bound.sink.answer(bound.tag, &bound.target, body);
    }
}

impl<T> Drop for RemoteReply<T> {
    fn drop(&mut self) {
        // A handler that panicked: the request is redelivered, or
        // dead-lettered on its last delivery, which answers then.
        if let Some(bound) = self.bound.take()
            && !std::thread::panicking()
        {
            answer_no_reply(&bound);
        }
    }
}

impl<T> fmt::Debug for RemoteReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteReply")
            .field("bound", &self.is_bound())
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for RemoteReply<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_unit()
    }
}

impl<'de, T> Deserialize<'de> for RemoteReply<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <()>::deserialize(deserializer)?;
        Ok(RemoteReply {
            bound: BINDING.with(|b| b.borrow_mut().take()),
            _answer: PhantomData,
        })
    }
}
