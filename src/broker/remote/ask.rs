//! Asks: a request published with a reply-to (RabbitMQ's direct reply-to),
//! its answer waited for on the channel it went out on, and the waiting
//! asks of a handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use lapin::message::DeliveryResult;
use lapin::options::BasicConsumeOptions;
use lapin::types::{FieldTable, ShortString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::super::codec;
use super::super::connection::{block_until, error_chain};
use super::super::error::{RemoteAskError, RemoteSendError};
use super::super::reply::{RemoteReply, WireAnswer};
use super::{RemoteHandle, Session, mandatory};
use crate::util::deadline_after;

/// What an ask waits for.
pub(super) enum Answer {
    /// The answer's body.
    Body(Vec<u8>),
    /// The channel the answer was to come on is gone.
    Lost(String),
}

/// The asks of one handle waiting for answers.
#[derive(Default)]
pub(super) struct Asks {
    /// By correlation id: the session the request went out on, and where
    /// its answer goes.
    pub(super) waiting: Mutex<HashMap<String, (u64, mpsc::SyncSender<Answer>)>>,
}

impl Asks {
    pub(super) fn waiting(
        &self,
    ) -> MutexGuard<'_, HashMap<String, (u64, mpsc::SyncSender<Answer>)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn on_delivery(&self, session: u64, delivery: DeliveryResult) {
        match delivery {
            Ok(Some(delivery)) => {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    return;
                };
                // An ask that gave up is no longer waiting: its answer is dropped.
                if let Some((_, tx)) = self.waiting().remove(id.as_str()) {
                    let _ = tx.try_send(Answer::Body(delivery.data));
                }
            }
            // The channel is gone: every ask waiting on it ends.
            Ok(None) | Err(_) => {
                let reason = match delivery {
                    Err(e) => error_chain(&e),
                    _ => "the reply consumer was cancelled".to_owned(),
                };
                self.waiting().retain(|_, (on, tx)| {
                    if *on == session {
                        let _ = tx.try_send(Answer::Lost(reason.clone()));
                        false
                    } else {
                        true
                    }
                });
            }
        }
    }
}

