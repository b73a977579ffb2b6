//! Faults at the owner of a broker queue (feature `amqp`), against a real
//! RabbitMQ broker: the URL comes from `CUSTODY_AMQP_URL`, or
//! guest@127.0.0.1:5672. An unreachable broker fails these tests; it never
//! skips them.
//!
//! - Every header and property of a delivery is untrusted input: a forged or
//!   malformed message is dead-lettered with a reason naming what was wrong,
//!   and the messages around it are handled and acknowledged.
//! - A delivery is acknowledged only after the `idle` hook of its batch ran,
//!   also with batches smaller than the prefetch and after an immediate stop.
//! - An answer is published before its request is acknowledged, so an owner
//!   dying at any point leaves no ask unanswered.
//!
//! Forged messages are published with the AMQP client itself, as any other
//! client could. Every scenario runs inside `within` (60 s), uses queue names
//! of its own and deletes its queues at the end.

#![cfg(feature = "amqp")]

mod common;

use std::collections::BTreeSet;
#[cfg(feature = "sqlite")]
use std::io::BufRead;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "sqlite")]
use common::unique_name;
use common::{Queues, builder, connect, url, within};
use custody::broker::{
    Broker, BrokerBuilder, DeadLetter, RemoteAskError, RemoteHandle, RemoteJoinError, RemoteReply,
};
use custody::{Backend, Context, Manager, Runtime};
use futures_lite::future::block_on;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Deserializer, Serialize};

/// Runs the scenario once per backend, each inside `within`.
fn per_backend(scenario: impl Fn(Backend) + Send + Sync + Clone + 'static) {
    for backend in Backend::ALL {
        let scenario = scenario.clone();
        within(move || scenario(backend));
    }
}

/// The messages of these tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Job {
    Work(u64),
    Blob(Vec<u8>),
    /// Its `Deserialize` panics on 13, as a user's own impl might.
    Touchy(#[serde(deserialize_with = "panics_on_13")] u64),
}

fn panics_on_13<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n == 13 {
        panic!("unlucky thirteen");
    }
    Ok(n)
}

/// CBOR, as a `RemoteHandle` encodes it.
fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    bytes
}

/// Records each job it handles.
struct Recorder(Arc<Mutex<Vec<Job>>>);

impl Manager for Recorder {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        self.0.lock().unwrap().push(job);
    }
}

/// A client of its own that publishes whatever it is given (confirmed), and
/// takes answers sent to its direct reply-to.
struct Forger {
    _connection: Connection,
    channel: Channel,
    answers: Mutex<mpsc::Receiver<(String, Vec<u8>)>>,
}

/// The answers an owner sends back to a forged ask: the mirror of its wire
/// format (a forged ask of these tests carries no reply to answer a value).
#[derive(Debug, Deserialize)]
enum Answer {
    NoReply,
    DeadLettered(String),
}

impl Forger {
    fn new() -> Forger {
        block_on(async {
            let connection = Connection::connect(&url(), ConnectionProperties::default())
                .await
                .expect("the broker tests need a reachable RabbitMQ broker");
            let channel = connection.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let consumer = channel
                .basic_consume(
                    ShortString::from("amq.rabbitmq.reply-to"),
                    ShortString::from("forger"),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let (tx, answers) = mpsc::channel();
            consumer.set_delegate(move |delivery: DeliveryResult| {
                if let Ok(Some(delivery)) = delivery {
                    let id = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default();
                    let _ = tx.send((id, delivery.data));
                }
                std::future::ready(())
            });
            Forger {
                _connection: connection,
                channel,
                answers: Mutex::new(answers),
            }
        })
    }

    /// Publishes to `queue`; the broker must take it.
    fn publish(&self, queue: &str, props: BasicProperties, body: &[u8]) {
        let confirm = block_on(async {
            self.channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap()
        });
        assert!(confirm.is_ack(), "the broker refused a forged message");
        assert!(confirm.take_message().is_none(), "no queue `{queue}`");
    }

    /// The next answer to this client: correlation id and body.
    fn answer(&self) -> (String, Answer) {
        let (id, body) = self
            .answers
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20))
            .expect("no answer within 20 s");
        let answer = ciborium::from_reader(body.as_slice()).expect("an answer");
        (id, answer)
    }

    /// Messages ready in `queue` (not delivered to a consumer).
    fn ready(&self, queue: &str) -> u32 {
        block_on(self.channel.queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ))
        .unwrap()
        .message_count()
    }
}

