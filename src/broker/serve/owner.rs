//! `Owner`: one served manager's side of the broker: its channel
//! (session), its bookkeeping, its record of charges, and every AMQP call it
//! makes (acks, nacks, dead letters, answers, done records).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer, PublisherConfirm};

use super::super::book::{Answering, Book};
use super::super::codec::{self, DoneRecord, Origin};
use super::super::connection::{Link, block_until};
use super::super::error::{BrokerError, InvalidDelivery};
use super::super::names;
use super::super::reply::{AnswerSink, Target, WireAnswer};
use crate::handle::Handle;
use crate::util::deadline_after;

use super::{EXIT_POLL, Emptied, RESTART_POLL, open_channel, unique};

/// The owner's channel and the book of deliveries not yet settled.
pub(crate) struct Owner {
    pub(super) link: Arc<Link>,
    /// The channel deliveries come on now; replaced after a loss.
    pub(super) session: Mutex<Session>,
    /// Whether a consumer is registered on the current channel (`false`
    /// while the connection is being replaced).
    pub(super) serving: AtomicBool,
    pub(super) name: String,
    pub(super) queue: String,
    pub(super) dead_queue: String,
    pub(super) book: Mutex<Book>,
    /// Notified when deliveries leave `book.open` (settled, failed or
    /// forgotten): the consumer thread waits on it to hand a redelivered
    /// message over alone.
    pub(super) emptied: Condvar,
    /// `custody.<name>.charges`: the durable record of which redelivered
    /// message was in hand, and how often, when an owner stopped.
    pub(super) charges_queue: String,
    pub(super) charges: Mutex<Charges>,
    /// Held through a whole flush of the pending done records, so that a
    /// batch is acknowledged only after its records are confirmed, even when
    /// the consumer thread is flushing a dead record at the same time.
    pub(super) flushing: Mutex<()>,
    /// Raised by `Served::stop`: hand the manager no more deliveries.
    pub(super) stop: StopSignal,
    /// Delivered, redelivered, acked, dead-lettered.
    pub(super) counts: Counts,
    /// The owner of the channel that moves the broker's own dead letters
    /// (`custody.<name>.limit`) to the dead-letter queue, reporting each;
    /// closed when the serving ends. It subscribes again on its own after a
    /// lost connection.
    pub(super) reporter: Mutex<Option<Arc<Owner>>>,
    /// Whether the manager was stopped at once (by the consumer thread when
    /// the channel was lost, by the manager itself when it found it was
    /// superseded, or by an immediate stop); set once it is spawned.
    pub(super) aborted: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Serve on one channel only: a lost channel ends the serving as a loss
    /// for good does (the manager stopped at once), even with reconnecting
    /// on. A sharded kind's partitions are served so: a new manager serves
    /// the partition on the next channel, so no manager's state (a claim)
    /// outlives the channel it was earned on.
    pub(super) one_channel: bool,
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
pub(super) struct Charges {
    /// Whether the record was read from the broker (at the first
    /// redelivered delivery, once this owner is the active one).
    pub(super) loaded: bool,
    /// By message id.
    pub(super) by_id: BTreeMap<String, u32>,
}

/// The queue's counters, written by the consumer and manager threads.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) delivered: AtomicU64,
    pub(super) redelivered: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) stale: AtomicU64,
}

