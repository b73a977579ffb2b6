//! The owner side: a manager fed from its durable queue.
//!
//! ```text
//! consumer thread                          manager thread (the one loop)
//! ---------------                          -----------------------------
//! delivery -> check size, headers and      handle ... handle, idle
//!             properties, decode CBOR      settle(last tag):
//!   ok:  note (tag, origin), deliver  -->    publish answers and done records,
//!   bad (or the decode panicked):            await their confirms,
//!        copy to custody.<name>.dead         then basic_ack(last tag, multiple)
//!        with x-custody-error, tell the    failed(tag):
//!        asker and the producer, ack it      nack and requeue it, or on its last
//!                                            delivery dead-letter it with the panic
//! redelivered (returned by a crash, a kill, a lost channel, a panic or a
//! hand-over): wait until everything handed over is settled, charge it in
//! custody.<name>.charges (or, charged up to the limit, dead-letter it), hand
//! it over alone, and wait until it is settled
//! asked to stop, refused, or the manager exited:
//!   hand over nothing more, stop the manager, wait until it has settled,
//!   close the channel (what was sent ahead returns to the queue)
//! the channel (or the connection) lost, reconnecting on:
//!   the broker has returned what was not acked, maybe to a standby; wait
//!   for the connection, open a channel, declare, consume again (as a
//!   standby, if another owner is active now); the lost channel's
//!   deliveries in the manager's hands are never acked, answered or
//!   reported done: their redelivery is
//! lost for good (reconnecting off, the broker closed), or the consumer
//! cancelled:
//!   another owner may be active already: stop the manager at once (its
//!   mailbox is dropped, its batch in hand is neither settled nor, for a
//!   RemoteDatabase, committed), answer and acknowledge nothing more
//! ```
//!
//! The manager's tags are a sequence of the owner's own, across channels;
//! each open delivery keeps its channel (session) and its broker tag, which
//! is acknowledged on that channel only.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer, PublisherConfirm};
use serde::de::DeserializeOwned;

use super::book::{Answering, Book, Open};
use super::codec::{self, Checked, DoneRecord, Origin};
use super::connection::{self, Broker, Link, block_until};
use super::error::{BrokerError, InvalidDelivery};
use super::names;
use super::reply::{self, AnswerSink, Binding, Target, WireAnswer};
use crate::handle::Handle;
use crate::mailbox::SettleOutside;
use crate::manager::Manager;
use crate::manager_thread::panic_message;
use crate::runtime::Runtime;
use crate::stats::OutsideStats;
use crate::util::deadline_after;

/// A manager served from its broker queue; stops serving when dropped.
///
/// Stopping (by [`stop`](Served::stop) or drop) is graceful: no more
/// deliveries are handed to the manager; it handles and acknowledges those it
/// was given (its `idle` hook runs after the last batch, then `stopped`);
/// then the channel closes, and the deliveries the broker had sent ahead (at
/// most the prefetch) go back to the queue, in order, for the next owner.
/// On RabbitMQ 3.x each such return counts on the broker towards the queue's
/// `x-delivery-limit`, which is therefore only a backstop, far above
/// [`BrokerBuilder::delivery_limit`](super::BrokerBuilder::delivery_limit):
/// a redelivered message is handed over alone, charged first in a durable
/// record of the queue's own (`custody.<name>.charges`), so an owner that
/// crashes, is killed or loses its connection while handling it charges
/// that message only, and the owner dead-letters it (telling its producer
/// and asker) once charged up to the limit. Only then does a standby become the active owner, so a graceful
/// hand-over never has two owners handling one queue at once.
///
/// A [`Runtime::shutdown`] ends the serving the same way: the manager refuses
/// the next delivery, and the consumer stops handing any over. A manager that
/// exits on its own ([`Runtime::shutdown_now`], or its panic policy stopping
/// it for good) ends the serving too, within a fraction of a second: what it
/// had not settled goes back to the queue, for a standby.
///
/// A lost channel or connection is no hand-over: the broker has already
/// returned the unacknowledged deliveries to the queue, and a standby may be
/// handling them, so nothing the manager handled since its last settled
/// batch is answered, reported done or acknowledged (see the
/// [module docs](crate::broker) on two owners at once). Unless the
/// [`Broker`] reconnects (its default), or the broker cancelled the
/// consumer, the manager is stopped at once: what is in its mailbox is
/// dropped. When it reconnects, the serving does not end: once there is a
/// connection again the same manager is subscribed again, as the active
/// owner or, if another owner took over meanwhile, as its standby. The
/// deliveries of the lost channel still in its mailbox are then handled
/// (the manager loop cannot drop them and keep the manager): a plain
/// manager may handle them twice, at least once as always, while a
/// [`RemoteDatabase`](crate::resources::RemoteDatabase) is fenced by its
/// owner epoch. [`stop`](Served::stop) during the outage returns without
/// waiting for it to end.
pub struct Served<M: Send + 'static> {
    handle: Handle<M>,
    owner: Arc<Owner>,
    thread: Option<JoinHandle<()>>,
}

impl<M: Send + 'static> fmt::Debug for Served<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("name", &self.handle.name())
            .field("queue", &self.owner.queue)
            .finish_non_exhaustive()
    }
}

impl<M: Send + 'static> Served<M> {
    /// The local handle of the served manager: its stats, `join`, `len`.
    /// Messages told through it skip the broker (they are not durable).
    pub fn handle(&self) -> &Handle<M> {
        &self.handle
    }

    /// The queue this manager is served from, `custody.<name>`.
    pub fn queue(&self) -> &str {
        &self.owner.queue
    }

    /// Whether it serves: `false` once stopped, or once the serving ended on
    /// its own, which stops the manager too: the channel or the connection
    /// was lost for good (reconnecting off, or the broker closed) or the
    /// queue deleted (the manager is then stopped at once, its mailbox
    /// dropped: another owner may be active already), the manager refused a
    /// delivery (after a runtime shutdown, at the next delivery), or the
    /// manager exited (an immediate stop, its panic policy stopping it for
    /// good, or a `RemoteDatabase` that found another owner active). Its
    /// unacknowledged deliveries then go back to the queue, for a standby.
    /// Also `false` while a lost channel or connection is being replaced,
    /// and `true` again once it consumes from the queue again.
    pub fn is_serving(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
            && self.owner.serving.load(Ordering::SeqCst)
    }

    /// Stops serving gracefully and waits until it is done (see [`Served`]).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.owner.stop.raise();
        if thread.join().is_err() {
            tracing::error!(queue = %self.owner.queue, "the consumer thread panicked");
        }
    }
}

