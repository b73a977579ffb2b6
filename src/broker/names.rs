//! The names of a manager's queues, and their limits: every queue custody
//! declares is named here.
//!
//! ```text
//! custody.<name>           the mailbox: a quorum queue, single active consumer
//! custody.<name>.dead      what could not be handled, with the reason
//! custody.<name>.limit     what the broker dead-lettered at its delivery limit
//! custody.<name>.charges   the owners' durable record of charges
//! custody.done.<producer>  a producer's done records (and its answers)
//! custody.<kind>.<p>       partition p of a sharded kind: a mailbox as above
//! custody.<kind>.partitions  the kind's partition count (empty; x-max-length)
//! custody.<kind>.members   the exchange a sharded kind's members beat on
//! ```

use super::error::BrokerError;

/// The longest manager name: `custody.<name>.dead` must fit in 255 bytes.
pub(crate) const MAX_NAME: usize = 200;

/// The longest queue name AMQP allows (a short string), in bytes.
pub(crate) const MAX_QUEUE_NAME: usize = 255;

/// What a producer's done queue is named after: `custody.done.<producer-id>`.
pub(crate) const DONE_QUEUE_PREFIX: &str = "custody.done.";

/// Checks that a manager name makes valid queue names.
pub(crate) fn check_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        Err(BrokerError::InvalidName(name.to_owned()))
    } else {
        Ok(())
    }
}

/// The queue a manager named `name` is served from.
pub(crate) fn mailbox_queue(name: &str) -> String {
    format!("custody.{name}")
}

/// Where messages of `custody.<name>` that could not be handled end.
pub(crate) fn dead_queue(name: &str) -> String {
    format!("custody.{name}.dead")
}

/// The queue the broker dead-letters the messages of manager `name` to.
pub(crate) fn limit_queue(name: &str) -> String {
    format!("custody.{name}.limit")
}

/// The queue a producer's done records arrive in.
pub(crate) fn done_queue(producer: &str) -> String {
    format!("{DONE_QUEUE_PREFIX}{producer}")
}

/// The queue holding the owners' durable record of charges.
pub(crate) fn charges_queue(name: &str) -> String {
    format!("{}.charges", mailbox_queue(name))
}

/// The empty queue that records a sharded kind's partition count.
pub(crate) fn partitions_queue(kind: &str) -> String {
    format!("{}.partitions", mailbox_queue(kind))
}

/// The fanout exchange the members of a sharded kind beat on.
pub(crate) fn members_exchange(kind: &str) -> String {
    format!("{}.members", mailbox_queue(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_make_valid_queue_names() {
        assert!(check_name("jobs").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(dead_queue(&"x".repeat(MAX_NAME)).len() <= 255);
    }

    #[test]
    fn every_queue_of_the_longest_name_fits_in_an_amqp_short_string() {
        let name = "x".repeat(MAX_NAME);
        for queue in [
            mailbox_queue(&name),
            dead_queue(&name),
            limit_queue(&name),
            charges_queue(&name),
        ] {
            assert!(queue.len() <= MAX_QUEUE_NAME, "{queue}");
        }
    }
}