/// The properties of a well-formed message from the producer `forger`.
fn forged(id: &str) -> BasicProperties {
    with_header(
        BasicProperties::default()
            .with_content_type(ShortString::from("application/cbor"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id)),
        "custody-producer",
        AMQPValue::LongString(LongString::from("forger")),
    )
}

fn with_header(props: BasicProperties, key: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(key), value);
    props.with_headers(headers)
}

/// A bad message sent by a scenario: its body (which tells its dead letter
/// apart), and what the reason it is dead-lettered with must say.
struct Bad {
    body: Vec<u8>,
    reason_has: Vec<String>,
}

impl Bad {
    fn new(body: Vec<u8>, reason_has: &[&str]) -> Bad {
        Bad {
            body,
            reason_has: reason_has.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Sends `Work(0..50)`, the bad messages, then `Work(50..100)` to an owner
/// made by `owner`; checks that the 100 good ones are handled in order and
/// acknowledged, that each bad one is dead-lettered with its reason, that
/// nothing is left in the queue, and that `Served::stop` returns. Gives back
/// what the sender's `join` reported dead-lettered.
fn bad_among_good(
    backend: Backend,
    label: &str,
    owner: BrokerBuilder,
    send_bad: impl FnOnce(&Forger, &str, &RemoteHandle<Job>) -> Vec<Bad>,
) -> Vec<DeadLetter> {
    const GOOD: u64 = 100;
    let queues = Queues::new(label);
    let rt = Runtime::builder().backend(backend).build().unwrap();
    let owner = connect(owner);
    let log = Arc::new(Mutex::new(Vec::new()));
    let served = owner
        .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
        .unwrap();
    let sender = connect(builder());
    let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
    let forger = Forger::new();
    jobs.tell_all((0..GOOD / 2).map(Job::Work)).unwrap();
    let bad = send_bad(&forger, &queues.queue(), &jobs);
    jobs.tell_all((GOOD / 2..GOOD).map(Job::Work)).unwrap();
    // A generous bound, as a hang guard only.
    let reported = match jobs.join_timeout(Duration::from_secs(20)) {
        Ok(()) => Vec::new(),
        Err(RemoteJoinError::DeadLettered { dead, .. }) => dead,
        Err(e) => panic!("the good messages were not all handled: {e}"),
    };
    assert_eq!(
        *log.lock().unwrap(),
        (0..GOOD).map(Job::Work).collect::<Vec<_>>(),
        "the manager got exactly the good messages, in order"
    );
    // The done records go out just before the ack: the count may trail.
    let stats = || {
        served
            .handle()
            .stats()
            .outside
            .expect("served from a queue")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (stats().acked, stats().dead_lettered) != (GOOD, bad.len() as u64)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let queue = stats();
    assert_eq!(queue.acked, GOOD, "every good message acknowledged");
    assert_eq!(queue.dead_lettered, bad.len() as u64);
    assert!(served.is_serving(), "the serving ended");
    served.stop();
    let dead = owner.take_dead_letters(&queues.name, 100).unwrap();
    assert_eq!(dead.len(), bad.len(), "{dead:?}");
    for b in &bad {
        let letter = dead
            .iter()
            .find(|d| d.body == b.body)
            .unwrap_or_else(|| panic!("a bad message is not in the dead-letter queue: {dead:?}"));
        let error = letter.error.as_deref().expect("an x-custody-error header");
        for part in &b.reason_has {
            assert!(error.contains(part.as_str()), "{error:?} lacks {part:?}");
        }
    }
    assert_eq!(
        forger.ready(&queues.queue()),
        0,
        "messages left in the queue"
    );
    drop(jobs);
    drop(queues);
    reported
}

#[test]
fn a_forged_long_producer_header_is_dead_lettered_and_the_queue_flows_on() {
    per_backend(|backend| {
        bad_among_good(backend, "long-producer", builder(), |forger, queue, _| {
            // `custody.done.` and 250 bytes make a queue name over AMQP's 255.
            let props = with_header(
                forged("forged.1"),
                "custody-producer",
                AMQPValue::LongString(LongString::from("p".repeat(250))),
            );
            let body = cbor(&Job::Work(1000));
            forger.publish(queue, props, &body);
            vec![Bad::new(body, &["header `custody-producer`", "250 bytes"])]
        });
    });
}

#[test]
fn an_undecodable_body_is_dead_lettered_even_from_a_forged_producer() {
    per_backend(|backend| {
        bad_among_good(backend, "undecodable", builder(), |forger, queue, _| {
            let long = with_header(
                forged("forged.1"),
                "custody-producer",
                AMQPValue::LongString(LongString::from("p".repeat(250))),
            );
            let garbage = b"\xff\x00garbage".to_vec();
            forger.publish(queue, long, &garbage);
            let plain_garbage = b"\xff\x01garbage".to_vec();
            forger.publish(queue, forged("forged.2"), &plain_garbage);
            vec![
                Bad::new(garbage, &["header `custody-producer`"]),
                Bad::new(plain_garbage, &["the body does not decode", "Job"]),
            ]
        });
    });
}

#[test]
fn a_panic_while_decoding_dead_letters_the_delivery_and_serving_goes_on() {
    per_backend(|backend| {
        let reported = bad_among_good(backend, "decode-panic", builder(), |_, _, jobs| {
            jobs.tell(Job::Touchy(13)).unwrap();
            vec![Bad::new(
                cbor(&Job::Touchy(13)),
                &["panicked", "unlucky thirteen"],
            )]
        });
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            reported[0].reason.contains("unlucky thirteen"),
            "{reported:?}"
        );
    });
}

#[test]
fn headers_and_properties_of_the_wrong_type_or_shape_are_dead_lettered_naming_the_field() {
    per_backend(|backend| {
        let mut asked = None;
        bad_among_good(backend, "bad-fields", builder(), |forger, queue, _| {
            let mut bad = Vec::new();
            let mut send = |props: BasicProperties, reason_has: &[&str]| {
                let body = cbor(&Job::Work(1000 + bad.len() as u64));
                forger.publish(queue, props, &body);
                bad.push(Bad::new(body, reason_has));
            };
            send(
                with_header(forged("f.1"), "custody-producer", AMQPValue::LongInt(7)),
                &["header `custody-producer`", "integer", "string"],
            );
            send(
                with_header(
                    forged("f.2"),
                    "custody-producer",
                    AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, b'a'])),
                ),
                &["header `custody-producer`", "UTF-8"],
            );
            send(
                with_header(
                    forged("f.3"),
                    "custody-producer",
                    AMQPValue::LongString(LongString::from("")),
                ),
                &["header `custody-producer`", "empty"],
            );
            send(
                with_header(
                    forged("f.4"),
                    "x-delivery-count",
                    AMQPValue::LongString(LongString::from("many")),
                ),
                &["header `x-delivery-count`", "string", "integer"],
            );
            send(
                with_header(
                    forged("f.5"),
                    "x-delivery-count",
                    AMQPValue::LongLongInt(-1),
                ),
                &["header `x-delivery-count`", "negative"],
            );
            send(
                forged("f.6").with_content_type(ShortString::from("text/plain")),
                &["property `content-type`", "text/plain"],
            );
            let mut no_id = forged("f.7");
            no_id = BasicProperties::default()
                .with_content_type(ShortString::from("application/cbor"))
                .with_headers(no_id.headers().clone().unwrap());
            send(no_id, &["property `message-id`", "missing"]);
            send(
                forged("f.8").with_reply_to(ShortString::from("amq.rabbitmq.reply-to")),
                &["property `correlation-id`", "missing"],
            );
            // An ask: its asker hears why.
            send(
                forged("f.9")
                    .with_reply_to(ShortString::from("amq.rabbitmq.reply-to"))
                    .with_correlation_id(ShortString::from("ask.9"))
                    .with_content_encoding(ShortString::from("gzip")),
                &["property `content-encoding`", "gzip"],
            );
            asked = Some(forger.answer());
            bad
        });
        match asked {
            Some((id, Answer::DeadLettered(reason))) => {
                assert_eq!(id, "ask.9");
                assert!(reason.contains("content-encoding"), "{reason}");
            }
            other => panic!("expected a DeadLettered answer, got {other:?}"),
        }
    });
}