impl<M: Send + 'static> Drop for Served<M> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The owner's channel and the book of deliveries not yet settled.
pub(crate) struct Owner {
    link: Arc<Link>,
    /// The channel deliveries come on now; replaced after a loss.
    session: Mutex<Session>,
    /// Whether a consumer is registered on the current channel (`false`
    /// while the connection is being replaced).
    serving: AtomicBool,
    name: String,
    queue: String,
    dead_queue: String,
    book: Mutex<Book>,
    /// Notified when deliveries leave `book.open` (settled, failed or
    /// forgotten): the consumer thread waits on it to hand a redelivered
    /// message over alone.
    emptied: Condvar,
    /// `custody.<name>.charges`: the durable record of which redelivered
    /// message was in hand, and how often, when an owner stopped.
    charges_queue: String,
    charges: Mutex<Charges>,
    /// Held through a whole flush of the pending done records, so that a
    /// batch is acknowledged only after its records are confirmed, even when
    /// the consumer thread is flushing a dead record at the same time.
    flushing: Mutex<()>,
    /// Raised by `Served::stop`: hand the manager no more deliveries.
    stop: StopSignal,
    /// Delivered, redelivered, acked, dead-lettered.
    counts: Counts,
    /// The owner of the channel that moves the broker's own dead letters
    /// (`custody.<name>.limit`) to the dead-letter queue, reporting each;
    /// closed when the serving ends. It subscribes again on its own after a
    /// lost connection.
    reporter: Mutex<Option<Arc<Owner>>>,
    /// Whether the manager was stopped at once (by the consumer thread when
    /// the channel was lost, by the manager itself when it found it was
    /// superseded, or by an immediate stop); set once it is spawned.
    aborted: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

/// How many times each message stopped an owner while it was handled alone
/// (a redelivered message is): kept in memory by the active owner and
/// written, before each such message is handed over, as the one message of
/// the quorum queue `custody.<name>.charges` (`x-max-length` 1, so each
/// write replaces the last). A crash, a kill or a lost connection while a
/// message is in hand leaves that message's charge in the record for the
/// next owner; the messages merely returned with the prefetch window are not
/// in it. The broker's own `x-delivery-count` counts those returns too (and
/// a forged one arrives on a first delivery), so it decides nothing here.
#[derive(Default)]
struct Charges {
    /// Whether the record was read from the broker (at the first
    /// redelivered delivery, once this owner is the active one).
    loaded: bool,
    /// By message id.
    by_id: BTreeMap<String, u32>,
}

/// The queue's counters, written by the consumer and manager threads.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    dead_lettered: AtomicU64,
    stale: AtomicU64,
}

