//! The sender side: `RemoteHandle<M>`, a typed address of a manager served
//! from a broker queue, possibly in another process.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, PublisherConfirm};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, DoneRecord};
use super::connection::{self, Broker, Link, block_until};
use super::error::{
    BrokerError, DeadLetter, RemoteAskError, RemoteJoinError, RemoteSendError, TellAllError,
};
use super::reply::{RemoteReply, WireAnswer};
use super::serve::unique;

/// How long an unused done queue outlives its producer (a producer that
/// crashed cannot delete it): one hour.
const DONE_QUEUE_EXPIRES_MS: i64 = 60 * 60 * 1000;

/// The typed address of a manager served from the broker queue
/// `custody.<name>`, in this process or another: `tell` publishes a
/// persistent message and waits for the broker's confirm; `join` waits until
/// the owner reports every confirmed message handled.
///
/// Each handle has a producer id of its own and a durable done queue
/// `custody.done.<producer-id>` where the owner sends done records (after the
/// batch's `idle` hook ran, before it acknowledges the batch). Clones share
/// the producer id; the done queue is deleted when the last clone is dropped.
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum Job {
///     Resize { path: String, width: u32 },
/// }
///
/// let broker = Broker::from_env()?;
/// let jobs = broker.remote_handle::<Job>("thumbnails")?;
/// jobs.tell(Job::Resize { path: "a.png".into(), width: 128 })?;
/// jobs.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteHandle<M> {
    remote: Arc<Remote>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for RemoteHandle<M> {
    fn clone(&self) -> Self {
        RemoteHandle {
            remote: Arc::clone(&self.remote),
            _msg: PhantomData,
        }
    }
}

impl<M> fmt::Debug for RemoteHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteHandle")
            .field("queue", &self.remote.queue)
            .field("producer", &self.remote.producer)
            .finish_non_exhaustive()
    }
}

/// What the clones of one handle share.
struct Remote {
    link: Arc<Link>,
    channel: Channel,
    name: String,
    queue: String,
    producer: String,
    done_queue: String,
    next_id: AtomicU64,
    joins: Arc<Joins>,
    /// Asks waiting for their answer, by correlation id; the reply consumer
    /// is started by the first ask.
    asks: Arc<Asks>,
}

/// The asks of one handle waiting for answers.
#[derive(Default)]
struct Asks {
    waiting: Mutex<HashMap<String, mpsc::SyncSender<Vec<u8>>>>,
    /// Whether the consumer of `amq.rabbitmq.reply-to` runs on the channel.
    consuming: Mutex<bool>,
}

impl Asks {
    fn waiting(&self) -> MutexGuard<'_, HashMap<String, mpsc::SyncSender<Vec<u8>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_delivery(&self, delivery: DeliveryResult) {
        match delivery {
            Ok(Some(delivery)) => {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    return;
                };
                // An ask that gave up is no longer waiting: its answer is dropped.
                if let Some(tx) = self.waiting().remove(id.as_str()) {
                    let _ = tx.try_send(delivery.data);
                }
            }
            // The channel is gone: every waiting ask ends as disconnected.
            Ok(None) | Err(_) => {
                self.waiting().clear();
                *self
                    .consuming
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = false;
            }
        }
    }
}

/// The join state, fed by the done-queue consumer.
#[derive(Default)]
struct Joins {
    state: Mutex<JoinState>,
    changed: Condvar,
}

#[derive(Default)]
struct JoinState {
    /// Ids being published or confirmed, not yet reported done.
    outstanding: HashSet<String>,
    /// Reported dead-lettered since the last join.
    dead: Vec<DeadLetter>,
    /// Why no more done records can arrive.
    lost: Option<String>,
}

