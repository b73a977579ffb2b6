//! The seam to an outside queue (the broker mailbox): what the manager loop
//! tells the queue about the messages it delivered.

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