impl Counts {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One channel of the owner: its delivery tags mean something on it only.
struct Session {
    channel: Channel,
    /// Counts the owner's channels, from 1.
    id: u64,
    /// `false` once the channel is known to be lost: none of its deliveries
    /// is settled any more (the broker has returned them to the queue).
    live: bool,
    /// Whether a delivery came on it: its consumer is the active one.
    delivered: bool,
}

pub(crate) fn serve<Mg>(
    broker: &Broker,
    rt: &Runtime,
    name: &str,
    manager: Mg,
) -> Result<Served<Mg::Msg>, BrokerError>
where
    Mg: Manager,
    Mg::Msg: DeserializeOwned,
{
    names::check_name(name)?;
    let link = Arc::clone(&broker.link);
    let queue = names::mailbox_queue(name);
    let channel = open_channel(&link, name, &queue, link.confirm_deadline())?;
    let charges_queue = names::charges_queue(name);
    let mut charges_args = FieldTable::default();
    charges_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    charges_args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    link.run(
        || format!("declaring queue `{charges_queue}`"),
        channel.queue_declare(
            ShortString::from(charges_queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            charges_args,
        ),
    )?;
    let owner = Arc::new(Owner {
        link: Arc::clone(&link),
        session: Mutex::new(Session {
            channel: channel.clone(),
            id: 1,
            live: true,
            delivered: false,
        }),
        serving: AtomicBool::new(true),
        name: name.to_owned(),
        queue: queue.clone(),
        dead_queue: names::dead_queue(name),
        book: Mutex::new(Book::default()),
        emptied: Condvar::new(),
        charges_queue,
        charges: Mutex::new(Charges::default()),
        flushing: Mutex::new(()),
        stop: StopSignal::default(),
        counts: Counts::default(),
        reporter: Mutex::new(None),
        aborted: OnceLock::new(),
    });
    let settler: Box<dyn SettleOutside> = Box::new(Settler(Arc::clone(&owner)));
    let handle = match rt.manager(name).outside(settler).spawn(manager) {
        Ok(handle) => handle,
        Err(e) => {
            owner.close_channel();
            return Err(e.into());
        }
    };
    let shared = Arc::downgrade(&handle.shared);
    let _ = owner.aborted.set(Box::new(move || {
        shared.upgrade().is_none_or(|shared| shared.is_aborted())
    }));
    let registered = Registered::new(&handle, &owner);
    match report_broker_dead_letters(&owner) {
        Ok(reporter) => {
            *owner
                .reporter
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(reporter)
        }
        Err(e) => {
            tracing::warn!(%queue, error = %e, "the broker's dead letters are not reported by this owner")
        }
    }
    let consumer = match owner.consume_on(&channel) {
        Ok(consumer) => consumer,
        Err(e) => {
            handle.stop();
            owner.close_channel();
            return Err(e);
        }
    };
    let thread_owner = Arc::clone(&owner);
    let thread_handle = handle.clone();
    let thread = std::thread::Builder::new()
        .name(format!("custody-amqp-{name}"))
        .spawn(move || {
            let _registered = registered;
            consume(consumer, thread_handle, thread_owner);
        });
    let thread = match thread {
        Ok(thread) => thread,
        Err(source) => {
            handle.stop();
            owner.close_channel();
            return Err(crate::error::SpawnError::Thread {
                name: name.to_owned(),
                source,
            }
            .into());
        }
    };
    tracing::debug!(%queue, "serving");
    Ok(Served {
        handle,
        owner,
        thread: Some(thread),
    })
}

/// A channel for an owner of `name`: confirms on, the queue declared, the
/// prefetch set.
fn open_channel(
    link: &Link,
    name: &str,
    queue: &str,
    wait: Option<Instant>,
) -> Result<Channel, BrokerError> {
    let channel = link.confirmed_channel_until(wait)?;
    link.declare_mailbox(&channel, name)?;
    link.run(
        || format!("setting the prefetch for `{queue}`"),
        channel.basic_qos(link.settings.prefetch, BasicQosOptions::default()),
    )?;
    Ok(channel)
}

/// Consumes `custody.<name>.limit`, where the broker dead-letters on its own
/// (a message returned more than its `x-delivery-limit`, a backstop far
/// above the owners' limit), on a channel of its own: each message is
/// copied to `custody.<name>.dead` with the reason, its asker answered
/// `DeadLettered` and its producer's `join` told, then acknowledged (or, if
/// the copy is not confirmed, requeued for the next try). A lost channel is
/// replaced as the owner's is (reconnecting on): a new channel on the new
/// connection, consuming again; the lost channel's tags are never
/// acknowledged. Its thread ends when the channel is closed, with the
/// serving, or is lost for good.
fn report_broker_dead_letters(owner: &Owner) -> Result<Arc<Owner>, BrokerError> {
    let link = &owner.link;
    let limit_queue = names::limit_queue(&owner.name);
    let channel = open_channel(link, &owner.name, &limit_queue, link.confirm_deadline())?;
    let reporter = Arc::new(Owner {
        link: Arc::clone(link),
        session: Mutex::new(Session {
            channel: channel.clone(),
            id: 1,
            live: true,
            delivered: false,
        }),
        serving: AtomicBool::new(true),
        name: owner.name.clone(),
        queue: limit_queue,
        dead_queue: owner.dead_queue.clone(),
        book: Mutex::new(Book::default()),
        emptied: Condvar::new(),
        charges_queue: owner.charges_queue.clone(),
        charges: Mutex::new(Charges::default()),
        flushing: Mutex::new(()),
        stop: StopSignal::default(),
        counts: Counts::default(),
        reporter: Mutex::new(None),
        aborted: OnceLock::new(),
    });
    let consumer = match reporter.consume_on(&channel) {
        Ok(consumer) => consumer,
        Err(e) => {
            reporter.close_channel();
            return Err(e);
        }
    };
    let limit =
        u64::from(link.settings.delivery_limit) + u64::from(connection::BROKER_LIMIT_MARGIN);
    let thread_reporter = Arc::clone(&reporter);
    let spawned = std::thread::Builder::new()
        .name(format!("custody-amqp-{}-limit", owner.name))
        .spawn(move || report(consumer, &thread_reporter, limit));
    if let Err(source) = spawned {
        reporter.close_channel();
        return Err(crate::error::SpawnError::Thread {
            name: owner.name.clone(),
            source,
        }
        .into());
    }
    Ok(reporter)
}

/// The reporter's thread: reports each of the broker's dead letters, and
/// subscribes again after a lost channel, until its channel is closed (or
/// the consumer cancelled, or the channel lost for good).
fn report(mut consumer: Consumer, reporter: &Owner, limit: u64) {
    let reason = format!(
        "dead-lettered by the broker: returned to the queue more than its delivery limit ({limit}) times"
    );
    loop {
        let session = reporter.session().id;
        while let Some(Some(Ok(delivery))) = block_until(None, consumer.next()) {
            let checked = codec::check(&delivery.properties, delivery.data.len(), usize::MAX);
            tracing::warn!(queue = %reporter.queue, id = ?checked.origin.as_ref().map(|o| &o.id), "the broker dead-lettered a message: reported");
            let report = panic::catch_unwind(AssertUnwindSafe(|| {
                reporter.dead_letter(
                    session,
                    delivery.delivery_tag,
                    &delivery.data,
                    &delivery.properties,
                    checked.origin,
                    checked.target.as_ref(),
                    &reason,
                );
            }));
            if report.is_err() {
                tracing::error!(queue = %reporter.queue, "reporting a dead letter panicked");
                reporter.nack(session, delivery.delivery_tag);
            }
        }
        // Closed with the serving, or cancelled (its queue deleted): done.
        if reporter.stop.is_raised() || reporter.channel().status().connected() {
            return;
        }
        match reporter.restart(&|| false) {
            // The old consumer's channel is gone: dropping it sends nothing.
            Some(next) => consumer = next,
            None => return,
        }
    }
}

/// A number unique in this process.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The owners of the managers served in this process, by the address of the
/// manager's shared state: how a served manager (a `RemoteDatabase`) finds
/// its owner, to ask the broker whether it is still the active owner.
fn owners() -> MutexGuard<'static, HashMap<usize, Weak<Owner>>> {
    static OWNERS: OnceLock<Mutex<HashMap<usize, Weak<Owner>>>> = OnceLock::new();
    OWNERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn owner_key<M: Send + 'static>(handle: &Handle<M>) -> usize {
    Arc::as_ptr(&handle.shared).addr()
}

/// Keeps a served manager's owner findable while its consumer thread runs.
struct Registered(usize);

impl Registered {
    fn new<M: Send + 'static>(handle: &Handle<M>, owner: &Arc<Owner>) -> Registered {
        let key = owner_key(handle);
        owners().insert(key, Arc::downgrade(owner));
        Registered(key)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        owners().remove(&self.0);
    }
}

/// What the broker says of the owner of a manager.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // RemoteDatabase uses it
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// The manager is not served from a broker queue in this process.
    NotServed,
    /// Its owner's channel answered a round trip to the broker just now, so
    /// its consumer was still registered, the active one.
    Active,
    /// Its channel or connection is lost, or did not answer within the
    /// confirm timeout: another owner may be active.
    Lost,
}

/// Whether the manager of `handle` is served from a broker queue here.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // RemoteDatabase uses it
pub(crate) fn is_served<M: Send + 'static>(handle: &Handle<M>) -> bool {
    owners().contains_key(&owner_key(handle))
}

/// Asks the broker, with a round trip on the owner's channel, whether the
/// manager of `handle` is still its queue's active owner. Blocks for at
/// most the confirm timeout.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // RemoteDatabase uses it
pub(crate) fn ownership<M: Send + 'static>(handle: &Handle<M>) -> Ownership {
    let owner = owners().get(&owner_key(handle)).and_then(Weak::upgrade);
    match owner {
        None => Ownership::NotServed,
        Some(owner) if owner.confirm_active() => Ownership::Active,
        Some(_) => Ownership::Lost,
    }
}

/// How often a consumer waiting for deliveries looks whether its manager has
/// exited (stopped for good by its panic policy, or by an immediate stop).
const EXIT_POLL: Duration = Duration::from_millis(100);

