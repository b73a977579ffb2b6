//! The seam to an outside queue (the broker mailbox): what the manager loop
//! tells the queue about the messages it delivered.

use super::Envelope;
use crate::handle::{Handle, Refusal, Wait};
use crate::stats::OutsideStats;

/// Settles the messages a manager received from an outside queue.
pub(crate) trait SettleOutside: Send + Sync {
    /// Every delivery up to and including `tag` has been handled, and the
    /// batch's `idle` hook has run.
    fn settle(&self, up_to: u64);
    /// The handler panicked on the delivery with this tag.
    fn failed(&self, tag: u64, panic: &str);
    /// Whether the delivery with this tag may still be handled: `false` for
    /// one that came on a channel since lost, which the queue delivers again
    /// (so handling it here would handle it twice). Asked just before the
    /// handler would run.
    fn admit(&self, tag: u64) -> bool {
        let _ = tag;
        true
    }
    /// The queue's counters, for the stats table.
    fn stats(&self) -> OutsideStats;
}

impl<M: Send + 'static> Handle<M> {
    /// Hands the manager a message that came from an outside queue, tagged so
    /// that the queue can be settled once the manager's batch is done.
    /// Counted like a tell. Blocks while a bounded mailbox is full.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))] // the broker mailbox uses it
    pub(crate) fn deliver(&self, msg: M, tag: u64) -> Result<(), M> {
        self.post_envelope(Envelope::Delivered(Box::new((msg, tag))), Wait::Until(None))
            .map_err(|r| match r {
                Refusal::Stopped(m)
                | Refusal::Full(m)
                | Refusal::Timeout(m)
                | Refusal::Deadlock(m, _) => m,
            })
    }
}