#[test]
fn a_body_over_the_size_limit_is_dead_lettered_and_its_sender_told() {
    per_backend(|backend| {
        const MAX: usize = 1024;
        let blob = Job::Blob(vec![7; 2 * MAX]);
        let size = cbor(&blob).len();
        let reported = bad_among_good(
            backend,
            "too-large",
            builder().max_body(MAX),
            |_, _, jobs| {
                jobs.tell(blob.clone()).unwrap();
                vec![Bad {
                    body: cbor(&blob),
                    reason_has: vec![format!("{size} bytes"), format!("limit of {MAX}")],
                }]
            },
        );
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].reason.contains("limit"), "{reported:?}");
    });
}

/// Checks, at each message and each `idle`, that the queue has not
/// acknowledged more deliveries than the `idle` hooks have covered.
struct Committer {
    since_idle: u64,
    committed: u64,
    early: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicU64>,
}

impl Committer {
    fn check(&self, at: &str, ctx: &Context<'_, Job>) {
        let acked = ctx.handle().stats().outside.map_or(0, |q| q.acked);
        if acked > self.committed {
            self.early.lock().unwrap().push(format!(
                "{acked} acknowledged with {} committed, at {at}",
                self.committed
            ));
        }
    }
}

impl Manager for Committer {
    type Msg = Job;
    fn handle(&mut self, job: Job, ctx: &mut Context<'_, Job>) {
        self.check(&format!("{job:?}"), ctx);
        self.since_idle += 1;
    }
    fn idle(&mut self, ctx: &mut Context<'_, Job>) {
        self.check("idle", ctx);
        self.committed += self.since_idle;
        self.since_idle = 0;
        self.done.store(self.committed, Ordering::SeqCst);
    }
}