/// The consumer thread: checks and decodes each delivery and hands it to the
/// manager.
///
/// When asked to stop (or when the manager refuses a delivery, in a runtime
/// shutdown, or has exited), it hands over nothing more, waits until the
/// manager has handled and settled everything it was given, and only then
/// closes the channel, which returns the deliveries it held back to the
/// queue. It does not cancel the consumer first: on a single-active-consumer
/// queue a cancel makes the standby active at once, while this owner would
/// still be handling earlier messages: two owners, and the order lost.
///
/// No delivery ends the serving: a delivery that fails its checks, does not
/// decode, or whose decoding panics is dead-lettered with the reason. A panic
/// of this thread's own code is caught too: it is logged as an error, and the
/// serving ends the same orderly way, which makes a standby active.
fn consume<M: DeserializeOwned + Send + 'static>(
    mut consumer: Consumer,
    handle: Handle<M>,
    owner: Arc<Owner>,
) {
    let span = tracing::info_span!("remote", queue = %owner.queue);
    let _span = span.enter();
    // The consumer lives until the channel closes: dropping it earlier
    // cancels it, which makes a standby active while this owner still works.
    // A channel lost (with the connection, or alone) is replaced, and the
    // same manager goes on with the deliveries of the new one.
    let fed = panic::catch_unwind(AssertUnwindSafe(|| {
        while let Fed::Lost = feed(&mut consumer, &handle, &owner) {
            match owner.restart(&|| handle.has_exited()) {
                // The old consumer's channel is gone: dropping it sends nothing.
                Some(next) => consumer = next,
                None => {
                    // Asked to stop, or lost for good, while without a
                    // channel: all the mailbox holds came on the lost one,
                    // and may be a standby's now. Stop at once.
                    owner.lose(&handle);
                    break;
                }
            }
        }
    }));
    if let Err(payload) = fed {
        tracing::error!(
            queue = %owner.queue,
            panic = %panic_message(payload.as_ref()),
            "the consumer thread panicked: serving ends"
        );
    }
    handle.stop();
    // Returns once every delivery handed over has been handled and settled
    // (or, after a loss, dropped).
    let _ = handle.join();
    // A last try for records that failed with a batch no later batch retried.
    let settle_last = || {
        if !owner.is_lost() {
            owner.ack_settled(Vec::new());
        }
    };
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(settle_last)) {
        tracing::error!(
            queue = %owner.queue,
            panic = %panic_message(payload.as_ref()),
            "settling the last batch panicked"
        );
    }
    owner.close_channel();
    drop(consumer);
    tracing::debug!(queue = %owner.queue, "stopped serving");
}

/// How feeding the manager from one channel ended.
enum Fed {
    /// Asked to stop, the manager refused or exited, or the broker cancelled
    /// the consumer (its queue was deleted): serving ends.
    Done,
    /// The channel (or the whole connection) is lost.
    Lost,
}

/// How waiting for everything handed over on a channel to be settled ended.
enum Emptied {
    /// Settled: nothing of the channel is in the manager's hands.
    Yes,
    /// Asked to stop, stopped at once, or the manager exited.
    Stopping,
    /// The channel is lost: what it delivered is never settled.
    Lost,
}

/// How often an owner waiting for a new connection looks whether it was
/// asked to stop, or its manager has exited.
const RESTART_POLL: Duration = Duration::from_millis(50);

/// What the consumer thread waits for.
enum Event {
    /// Boxed: the other variants are small, and a delivery's body is on the
    /// heap anyway.
    Delivery(Box<lapin::message::Delivery>),
    /// `Served::stop`, or a drop.
    Stop,
    /// The manager has exited: nobody will handle or settle more.
    ManagerGone,
    /// The consumer ended (cancelled by the broker, or its channel lost).
    Ended(Option<lapin::Error>),
}

/// Hands deliveries of the current channel to the manager until it is time
/// to stop, or the channel is lost.
fn feed<M: DeserializeOwned + Send + 'static>(
    consumer: &mut Consumer,
    handle: &Handle<M>,
    owner: &Arc<Owner>,
) -> Fed {
    let session = owner.session().id;
    let mut delivered = false;
    loop {
        // Looked at first: with deliveries always buffered, the race below
        // would pick the delivery every time.
        if owner.stop.is_raised() {
            return Fed::Done;
        }
        if handle.has_exited() {
            tracing::warn!(queue = %owner.queue, "the manager has exited: serving ends");
            return Fed::Done;
        }
        let next = block_until(
            None,
            futures_lite::future::or(
                async {
                    match consumer.next().await {
                        Some(Ok(delivery)) => Event::Delivery(Box::new(delivery)),
                        Some(Err(e)) => Event::Ended(Some(e)),
                        None => Event::Ended(None),
                    }
                },
                futures_lite::future::or(
                    async {
                        owner.stop.raised().await;
                        Event::Stop
                    },
                    async {
                        loop {
                            if handle.has_exited() {
                                return Event::ManagerGone;
                            }
                            if owner.is_lost() {
                                return Event::Ended(None);
                            }
                            async_io::Timer::after(EXIT_POLL).await;
                        }
                    },
                ),
            ),
        );
        let delivery = match next {
            Some(Event::Delivery(delivery)) => delivery,
            Some(Event::Stop | Event::ManagerGone) | None => continue, // looked at above
            Some(Event::Ended(ended)) => {
                if owner.channel().status().connected() && !owner.is_lost() {
                    // The broker cancelled the consumer (its queue was
                    // deleted): a standby may be active already.
                    match ended {
                        None => {
                            tracing::warn!(queue = %owner.queue, "the broker cancelled the consumer: stopping at once")
                        }
                        Some(e) => {
                            tracing::warn!(queue = %owner.queue, error = %e, "the consumer ended: stopping at once")
                        }
                    }
                    owner.lose(handle);
                    return Fed::Done;
                }
                return Fed::Lost;
            }
        };
        let tag = delivery.delivery_tag;
        if !delivered {
            delivered = true;
            owner.session().delivered = true;
        }
        Counts::add(&owner.counts.delivered, 1);
        if delivery.redelivered {
            Counts::add(&owner.counts.redelivered, 1);
        }
        // A redelivered message is handed over alone, once everything before
        // it (of this channel) is settled, and nothing after it until it is:
        // an owner that stops meanwhile is charged to it, and to it only.
        // Deliveries of a lost channel are not waited for: never settled,
        // they are dropped.
        let alone = delivery.redelivered;
        if alone {
            match owner.wait_emptied(handle, session) {
                Emptied::Yes => {}
                // Stopping: it goes back to the queue with the channel.
                Emptied::Stopping => return Fed::Done,
                // It goes back to the queue with the lost channel.
                Emptied::Lost => return Fed::Lost,
            }
        }
        match panic::catch_unwind(AssertUnwindSafe(|| take(handle, owner, session, &delivery))) {
            Ok(Taken::Handed) => {
                if alone {
                    match owner.wait_emptied(handle, session) {
                        Emptied::Yes => {}
                        Emptied::Stopping => return Fed::Done,
                        Emptied::Lost => return Fed::Lost,
                    }
                }
            }
            Ok(Taken::Rejected) => {}
            Ok(Taken::Refused) => return Fed::Done,
            Err(payload) => {
                // A bug of this module, not of the delivery: give it back to
                // the queue (its delivery limit ends a delivery that always
                // does this), and go on with the next one.
                tracing::error!(
                    queue = %owner.queue,
                    tag,
                    panic = %panic_message(payload.as_ref()),
                    "taking a delivery panicked: requeued"
                );
                owner.forget(session, tag);
                owner.nack(session, tag);
            }
        }
    }
}

