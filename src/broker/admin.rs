//! Looking after a served manager's queues: reading its dead letters,
//! deleting its queues.

use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::ShortString;

use super::codec::{self, ERROR_HEADER};
use super::connection::{Broker, block_until};
use super::error::BrokerError;
use super::names;

/// A message taken from a dead-letter queue `custody.<name>.dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadMessage {
    /// The message id the sender gave it, if any.
    pub id: Option<String>,
    /// Why the owner dead-lettered it (`x-custody-error`): the decode error,
    /// the panic of its last delivery, or the owners it stopped. `None` if
    /// the broker dead-lettered it on its own (returned to the queue more than
    /// the delivery limit plus [`BROKER_LIMIT_MARGIN`](super::BROKER_LIMIT_MARGIN)
    /// times).
    pub error: Option<String>,
    /// The broker's reason (`x-first-death-reason`, e.g. `delivery_limit`),
    /// when the broker dead-lettered it.
    pub broker_reason: Option<String>,
    /// The payload as it was published (CBOR from a `RemoteHandle`).
    pub body: Vec<u8>,
}

impl Broker {
    /// Takes (and removes) up to `max` messages from the dead-letter queue of
    /// the manager served as `name`, oldest first.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], or a failed or timed-out operation (for
    /// example when the queue does not exist).
    pub fn take_dead_letters(
        &self,
        name: &str,
        max: usize,
    ) -> Result<Vec<DeadMessage>, BrokerError> {
        names::check_name(name)?;
        let link = &*self.link;
        let channel = link.open_channel(link.confirm_deadline())?;
        let queue = names::dead_queue(name);
        let mut taken = Vec::new();
        while taken.len() < max {
            let got = link.run(
                || format!("reading queue `{queue}`"),
                channel.basic_get(
                    ShortString::from(queue.as_str()),
                    BasicGetOptions { no_ack: true },
                ),
            );
            let Some(message) = got? else {
                break;
            };
            let props = &message.delivery.properties;
            taken.push(DeadMessage {
                id: props.message_id().as_ref().map(|id| id.as_str().to_owned()),
                error: codec::header_string(props, ERROR_HEADER),
                broker_reason: codec::header_string(props, "x-first-death-reason"),
                body: message.delivery.data,
            });
        }
        let _ = block_until(
            link.confirm_deadline(),
            channel.close(200, ShortString::from("OK")),
        );
        Ok(taken)
    }

    /// Deletes the queues of the manager served as `name`: `custody.<name>`,
    /// `custody.<name>.dead`, `custody.<name>.limit` (the broker's dead
    /// letters, before an owner moves them to `.dead`) and its owners'
    /// record of charges `custody.<name>.charges`, with every message in them. Owners still
    /// serving it see their consumer cancelled and stop.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], or a failed or timed-out deletion.
    pub fn delete_queues(&self, name: &str) -> Result<(), BrokerError> {
        names::check_name(name)?;
        let link = &*self.link;
        let channel = link.open_channel(link.confirm_deadline())?;
        for queue in [
            names::mailbox_queue(name),
            names::dead_queue(name),
            super::names::charges_queue(name),
            names::limit_queue(name),
        ] {
            link.run(
                || format!("deleting queue `{queue}`"),
                channel.queue_delete(
                    ShortString::from(queue.as_str()),
                    QueueDeleteOptions::default(),
                ),
            )?;
        }
        let _ = block_until(
            link.confirm_deadline(),
            channel.close(200, ShortString::from("OK")),
        );
        Ok(())
    }

    /// Deletes `queue` and `exchange` (a sharded kind's record of its
    /// count and its members exchange).
    pub(crate) fn delete_record_and_exchange(
        &self,
        queue: &str,
        exchange: &str,
    ) -> Result<(), BrokerError> {
        let link = &*self.link;
        let channel = link.open_channel(link.confirm_deadline())?;
        let deleted = link
            .run(
                || format!("deleting queue `{queue}`"),
                channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()),
            )
            .and_then(|_| {
                link.run(
                    || format!("deleting exchange `{exchange}`"),
                    channel.exchange_delete(
                        ShortString::from(exchange),
                        lapin::options::ExchangeDeleteOptions::default(),
                    ),
                )
            });
        let _ = block_until(
            link.confirm_deadline(),
            channel.close(200, ShortString::from("OK")),
        );
        deleted
    }
}