#[test]
fn no_delivery_is_acknowledged_before_the_idle_of_its_batch_ran() {
    per_backend(|backend| {
        const N: u64 = 1000;
        let queues = Queues::new("ack-after-idle");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        // Queued first, so that batches are full: 64, below the prefetch (256).
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        let rt = Runtime::builder()
            .backend(backend)
            .max_batch(64)
            .build()
            .unwrap();
        let owner = connect(builder().prefetch(256));
        let early = Arc::new(Mutex::new(Vec::new()));
        let committed = Arc::new(AtomicU64::new(0));
        let served = owner
            .serve(
                &rt,
                &queues.name,
                Committer {
                    since_idle: 0,
                    committed: 0,
                    early: Arc::clone(&early),
                    done: Arc::clone(&committed),
                },
            )
            .unwrap();
        jobs.join_timeout(Duration::from_secs(30)).unwrap();
        let early = early.lock().unwrap().clone();
        assert!(
            early.is_empty(),
            "{} deliveries acknowledged before their idle, first: {:?}",
            early.len(),
            &early[..early.len().min(3)]
        );
        assert_eq!(committed.load(Ordering::SeqCst), N);
        served.stop();
        drop(queues);
    });
}

/// Records what it handles and what its `idle` covered; blocks in `handle`
/// once it has handled `stall_at` messages, until the latch opens.
struct Latched {
    handled: Arc<Mutex<Vec<u64>>>,
    committed: Arc<Mutex<BTreeSet<u64>>>,
    since_idle: Vec<u64>,
    stall_at: usize,
    reached: mpsc::Sender<()>,
    latch: Arc<(Mutex<bool>, Condvar)>,
}