/// What became of one delivery.
enum Taken {
    /// In the manager's mailbox.
    Handed,
    /// Dead-lettered (and acknowledged), or requeued if that failed.
    Rejected,
    /// The manager refused it (it is stopping): hand over no more.
    Refused,
}

/// Checks one delivery, decodes it, and hands it to the manager; an invalid
/// one is dead-lettered with the reason.
fn take<M: DeserializeOwned + Send + 'static>(
    handle: &Handle<M>,
    owner: &Arc<Owner>,
    session: u64,
    delivery: &lapin::message::Delivery,
) -> Taken {
    let wire = delivery.delivery_tag;
    let settings = &owner.link.settings;
    let checked = codec::check(&delivery.properties, delivery.data.len(), settings.max_body);
    let Checked {
        origin,
        target,
        delivery_count,
        invalid,
    } = checked;
    if let Some(invalid) = invalid {
        owner.reject(session, wire, delivery, origin, target.as_ref(), &invalid);
        return Taken::Rejected;
    }
    // A redelivered message is charged in the durable record before it is
    // handed over; one charged up to the limit already is not handed again.
    let key = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let last = if !delivery.redelivered {
        // A first delivery is never the last: its `x-delivery-count`, if any,
        // was put there by whoever published it.
        false
    } else if let Some(key) = &key {
        let limit = settings.delivery_limit;
        let charged = owner.charged(key);
        if charged >= limit {
            let reason = format!(
                "the owner stopped {charged} times while handling it alone (limit {limit})"
            );
            tracing::warn!(queue = %owner.queue, tag = wire, reason, "dead-lettered");
            owner.uncharge(key);
            owner.dead_letter(
                session,
                wire,
                &delivery.data,
                &delivery.properties,
                origin,
                target.as_ref(),
                &reason,
            );
            return Taken::Rejected;
        }
        owner.charge(key, charged + 1);
        charged + 1 >= limit
    } else {
        // No id to charge it by: the broker's count is all there is.
        delivery_count >= u64::from(settings.delivery_limit)
    };
    // Opened before decoding, so that a reply answered (or dropped) during
    // the decode finds its request.
    let tag = owner.book().open(
        wire,
        session,
        origin.clone(),
        key.filter(|_| delivery.redelivered),
        target.clone(),
    );
    let binding = target.clone().map(|target| Binding {
        sink: Arc::clone(owner) as Arc<dyn AnswerSink>,
        tag,
        target,
    });
    // The message type's `Deserialize` is user code: a panic in it
    // dead-letters this delivery, like a decode error.
    let decoded = panic::catch_unwind(AssertUnwindSafe(|| {
        reply::decode_bound::<M>(&delivery.data, binding)
    }));
    let invalid = match decoded {
        Ok((Ok(msg), bound)) => {
            owner.book().decoded(
                tag,
                bound,
                last.then(|| (delivery.data.clone(), delivery.properties.clone())),
            );
            if handle.deliver(msg, tag).is_err() {
                // The manager is stopping (a runtime shutdown): hand over no more.
                owner.forget(session, wire);
                return Taken::Refused;
            }
            return Taken::Handed;
        }
        Ok((Err(reason), _)) => InvalidDelivery::Undecodable(reason),
        Err(payload) => InvalidDelivery::Panicked(panic_message(payload.as_ref())),
    };
    owner.forget(session, wire);
    owner.reject(session, wire, delivery, origin, target.as_ref(), &invalid);
    Taken::Rejected
}

/// A one-way flag a thread blocked on the broker can wait for.
#[derive(Default)]
struct StopSignal {
    raised: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl StopSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Completes once `raise` was called.
    fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_raised() {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            // Raised between the first look and storing the waker?
            if self.is_raised() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Owner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current channel (for publishing: answers and records go on any).
    fn channel(&self) -> Channel {
        self.session().channel.clone()
    }

    /// The channel of `session`, if it is still the current one and not
    /// lost: delivery tags are acknowledged on their own channel only.
    fn channel_of(&self, session: u64) -> Option<Channel> {
        let current = self.session();
        (current.id == session && current.live).then(|| current.channel.clone())
    }

    /// Drops the open entry of a delivery that is not the manager's.
    fn forget(&self, session: u64, wire: u64) {
        self.book().forget(session, wire);
        self.emptied.notify_all();
    }

    /// Waits until every delivery handed over on channel `session` is
    /// settled (or failed). Deliveries of a lost channel are never settled,
    /// and not waited for: if `session` is lost meanwhile, `Lost`.
    fn wait_emptied<M: Send + 'static>(&self, handle: &Handle<M>, session: u64) -> Emptied {
        let mut book = self.book();
        loop {
            // A lost channel is not a stop: with reconnecting on, the
            // serving goes on on a new one (`is_dropping` is true for both).
            let aborted = self.aborted.get().is_some_and(|aborted| aborted());
            if self.stop.is_raised() || aborted || handle.has_exited() {
                return Emptied::Stopping;
            }
            let lost = {
                let current = self.session();
                !current.live || current.id != session || !current.channel.status().connected()
            };
            if lost {
                return Emptied::Lost;
            }
            if !book.holds(session) {
                return Emptied::Yes;
            }
            book = self
                .emptied
                .wait_timeout(book, EXIT_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn charges(&self) -> MutexGuard<'_, Charges> {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times message `key` stopped an owner while in hand, reading
    /// the durable record first if this owner has not yet.
    fn charged(&self, key: &str) -> u32 {
        let mut charges = self.charges();
        if !charges.loaded {
            charges.by_id = self.read_charges();
            charges.loaded = true;
        }
        charges.by_id.get(key).copied().unwrap_or(0)
    }

    /// Reads the record of charges the previous owners left (and leaves it
    /// in its queue).
    fn read_charges(&self) -> BTreeMap<String, u32> {
        let (channel, session) = {
            let current = self.session();
            (current.channel.clone(), current.id)
        };
        let got = self.link.run(
            || format!("reading queue `{}`", self.charges_queue),
            channel.basic_get(
                ShortString::from(self.charges_queue.as_str()),
                BasicGetOptions { no_ack: false },
            ),
        );
        match got {
            Ok(Some(message)) => {
                let tag = message.delivery.delivery_tag;
                let record = codec::decode::<BTreeMap<String, u32>>(&message.delivery.data);
                self.nack(session, tag);
                record.unwrap_or_else(|e| {
                    tracing::warn!(queue = %self.queue, error = %e, "an undecodable record of charges: ignored");
                    BTreeMap::new()
                })
            }
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "the record of charges was not read");
                BTreeMap::new()
            }
        }
    }

    /// Charges message `key` with `n` stops and writes the record (confirmed)
    /// before it is handed over.
    fn charge(&self, key: &str, n: u32) {
        let body = {
            let mut charges = self.charges();
            charges.by_id.insert(key.to_owned(), n);
            codec::encode(&charges.by_id)
        };
        let written = body.and_then(|body| {
            let props = BasicProperties::default()
                .with_content_type(ShortString::from(codec::CONTENT_TYPE))
                .with_delivery_mode(2);
            self.publish_confirmed(&self.charges_queue, &body, props)
        });
        if let Err(e) = written {
            // Handed over uncharged: the broker's limit stays the backstop.
            tracing::warn!(queue = %self.queue, error = %e, "the record of charges was not written");
        }
    }

    /// Forgets the charges of a message settled or dead-lettered; the
    /// record drops it at its next write.
    fn uncharge(&self, key: &str) {
        self.charges().by_id.remove(key);
    }

    /// The channel or connection is gone (or the consumer cancelled): the
    /// broker has returned every unacknowledged delivery to the queue, for
    /// another owner, so nothing this one does from now on may count. Stops
    /// the manager at once: its mailbox is dropped, and its batch in hand is
    /// neither settled nor answered.
    fn lose<M: Send + 'static>(&self, handle: &Handle<M>) {
        self.session().live = false;
        handle.shared.abort();
    }

