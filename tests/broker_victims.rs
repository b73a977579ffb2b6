//! Poison messages told from their victims (feature `amqp`), against a real
//! RabbitMQ broker: the URL comes from `CUSTODY_AMQP_URL`, or
//! guest@127.0.0.1:5672. An unreachable broker fails these tests; it never
//! skips them.
//!
//! A crash or a lost connection returns an owner's whole prefetch window to
//! the queue, and the broker counts each return towards its delivery limit.
//! These scenarios crash, kill and forge: only the message that was in hand
//! when its owner died may be dead-lettered, and its sender (`join`, `ask`)
//! hears of it.
//!
//! The broker's own dead letters (a message returned past its backstop
//! limit, here by a client of the test) are reported to `join` and `ask`
//! like the owner's.
//!
//! The owners that crash or are killed are child processes: this binary run
//! again with `--ignored --exact victim_owner_process`. Every scenario runs
//! once per backend inside `within` (60 s), uses queue names of its own and
//! deletes its queues at the end.

#![cfg(feature = "amqp")]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Queues, builder, connect, url, within};
use custody::broker::{Broker, RemoteAskError, RemoteJoinError, RemoteReply};
use custody::{Backend, Context, Manager, Runtime};
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

/// The owners' limit: the default.
const LIMIT: u32 = 5;

/// Runs the scenario once per backend, each inside `within`.
fn per_backend(scenario: impl Fn(usize) + Send + Sync + Clone + 'static) {
    for backend in 0..Backend::ALL.len() {
        let scenario = scenario.clone();
        within(move || scenario(backend));
    }
}

#[derive(Serialize, Deserialize)]
enum Job {
    Work(u64),
    /// Kills the owner's process, on every delivery.
    Crash,
    /// An ask that kills the owner's process, on every delivery.
    CrashAsk(RemoteReply<u64>),
    /// Panics the first time it is handled in a process, then is handled.
    Flaky(u64),
}

/// Prints `handled <n>` for each job (after `slow_ms`), aborts the process
/// on a crashing one.
struct Victim {
    slow: Duration,
    handled: Arc<Mutex<Vec<u64>>>,
    panicked: HashSet<u64>,
}

impl Manager for Victim {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        match job {
            Job::Work(n) => {
                std::thread::sleep(self.slow);
                self.handled.lock().unwrap().push(n);
                println!("handled {n}");
            }
            Job::Crash | Job::CrashAsk(_) => std::process::abort(),
            Job::Flaky(n) => {
                if self.panicked.insert(n) {
                    panic!("flaky once");
                }
                self.handled.lock().unwrap().push(n);
            }
        }
    }
}

const CHILD_VAR: &str = "CUSTODY_VICTIMS_OWNER";
const BACKEND_VAR: &str = "CUSTODY_VICTIMS_BACKEND";
const SLOW_VAR: &str = "CUSTODY_VICTIMS_SLOW_MS";