impl Manager for Latched {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        let Job::Work(n) = job else { return };
        self.since_idle.push(n);
        let count = {
            let mut handled = self.handled.lock().unwrap();
            handled.push(n);
            handled.len()
        };
        if count == self.stall_at {
            let _ = self.reached.send(());
            let (open, opened) = &*self.latch;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
        }
    }
    fn idle(&mut self, _ctx: &mut Context<'_, Job>) {
        self.committed
            .lock()
            .unwrap()
            .extend(self.since_idle.drain(..));
    }
}

#[test]
fn an_immediate_stop_leaves_the_uncommitted_deliveries_to_the_standby() {
    per_backend(|backend| {
        const N: u64 = 1000;
        // Past the first idle (at the prefetch, 256), inside a batch of 64.
        const STALL_AT: usize = 300;
        let queues = Queues::new("shutdown-now");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        let rt = Arc::new(
            Runtime::builder()
                .backend(backend)
                .max_batch(64)
                .build()
                .unwrap(),
        );
        let first = connect(builder().prefetch(256));
        let handled = Arc::new(Mutex::new(Vec::new()));
        let committed = Arc::new(Mutex::new(BTreeSet::new()));
        let latch = Arc::new((Mutex::new(false), Condvar::new()));
        let (reached_tx, reached) = mpsc::channel();
        let served = first
            .serve(
                &rt,
                &queues.name,
                Latched {
                    handled: Arc::clone(&handled),
                    committed: Arc::clone(&committed),
                    since_idle: Vec::new(),
                    stall_at: STALL_AT,
                    reached: reached_tx,
                    latch: Arc::clone(&latch),
                },
            )
            .unwrap();
        // The standby, idle until the first owner's channel closes.
        let rt_standby = Runtime::builder().backend(backend).build().unwrap();
        let standby = connect(builder());
        let log = Arc::new(Mutex::new(Vec::new()));
        let served_standby = standby
            .serve(&rt_standby, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        reached.recv().unwrap();
        let stopping = {
            let rt = Arc::clone(&rt);
            std::thread::spawn(move || rt.shutdown_now())
        };
        // Let the manager finish the message in hand once the stop is asked.
        while !served.handle().is_stopped() {
            std::thread::sleep(Duration::from_millis(1));
        }
        *latch.0.lock().unwrap() = true;
        latch.1.notify_all();
        stopping.join().unwrap();
        let committed = committed.lock().unwrap().clone();
        let uncommitted: BTreeSet<u64> = handled
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|n| !committed.contains(n))
            .collect();
        assert!(
            !uncommitted.is_empty(),
            "the stop did not land inside a batch"
        );
        let acked = served.handle().stats().outside.unwrap().acked;
        assert_eq!(
            acked,
            committed.len() as u64,
            "acked what was not committed"
        );
        // The stopped owner hands the queue over on its own (its `Served` is
        // not stopped): the standby gets everything not committed.
        jobs.join_timeout(Duration::from_secs(30)).unwrap();
        assert!(!served.is_serving(), "the stopped owner still serves");
        let again: BTreeSet<u64> = log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|j| match j {
                Job::Work(n) => Some(*n),
                _ => None,
            })
            .collect();
        let lost: Vec<u64> = uncommitted.difference(&again).copied().collect();
        assert!(
            lost.is_empty(),
            "{} of {} handled but uncommitted deliveries were acknowledged at the stop \
             and never came back, first: {:?}",
            lost.len(),
            uncommitted.len(),
            &lost[..lost.len().min(5)]
        );
        let missing: Vec<u64> = (0..N)
            .filter(|n| !committed.contains(n) && !again.contains(n))
            .collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
        served.stop();
        served_standby.stop();
        drop(jobs);
        drop(queues);
    });
}