    /// Whether the current channel is lost (and not replaced yet).
    fn is_lost(&self) -> bool {
        !self.session().live
    }

    /// Whether nothing more may be answered or settled: the channel is lost,
    /// or the manager was stopped at once (it may have rolled its batch
    /// back, as a superseded `RemoteDatabase` does).
    fn is_dropping(&self) -> bool {
        self.is_lost() || self.aborted.get().is_some_and(|aborted| aborted())
    }

    /// A round trip to the broker on this owner's channel (re-setting its
    /// prefetch): `true` if the broker answered, so the channel, and with it
    /// this owner's consumer, was still there. Only for a channel that has
    /// had a delivery: single active consumer delivers to the active
    /// consumer only, which stays active while its channel lives, whereas a
    /// channel opened after a loss may hold a standby's consumer.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // RemoteDatabase uses it
    fn confirm_active(&self) -> bool {
        let (channel, id) = {
            let session = self.session();
            if !session.live || !session.delivered {
                return false;
            }
            (session.channel.clone(), session.id)
        };
        let answered = self.link.run(
            || format!("confirming the ownership of `{}`", self.queue),
            channel.basic_qos(self.link.settings.prefetch, BasicQosOptions::default()),
        );
        match answered {
            Ok(()) => {
                let session = self.session();
                session.live && session.id == id
            }
            Err(e) => {
                // Unanswered in time: the channel is taken for lost (its
                // deliveries are never settled now), and the consumer thread
                // replaces it, closing it first.
                tracing::warn!(queue = %self.queue, error = %e, "the broker did not confirm this owner: its channel is given up");
                let mut session = self.session();
                if session.id == id {
                    session.live = false;
                }
                false
            }
        }
    }

    /// Closes the channel, and the channel of the reporter of the broker's
    /// dead letters.
    pub(crate) fn close_channel(&self) {
        let reporter = self
            .reporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(reporter) = reporter {
            // Its thread ends, even while it waits for a connection.
            reporter.stop.raise();
            reporter.close_channel();
        }
        let _ = block_until(
            self.link.confirm_deadline(),
            self.channel()
                .close(200, ShortString::from("custody: stopped serving")),
        );
    }