/// Not a scenario of its own: the owner process the scenarios start, crash
/// and kill (`--ignored --exact`).
#[test]
#[ignore = "started by the scenarios of this file as their owner process"]
fn victim_owner_process() {
    let name = std::env::var(CHILD_VAR).expect("started by a scenario");
    let backend: usize = std::env::var(BACKEND_VAR).unwrap().parse().unwrap();
    let slow: u64 = std::env::var(SLOW_VAR).unwrap().parse().unwrap();
    let rt = Runtime::builder()
        .backend(Backend::ALL[backend])
        .build()
        .unwrap();
    let broker = connect(builder());
    let victim = Victim {
        slow: Duration::from_millis(slow),
        handled: Arc::default(),
        panicked: HashSet::new(),
    };
    let served = broker.serve(&rt, &name, victim).unwrap();
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

/// Kills the child process when dropped, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_owner(name: &str, backend: usize, slow_ms: u64) -> KillOnDrop {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "victim_owner_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, name)
        .env(BACKEND_VAR, backend.to_string())
        .env(SLOW_VAR, slow_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Runs one owner process after another (a new one whenever the last one
/// died) until `done`; how many died. Fails after 40 s, saying `waiting`.
fn run_owners(
    name: &str,
    backend: usize,
    mut done: impl FnMut() -> bool,
    waiting: impl Fn() -> String,
) -> u32 {
    let started = Instant::now();
    let mut died = 0;
    let mut owner = spawn_owner(name, backend, 0);
    loop {
        if done() {
            return died;
        }
        if owner.0.try_wait().unwrap().is_some() {
            died += 1;
            assert!(died <= 3 * LIMIT, "{died} owners died: {}", waiting());
            owner = spawn_owner(name, backend, 0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not done after 40 s and {died} owners died: {}",
            waiting()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_crash_looping_message_is_dead_lettered_alone_and_its_sender_told() {
    per_backend(|backend| {
        let queues = Queues::new("crashloop");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 200;
        const POISON: u64 = 40;
        jobs.tell_all((0..N).map(|n| {
            if n == POISON {
                Job::Crash
            } else {
                Job::Work(n)
            }
        }))
        .unwrap();
        let poison_id = format!("{}.{POISON}", jobs.producer_id());
        let died = run_owners(
            &queues.name,
            backend,
            || jobs.outstanding() == 0,
            || {
                format!(
                    "{} messages not reported done; dead letters: {:?}",
                    jobs.outstanding(),
                    sender
                        .take_dead_letters(&queues.name, 1000)
                        .map(|d| d.len())
                )
            },
        );
        // Every innocent message reported done, the poison reported dead.
        match jobs.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 1, "{dead:?}");
                assert_eq!(dead[0].id, poison_id);
                assert!(dead[0].reason.contains("stopped"), "{:?}", dead[0]);
            }
            other => panic!("expected the poison dead-lettered, got {other:?}"),
        }
        // Its first delivery (in a batch, so uncharged) and LIMIT alone.
        assert_eq!(died, LIMIT + 1);
        let dead = sender.take_dead_letters(&queues.name, 1000).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].id.as_deref(), Some(poison_id.as_str()));
        drop(queues);
    });
}

#[test]
fn an_ask_whose_request_crashes_every_owner_ends_dead_lettered() {
    per_backend(|backend| {
        let queues = Queues::new("crashask");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell_all((0..20).map(Job::Work)).unwrap();
        let asker = jobs.clone();
        let (tx, asked) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(asker.ask(Job::CrashAsk));
        });
        let mut answer = None;
        run_owners(
            &queues.name,
            backend,
            || {
                answer = answer.take().or_else(|| asked.try_recv().ok());
                answer.is_some() && jobs.outstanding() == 0
            },
            || format!("the ask has not ended; {} not done", jobs.outstanding()),
        );
        match answer.unwrap() {
            Err(RemoteAskError::DeadLettered { reason, .. }) => {
                assert!(reason.contains("stopped"), "{reason}");
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        // The ask counts for `join` like a told message.
        match jobs.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => assert_eq!(dead.len(), 1),
            other => panic!("expected the ask dead-lettered, got {other:?}"),
        }
        drop(queues);
    });
}

#[test]
fn killing_owners_with_a_full_prefetch_window_dead_letters_nothing() {
    per_backend(|backend| {
        let queues = Queues::new("kills");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 600;
        const KILLS: u32 = 8;
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        for _ in 0..KILLS {
            // Slow enough that the kill lands with the window full.
            let mut owner = spawn_owner(&queues.name, backend, 2);
            let stdout = owner.0.stdout.take().unwrap();
            let handled = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("handled "))
                .take(20)
                .count();
            assert_eq!(handled, 20, "the owner ended early");
            owner.0.kill().unwrap(); // SIGKILL: no goodbye to the broker
            owner.0.wait().unwrap();
        }
        run_owners(
            &queues.name,
            backend,
            || jobs.outstanding() == 0,
            || {
                format!(
                    "{} messages not reported done; dead letters: {:?}",
                    jobs.outstanding(),
                    sender
                        .take_dead_letters(&queues.name, 1000)
                        .map(|d| d.len())
                )
            },
        );
        jobs.join().unwrap();
        let dead = sender.take_dead_letters(&queues.name, 1000).unwrap();
        assert!(dead.is_empty(), "{} dead-lettered", dead.len());
        drop(queues);
    });
}

/// CBOR, as a `RemoteHandle` encodes it.
fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).unwrap();
    bytes
}

