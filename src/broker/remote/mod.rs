//! The sender side: `RemoteHandle<M>`, a typed address of a manager served
//! from a broker queue, possibly in another process.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use serde::Serialize;

mod ask;
mod awaitable;
mod join;

use ask::Asks;
use join::Joins;

use super::codec;
use super::connection::{Broker, Link, block_until, error_chain};
use super::error::{BrokerError, RemoteSendError, TellAllError};
use super::names;
use super::serve::unique;
use super::shard::partition;
use crate::util::deadline_after;

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
/// **Across a lost connection.** While the [`Broker`] reconnects, each call
/// waits for the new connection until its own deadline (`tell`: the confirm
/// timeout; `tell_timeout`, `ask_timeout`, `join_timeout`: theirs), then
/// opens a new channel and goes on; a call without a deadline (`join`,
/// the wait for an `ask`'s answer, a timeout of `Duration::MAX`) does not
/// wait for one and fails at once with a typed error. A message whose
/// publish was cut before its confirm is published again on the new
/// channel, with the same id: it may then be handled twice, as a
/// redelivered message is. Done records sent meanwhile wait in the durable
/// done queue, so a `join` after the reconnect (or a `join_timeout` across
/// it) still ends truthfully. An `ask` whose request went out on the lost
/// connection ends with [`RemoteAskError::Disconnected`](super::RemoteAskError::Disconnected): its answer was to
/// come back on that connection.
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
    name: String,
    /// `custody.<name>`: the queue of a plain handle, the prefix of a
    /// sharded kind's partition queues.
    queue: String,
    /// Where messages go: the one queue of a plain handle (route 0), or
    /// each partition's queue, by partition.
    routes: Vec<String>,
    /// The partition count of a sharded kind, `None` for a plain handle.
    partitions: Option<u32>,
    producer: String,
    done_queue: String,
    next_id: AtomicU64,
    joins: Arc<Joins>,
    /// Asks waiting for their answer, by correlation id.
    asks: Arc<Asks>,
    /// The channel publishes go on, with the done-queue consumer on it;
    /// replaced once lost, by whichever call needs it next.
    session: Mutex<Option<Arc<Session>>>,
    /// Counts the sessions opened.
    sessions: AtomicU64,
}

/// One channel of a handle.
struct Session {
    id: u64,
    channel: Channel,
    /// Whether the consumer of `amq.rabbitmq.reply-to` runs on it (started
    /// by its first ask).
    answering: Mutex<bool>,
}

impl Session {
    fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

impl Remote {
    /// The current session, if its channel is open.
    fn current(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|s| s.is_open())
            .cloned()
    }