    /// Registers this owner's consumer on `channel`.
    fn consume_on(&self, channel: &Channel) -> Result<Consumer, BrokerError> {
        let queue = &self.queue;
        let consumer_tag = format!("{queue}.{}.{}", std::process::id(), unique());
        self.link.run(
            || format!("consuming from `{queue}`"),
            channel.basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(consumer_tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
    }

    /// The channel is lost: waits for a connection, then opens a channel,
    /// declares the queue again and consumes from it, as a standby if
    /// another owner is active now (single active consumer decides). The
    /// deliveries of the lost channel are never acknowledged: the broker
    /// has returned them to the queue, to be delivered again; their open
    /// entries are dropped, and the record of charges is read again (another
    /// owner may have been active meanwhile). `None` when asked to stop,
    /// when `gone` (the manager has exited), or when the connection is
    /// closed or lost for good.
    fn restart(&self, gone: &dyn Fn() -> bool) -> Option<Consumer> {
        let lost_at = Instant::now();
        self.session().live = false;
        // Given up while still open (the broker did not confirm this owner
        // in time): closed, so that its consumer is not the active one any
        // more and its deliveries go back to the queue.
        let old = self.channel();
        if old.status().connected() {
            let _ = block_until(
                self.link.confirm_deadline(),
                old.close(200, ShortString::from("custody: the channel is given up")),
            );
        }
        if !self.link.settings.reconnect || self.link.is_final() {
            // Not serving once the consumer thread has stopped the manager.
            tracing::warn!(queue = %self.queue, "the channel is lost, for good: stopping at once");
            return None;
        }
        self.serving.store(false, Ordering::SeqCst);
        tracing::warn!(
            queue = %self.queue,
            "the channel is lost: its unacknowledged deliveries go back to the queue; subscribing again once connected"
        );
        let mut pause = RESTART_POLL;
        loop {
            if self.stop.is_raised() || gone() {
                return None;
            }
            if self.link.is_final() {
                tracing::warn!(queue = %self.queue, "the broker connection is closed for good: serving ends");
                return None;
            }
            // Waits one poll for a connection at most, to see a stop soon.
            let wait = deadline_after(RESTART_POLL);
            let channel = match open_channel(&self.link, &self.name, &self.queue, wait) {
                Ok(channel) => channel,
                Err(BrokerError::Disconnected { .. }) => continue,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "subscribing again failed; retrying");
                    self.pause(&mut pause);
                    continue;
                }
            };
            // All open entries came on lost channels: never settled now.
            self.book().new_channel();
            self.emptied.notify_all();
            self.charges().loaded = false;
            let id = {
                let mut session = self.session();
                session.id += 1;
                session.channel = channel.clone();
                session.live = true;
                session.delivered = false;
                session.id
            };
            match self.consume_on(&channel) {
                Ok(consumer) => {
                    self.serving.store(true, Ordering::SeqCst);
                    tracing::info!(
                        queue = %self.queue,
                        session = id,
                        after = ?lost_at.elapsed(),
                        "subscribed again: serving"
                    );
                    return Some(consumer);
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "subscribing again failed; retrying");
                    self.session().live = false;
                    self.pause(&mut pause);
                }
            }
        }
    }

    /// Sleeps `pause` (or until asked to stop), then doubles it, up to the
    /// reconnect backoff's longest pause.
    fn pause(&self, pause: &mut Duration) {
        let until = Instant::now().checked_add(*pause);
        while until.is_none_or(|at| Instant::now() < at) && !self.stop.is_raised() {
            std::thread::sleep(RESTART_POLL);
        }
        *pause = pause
            .saturating_mul(2)
            .min(self.link.settings.reconnect_max);
    }

    /// A delivery that is not handed to the manager: copied to the
    /// dead-letter queue with the reason, its asker and its producer told,
    /// then acknowledged.
    fn reject(
        &self,
        session: u64,
        tag: u64,
        delivery: &lapin::message::Delivery,
        origin: Option<Origin>,
        target: Option<&Target>,
        reason: &InvalidDelivery,
    ) {
        let reason = reason.to_string();
        tracing::warn!(queue = %self.queue, tag, reason, "invalid delivery: dead-lettered");
        self.dead_letter(
            session,
            tag,
            &delivery.data,
            &delivery.properties,
            origin,
            target,
            &reason,
        );
    }

    /// Starts publishing an answer to the asker's reply queue; the confirm to
    /// wait for, if the publish went out. An asker that has gone is no reason
    /// to hold up the owner: the broker drops its answer.
    fn send_answer(&self, target: &Target, body: &[u8]) -> Option<PublisherConfirm> {
        let (Ok(reply_to), Ok(correlation_id)) = (
            ShortString::try_new(target.reply_to.as_str()),
            ShortString::try_new(target.correlation_id.as_str()),
        ) else {
            tracing::error!(queue = %self.queue, "an answer address too long for AMQP: not sent");
            return None;
        };
        let props = BasicProperties::default()
            .with_content_type(ShortString::from(codec::CONTENT_TYPE))
            .with_correlation_id(correlation_id);
        let published = self.link.run(
            || format!("answering `{}`", target.reply_to),
            self.channel().basic_publish(
                ShortString::from(""),
                reply_to,
                BasicPublishOptions::default(),
                body,
                props,
            ),
        );
        match published {
            Ok(confirm) => Some(confirm),
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "an answer was not sent");
                None
            }
        }
    }

    /// Waits, until the confirm timeout, for the broker to have taken the
    /// answers published: it then has them before anything this channel
    /// sends next (the ack).
    fn await_answers(&self, confirms: Vec<PublisherConfirm>) {
        let deadline = self.link.confirm_deadline();
        for confirm in confirms {
            match block_until(deadline, confirm) {
                Some(Ok(c)) if c.is_ack() => {}
                outcome => tracing::warn!(
                    queue = %self.queue,
                    timed_out = outcome.is_none(),
                    "an answer was not confirmed"
                ),
            }
        }
    }

    /// Tells an asker its request was dead-lettered (confirmed).
    fn answer_dead(&self, target: &Target, reason: &str) {
        match codec::encode(&WireAnswer::<()>::DeadLettered(
            codec::cut(reason).to_owned(),
        )) {
            Ok(body) => {
                let confirm = self.send_answer(target, &body);
                self.await_answers(confirm.into_iter().collect());
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an answer"),
        }
    }

    /// Publishes a copy to the dead-letter queue, answers its asker, tells
    /// its producer, and only then acks the delivery; if the copy is not
    /// confirmed, requeues the delivery instead (the broker's delivery limit
    /// dead-letters it in the end).
    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &self,
        session: u64,
        tag: u64,
        data: &[u8],
        props: &BasicProperties,
        origin: Option<Origin>,
        target: Option<&Target>,
        reason: &str,
    ) {
        let copy = codec::dead_letter_properties(props, reason);
        let published = self.publish_confirmed(&self.dead_queue, data, copy);
        if let Err(e) = published {
            tracing::error!(queue = %self.queue, tag, error = %e, "dead-lettering failed: requeued");
            self.nack(session, tag);
            return;
        }
        Counts::add(&self.counts.dead_lettered, 1);
        // Before the ack: an owner that dies after it must not leave the
        // asker waiting.
        if let Some(target) = target {
            self.answer_dead(target, reason);
        }
        if let Some(origin) = origin {
            let record = DoneRecord {
                done: Vec::new(),
                dead: vec![(origin.id, codec::cut(reason).to_owned())],
            };
            self.book().keep_pending(vec![(origin.producer, record)]);
            self.flush_pending();
        }
        self.ack(session, tag, false);
    }

    /// Acknowledges `tag` (with `multiple`, every earlier one too) on the
    /// channel of `session`, unless that channel is lost: its deliveries are
    /// back in the queue, and its tags mean other deliveries on a new one.
    fn ack(&self, session: u64, tag: u64, multiple: bool) {
        let Some(channel) = self.channel_of(session) else {
            tracing::debug!(queue = %self.queue, tag, "not acknowledged: its channel is lost, the broker delivers it again");
            return;
        };
        let acked = self.link.run(
            || format!("acknowledging deliveries of `{}`", self.queue),
            channel.basic_ack(tag, BasicAckOptions { multiple }),
        );
        if let Err(e) = acked {
            tracing::error!(queue = %self.queue, tag, error = %e, "ack failed; the broker will redeliver");
        }
    }

    /// Requeues `tag` on the channel of `session`, unless it is lost (the
    /// broker has requeued it then).
    fn nack(&self, session: u64, tag: u64) {
        let Some(channel) = self.channel_of(session) else {
            return;
        };
        let nacked = self.link.run(
            || format!("requeueing a delivery of `{}`", self.queue),
            channel.basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            ),
        );
        if let Err(e) = nacked {
            tracing::error!(queue = %self.queue, tag, error = %e, "nack failed");
        }
    }

    /// Publishes to `queue` through the default exchange and waits for the
    /// confirm (with the confirm timeout).
    fn publish_confirmed(
        &self,
        queue: &str,
        data: &[u8],
        props: BasicProperties,
    ) -> Result<(), String> {
        let name = ShortString::try_new(queue).map_err(|e| e.to_string())?;
        let confirm = self.link.run(
            || format!("publishing to `{queue}`"),
            self.channel().basic_publish(
                ShortString::from(""),
                name,
                BasicPublishOptions::default(),
                data,
                props,
            ),
        );
        let confirm = confirm.map_err(|e| e.to_string())?;
        match block_until(self.link.confirm_deadline(), confirm) {
            Some(Ok(c)) if c.is_ack() => Ok(()),
            Some(Ok(_)) => Err(format!("the broker refused a message to `{queue}`")),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!(
                "no confirm within {:?}",
                self.link.settings.confirm_timeout
            )),
        }
    }

    /// Once every pending done record and every answer of `answers` is
    /// confirmed, acknowledges everything settled so far with one
    /// multiple-ack (earlier batches whose records failed are covered too);
    /// `false` if records are still pending.
    fn ack_settled(&self, answers: Vec<PublisherConfirm>) -> bool {
        let flushed = self.flush_pending();
        // Published before the records: confirmed by now, as a rule.
        self.await_answers(answers);
        if !flushed {
            return false;
        }
        let unacked = self.book().take_unacked();
        if let Some((session, up_to, count)) = unacked
            && self.channel_of(session).is_some()
        {
            self.ack(session, up_to, true);
            Counts::add(&self.counts.acked, count);
        }
        true
    }

    /// Publishes every pending done record and waits for all the confirms;
    /// `true` if none is left pending.
    fn flush_pending(&self) -> bool {
        let _flushing = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = self.book().take_pending();
        if pending.is_empty() {
            return true;
        }
        let channel = self.channel();
        let mut sent = Vec::with_capacity(pending.len());
        let mut failed: Vec<(String, DoneRecord)> = Vec::new();
        for (producer, record) in pending {
            let body = match codec::encode(&record) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a done record");
                    continue;
                }
            };
            let queue = names::done_queue(&producer);
            // Checked on delivery; were it not, the record could never go.
            let Ok(name) = ShortString::try_new(queue.as_str()) else {
                tracing::error!(
                    len = queue.len(),
                    "a done queue name too long for AMQP: record dropped"
                );
                continue;
            };
            let props = BasicProperties::default()
                .with_content_type(ShortString::from(codec::CONTENT_TYPE))
                .with_delivery_mode(2);
            let published = self.link.run(
                || format!("publishing to `{queue}`"),
                channel.basic_publish(
                    ShortString::from(""),
                    name,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                ),
            );
            match published {
                Ok(confirm) => sent.push((producer, record, confirm)),
                Err(e) => {
                    tracing::warn!(error = %e, "done record not sent; kept for the next batch");
                    failed.push((producer, record));
                }
            }
        }
        let deadline = self.link.confirm_deadline();
        for (producer, record, confirm) in sent {
            match block_until(deadline, confirm) {
                Some(Ok(c)) if c.is_ack() => {}
                outcome => {
                    tracing::warn!(
                        %producer,
                        timed_out = outcome.is_none(),
                        "done record not confirmed; kept for the next batch"
                    );
                    failed.push((producer, record));
                }
            }
        }
        if failed.is_empty() {
            return true;
        }
        self.book().keep_pending(failed);
        false
    }
}