/// Removes a SQLite file and its companions when dropped, pass or fail.
#[cfg(feature = "sqlite")]
struct DbFile(std::path::PathBuf);

#[cfg(feature = "sqlite")]
impl DbFile {
    fn new(label: &str) -> DbFile {
        DbFile(std::env::temp_dir().join(format!("custody-{}.db", unique_name(label))))
    }

    /// Rows and distinct `n`s in `writes`, and rows in `custody_applied`.
    fn counts(&self) -> (u64, u64, u64) {
        let conn = custody::resources::rusqlite::Connection::open(&self.0).unwrap();
        conn.query_row(
            "SELECT (SELECT count(*) FROM writes), (SELECT count(DISTINCT n) FROM writes), \
             (SELECT count(*) FROM custody_applied)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }
}

#[cfg(feature = "sqlite")]
impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A `RemoteDatabase` with the table `writes (n)`, which has no unique key: a
/// write applied twice would show as two rows.
#[cfg(feature = "sqlite")]
fn remote_database(path: &std::path::Path) -> custody::resources::RemoteDatabase {
    custody::resources::RemoteDatabase::open(
        custody::resources::Database::builder(path)
            .init_sql("CREATE TABLE IF NOT EXISTS writes (n INTEGER NOT NULL)"),
    )
    .unwrap()
}

#[cfg(feature = "sqlite")]
fn insert(n: u64) -> custody::resources::RemoteWrite {
    custody::resources::RemoteWrite::new(
        "INSERT INTO writes (n) VALUES (?1)",
        vec![i64::try_from(n).unwrap().into()],
    )
}

/// The environment variable that makes `small_batch_db_owner_process` serve:
/// `NAME|PATH`.
#[cfg(feature = "sqlite")]
const SMALL_BATCH_DB_VAR: &str = "CUSTODY_BROKER_FAULTS_DB_OWNER";

/// Writes the killed owner handles before it stalls: two full batches of 64
/// and part of a third, all below the prefetch, none of them idle yet.
#[cfg(feature = "sqlite")]
const STALL_AT: u64 = 150;

/// A `RemoteDatabase` that stalls in `handle` after `STALL_AT` writes.
#[cfg(feature = "sqlite")]
struct StallInHandle {
    db: custody::resources::RemoteDatabase,
    handled: u64,
}

#[cfg(feature = "sqlite")]
impl Manager for StallInHandle {
    type Msg = custody::resources::RemoteDatabaseMsg;
    fn handle(&mut self, msg: Self::Msg, ctx: &mut Context<'_, Self::Msg>) {
        self.db.handle(msg, ctx);
        self.handled += 1;
        if self.handled == STALL_AT {
            println!("stalled after {} handled", self.handled);
            // Killed by the parent long before this.
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    fn idle(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        self.db.idle(ctx);
    }
    fn stopped(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        self.db.stopped(ctx);
    }
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, Self::Msg>) {
        self.db.recover(panic, ctx);
    }
}

/// Not a scenario: the owner process that
/// `a_database_served_in_batches_below_the_prefetch_loses_no_write_when_its_owner_is_killed`
/// starts (with `--ignored --exact`) and kills.
#[cfg(feature = "sqlite")]
#[test]
#[ignore = "an owner process started by a test of this file"]
fn small_batch_db_owner_process() {
    let Ok(arg) = std::env::var(SMALL_BATCH_DB_VAR) else {
        return;
    };
    let (name, path) = arg.split_once('|').unwrap();
    let rt = Runtime::builder().max_batch(64).build().unwrap();
    let broker = connect(builder().prefetch(256));
    let owner = StallInHandle {
        db: remote_database(std::path::Path::new(path)),
        handled: 0,
    };
    let served = broker.serve(&rt, name, owner).unwrap();
    // On a line of its own: the harness has printed "test ... " before it.
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

/// Kills the child process when dropped, pass or fail.
#[cfg(feature = "sqlite")]
struct KillOnDrop(std::process::Child);

#[cfg(feature = "sqlite")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn a_database_served_in_batches_below_the_prefetch_loses_no_write_when_its_owner_is_killed() {
    use custody::resources::RemoteDatabaseMsg;
    use std::process::{Command, Stdio};

    within(|| {
        const N: u64 = 3000;
        let queues = Queues::new("db-kill-batches");
        let file = DbFile::new("db-kill-batches");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        // Queued before the owner starts: its batches are full.
        db.tell_all((0..N).map(|n| RemoteDatabaseMsg::Execute(insert(n))))
            .unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "small_batch_db_owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                SMALL_BATCH_DB_VAR,
                format!("{}|{}", queues.name, file.0.to_str().unwrap()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut next_line = move || {
            stdout
                .next()
                .expect("the child process ended early")
                .unwrap()
        };
        while next_line() != "serving" {}
        // The standby: registered after the child, so idle until it dies.
        let rt = Runtime::new();
        let standby = connect(builder());
        let served = standby
            .serve(&rt, &queues.name, remote_database(&file.0))
            .unwrap();
        while !next_line().starts_with("stalled") {}
        let (at_kill, _, _) = file.counts();
        child.0.kill().unwrap(); // SIGKILL: no goodbye to the broker
        child.0.wait().unwrap();
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let (rows, distinct, applied) = file.counts();
        eprintln!("killed the owner with {at_kill} rows committed; now {rows} of {N}");
        assert_eq!(
            (rows, distinct, applied),
            (N, N, N),
            "{} of {N} writes lost",
            N - rows
        );
        served.stop();
        drop(child);
        drop(db);
        drop(queues);
    });
}

/// The asks of the proxy scenarios.
#[derive(Serialize, Deserialize)]
enum Calc {
    Double(u64, RemoteReply<u64>),
}

/// Answers twice the number; counts what it handled.
struct Doubler(Arc<AtomicU64>);

impl Manager for Doubler {
    type Msg = Calc;
    fn handle(&mut self, msg: Calc, _ctx: &mut Context<'_, Calc>) {
        let Calc::Double(n, reply) = msg;
        self.0.fetch_add(1, Ordering::SeqCst);
        reply.send(2 * n);
    }
}

/// Where a `Proxy` cuts the owner's connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// Drops the owner's first acknowledgement and everything after it: the
    /// owner dies just before acknowledging its first batch.
    BeforeFirstAck,
    /// Forwards the first acknowledgement, then drops everything after it:
    /// the owner dies just after acknowledging its first batch.
    AfterFirstAck,
}

/// A TCP proxy between one client and the broker that reads the client's
/// AMQP frames and cuts both connections at its first `basic.ack`, as if the
/// client were killed there.
struct Proxy {
    url: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(cut: Cut) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (upstream, proxied) = common::through_proxy(&url(), port);
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(&upstream).unwrap();
            let (to_client, from_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &from_server, &mut &to_client);
                let _ = to_client.shutdown(Shutdown::Both);
            });
            forward_until_ack(&client, &server, cut);
            flag.store(true, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        });
        Proxy {
            url: proxied,
            cut: done,
        }
    }

    fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Copies the client's frames to the server up to its first `basic.ack`