    /// Whether the current session's channel is known to be lost; `false`
    /// while another call is opening a new one (not waited for).
    fn is_lost(&self) -> bool {
        match self.session.try_lock() {
            Ok(slot) => !slot.as_ref().is_some_and(|s| s.is_open()),
            Err(std::sync::TryLockError::Poisoned(slot)) => {
                !slot.into_inner().as_ref().is_some_and(|s| s.is_open())
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// The current session, or a new one once its channel is lost: waits
    /// for a connection until `deadline` (`None`: not at all).
    fn session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, BrokerError> {
        // No deadline: no waiting for a connection.
        let deadline = deadline.or_else(|| Some(Instant::now()));
        loop {
            if let Some(session) = self.current() {
                return Ok(session);
            }
            // Outside the lock: another call with a later deadline may be
            // waiting too.
            let (_, generation) = self
                .link
                .wait_connected(deadline)
                .map_err(|down| self.link.down_error(down))?;
            let mut slot = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(session) = slot.as_ref().filter(|s| s.is_open()) {
                return Ok(Arc::clone(session));
            }
            // Without waiting for a connection under the lock: a call
            // without a deadline must not wait behind it.
            match self.open_session(Some(Instant::now())) {
                Ok(session) => {
                    if slot.is_some() {
                        tracing::info!(queue = %self.queue, producer = %self.producer, "a new channel after the old one was lost");
                    }
                    *slot = Some(Arc::clone(&session));
                    return Ok(session);
                }
                // The connection went again: wait for the next one.
                Err(_) if !self.link.is_connected() && !self.link.is_final() => {
                    drop(slot);
                    self.link.wait_replaced(generation, deadline)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A channel with confirms on, the manager's queue and the done queue
    /// declared (again), and the done queue consumed.
    fn open_session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, BrokerError> {
        let link = &*self.link;
        let channel = link.confirmed_channel_until(deadline)?;
        match self.partitions {
            None => link.declare_mailbox(&channel, &self.name)?,
            Some(n) => link.declare_sharded_on(&channel, &self.name, n)?,
        }
        let done_queue = &self.done_queue;
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
        let id = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        // Acknowledged (not no-ack): a record in flight when a connection
        // is lost goes back to the queue instead of being lost with it.
        // Not exclusive: a consumer of a lost connection the broker has not
        // noticed yet would refuse the new one.
        let consumer = link.run(
            || format!("consuming from `{done_queue}`"),
            channel.basic_consume(
                ShortString::from(done_queue.as_str()),
                ShortString::from(format!("{done_queue}.join.{id}")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )?;
        self.joins.state().consuming = Some(id);
        let fed = Arc::clone(&self.joins);
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let acker = fed.on_delivery(id, delivery);
            async move {
                if let Some(acker) = acker {
                    let _ = acker.ack(BasicAckOptions::default()).await;
                }
            }
        });
        Ok(Arc::new(Session {
            id,
            channel,
            answering: Mutex::new(false),
        }))
    }
}

impl<M: Serialize> RemoteHandle<M> {
    pub(crate) fn new(broker: &Broker, name: &str) -> Result<RemoteHandle<M>, BrokerError> {
        names::check_name(name)?;
        RemoteHandle::with_routes(broker, name, None)
    }

    /// A handle to every partition of the sharded kind `kind`: route `p`
    /// is partition `p`'s queue.
    pub(crate) fn sharded(
        broker: &Broker,
        kind: &str,
        partitions: u32,
    ) -> Result<RemoteHandle<M>, BrokerError> {
        partition::check(kind, partitions)?;
        RemoteHandle::with_routes(broker, kind, Some(partitions))
    }

    fn with_routes(
        broker: &Broker,
        name: &str,
        partitions: Option<u32>,
    ) -> Result<RemoteHandle<M>, BrokerError> {
        let link = Arc::clone(&broker.link);
        let producer = producer_id();
        let done_queue = names::done_queue(&producer);
        let routes = match partitions {
            None => vec![names::mailbox_queue(name)],
            Some(n) => (0..n)
                .map(|p| names::mailbox_queue(&partition::partition_name(name, p)))
                .collect(),
        };
        let remote = Remote {
            name: name.to_owned(),
            queue: names::mailbox_queue(name),
            routes,
            partitions,
            producer,
            done_queue,
            next_id: AtomicU64::new(0),
            joins: Arc::new(Joins::default()),
            asks: Arc::new(Asks::default()),
            session: Mutex::new(None),
            sessions: AtomicU64::new(0),
            link,
        };
        let session = remote.open_session(remote.link.confirm_deadline())?;
        *remote
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(session);
        Ok(RemoteHandle {
            remote: Arc::new(remote),
            _msg: PhantomData,
        })
    }

    /// Publishes `msg` as a persistent message and waits (at most the
    /// broker's confirm timeout) for the broker to confirm it: `Ok` means it
    /// is in the queue, on disk, and will be handled by the owner (now, or
    /// when one starts). During a reconnect it waits for the new
    /// connection within the same confirm timeout.
    ///
    /// # Errors
    ///
    /// [`RemoteSendError`] with the message inside: `Timeout`, `Nacked`,
    /// `Unroutable` (the queue was deleted), `Disconnected`, `Unreachable`
    /// (no connection came in time: not sent), `Encode`.
    pub fn tell(&self, msg: M) -> Result<(), RemoteSendError<M>> {
        self.tell_timeout(msg, self.remote.link.settings.confirm_timeout)
    }

    /// Like [`tell`](RemoteHandle::tell), waiting at most `timeout` for a
    /// connection and the confirm together.
    ///
    /// # Errors
    ///
    /// As [`tell`](RemoteHandle::tell). After a `Timeout` the broker may still
    /// take the message; `join` does not wait for it.
    pub fn tell_timeout(&self, msg: M, timeout: Duration) -> Result<(), RemoteSendError<M>> {
        self.tell_timeout_on(0, msg, timeout)
    }

    /// [`tell_timeout`](Self::tell_timeout) to route `route`.
    pub(crate) fn tell_timeout_on(
        &self,
        route: usize,
        msg: M,
        timeout: Duration,
    ) -> Result<(), RemoteSendError<M>> {
        let (msg, id, body) = self.prepare(msg, route)?;
        let deadline = deadline_after(timeout);
        let flight = self.launch(msg, id, Arc::new(body), route, deadline, None)?;
        let mut confirmed = 0;
        let mut refused = Vec::new();
        self.land(
            vec![flight],
            &|| deadline,
            timeout,
            &mut confirmed,
            &mut refused,
            &mut None,
        );
        match refused.pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends every message with many publishes in flight at once (up to
    /// 1024), then waits for their confirms: much faster than one `tell`
    /// after another, which waits for each confirm (about an fsync on the
    /// broker) before the next publish. The messages reach the queue in
    /// iteration order. Each confirm wait ends at the confirm timeout.
    /// Across a lost connection, the messages not yet confirmed are
    /// published again on the new one, before any later message (each wait
    /// for it ends at the confirm timeout too); one that the broker had
    /// taken before the loss is then in the queue twice, the first time in
    /// order. If no connection comes in time, the rest are refused as
    /// `Unreachable` without waiting again.
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
        self.tell_all_on(msgs.into_iter().map(|msg| (0, msg)))
    }

    /// [`tell_all`](Self::tell_all), each message to its own route.
    pub(crate) fn tell_all_on<I>(&self, msgs: I) -> Result<(), TellAllError<M>>
    where
        I: IntoIterator<Item = (usize, M)>,
    {
        const WINDOW: usize = 1024;
        let timeout = self.remote.link.settings.confirm_timeout;
        let next_deadline = || deadline_after(timeout);
        let mut refused = Vec::new();
        let mut confirmed = 0;
        let mut in_flight = Vec::with_capacity(WINDOW);
        // Once no connection came in time, the rest are refused without
        // waiting for one again.
        let mut broken: Option<String> = None;
        for (route, msg) in msgs {
            if let Some(reason) = &broken {
                refused.push(RemoteSendError::Unreachable {
                    msg,
                    queue: self.remote.routes[route].clone(),
                    reason: reason.clone(),
                });
                continue;
            }
            let (msg, id, body) = match self.prepare(msg, route) {
                Ok(prepared) => prepared,
                Err(e) => {
                    refused.push(e);
                    continue;
                }
            };
            let mut prepared = (msg, id, Arc::new(body));
            loop {
                let (msg, id, body) = prepared;
                // Only on the channel of the messages in flight: once it is
                // lost, they go again first, so that the order holds.
                let after = in_flight.last().map(|f: &Flight<M>| Arc::clone(&f.session));
                match self.launch_once(
                    msg,
                    id,
                    body,
                    route,
                    next_deadline(),
                    None,
                    after.as_deref(),
                ) {
                    Launch::Flying(flight) => in_flight.push(flight),
                    Launch::Again(msg, id, body, _) => {
                        let flights = std::mem::take(&mut in_flight);
                        self.land(
                            flights,
                            &next_deadline,
                            timeout,
                            &mut confirmed,
                            &mut refused,
                            &mut broken,
                        );
                        if let Some(reason) = &broken {
                            self.remote.joins.forget(&id);
                            refused.push(RemoteSendError::Unreachable {
                                msg,
                                queue: self.remote.routes[route].clone(),
                                reason: reason.clone(),
                            });
                            break;
                        }
                        prepared = (msg, id, body);
                        continue;
                    }
                    Launch::Refused(e) => {
                        if matches!(e, RemoteSendError::Unreachable { .. }) {
                            broken = Some(unsent_reason(&e));
                        }
                        refused.push(e);
                    }
                }
                break;
            }
            if in_flight.len() >= WINDOW {
                let flights = std::mem::take(&mut in_flight);
                self.land(
                    flights,
                    &next_deadline,
                    timeout,
                    &mut confirmed,
                    &mut refused,
                    &mut broken,
                );
            }
        }
        self.land(
            in_flight,
            &next_deadline,
            timeout,
            &mut confirmed,
            &mut refused,
            &mut broken,
        );
        if refused.is_empty() {
            Ok(())
        } else {
            Err(TellAllError { confirmed, refused })
        }
    }

    /// Starts publishing a prepared message on the current channel, waiting
    /// for a connection until `deadline`; `cut` says why an earlier publish
    /// of it was cut short, if one was.
    fn launch(
        &self,
        mut msg: M,
        mut id: String,
        mut body: Arc<Vec<u8>>,
        route: usize,
        deadline: Option<Instant>,
        mut cut: Option<String>,
    ) -> Result<Flight<M>, RemoteSendError<M>> {
        loop {
            match self.launch_once(msg, id, body, route, deadline, cut, None) {
                Launch::Flying(flight) => return Ok(flight),
                Launch::Refused(e) => return Err(e),
                Launch::Again(m, i, b, c) => (msg, id, body, cut) = (m, i, b, c),
            }
        }
    }

    /// One try of [`launch`](Self::launch); with `after`, only on that
    /// session (the one of the messages in flight before this one).
    // The message travels by value through every try (given back in
    // `Again` and `Refused`), so its parts stay separate arguments.
    #[allow(clippy::too_many_arguments)]
    fn launch_once(
        &self,
        msg: M,
        id: String,
        body: Arc<Vec<u8>>,
        route: usize,
        deadline: Option<Instant>,
        cut: Option<String>,
        after: Option<&Session>,
    ) -> Launch<M> {
        let session = match self.remote.session(deadline) {
            Ok(session) => session,
            Err(e) => return Launch::Refused(self.unsent(msg, &id, route, cut, &e)),
        };
        if after.is_some_and(|after| after.id != session.id) {
            return Launch::Again(msg, id, body, cut);
        }
        match self.start(&session, &id, Arc::clone(&body), route) {
            Started::Sending(sending) => Launch::Flying(Flight {
                msg,
                id,
                body,
                route,
                session,
                sending,
            }),
            // Refused before anything went out: the channel is gone.
            Started::Failed(e) if self.lost_with(&session, &e) => Launch::Again(msg, id, body, cut),
            Started::Failed(e) => {
                self.remote.joins.forget(&id);
                Launch::Refused(RemoteSendError::Disconnected {
                    msg,
                    queue: self.remote.routes[route].clone(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Waits for the confirms of `flights`; publishes those whose channel
    /// was lost first again on a new one, in their order, each round with a
    /// deadline from `next_deadline`. Sets `broken` to why no new channel
    /// came, if none did (and refuses them at once if it was set).
    fn land(
        &self,
        mut flights: Vec<Flight<M>>,
        next_deadline: &dyn Fn() -> Option<Instant>,
        waited: Duration,
        confirmed: &mut usize,
        refused: &mut Vec<RemoteSendError<M>>,
        broken: &mut Option<String>,
    ) {
        while !flights.is_empty() {
            let deadline = next_deadline();
            let mut cut = Vec::new();
            for flight in flights.drain(..) {
                let Flight {
                    msg,
                    id,
                    body,
                    route,
                    session,
                    sending,
                } = flight;
                match block_until(deadline, sending) {
                    Some(Err(e)) if self.lost_with(&session, &e) => {
                        cut.push((msg, id, body, route, e.to_string()));
                    }
                    outcome => match self.conclude(msg, &id, route, outcome, waited) {
                        Ok(()) => *confirmed += 1,
                        Err(e) => refused.push(e),
                    },
                }
            }
            if cut.is_empty() {
                break;
            }
            let deadline = next_deadline();
            for (msg, id, body, route, why) in cut {
                if let Some(reason) = broken {
                    self.remote.joins.forget(&id);
                    refused.push(RemoteSendError::Disconnected {
                        msg,
                        queue: self.remote.routes[route].clone(),
                        reason: format!("{why}; not sent again: {reason}"),
                    });
                    continue;
                }
                tracing::debug!(id, "a publish cut by a lost connection: sending it again");
                match self.launch(msg, id, body, route, deadline, Some(why)) {
                    Ok(flight) => flights.push(flight),
                    Err(e) => {
                        *broken = Some(unsent_reason(&e));
                        refused.push(e);
                    }
                }
            }
        }
    }

    /// Whether a publish on `session` failed with `e` because the channel or
    /// the connection is gone, and a new one may come: the pending writes
    /// fail with the connection's error before the channel's state says so.
    fn lost_with(&self, session: &Session, e: &lapin::Error) -> bool {
        let link = &*self.remote.link;
        !link.is_final()
            && (!session.is_open()
                || !link.is_connected()
                || matches!(
                    e.kind(),
                    lapin::ErrorKind::IOError(_)
                        | lapin::ErrorKind::InvalidChannelState(..)
                        | lapin::ErrorKind::InvalidConnectionState(_)
                ))
    }

    /// The error for a message that could not be (sent) again: `cut` if an
    /// earlier publish of it may have reached the broker.
    fn unsent(
        &self,
        msg: M,
        id: &str,
        route: usize,
        cut: Option<String>,
        why: &BrokerError,
    ) -> RemoteSendError<M> {
        self.remote.joins.forget(id);
        let queue = self.remote.routes[route].clone();
        match cut {
            Some(cut) => RemoteSendError::Disconnected {
                msg,
                queue,
                reason: format!("{cut}; not sent again: {}", error_chain(why)),
            },
            None => RemoteSendError::Unreachable {
                msg,
                queue,
                reason: error_chain(why),
            },
        }
    }

    /// Starts publishing on `session`: the first poll hands the frames to
    /// the connection's I/O thread at once, in call order, without waiting
    /// for them to be written; the returned future then waits for the write
    /// and the confirm.
    fn start(&self, session: &Session, id: &str, body: Arc<Vec<u8>>, route: usize) -> Started {
        let props = codec::message_properties(id, &self.remote.producer);
        let channel = session.channel.clone();
        let queue = ShortString::from(self.remote.routes[route].as_str());
        let mut sending: Sending = Box::pin(async move {
            channel
                .basic_publish(ShortString::from(""), queue, mandatory(), &body, props)
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
    fn prepare(&self, msg: M, route: usize) -> Result<(M, String, Vec<u8>), RemoteSendError<M>> {
        let remote = &*self.remote;
        let body = match codec::encode(&msg) {
            Ok(body) => body,
            Err(reason) => {
                return Err(RemoteSendError::Encode {
                    msg,
                    queue: remote.routes[route].clone(),
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

    /// Turns the broker's answer to one publish into the result of the send;
    /// a message that was not confirmed is no longer waited for by `join`.
    fn conclude(
        &self,
        msg: M,
        id: &str,
        route: usize,
        outcome: Option<lapin::Result<Confirmation>>,
        waited: Duration,
    ) -> Result<(), RemoteSendError<M>> {
        let queue = || self.remote.routes[route].clone();
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
    /// The broker's confirm timeout, what a `tell` waits at most.
    pub(crate) fn confirm_timeout(&self) -> Duration {
        self.remote.link.settings.confirm_timeout
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
        // Without an open channel the done queue is left to expire (in an
        // hour), rather than waiting for a connection here.
        let Some(session) = self.current() else {
            tracing::debug!(queue = %self.done_queue, "no connection: the done queue expires in an hour");
            return;
        };
        let deleted = self.link.run(
            || format!("deleting queue `{}`", self.done_queue),
            session.channel.queue_delete(
                ShortString::from(self.done_queue.as_str()),
                QueueDeleteOptions::default(),
            ),
        );
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "done queue not deleted; it expires in an hour");
        }
        let _ = block_until(
            self.link.confirm_deadline(),
            session
                .channel
                .close(200, ShortString::from("custody: handle dropped")),
        );
    }
}

/// The reason inside a send error, for the messages refused after it.
fn unsent_reason<M>(e: &RemoteSendError<M>) -> String {
    match e {
        RemoteSendError::Unreachable { reason, .. }
        | RemoteSendError::Disconnected { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A publish under way: the write and then the confirm.
type Sending = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>>>>;

/// What became of one try to publish.
enum Launch<M> {
    /// Published; the confirm is awaited.
    Flying(Flight<M>),
    /// To try again (on a new channel), with the reason an earlier publish
    /// was cut, if one was.
    Again(M, String, Arc<Vec<u8>>, Option<String>),
    /// Not sent, or not sent again.
    Refused(RemoteSendError<M>),
}

/// A publish just started.
enum Started {
    Sending(Sending),
    Failed(lapin::Error),
}

/// A message published and not yet confirmed, with what it takes to
/// publish it again on a new channel.
struct Flight<M> {
    msg: M,
    id: String,
    body: Arc<Vec<u8>>,
    /// Which of the handle's queues it goes to.
    route: usize,
    session: Arc<Session>,
    sending: Sending,
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
pub(crate) fn producer_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}-{}", std::process::id(), nanos, unique())
}