impl AnswerSink for Owner {
    fn answer(&self, tag: u64, target: &Target, body: Vec<u8>) {
        if self.is_dropping() {
            // Its request goes back to the queue, to be answered by the
            // owner that handles it next.
            return;
        }
        let held = self.book().hold_answer(tag, body);
        match held {
            // Published when its batch is settled.
            Answering::Held => {}
            // Its request came on a lost channel: its redelivery is answered.
            Answering::Stale => {}
            // Its batch is settled already (the reply was kept past it): no
            // ack waits for this answer, so its confirm is not waited for
            // either.
            Answering::Late(body) => {
                let _ = self.send_answer(target, &body);
            }
        }
    }
}

/// The manager thread's view of the owner: settles batches, reports panics.
struct Settler(Arc<Owner>);

impl SettleOutside for Settler {
    fn settle(&self, up_to: u64) {
        let owner = &*self.0;
        if owner.is_dropping() {
            // Lost, or stopped at once after this batch's `idle`: settle
            // nothing; the deliveries go back to the queue.
            owner.book().drop_up_to(up_to);
            owner.emptied.notify_all();
            tracing::debug!(queue = %owner.queue, up_to, "a batch of a dropped owner left unsettled");
            return;
        }
        let current = {
            let session = owner.session();
            session.live.then_some(session.id)
        };
        let settled = owner.book().settle(up_to, current);
        for key in &settled.uncharge {
            owner.uncharge(key);
        }
        if settled.stale > 0 {
            // Came on a channel since lost: the broker has them back and
            // delivers them again (maybe to a standby), which answers and
            // reports them then.
            tracing::debug!(queue = %owner.queue, stale = settled.stale, "deliveries of a lost channel handled: left to their redelivery");
        }
        let answers = settled.answers;
        owner.emptied.notify_all();
        // After `idle` (answered means committed) and before the ack: an
        // owner that dies after the ack has answered; one that dies before
        // it leaves the request to be redelivered, and answered again.
        let confirms = answers
            .iter()
            .filter_map(|(target, body)| owner.send_answer(target, body))
            .collect();
        if !owner.ack_settled(confirms) {
            tracing::warn!(queue = %owner.queue, up_to, "batch left unacknowledged until its done records are confirmed");
        }
    }

    fn stats(&self) -> OutsideStats {
        let c = &self.0.counts;
        OutsideStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
        }
    }

    fn admit(&self, tag: u64) -> bool {
        let owner = &*self.0;
        // The session first: while it is lost and not replaced yet, every
        // delivery the manager holds came on it.
        let admitted = !owner.is_lost() && owner.book().is_current(tag);
        if !admitted {
            Counts::add(&owner.counts.stale, 1);
        }
        admitted
    }

    fn failed(&self, tag: u64, panic: &str) {
        let owner = &*self.0;
        let open = owner.book().remove(tag);
        owner.emptied.notify_all();
        let Some(open) = open else {
            return;
        };
        if owner.channel_of(open.session).is_none() {
            // Its channel is lost: the broker delivers it again.
            return;
        }
        match open {
            Open {
                session,
                wire,
                origin,
                key,
                last: Some((data, props)),
                ask,
                ..
            } => {
                if let Some(key) = &key {
                    owner.uncharge(key);
                }
                let reason = format!(
                    "the handler panicked on every delivery (limit {}): {panic}",
                    owner.link.settings.delivery_limit
                );
                let target = ask.map(|ask| ask.target);
                owner.dead_letter(
                    session,
                    wire,
                    &data,
                    &props,
                    origin,
                    target.as_ref(),
                    &reason,
                );
            }
            Open { session, wire, .. } => owner.nack(session, wire),
        }
    }
}
