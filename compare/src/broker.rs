//! `broker` (feature `amqp`, needs RabbitMQ): one producer sends `k`
//! messages through a durable quorum queue to one consumer in the same
//! process, each confirmed by the broker and handled; the run ends when the
//! producer knows every message was handled (or, for `raw-lapin`, when the
//! consumer has acknowledged the last one). Each run gets fresh queues,
//! deleted afterwards; connecting and declaring are not timed.
//!
//! - `raw-lapin` (the reference): the AMQP client alone, no runtime:
//!   publishes with every confirm in flight, a consumer acknowledging with a
//!   multiple-ack every 64 deliveries.
//! - `remote-tell`: `RemoteHandle::tell_all`, then `join` (done records),
//!   to a manager served with `Broker::serve`.
//! - `remote-ask`: `k` sequential `RemoteHandle::ask`s, each answered once
//!   its batch is settled.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use custody::broker::{Broker, RemoteReply};
use custody::{Context, Manager, Runtime};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

/// The workload's name.
pub const NAME: &str = "broker";

/// The designs, the reference (`raw-lapin`) first.
pub const DESIGNS: [&str; 3] = ["raw-lapin", "remote-tell", "remote-ask"];

/// One producer.
pub const THREADS: [usize; 1] = [1];

/// The served manager's messages.
#[derive(Serialize, Deserialize)]
enum Msg {
    Add(u64),
    Total(RemoteReply<u64>),
}

struct Sum(u64);

impl Manager for Sum {
    type Msg = Msg;
    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Add(n) => self.0 += n,
            Msg::Total(reply) => reply.send(self.0),
        }
    }
}

/// One run of `design`: `k` messages from one producer.
///
/// # Panics
///
/// On an unknown design, more than one producer, an unreachable broker, or
/// a message lost.
pub fn run(design: &str, producers: usize, k: u64) -> Duration {
    assert_eq!(producers, 1, "broker: one producer only");
    match design {
        "raw-lapin" => raw_lapin(k),
        "remote-tell" | "remote-ask" => remote(design, k),
        other => panic!("broker: unknown design `{other}`"),
    }
}

/// A queue name no other run uses.
fn unique(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "compare.{label}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner's and the producer's connections, made once per process.
fn brokers() -> &'static (Broker, Broker) {
    static BROKERS: OnceLock<(Broker, Broker)> = OnceLock::new();
    BROKERS.get_or_init(|| {
        let connect = || {
            Broker::from_env().unwrap_or_else(|e| {
                panic!("the broker workload needs RabbitMQ (CUSTODY_AMQP_URL): {e}")
            })
        };
        (connect(), connect())
    })
}

fn remote(design: &str, k: u64) -> Duration {
    let (owner, producer) = brokers();
    let name = unique(design);
    let rt = Runtime::new();
    let served = owner.serve(&rt, &name, Sum(0)).expect("serve");
    let sum = producer.remote_handle::<Msg>(&name).expect("remote handle");
    let started = Instant::now();
    if design == "remote-tell" {
        sum.tell_all((0..k).map(|_| Msg::Add(1))).expect("tell_all");
        sum.join().expect("join");
    } else {
        for _ in 0..k {
            sum.ask(Msg::Total).expect("ask");
        }
    }
    let elapsed = started.elapsed();
    if design == "remote-tell" {
        assert_eq!(
            sum.ask(Msg::Total).expect("ask"),
            k,
            "broker: lost messages"
        );
    }
    served.stop();
    drop(sum);
    owner.delete_queues(&name).expect("delete queues");
    elapsed
}

/// The reference: lapin alone.
fn raw_lapin(k: u64) -> Duration {
    futures_lite::future::block_on(async {
        let url = std::env::var("CUSTODY_AMQP_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| custody::broker::DEFAULT_URL.to_owned());
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("the broker workload needs RabbitMQ (CUSTODY_AMQP_URL)");
        let queue = unique("raw");
        let publisher = conn.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        publisher
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .expect("declare");
        let consuming = conn.create_channel().await.expect("channel");
        consuming
            .basic_qos(256, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = consuming
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from("compare"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");

        let started = Instant::now();
        let consume = async {
            let mut seen = 0u64;
            while seen < k {
                let delivery = consumer.next().await.expect("delivery").expect("delivery");
                seen += 1;
                if seen.is_multiple_of(64) || seen == k {
                    consuming
                        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                        .await
                        .expect("ack");
                }
            }
        };
        let publish = async {
            let mut confirms = Vec::with_capacity(1024);
            for i in 0..k {
                let confirm = publisher
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(queue.as_str()),
                        BasicPublishOptions::default(),
                        &i.to_le_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
                if confirms.len() == 1024 {
                    for c in confirms.drain(..) {
                        assert!(c.await.expect("confirm").is_ack());
                    }
                }
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack());
            }
        };
        futures_lite::future::zip(publish, consume).await;
        let elapsed = started.elapsed();
        publisher
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await
            .expect("delete");
        let _ = conn.close(200, ShortString::from("done")).await;
        elapsed
    })
}