impl<M: Serialize> RemoteHandle<M> {
    /// Asks the manager and waits for its answer: builds the request around
    /// a [`RemoteReply`] placeholder (`ask(Msg::Get)`, or
    /// `ask(|reply| Msg::Get { key, reply })`), publishes it like `tell`
    /// with the direct reply-to queue as `reply_to`, and waits, without a
    /// deadline, for the answer. The answer is sent once the request's batch
    /// is settled: when it arrives, the request was handled and the owner's
    /// `idle` hook ran; the request is acknowledged right after. An owner
    /// that dies in between leaves the request to the next owner, which
    /// answers again: the first answer is returned, a later one dropped. The
    /// request counts for `join` like a told message.
    ///
    /// During a reconnect, the request waits for the new connection until
    /// the confirm timeout. The answer comes back on the connection the
    /// request went out on: if that one is lost first, the ask ends with
    /// `Disconnected` (the request may still be handled), never a hang.
    ///
    /// # Errors
    ///
    /// [`RemoteAskError`]: `NotSent` (with the reason the publish failed),
    /// `Unreachable` (no connection came in time: not sent), `NoReply`,
    /// `DeadLettered` (undecodable, or a handler that panicked on every
    /// delivery), `Decode` (an answer of another type), `Disconnected`.
    pub fn ask<R, F>(&self, make: F) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.ask_until(0, make, None, None)
    }

    /// Like [`ask`](RemoteHandle::ask), ending with
    /// [`RemoteAskError::Timeout`] when no answer arrived within `timeout`
    /// (waiting for a connection and the publish confirm included). The
    /// request may still be handled; its late answer is dropped.
    ///
    /// # Errors
    ///
    /// As [`ask`](RemoteHandle::ask), plus `Timeout`.
    pub fn ask_timeout<R, F>(&self, make: F, timeout: Duration) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.ask_until(0, make, deadline_after(timeout), Some(timeout))
    }

    /// An ask to route `route`, ending at `deadline` if there is one.
    pub(crate) fn ask_until<R, F>(
        &self,
        route: usize,
        make: F,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        let remote = &*self.remote;
        let queue = || remote.routes[route].clone();
        let send_deadline = match (deadline, remote.link.confirm_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let msg = make(RemoteReply::placeholder());
        let (msg, id, body) = self
            .prepare(msg, route)
            .map_err(|e| RemoteAskError::NotSent {
                queue: queue(),
                reason: e.to_string(),
            })?;
        let session = match self.answering_session(send_deadline) {
            Ok(session) => session,
            Err(e) => {
                remote.joins.forget(&id);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::sync_channel(1);
        remote.asks.waiting().insert(id.clone(), (session.id, tx));
        // Removes the waiting entry however this ends: a late answer is dropped.
        let _waiting = Forget(&remote.asks, &id);
        let props = codec::message_properties(&id, &remote.producer)
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO))
            .with_correlation_id(ShortString::from(id.as_str()));
        let outcome = block_until(send_deadline, async {
            session
                .channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(remote.routes[route].as_str()),
                    mandatory(),
                    &body,
                    props,
                )
                .await?
                .await
        });
        let waited = timeout.unwrap_or(remote.link.settings.confirm_timeout);
        if let Err(e) = self.conclude(msg, &id, route, outcome, waited) {
            return Err(match e {
                RemoteSendError::Timeout { .. } if timeout.is_some() => RemoteAskError::Timeout {
                    queue: queue(),
                    waited,
                },
                RemoteSendError::Disconnected { reason, .. } => RemoteAskError::Disconnected {
                    queue: queue(),
                    reason: format!("the request may have gone out: {reason}"),
                },
                e => RemoteAskError::NotSent {
                    queue: queue(),
                    reason: e.to_string(),
                },
            });
        }
        let body = loop {
            // In slices: the answer's channel is looked at between them, in
            // case its loss went unreported.
            let slice = match deadline {
                None => ANSWER_SLICE,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RemoteAskError::Timeout {
                            queue: queue(),
                            waited,
                        });
                    }
                    left.min(ANSWER_SLICE)
                }
            };
            match rx.recv_timeout(slice) {
                Ok(Answer::Body(body)) => break body,
                Ok(Answer::Lost(reason)) => {
                    return Err(RemoteAskError::Disconnected {
                        queue: queue(),
                        reason: format!("the answer was to come on the lost channel: {reason}"),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) if session.is_open() => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // One last look: an answer that beat the loss.
                    if let Ok(Answer::Body(body)) = rx.try_recv() {
                        break body;
                    }
                    return Err(RemoteAskError::Disconnected {
                        queue: queue(),
                        reason: "the answer was to come on a channel since lost".to_owned(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RemoteAskError::Disconnected {
                        queue: queue(),
                        reason: "the reply consumer ended".to_owned(),
                    });
                }
            }
        };
        match codec::decode::<WireAnswer<R>>(&body) {
            Ok(WireAnswer::Value(value)) => Ok(value),
            Ok(WireAnswer::NoReply) => Err(RemoteAskError::NoReply { queue: queue() }),
            Ok(WireAnswer::DeadLettered(reason)) => Err(RemoteAskError::DeadLettered {
                queue: queue(),
                reason,
            }),
            Err(reason) => Err(RemoteAskError::Decode {
                queue: queue(),
                reason,
            }),
        }
    }

    /// A session consuming `amq.rabbitmq.reply-to` (started once per
    /// channel): the broker requires it before a request naming it is
    /// published.
    fn answering_session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, RemoteAskError> {
        let remote = &*self.remote;
        loop {
            let session = remote
                .session(deadline)
                .map_err(|e| RemoteAskError::Unreachable {
                    queue: remote.queue.clone(),
                    reason: error_chain(&e),
                })?;
            let mut answering = session
                .answering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *answering {
                drop(answering);
                return Ok(session);
            }
            let consumed = remote.link.run(
                || format!("consuming `{DIRECT_REPLY_TO}`"),
                session.channel.basic_consume(
                    ShortString::from(DIRECT_REPLY_TO),
                    ShortString::from(format!("{}.answers.{}", remote.done_queue, session.id)),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            );
            match consumed {
                Ok(consumer) => {
                    let asks = Arc::clone(&remote.asks);
                    let id = session.id;
                    consumer.set_delegate(move |delivery: DeliveryResult| {
                        asks.on_delivery(id, delivery);
                        std::future::ready(())
                    });
                    *answering = true;
                    drop(answering);
                    return Ok(session);
                }
                // Lost meanwhile: a new channel, if one comes in time.
                Err(_)
                    if (!session.is_open() || !remote.link.is_connected())
                        && !remote.link.is_final() => {}
                Err(e) => {
                    return Err(RemoteAskError::Disconnected {
                        queue: remote.queue.clone(),
                        reason: error_chain(&e),
                    });
                }
            }
        }
    }
}

/// The queue name of RabbitMQ's direct reply-to.
pub(super) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How long a wait for an answer or a done record goes before it looks
/// whether its channel is still there.
pub(super) const ANSWER_SLICE: Duration = Duration::from_secs(1);

/// Removes an ask from the waiting ones when it ends.
pub(super) struct Forget<'a>(&'a Asks, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting().remove(self.1);
    }
}
