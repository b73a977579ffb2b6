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

mod consume;
mod owner;
mod settle;

use consume::{EXIT_POLL, Emptied, RESTART_POLL, consume};
use owner::{Charges, Counts, Owner, Session, StopSignal};
use settle::Settler;

use std::collections::HashMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use futures_lite::StreamExt;
use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Consumer};
use serde::de::DeserializeOwned;

use super::book::Book;
use super::codec;
use super::connection::{self, Broker, Link, block_until};
use super::error::BrokerError;
use super::names;
use crate::handle::Handle;
use crate::mailbox::SettleOutside;
use crate::manager::Manager;
use crate::runtime::Runtime;

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

    /// Whether the serving ended for good on its own (its consumer thread
    /// returned): not while a lost connection is being replaced.
    pub(crate) fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
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
    serve_on(broker, rt, name, manager, false)
}

/// [`serve`]; with `one_channel`, on one channel only: a lost channel ends
/// the serving, the manager stopped at once (see `Owner::one_channel`).
pub(crate) fn serve_on<Mg>(
    broker: &Broker,
    rt: &Runtime,
    name: &str,
    manager: Mg,
    one_channel: bool,
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
        one_channel,
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
        one_channel: false,
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