/// (class 60, method 80), which is forwarded or not as `cut` says.
fn forward_until_ack(client: &TcpStream, mut server: &TcpStream, cut: Cut) {
    let mut reader = BufReader::new(client);
    let mut protocol_header = [0u8; 8];
    if reader.read_exact(&mut protocol_header).is_err()
        || server.write_all(&protocol_header).is_err()
    {
        return;
    }
    loop {
        let mut head = [0u8; 7];
        if reader.read_exact(&mut head).is_err() {
            return;
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        // The payload and the frame-end octet.
        let mut rest = vec![0u8; size + 1];
        if reader.read_exact(&mut rest).is_err() {
            return;
        }
        let is_ack = head[0] == 1 && size >= 4 && rest[..4] == [0, 60, 0, 80];
        if is_ack && cut == Cut::BeforeFirstAck {
            return;
        }
        if server.write_all(&head).is_err() || server.write_all(&rest).is_err() {
            return;
        }
        if is_ack {
            return;
        }
    }
}

/// An owner connected through a proxy that cuts it at its first ack, a
/// standby, and 20 asks from 4 threads: every ask must end with its answer.
fn every_ask_is_answered_across_a_cut(cut: Cut, label: &str) {
    let queues = Queues::new(label);
    let proxy = Proxy::start(cut);
    let rt_owner = Runtime::new();
    let owner = connect(Broker::builder(proxy.url.clone()));
    let by_owner = Arc::new(AtomicU64::new(0));
    let served_owner = owner
        .serve(&rt_owner, &queues.name, Doubler(Arc::clone(&by_owner)))
        .unwrap();
    let rt_standby = Runtime::new();
    let standby = connect(builder());
    let by_standby = Arc::new(AtomicU64::new(0));
    let served_standby = standby
        .serve(&rt_standby, &queues.name, Doubler(Arc::clone(&by_standby)))
        .unwrap();
    let sender = connect(builder());
    let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
    let askers: Vec<_> = (0..4u64)
        .map(|t| {
            let calc = calc.clone();
            std::thread::spawn(move || {
                (0..5u64)
                    .map(|i| {
                        let n = 100 * t + i;
                        // A generous bound, as a hang guard only.
                        let answer =
                            calc.ask_timeout(|r| Calc::Double(n, r), Duration::from_secs(20));
                        (n, answer)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<(u64, Result<u64, RemoteAskError>)> =
        askers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(proxy.has_cut(), "the owner was never cut off");
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(n, answer)| !matches!(answer, Ok(v) if *v == 2 * n))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} asks without their answer ({} handled by the owner, {} by the standby): {wrong:?}",
        wrong.len(),
        answers.len(),
        by_owner.load(Ordering::SeqCst),
        by_standby.load(Ordering::SeqCst),
    );
    assert!(
        by_owner.load(Ordering::SeqCst) > 0,
        "the owner handled nothing"
    );
    // A duplicate answer (the owner's, then the standby's) is not taken for
    // a later ask's.
    assert_eq!(
        calc.ask_timeout(|r| Calc::Double(1000, r), Duration::from_secs(20))
            .unwrap(),
        2000
    );
    if cut == Cut::BeforeFirstAck {
        let redelivered = served_standby.handle().stats().outside.unwrap().redelivered;
        assert!(redelivered > 0, "the standby got nothing again");
    }
    calc.join_timeout(Duration::from_secs(20)).unwrap();
    served_owner.stop();
    served_standby.stop();
    drop(calc);
    drop(queues);
}

#[test]
fn an_ask_is_answered_when_its_owner_dies_right_after_acknowledging_it() {
    within(|| every_ask_is_answered_across_a_cut(Cut::AfterFirstAck, "cut-after-ack"));
}

#[test]
fn an_ask_is_answered_when_its_owner_dies_between_answering_and_acknowledging() {
    within(|| every_ask_is_answered_across_a_cut(Cut::BeforeFirstAck, "cut-before-ack"));
}