impl Counts {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One channel of the owner: its delivery tags mean something on it only.
pub(super) struct Session {
    pub(super) channel: Channel,
    /// Counts the owner's channels, from 1.
    pub(super) id: u64,
    /// `false` once the channel is known to be lost: none of its deliveries
    /// is settled any more (the broker has returned them to the queue).
    pub(super) live: bool,
    /// Whether a delivery came on it: its consumer is the active one.
    pub(super) delivered: bool,
}

/// A one-way flag a thread blocked on the broker can wait for.
#[derive(Default)]
pub(super) struct StopSignal {
    pub(super) raised: AtomicBool,
    pub(super) waker: Mutex<Option<Waker>>,
}

impl StopSignal {
    pub(super) fn raise(&self) {
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

    pub(super) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// Completes once `raise` was called.
    pub(super) fn raised(&self) -> impl Future<Output = ()> + '_ {
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
    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current channel (for publishing: answers and records go on any).
    pub(super) fn channel(&self) -> Channel {
        self.session().channel.clone()
    }

    /// The channel of `session`, if it is still the current one and not
    /// lost: delivery tags are acknowledged on their own channel only.
    pub(super) fn channel_of(&self, session: u64) -> Option<Channel> {
        let current = self.session();
        (current.id == session && current.live).then(|| current.channel.clone())
    }

    /// Drops the open entry of a delivery that is not the manager's.
    pub(super) fn forget(&self, session: u64, wire: u64) {
        self.book().forget(session, wire);
        self.emptied.notify_all();
    }

    /// Waits until every delivery handed over on channel `session` is
    /// settled (or failed). Deliveries of a lost channel are never settled,
    /// and not waited for: if `session` is lost meanwhile, `Lost`.
    pub(super) fn wait_emptied<M: Send + 'static>(
        &self,
        handle: &Handle<M>,
        session: u64,
    ) -> Emptied {
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

    pub(super) fn charges(&self) -> MutexGuard<'_, Charges> {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times message `key` stopped an owner while in hand, reading
    /// the durable record first if this owner has not yet.
    pub(super) fn charged(&self, key: &str) -> u32 {
        let mut charges = self.charges();
        if !charges.loaded {
            charges.by_id = self.read_charges();
            charges.loaded = true;
        }
        charges.by_id.get(key).copied().unwrap_or(0)
    }

    /// Reads the record of charges the previous owners left (and leaves it
    /// in its queue).
    pub(super) fn read_charges(&self) -> BTreeMap<String, u32> {
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
    pub(super) fn charge(&self, key: &str, n: u32) {
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
    pub(super) fn uncharge(&self, key: &str) {
        self.charges().by_id.remove(key);
    }

    /// The channel or connection is gone (or the consumer cancelled): the
    /// broker has returned every unacknowledged delivery to the queue, for
    /// another owner, so nothing this one does from now on may count. Stops
    /// the manager at once: its mailbox is dropped, and its batch in hand is
    /// neither settled nor answered.
    pub(super) fn lose<M: Send + 'static>(&self, handle: &Handle<M>) {
        self.session().live = false;
        handle.shared.abort();
    }

    /// Whether the current channel is lost (and not replaced yet).
    pub(super) fn is_lost(&self) -> bool {
        !self.session().live
    }

    /// Whether nothing more may be answered or settled: the channel is lost,
    /// or the manager was stopped at once (it may have rolled its batch
    /// back, as a superseded `RemoteDatabase` does).
    pub(super) fn is_dropping(&self) -> bool {
        self.is_lost() || self.aborted.get().is_some_and(|aborted| aborted())
    }

    /// A round trip to the broker on this owner's channel (re-setting its
    /// prefetch): `true` if the broker answered, so the channel, and with it
    /// this owner's consumer, was still there. Only for a channel that has
    /// had a delivery: single active consumer delivers to the active
    /// consumer only, which stays active while its channel lives, whereas a
    /// channel opened after a loss may hold a standby's consumer.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // RemoteDatabase uses it
    pub(super) fn confirm_active(&self) -> bool {
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
    pub(super) fn consume_on(&self, channel: &Channel) -> Result<Consumer, BrokerError> {
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
    pub(super) fn restart(&self, gone: &dyn Fn() -> bool) -> Option<Consumer> {
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
        if !self.link.settings.reconnect || self.link.is_final() || self.one_channel {
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
    pub(super) fn pause(&self, pause: &mut Duration) {
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
    pub(super) fn reject(
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
    pub(super) fn send_answer(&self, target: &Target, body: &[u8]) -> Option<PublisherConfirm> {
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
    pub(super) fn await_answers(&self, confirms: Vec<PublisherConfirm>) {
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
    pub(super) fn answer_dead(&self, target: &Target, reason: &str) {
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
    pub(super) fn dead_letter(
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
    pub(super) fn ack(&self, session: u64, tag: u64, multiple: bool) {
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
    pub(super) fn nack(&self, session: u64, tag: u64) {
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
    pub(super) fn publish_confirmed(
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
    pub(super) fn ack_settled(&self, answers: Vec<PublisherConfirm>) -> bool {
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
    pub(super) fn flush_pending(&self) -> bool {
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
