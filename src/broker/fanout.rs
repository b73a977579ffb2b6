//! A fanout exchange heard on a queue of one's own: what the members of a
//! sharded kind beat on. Each holder publishes to the exchange and hears
//! everything published there (its own messages too) on an exclusive,
//! server-named queue; a lost channel is replaced at the next call,
//! without waiting for a connection.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};

use super::connection::{Link, block_until};
use super::error::BrokerError;

/// One holder's side of a durable fanout exchange.
pub(crate) struct Fanout {
    exchange: String,
    channel: Option<Channel>,
    /// Where the bodies heard go.
    heard: Sender<Vec<u8>>,
}

impl Fanout {
    pub(crate) fn new(exchange: String, heard: Sender<Vec<u8>>) -> Fanout {
        Fanout {
            exchange,
            channel: None,
            heard,
        }
    }

    /// An open channel with this holder's queue bound to the exchange and
    /// consumed, opening one if there is none (without waiting for a
    /// connection).
    fn ensure(&mut self, link: &Link) -> Result<&Channel, BrokerError> {
        if self
            .channel
            .as_ref()
            .is_none_or(|c| !c.status().connected())
        {
            self.channel = None;
            let channel = link.open_channel(Some(Instant::now()))?;
            let exchange = &self.exchange;
            link.run(
                || format!("declaring exchange `{exchange}`"),
                channel.exchange_declare(
                    ShortString::from(exchange.as_str()),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )?;
            let queue = link.run(
                || format!("declaring a queue for `{exchange}`"),
                channel.queue_declare(
                    ShortString::from(""),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )?;
            let queue = queue.name().clone();
            link.run(
                || format!("binding a queue to `{exchange}`"),
                channel.queue_bind(
                    queue.clone(),
                    ShortString::from(exchange.as_str()),
                    ShortString::from(""),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )?;
            let consumer = link.run(
                || format!("consuming from `{exchange}`"),
                channel.basic_consume(
                    queue,
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )?;
            let heard = self.heard.clone();
            consumer.set_delegate(move |delivery: DeliveryResult| {
                if let Ok(Some(delivery)) = delivery {
                    let _ = heard.send(delivery.data);
                }
                async {}
            });
            self.channel = Some(channel);
        }
        Ok(self.channel.as_ref().expect("opened above"))
    }

    /// Publishes `body` (no confirm), waiting at most `wait`; why not, if
    /// it was not sent.
    pub(crate) fn publish(
        &mut self,
        link: &Link,
        body: &[u8],
        wait: Duration,
    ) -> Result<(), String> {
        let channel = self.ensure(link).map_err(|e| e.to_string())?.clone();
        let sent = block_until(
            Some(Instant::now() + wait),
            channel.basic_publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(""),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ),
        );
        match sent {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("no answer within {wait:?}")),
        }
    }

    /// Closes the channel (its queue goes with it).
    pub(crate) fn close(&mut self) {
        if let Some(channel) = self.channel.take() {
            let _ = block_until(
                Some(Instant::now() + Duration::from_secs(2)),
                channel.close(200, ShortString::from("custody: left")),
            );
        }
    }
}