impl Joins {
    fn state(&self) -> MutexGuard<'_, JoinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, id: &str) {
        if self.state().outstanding.remove(id) {
            self.changed.notify_all();
        }
    }

    fn on_delivery(&self, delivery: DeliveryResult) {
        match delivery {
            Ok(Some(delivery)) => match codec::decode::<DoneRecord>(&delivery.data) {
                Ok(record) => self.record(record),
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable done record"),
            },
            Ok(None) => self.lose("the done queue consumer was cancelled".to_owned()),
            Err(e) => self.lose(e.to_string()),
        }
    }

    fn record(&self, record: DoneRecord) {
        let mut state = self.state();
        for id in &record.done {
            state.outstanding.remove(id);
        }
        for (id, reason) in record.dead {
            if state.outstanding.remove(&id) {
                state.dead.push(DeadLetter { id, reason });
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    fn lose(&self, reason: String) {
        self.state().lost.get_or_insert(reason);
        self.changed.notify_all();
    }
}

impl<M: Serialize> RemoteHandle<M> {
    pub(crate) fn new(broker: &Broker, name: &str) -> Result<RemoteHandle<M>, BrokerError> {
        connection::check_name(name)?;
        let link = Arc::clone(&broker.link);
        let channel = link.confirmed_channel()?;
        link.declare_mailbox(&channel, name)?;
        let producer = producer_id();
        let done_queue = connection::done_queue(&producer);
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(DONE_QUEUE_EXPIRES_MS),
        );
        link.run(
            || format!("declaring queue `{done_queue}`"),
            channel.queue_declare(
                ShortString::from(done_queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            ),
        )?;
        let joins = Arc::new(Joins::default());
        let consumer = link.run(
            || format!("consuming from `{done_queue}`"),
            channel.basic_consume(
                ShortString::from(done_queue.as_str()),
                ShortString::from(format!("{done_queue}.join")),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )?;
        let fed = Arc::clone(&joins);
        consumer.set_delegate(move |delivery: DeliveryResult| {
            fed.on_delivery(delivery);
            std::future::ready(())
        });
        Ok(RemoteHandle {
            remote: Arc::new(Remote {
                link,
                channel,
                name: name.to_owned(),
                queue: connection::mailbox_queue(name),
                producer,
                done_queue,
                next_id: AtomicU64::new(0),
                joins,
                asks: Arc::new(Asks::default()),
            }),
            _msg: PhantomData,
        })
    }

    /// Publishes `msg` as a persistent message and waits (at most the
    /// broker's confirm timeout) for the broker to confirm it: `Ok` means it
    /// is in the queue, on disk, and will be handled by the owner (now, or
    /// when one starts).
    ///
    /// # Errors
    ///
    /// [`RemoteSendError`] with the message inside: `Timeout`, `Nacked`,
    /// `Unroutable` (the queue was deleted), `Disconnected`, `Encode`.
    pub fn tell(&self, msg: M) -> Result<(), RemoteSendError<M>> {
        self.tell_timeout(msg, self.remote.link.settings.confirm_timeout)
    }

    /// Like [`tell`](RemoteHandle::tell), waiting at most `timeout` for the
    /// confirm.
    ///
    /// # Errors
    ///
    /// As [`tell`](RemoteHandle::tell). After a `Timeout` the broker may still
    /// take the message; `join` does not wait for it.
    pub fn tell_timeout(&self, msg: M, timeout: Duration) -> Result<(), RemoteSendError<M>> {
        let (msg, id, body) = self.prepare(msg)?;
        let outcome = block_until(connection::deadline(timeout), async {
            self.publish(&id, &body).await?.await
        });
        self.conclude(msg, &id, outcome, timeout)
    }

    /// Sends every message with many publishes in flight at once (up to
    /// 1024), then waits for their confirms: much faster than one `tell`
    /// after another, which waits for each confirm (about an fsync on the
    /// broker) before the next publish. The messages reach the queue in
    /// iteration order. Each confirm wait ends at the confirm timeout.
    ///
    /// # Errors
    ///
    /// [`TellAllError`] holding each message that was not confirmed, inside
    /// its [`RemoteSendError`]; the others were confirmed and count for `join`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::Broker;
    ///
    /// let broker = Broker::from_env()?;
    /// let total = broker.remote_handle::<u64>("total")?;
    /// total.tell_all(1..=10_000)?;
    /// total.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_all<I>(&self, msgs: I) -> Result<(), TellAllError<M>>
    where
        I: IntoIterator<Item = M>,
    {
        const WINDOW: usize = 1024;
        let mut refused = Vec::new();
        let mut confirmed = 0;
        let mut in_flight = Vec::with_capacity(WINDOW);
        // Once a publish itself failed, the channel is gone: the rest are
        // refused without trying each in turn.
        let mut broken: Option<String> = None;
        for msg in msgs {
            if let Some(reason) = &broken {
                refused.push(RemoteSendError::Disconnected {
                    msg,
                    queue: self.remote.queue.clone(),
                    reason: format!("not sent after an earlier publish failed: {reason}"),
                });
                continue;
            }
            let (msg, id, body) = match self.prepare(msg) {
                Ok(prepared) => prepared,
                Err(e) => {
                    refused.push(e);
                    continue;
                }
            };
            match self.start(&id, body) {
                Started::Sending(sending) => in_flight.push((msg, id, sending)),
                Started::Failed(e) => {
                    broken = Some(e.to_string());
                    refused.extend(self.conclude(msg, &id, Some(Err(e)), Duration::ZERO).err());
                }
            }
            if in_flight.len() >= WINDOW {
                self.await_confirms(&mut in_flight, &mut confirmed, &mut refused);
            }
        }
        self.await_confirms(&mut in_flight, &mut confirmed, &mut refused);
        if refused.is_empty() {
            Ok(())
        } else {
            Err(TellAllError { confirmed, refused })
        }
    }

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
    /// # Errors
    ///
    /// [`RemoteAskError`]: `NotSent` (with the reason the publish failed),
    /// `NoReply`, `DeadLettered` (undecodable, or a handler that panicked
    /// on every delivery), `Decode` (an answer of another type),
    /// `Disconnected`.
    pub fn ask<R, F>(&self, make: F) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.ask_until(make, None, None)
    }

    /// Like [`ask`](RemoteHandle::ask), ending with
    /// [`RemoteAskError::Timeout`] when no answer arrived within `timeout`
    /// (the publish confirm included). The request may still be handled; its
    /// late answer is dropped.
    ///
    /// # Errors
    ///
    /// As [`ask`](RemoteHandle::ask), plus `Timeout`.
    pub fn ask_timeout<R, F>(&self, make: F, timeout: Duration) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.ask_until(make, connection::deadline(timeout), Some(timeout))
    }

    fn ask_until<R, F>(
        &self,
        make: F,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        let remote = &*self.remote;
        let queue = || remote.queue.clone();
        self.consume_answers()?;
        let msg = make(RemoteReply::placeholder());
        let (msg, id, body) = self.prepare(msg).map_err(|e| RemoteAskError::NotSent {
            queue: queue(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::sync_channel(1);
        remote.asks.waiting().insert(id.clone(), tx);
        // Removes the waiting entry however this ends: a late answer is dropped.
        let _waiting = Forget(&remote.asks, &id);
        let props = codec::message_properties(&id, &remote.producer)
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO))
            .with_correlation_id(ShortString::from(id.as_str()));
        let confirm_deadline = match (deadline, remote.link.confirm_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outcome = block_until(confirm_deadline, async {
            remote
                .channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(remote.queue.as_str()),
                    mandatory(),
                    &body,
                    props,
                )
                .await?
                .await
        });
        let waited = timeout.unwrap_or(remote.link.settings.confirm_timeout);
        if let Err(e) = self.conclude(msg, &id, outcome, waited) {
            return Err(match e {
                RemoteSendError::Timeout { .. } if timeout.is_some() => RemoteAskError::Timeout {
                    queue: queue(),
                    waited,
                },
                e => RemoteAskError::NotSent {
                    queue: queue(),
                    reason: e.to_string(),
                },
            });
        }
        let received = match deadline {
            None => rx.recv().map_err(|_| None),
            Some(at) => rx
                .recv_timeout(at.saturating_duration_since(Instant::now()))
                .map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => Some(()),
                    mpsc::RecvTimeoutError::Disconnected => None,
                }),
        };
        let body = match received {
            Ok(body) => body,
            Err(Some(())) => {
                return Err(RemoteAskError::Timeout {
                    queue: queue(),
                    waited,
                });
            }
            Err(None) => {
                return Err(RemoteAskError::Disconnected {
                    queue: queue(),
                    reason: "the reply consumer ended".to_owned(),
                });
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

    /// Starts consuming `amq.rabbitmq.reply-to` on this handle's channel
    /// (once): the broker requires it before a request naming it is published.
    fn consume_answers(&self) -> Result<(), RemoteAskError> {
        let remote = &*self.remote;
        let mut consuming = remote
            .asks
            .consuming
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *consuming {
            return Ok(());
        }
        let consumer = remote
            .link
            .run(
                || format!("consuming `{DIRECT_REPLY_TO}`"),
                remote.channel.basic_consume(
                    ShortString::from(DIRECT_REPLY_TO),
                    ShortString::from(format!("{}.answers", remote.done_queue)),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .map_err(|e| RemoteAskError::Disconnected {
                queue: remote.queue.clone(),
                reason: error_chain(&e),
            })?;
        let asks = Arc::clone(&remote.asks);
        consumer.set_delegate(move |delivery: DeliveryResult| {
            asks.on_delivery(delivery);
            std::future::ready(())
        });
        *consuming = true;
        Ok(())
    }

    /// Waits for every confirm in flight, with one confirm timeout for all.
    fn await_confirms(
        &self,
        in_flight: &mut Vec<(M, String, Sending<'_>)>,
        confirmed: &mut usize,
        refused: &mut Vec<RemoteSendError<M>>,
    ) {
        let timeout = self.remote.link.settings.confirm_timeout;
        let deadline = connection::deadline(timeout);
        for (msg, id, sending) in in_flight.drain(..) {
            match self.conclude(msg, &id, block_until(deadline, sending), timeout) {
                Ok(()) => *confirmed += 1,
                Err(e) => refused.push(e),
            }
        }
    }

    /// Starts publishing: the first poll hands the frames to the connection's
    /// I/O thread at once, in call order, without waiting for them to be
    /// written; the returned future then waits for the write and the confirm.
    fn start(&self, id: &str, body: Vec<u8>) -> Started<'_> {
        let props = codec::message_properties(id, &self.remote.producer);
        let remote = &*self.remote;
        let mut sending: Sending<'_> = Box::pin(async move {
            remote
                .channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(remote.queue.as_str()),
                    mandatory(),
                    &body,
                    props,
                )
                .await?
                .await
        });
        match sending
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => Started::Sending(sending),
            Poll::Ready(Err(e)) => Started::Failed(e),
            Poll::Ready(Ok(confirmation)) => {
                Started::Sending(Box::pin(std::future::ready(Ok(confirmation))))
            }
        }
    }

    /// Encodes the message and gives it an id, counted for `join` from now
    /// on (the done record may beat the confirm).
    fn prepare(&self, msg: M) -> Result<(M, String, Vec<u8>), RemoteSendError<M>> {
        let remote = &*self.remote;
        let body = match codec::encode(&msg) {
            Ok(body) => body,
            Err(reason) => {
                return Err(RemoteSendError::Encode {
                    msg,
                    queue: remote.queue.clone(),
                    reason,
                });
            }
        };
        let id = format!(
            "{}.{}",
            remote.producer,
            remote.next_id.fetch_add(1, Ordering::Relaxed)
        );
        remote.joins.state().outstanding.insert(id.clone());
        Ok((msg, id, body))
    }

    /// Publishes one prepared message (persistent, mandatory).
    fn publish<'a>(
        &'a self,
        id: &str,
        body: &'a [u8],
    ) -> impl Future<Output = lapin::Result<PublisherConfirm>> + 'a {
        let remote = &*self.remote;
        remote.channel.basic_publish(
            ShortString::from(""),
            ShortString::from(remote.queue.as_str()),
            mandatory(),
            body,
            codec::message_properties(id, &remote.producer),
        )
    }

    /// Turns the broker's answer to one publish into the result of the send;
    /// a message that was not confirmed is no longer waited for by `join`.
    fn conclude(
        &self,
        msg: M,
        id: &str,
        outcome: Option<lapin::Result<Confirmation>>,
        waited: Duration,
    ) -> Result<(), RemoteSendError<M>> {
        let queue = || self.remote.queue.clone();
        let refused = match outcome {
            Some(Ok(confirm)) if confirm.is_ack() => match confirm.take_message() {
                None => return Ok(()),
                Some(_) => RemoteSendError::Unroutable {
                    msg,
                    queue: queue(),
                },
            },
            Some(Ok(_)) => RemoteSendError::Nacked {
                msg,
                queue: queue(),
            },
            Some(Err(e)) => RemoteSendError::Disconnected {
                msg,
                queue: queue(),
                reason: e.to_string(),
            },
            None => RemoteSendError::Timeout {
                msg,
                queue: queue(),
                waited,
            },
        };
        self.remote.joins.forget(id);
        Err(refused)
    }
}

