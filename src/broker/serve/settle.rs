//! The manager thread's side: settles a batch after its `idle` (answers,
//! done records, the acknowledgement), reports a panic, admits or drops a
//! delivery.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::super::book::Open;
use crate::mailbox::SettleOutside;
use crate::stats::OutsideStats;

use super::{Counts, Owner};

/// The manager thread's view of the owner: settles batches, reports panics.
pub(super) struct Settler(pub(super) Arc<Owner>);

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