#[test]
fn a_forged_delivery_count_does_not_dead_letter_a_message_early() {
    per_backend(|backend| {
        let queues = Queues::new("forgedcount");
        let rt = Runtime::builder()
            .backend(Backend::ALL[backend])
            .build()
            .unwrap();
        let owner = connect(builder());
        let handled = Arc::new(Mutex::new(Vec::new()));
        let victim = Victim {
            slow: Duration::ZERO,
            handled: Arc::clone(&handled),
            panicked: HashSet::new(),
        };
        let served = owner.serve(&rt, &queues.name, victim).unwrap();
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("custody-producer"),
            AMQPValue::LongString(LongString::from("forger")),
        );
        // Far past the limit, on its first delivery.
        headers.insert(
            ShortString::from("x-delivery-count"),
            AMQPValue::LongLongInt(99),
        );
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/cbor"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from("forger.7"))
            .with_headers(headers);
        let body = cbor(&Job::Flaky(7));
        let queue = format!("custody.{}", queues.name);
        let confirm = block_on(async {
            let connection = Connection::connect(&url(), ConnectionProperties::default())
                .await
                .unwrap();
            let channel = connection.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            let _ = connection.close(200, ShortString::from("OK")).await;
            confirm
        });
        assert!(confirm.is_ack());
        // Until it is acknowledged or dead-lettered.
        let stats = loop {
            let stats = served.handle().stats().outside.unwrap();
            if stats.acked + stats.dead_lettered > 0 {
                break stats;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(stats.dead_lettered, 0, "dead-lettered on its first panic");
        assert_eq!(*handled.lock().unwrap(), vec![7]);
        served.stop();
        assert!(
            owner
                .take_dead_letters(&queues.name, 10)
                .unwrap()
                .is_empty()
        );
        drop(queues);
    });
}

#[test]
fn messages_the_broker_dead_letters_on_its_own_are_reported_to_join_and_ask() {
    use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
    per_backend(|backend| {
        let queues = Queues::new("brokerdead");
        // The smallest limit: the broker's own is then the margin alone.
        let sender = connect(builder().delivery_limit(0));
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell(Job::Work(1)).unwrap();
        let told_id = format!("{}.0", jobs.producer_id());
        let asker = jobs.clone();
        let (tx, asked) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(asker.ask(Job::CrashAsk));
        });
        // No owner yet: a client of its own returns both messages to the
        // queue until the broker dead-letters them.
        let queue = format!("custody.{}", queues.name);
        let returned = block_on(async {
            let connection = Connection::connect(&url(), ConnectionProperties::default())
                .await
                .unwrap();
            let channel = connection.create_channel().await.unwrap();
            channel
                .basic_qos(1, BasicQosOptions::default())
                .await
                .unwrap();
            let mut consumer = channel
                .basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from("returner"),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut returned = 0u64;
            loop {
                let next = futures_lite::future::or(
                    async { consumer.next().await.map(Result::unwrap) },
                    async {
                        async_io::Timer::after(Duration::from_secs(2)).await;
                        None
                    },
                )
                .await;
                let Some(delivery) = next else { break };
                channel
                    .basic_nack(
                        delivery.delivery_tag,
                        BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                returned += 1;
            }
            let _ = connection.close(200, ShortString::from("OK")).await;
            returned
        });
        eprintln!("returned {returned} times before the broker dead-lettered both");
        let rt = Runtime::builder()
            .backend(Backend::ALL[backend])
            .build()
            .unwrap();
        let owner = connect(builder().delivery_limit(0));
        let victim = Victim {
            slow: Duration::ZERO,
            handled: Arc::default(),
            panicked: HashSet::new(),
        };
        let served = owner.serve(&rt, &queues.name, victim).unwrap();
        let answer = asked
            .recv_timeout(Duration::from_secs(30))
            .expect("the ask did not end");
        match answer {
            Err(RemoteAskError::DeadLettered { reason, .. }) => {
                assert!(reason.contains("by the broker"), "{reason}");
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        match jobs.join_timeout(Duration::from_secs(20)) {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 2, "{dead:?}");
                assert!(dead.iter().any(|d| d.id == told_id), "{dead:?}");
                assert!(dead.iter().all(|d| d.reason.contains("by the broker")));
            }
            other => panic!("expected both dead-lettered, got {other:?}"),
        }
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 10).unwrap();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert!(
            dead.iter()
                .all(|d| d.broker_reason.as_deref() == Some("delivery_limit"))
        );
        drop(queues);
    });
}

/// A TCP proxy to the broker for one connection, which `cut` breaks.
struct CutProxy {
    url: String,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    fn start() -> CutProxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (upstream, proxied) = common::through_proxy(&url(), port);
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&sockets);
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let server = TcpStream::connect(&upstream).unwrap();
            kept.lock()
                .unwrap()
                .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
            let (to_client, from_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &from_server, &mut &to_client);
            });
            let _ = std::io::copy(&mut &client, &mut &server);
        });
        CutProxy {
            url: proxied,
            sockets,
        }
    }

    /// Breaks the connection both ways, as a network failure would.
    fn cut(&self) {
        for socket in self.sockets.lock().unwrap().iter() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn connection_drops_with_a_full_prefetch_window_dead_letter_nothing() {
    per_backend(|backend| {
        let queues = Queues::new("drops");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 600;
        const DROPS: u32 = 7;
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        let runtime = || {
            Runtime::builder()
                .backend(Backend::ALL[backend])
                .build()
                .unwrap()
        };
        for _ in 0..DROPS {
            let proxy = CutProxy::start();
            let rt = runtime();
            let owner = connect(Broker::builder(proxy.url.clone()).delivery_limit(LIMIT));
            let handled = Arc::new(Mutex::new(Vec::new()));
            let victim = Victim {
                // Slow enough that the cut lands with the window full.
                slow: Duration::from_millis(2),
                handled: Arc::clone(&handled),
                panicked: HashSet::new(),
            };
            let served = owner.serve(&rt, &queues.name, victim).unwrap();
            while handled.lock().unwrap().len() < 20 {
                std::thread::sleep(Duration::from_millis(1));
            }
            proxy.cut();
            while served.is_serving() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let rt = runtime();
        let owner = connect(builder());
        let victim = Victim {
            slow: Duration::ZERO,
            handled: Arc::default(),
            panicked: HashSet::new(),
        };
        let served = owner.serve(&rt, &queues.name, victim).unwrap();
        let joined = jobs.join_timeout(Duration::from_secs(30));
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 1000).unwrap();
        assert!(
            joined.is_ok() && dead.is_empty(),
            "{joined:?}; {} dead-lettered",
            dead.len()
        );
        drop(queues);
    });
}