impl<M> RemoteHandle<M> {
    /// Blocks until the owner has reported every message this handle (or a
    /// clone) got confirmed as handled: its batch was handled, its `idle`
    /// hook ran, and it is about to be acknowledged. Waits for an owner to
    /// start if none runs.
    ///
    /// # Errors
    ///
    /// [`RemoteJoinError::DeadLettered`] if some of them were dead-lettered
    /// instead (undecodable, or a handler that panicked on every delivery);
    /// [`RemoteJoinError::Disconnected`] if the connection was lost.
    pub fn join(&self) -> Result<(), RemoteJoinError> {
        self.join_until(None)
    }

    /// Like [`join`](RemoteHandle::join), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`join`](RemoteHandle::join), plus [`RemoteJoinError::Timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteJoinError> {
        self.join_until(connection::deadline(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), RemoteJoinError> {
        let remote = &*self.remote;
        let joins = &*remote.joins;
        let mut state = joins.state();
        loop {
            if state.outstanding.is_empty() {
                if state.dead.is_empty() {
                    return Ok(());
                }
                return Err(RemoteJoinError::DeadLettered {
                    queue: remote.queue.clone(),
                    dead: std::mem::take(&mut state.dead),
                });
            }
            if let Some(reason) = &state.lost {
                return Err(RemoteJoinError::Disconnected {
                    queue: remote.queue.clone(),
                    reason: reason.clone(),
                    outstanding: state.outstanding.len(),
                });
            }
            state = match deadline {
                None => joins
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return Err(RemoteJoinError::Timeout {
                            queue: remote.queue.clone(),
                            outstanding: state.outstanding.len(),
                        });
                    }
                    joins
                        .changed
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Messages confirmed (or being sent) and not yet reported done.
    pub fn outstanding(&self) -> usize {
        self.remote.joins.state().outstanding.len()
    }

    /// The name of the manager this handle sends to.
    pub fn name(&self) -> &str {
        &self.remote.name
    }

    /// The queue this handle publishes to, `custody.<name>`.
    pub fn queue(&self) -> &str {
        &self.remote.queue
    }

    /// This handle's producer id (shared by its clones).
    pub fn producer_id(&self) -> &str {
        &self.remote.producer
    }

    /// The queue the owner's done records for this handle arrive in.
    pub fn done_queue(&self) -> &str {
        &self.remote.done_queue
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let deleted = self.link.run(
            || format!("deleting queue `{}`", self.done_queue),
            self.channel.queue_delete(
                ShortString::from(self.done_queue.as_str()),
                QueueDeleteOptions::default(),
            ),
        );
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "done queue not deleted; it expires in an hour");
        }
        let _ = block_until(
            self.link.confirm_deadline(),
            self.channel
                .close(200, ShortString::from("custody: handle dropped")),
        );
    }
}

/// The queue name of RabbitMQ's direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Removes an ask from the waiting ones when it ends.
struct Forget<'a>(&'a Asks, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting().remove(self.1);
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A publish under way: the write and then the confirm.
type Sending<'a> = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + 'a>>;

/// A publish just started.
enum Started<'a> {
    Sending(Sending<'a>),
    Failed(lapin::Error),
}

/// Publishes are mandatory: a missing queue returns the message instead of
/// dropping it.
fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    }
}

/// A producer id unique across processes and machines in practice: the
/// process id, the start time in nanoseconds, and a counter.
fn producer_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}-{}", std::process::id(), nanos, unique())
}
