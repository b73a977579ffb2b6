//! The consumer thread: checks each delivery, charges a redelivered one,
//! decodes it and hands it to the manager; replaces a lost channel.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Consumer;
use serde::de::DeserializeOwned;

use super::super::codec::{self, Checked};
use super::super::connection::block_until;
use super::super::error::InvalidDelivery;
use super::super::reply::{self, AnswerSink, Binding};
use crate::handle::Handle;
use crate::manager_thread::panic_message;

use super::{Counts, Owner};

/// How often a consumer waiting for deliveries looks whether its manager has
/// exited (stopped for good by its panic policy, or by an immediate stop).
pub(super) const EXIT_POLL: Duration = Duration::from_millis(100);

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
pub(super) fn consume<M: DeserializeOwned + Send + 'static>(
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
pub(super) enum Fed {
    /// Asked to stop, the manager refused or exited, or the broker cancelled
    /// the consumer (its queue was deleted): serving ends.
    Done,
    /// The channel (or the whole connection) is lost.
    Lost,
}

/// How waiting for everything handed over on a channel to be settled ended.
pub(super) enum Emptied {
    /// Settled: nothing of the channel is in the manager's hands.
    Yes,
    /// Asked to stop, stopped at once, or the manager exited.
    Stopping,
    /// The channel is lost: what it delivered is never settled.
    Lost,
}

/// How often an owner waiting for a new connection looks whether it was
/// asked to stop, or its manager has exited.
pub(super) const RESTART_POLL: Duration = Duration::from_millis(50);

/// What the consumer thread waits for.
pub(super) enum Event {
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
pub(super) fn feed<M: DeserializeOwned + Send + 'static>(
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
pub(super) enum Taken {
    /// In the manager's mailbox.
    Handed,
    /// Dead-lettered (and acknowledged), or requeued if that failed.
    Rejected,
    /// The manager refused it (it is stopping): hand over no more.
    Refused,
}

/// Checks one delivery, decodes it, and hands it to the manager; an invalid
/// one is dead-lettered with the reason.
pub(super) fn take<M: DeserializeOwned + Send + 'static>(
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
