//! Tests against a real RabbitMQ broker (feature `amqp`): the URL comes from
//! `CUSTODY_AMQP_URL`, or guest@127.0.0.1:5672. An unreachable broker fails
//! these tests; it never skips them.
//!
//! Every test uses queue names of its own (process id, counter, clock) and
//! deletes its queues at the end, and runs inside `within`, which fails it
//! after 60 s instead of hanging.

#![cfg(feature = "amqp")]

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "sqlite")]
use common::unique_name;
use common::{Queues, builder, connect};
use custody::broker::{
    Broker, BrokerError, RemoteAskError, RemoteJoinError, RemoteReply, RemoteSendError,
};
use custody::{Context, Manager, Runtime};
use serde::{Deserialize, Serialize};

/// Runs `f` on a thread of its own and fails the test if it takes over 60 s.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the scenario did not finish within 60 s"),
    }
}

/// Records what it handles; panics on `Poison` every time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Job {
    Work(u64),
    Poison,
}

#[derive(Default)]
struct Log {
    handled: Vec<u64>,
    poison_attempts: u32,
    idles: u32,
}

struct Recorder(Arc<Mutex<Log>>);

impl Manager for Recorder {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        let mut log = self.0.lock().unwrap();
        match job {
            Job::Work(n) => log.handled.push(n),
            Job::Poison => {
                log.poison_attempts += 1;
                drop(log);
                panic!("poison job");
            }
        }
    }
    fn idle(&mut self, _ctx: &mut Context<'_, Job>) {
        self.0.lock().unwrap().idles += 1;
    }
}

fn handled(log: &Arc<Mutex<Log>>) -> Vec<u64> {
    log.lock().unwrap().handled.clone()
}

#[test]
fn tells_from_a_remote_handle_are_handled_in_order_and_joined() {
    within(|| {
        let queues = Queues::new("order");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 200;
        let started = Instant::now();
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let told = started.elapsed();
        jobs.join().unwrap();
        let joined = started.elapsed();
        eprintln!(
            "{N} tells: {:?} a tell (confirmed), {:?} until joined",
            told / N as u32,
            joined
        );
        assert_eq!(jobs.outstanding(), 0);
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert!(log.lock().unwrap().idles >= 1);
        // The done records reach the sender just before the owner's ack goes
        // out, so the acked count may trail `join` by a moment.
        let queue_stats = || {
            served
                .handle()
                .stats()
                .outside
                .expect("served from a queue")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue_stats().acked < N && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queue = queue_stats();
        assert_eq!((queue.delivered, queue.redelivered), (N, 0));
        assert_eq!(queue.acked, N, "every delivery acknowledged");
        assert_eq!(queue.dead_lettered, 0);
        let table = rt.stats().to_string();
        assert!(
            table.contains(&format!("{} (queue): delivered {N}", queues.name)),
            "{table}"
        );
        // Nothing is left unacknowledged: a graceful stop returns nothing.
        served.stop();
        assert!(
            owner
                .take_dead_letters(&queues.name, 10)
                .unwrap()
                .is_empty()
        );
        drop(jobs);
        drop(queues);
    });
}

#[test]
fn an_unreachable_broker_is_a_typed_error_within_seconds() {
    within(|| {
        let closed_port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        for port in [1, closed_port] {
            let started = Instant::now();
            let err = Broker::connect(&format!("amqp://guest:s3cr3t-pw@127.0.0.1:{port}/%2f"))
                .unwrap_err();
            let took = started.elapsed();
            assert!(took < Duration::from_secs(10), "took {took:?}");
            assert!(
                matches!(&err, BrokerError::Unreachable { host, .. } if *host == format!("127.0.0.1:{port}")),
                "{err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(!format!("{err:?}").contains("s3cr3t"));
        }
        // A peer that accepts and never speaks AMQP: the connect timeout ends it.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let started = Instant::now();
        let err = Broker::builder(format!("amqp://guest:s3cr3t-pw@127.0.0.1:{port}/%2f"))
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(err, BrokerError::Unreachable { .. }), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t"));
        drop(silent);
    });
}

#[test]
fn a_message_of_the_wrong_type_is_dead_lettered_while_good_ones_flow() {
    within(|| {
        let queues = Queues::new("wrongtype");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        let strangers = sender.remote_handle::<(String, f64)>(&queues.name).unwrap();
        for n in 0..5 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        strangers.tell(("not a job".to_owned(), 1.5)).unwrap();
        for n in 5..10 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        jobs.join().unwrap();
        match strangers.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 1);
                assert!(dead[0].reason.contains("Job"), "{:?}", dead[0]);
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        assert_eq!(handled(&log), (0..10).collect::<Vec<_>>());
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 10).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0].error.as_deref().expect("an x-custody-error header");
        assert!(error.contains("Job"), "{error}");
        assert!(
            dead[0]
                .id
                .as_deref()
                .unwrap()
                .starts_with(strangers.producer_id())
        );
        drop(queues);
    });
}

#[test]
fn a_poison_message_is_dead_lettered_after_the_delivery_limit() {
    within(|| {
        const LIMIT: u32 = 2;
        let queues = Queues::new("poison");
        let rt = Runtime::new();
        let owner = connect(builder().delivery_limit(LIMIT));
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder().delivery_limit(LIMIT));
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell(Job::Work(0)).unwrap();
        jobs.tell(Job::Work(1)).unwrap();
        jobs.tell(Job::Poison).unwrap();
        for n in 2..6 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        match jobs.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 1);
                assert!(dead[0].reason.contains("poison job"), "{:?}", dead[0]);
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        // A second join has nothing more to report.
        jobs.join().unwrap();
        {
            let log = log.lock().unwrap();
            assert_eq!(log.handled, (0..6).collect::<Vec<_>>());
            // The first delivery and LIMIT redeliveries.
            assert_eq!(log.poison_attempts, LIMIT + 1);
        }
        let queue = served
            .handle()
            .stats()
            .outside
            .expect("served from a queue");
        assert_eq!(queue.dead_lettered, 1);
        assert_eq!(queue.redelivered, u64::from(LIMIT));
        assert_eq!(queue.delivered, 6 + u64::from(LIMIT) + 1);
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 10).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0].error.as_deref().expect("an x-custody-error header");
        assert!(error.contains("poison job"), "{error}");
        drop(queues);
    });
}

/// Handles one job a millisecond, so that a stop lands mid-stream.
struct Slow(Arc<Mutex<Log>>, Arc<AtomicU64>);

impl Manager for Slow {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        std::thread::sleep(Duration::from_millis(1));
        if let Job::Work(n) = job {
            self.0.lock().unwrap().handled.push(n);
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn a_graceful_stop_hands_over_to_the_next_owner_with_nothing_lost_and_order_kept() {
    within(|| {
        let queues = Queues::new("handover");
        let log = Arc::new(Mutex::new(Log::default()));
        let first_count = Arc::new(AtomicU64::new(0));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 300;
        // Queued before any owner runs: the queue is durable.
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let rt = Runtime::new();
        let first = connect(builder().prefetch(16));
        let served = first
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&first_count)),
            )
            .unwrap();
        while first_count.load(Ordering::SeqCst) < 40 {
            std::thread::sleep(Duration::from_millis(1));
        }
        served.stop();
        let by_first = first_count.load(Ordering::SeqCst);
        assert!(by_first < N, "the first owner handled everything");
        // The same name again, on the same runtime: free once the first exited.
        let second = connect(builder().prefetch(16));
        let second_count = Arc::new(AtomicU64::new(0));
        let served = second
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&second_count)),
            )
            .unwrap();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert_eq!(by_first + second_count.load(Ordering::SeqCst), N);
        served.stop();
        drop(queues);
    });
}

#[test]
fn a_hot_standby_takes_over_when_the_active_owner_stops() {
    within(|| {
        let queues = Queues::new("standby");
        let log = Arc::new(Mutex::new(Log::default()));
        let (active_count, standby_count) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 100;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let rt_a = Runtime::new();
        let rt_b = Runtime::new();
        let a = connect(builder().prefetch(8));
        let b = connect(builder().prefetch(8));
        let served_a = a
            .serve(
                &rt_a,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&active_count)),
            )
            .unwrap();
        let served_b = b
            .serve(
                &rt_b,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&standby_count)),
            )
            .unwrap();
        while active_count.load(Ordering::SeqCst) < 20 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            standby_count.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
        served_a.stop();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert!(standby_count.load(Ordering::SeqCst) > 0);
        served_b.stop();
        drop(queues);
    });
}

#[test]
fn a_runtime_shutdown_ends_the_serving_and_leaves_the_rest_queued_in_order() {
    within(|| {
        let queues = Queues::new("rtshutdown");
        let log = Arc::new(Mutex::new(Log::default()));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 200;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let first_count = Arc::new(AtomicU64::new(0));
        let rt = Runtime::new();
        let first = connect(builder().prefetch(16));
        let served = first
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&first_count)),
            )
            .unwrap();
        while first_count.load(Ordering::SeqCst) < 30 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 0);
        // The next delivery is refused, and the serving ends on its own.
        while served.is_serving() {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(served);
        assert!(first_count.load(Ordering::SeqCst) < N);
        let rt = Runtime::new();
        let second = connect(builder());
        let served = second
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::new(AtomicU64::new(0))),
            )
            .unwrap();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        served.stop();
        drop(queues);
    });
}

#[test]
fn a_tell_to_a_deleted_queue_gives_the_message_back() {
    within(|| {
        let queues = Queues::new("deleted");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell(Job::Work(1)).unwrap();
        queues.broker.delete_queues(&queues.name).unwrap();
        let err = jobs.tell(Job::Work(2)).unwrap_err();
        assert!(matches!(err, RemoteSendError::Unroutable { .. }), "{err:?}");
        assert!(err.to_string().contains(&queues.name), "{err}");
        assert_eq!(err.into_inner(), Job::Work(2));
        // The first message went with the queue: join does not wait for it
        // forever when asked for a deadline.
        match jobs.join_timeout(Duration::from_millis(100)) {
            Err(RemoteJoinError::Timeout { outstanding: 1, .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(queues);
    });
}

#[test]
fn broker_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Broker>();
    send_sync::<custody::broker::RemoteHandle<Job>>();
    send_sync::<custody::broker::Served<Job>>();
    send_sync::<BrokerError>();
    send_sync::<RemoteSendError<Job>>();
    send_sync::<RemoteJoinError>();
    fn std_error<E: std::error::Error + Send + Sync + 'static>() {}
    std_error::<BrokerError>();
    std_error::<RemoteSendError<Job>>();
    std_error::<RemoteJoinError>();
}

/// The environment variable that makes `owner_process_for_the_kill_test` act.
const CHILD_VAR: &str = "CUSTODY_BROKER_TEST_OWNER";

/// Handles one job every 2 ms and prints its number, for the parent to read.
struct Announcer;

impl Manager for Announcer {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(2));
        if let Job::Work(n) = job {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "handled {n}");
            let _ = out.flush();
        }
    }
}

/// Not a scenario of its own: the owner process that
/// `a_hot_standby_takes_over_when_the_owner_is_killed` starts and kills.
/// Started by anything else, it returns at once.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn owner_process_for_the_kill_test() {
    let Ok(name) = std::env::var(CHILD_VAR) else {
        return;
    };
    let rt = Runtime::new();
    let broker = connect(builder().prefetch(8));
    let served = broker.serve(&rt, &name, Announcer).unwrap();
    // On a line of its own: the harness has printed "test ... " before it.
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

/// Kills the child process when dropped, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_hot_standby_takes_over_when_the_owner_is_killed() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(|| {
        let queues = Queues::new("kill");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 150;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "owner_process_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, &queues.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut by_child = Vec::new();
        let mut serving = false;
        // The child is the active owner; start the standby once it serves.
        while !serving {
            let line = lines.recv().expect("the child process ended early");
            if line == "serving" {
                serving = true;
            } else if let Some(n) = line.strip_prefix("handled ") {
                by_child.push(n.parse::<u64>().unwrap());
            }
        }
        let log = Arc::new(Mutex::new(Log::default()));
        let standby_count = Arc::new(AtomicU64::new(0));
        let rt = Runtime::new();
        let standby = connect(builder());
        let served = standby
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&standby_count)),
            )
            .unwrap();
        while by_child.len() < 20 {
            let line = lines.recv().expect("the child process ended early");
            if let Some(n) = line.strip_prefix("handled ") {
                by_child.push(n.parse::<u64>().unwrap());
            }
        }
        assert_eq!(
            standby_count.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
        let killed = Instant::now();
        child.0.kill().unwrap(); // SIGKILL: no goodbye to the broker
        child.0.wait().unwrap();
        while standby_count.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        eprintln!(
            "the standby handled its first message {:?} after the kill",
            killed.elapsed()
        );
        reader.join().unwrap();
        by_child.extend(lines.try_iter().filter_map(|l| {
            l.strip_prefix("handled ")
                .map(|n| n.parse::<u64>().unwrap())
        }));
        jobs.join().unwrap();
        let by_standby = handled(&log);
        // The child handled a prefix in order; the standby took over where
        // the child's last acknowledgement ended (so it may handle again what
        // the child handled but had not acknowledged), in order, to the end.
        assert_eq!(by_child, (0..by_child.len() as u64).collect::<Vec<_>>());
        let first = by_standby[0];
        assert!(
            first <= by_child.len() as u64,
            "a gap: {first} after {}",
            by_child.len()
        );
        assert_eq!(by_standby, (first..N).collect::<Vec<_>>());
        served.stop();
        drop(child);
        drop(queues);
    });
}

#[test]
fn tell_all_keeps_many_publishes_in_flight_and_the_order() {
    within(|| {
        let queues = Queues::new("tellall");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 3000;
        let started = Instant::now();
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        let told = started.elapsed();
        jobs.join().unwrap();
        eprintln!(
            "tell_all of {N}: {:?} a message confirmed, {:?} until joined",
            told / N as u32,
            started.elapsed()
        );
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        // A deleted queue: every message comes back, in order.
        served.stop();
        queues.broker.delete_queues(&queues.name).unwrap();
        let err = jobs.tell_all((0..3).map(Job::Work)).unwrap_err();
        assert_eq!(err.confirmed, 0);
        assert_eq!(err.into_inner(), (0..3).map(Job::Work).collect::<Vec<_>>());
        assert_eq!(jobs.outstanding(), 0);
        drop(queues);
    });
}

/// A sum that answers asks; `Hold` keeps its reply unanswered, `Forget`
/// drops it, `Boom` panics.
#[derive(Serialize, Deserialize)]
enum Calc {
    Add(u64),
    Total(RemoteReply<u64>),
    Hold(RemoteReply<u64>),
    Forget(RemoteReply<u64>),
    Boom(RemoteReply<u64>),
}

#[derive(Default)]
struct Sum {
    total: u64,
    held: Vec<RemoteReply<u64>>,
    committed: Arc<Mutex<u64>>,
}

impl Manager for Sum {
    type Msg = Calc;
    fn handle(&mut self, msg: Calc, _ctx: &mut Context<'_, Calc>) {
        match msg {
            Calc::Add(n) => self.total += n,
            Calc::Total(reply) => reply.send(self.total),
            Calc::Hold(reply) => self.held.push(reply),
            Calc::Forget(reply) => drop(reply),
            Calc::Boom(_reply) => panic!("boom"),
        }
    }
    fn idle(&mut self, _ctx: &mut Context<'_, Calc>) {
        *self.committed.lock().unwrap() = self.total;
    }
}

#[test]
fn remote_asks_round_trip_and_answer_after_the_batch_is_committed() {
    within(|| {
        let queues = Queues::new("ask");
        let rt = Runtime::new();
        let owner = connect(builder());
        let committed = Arc::new(Mutex::new(0));
        let sum = Sum {
            committed: Arc::clone(&committed),
            ..Sum::default()
        };
        let served = owner.serve(&rt, &queues.name, sum).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        calc.tell_all((1..=10).map(Calc::Add)).unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 55);
        // Answered means committed: `idle` ran before the answer left.
        assert_eq!(*committed.lock().unwrap(), 55);
        calc.tell(Calc::Add(45)).unwrap();
        let started = Instant::now();
        const N: u32 = 50;
        for _ in 0..N {
            let total = calc
                .ask_timeout(Calc::Total, Duration::from_secs(10))
                .unwrap();
            assert_eq!(total, 100);
        }
        eprintln!("remote ask: {:?} a round trip", started.elapsed() / N);
        // A reply dropped unanswered ends the ask at once.
        assert!(matches!(
            calc.ask(Calc::Forget),
            Err(RemoteAskError::NoReply { .. })
        ));
        calc.join().unwrap();
        served.stop();
        drop(calc);
        drop(queues);
    });
}

#[test]
fn an_unanswered_remote_ask_times_out_with_a_typed_error() {
    within(|| {
        let queues = Queues::new("ask-timeout");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner.serve(&rt, &queues.name, Sum::default()).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        let started = Instant::now();
        let err = calc
            .ask_timeout(Calc::Hold, Duration::from_millis(300))
            .unwrap_err();
        let waited = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // The handle still works after a timeout.
        assert_eq!(calc.ask(Calc::Total).unwrap(), 0);
        served.stop();
        drop(calc);
        drop(queues);
    });
}

#[test]
fn a_remote_ask_whose_handler_panics_ends_in_an_error() {
    within(|| {
        let queues = Queues::new("ask-panic");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner.serve(&rt, &queues.name, Sum::default()).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        let err = calc
            .ask_timeout(Calc::Boom, Duration::from_secs(30))
            .unwrap_err();
        match &err {
            RemoteAskError::DeadLettered { reason, .. } => {
                assert!(reason.contains("boom"), "{reason}")
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        // The owner goes on serving.
        calc.tell(Calc::Add(3)).unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 3);
        assert!(matches!(
            calc.join(),
            Err(RemoteJoinError::DeadLettered { .. })
        ));
        served.stop();
        assert_eq!(owner.take_dead_letters(&queues.name, 10).unwrap().len(), 1);
        drop(calc);
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

    /// Rows and distinct `n`s in `writes`, and rows in `custody_applied`,
    /// read with a connection of our own.
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

/// A `RemoteDatabase` on `path` with the table `writes (n)`, which has no
/// unique key: a write applied twice would show as two rows.
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

#[cfg(feature = "sqlite")]
#[test]
fn a_remote_database_applies_a_write_id_once() {
    use custody::resources::{RemoteDatabaseMsg, RemoteWrite};
    within(|| {
        let queues = Queues::new("db-once");
        let file = DbFile::new("db-once");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner
            .serve(&rt, &queues.name, remote_database(&file.0))
            .unwrap();
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        let write = insert(1);
        // Told twice, then asked twice: one row.
        db.tell(RemoteDatabaseMsg::Execute(write.clone())).unwrap();
        db.tell(RemoteDatabaseMsg::Execute(write.clone())).unwrap();
        db.join().unwrap();
        assert_eq!(
            db.ask(|r| RemoteDatabaseMsg::ExecuteAsk(write.clone(), r))
                .unwrap(),
            Ok(0)
        );
        let other = insert(2);
        assert_eq!(
            db.ask(|r| RemoteDatabaseMsg::ExecuteAsk(other.clone(), r))
                .unwrap(),
            Ok(1)
        );
        assert_eq!(
            db.ask(|r| RemoteDatabaseMsg::ExecuteAsk(other.clone(), r))
                .unwrap(),
            Ok(0)
        );
        // Answered means committed: another connection sees both rows.
        assert_eq!(file.counts(), (2, 2, 2));
        // A failing write fails its asker only, and leaves its id unrecorded:
        // once the table exists, the same id applies.
        let bad = RemoteWrite::with_id("late", "INSERT INTO later (n) VALUES (1)", vec![]);
        let err = db
            .ask(|r| RemoteDatabaseMsg::ExecuteAsk(bad.clone(), r))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("later"), "{err}");
        let create = RemoteWrite::new("CREATE TABLE later (n INTEGER)", vec![]);
        // (The count SQLite reports for DDL is not meaningful.)
        assert!(
            db.ask(|r| RemoteDatabaseMsg::ExecuteAsk(create, r))
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            db.ask(|r| RemoteDatabaseMsg::ExecuteAsk(bad, r)).unwrap(),
            Ok(1)
        );
        assert_eq!(file.counts(), (2, 2, 4));
        db.join().unwrap();
        served.stop();
        drop(db);
        drop(queues);
    });
}

/// The environment variable that makes `db_owner_process_for_the_kill_test`
/// act: `NAME|PATH`.
#[cfg(feature = "sqlite")]
const DB_CHILD_VAR: &str = "CUSTODY_BROKER_TEST_DB_OWNER";

/// Writes the killed owner handles before it stalls.
#[cfg(feature = "sqlite")]
const STALL_AFTER: u64 = 120;

/// A `RemoteDatabase` that, once it has handled `STALL_AFTER` writes,
/// stalls in `idle` right after the commit and before the broker's ack: a
/// kill then leaves committed writes unacknowledged, and the standby gets
/// them again.
#[cfg(feature = "sqlite")]
struct StallAfterCommit {
    db: custody::resources::RemoteDatabase,
    handled: u64,
}

#[cfg(feature = "sqlite")]
impl Manager for StallAfterCommit {
    type Msg = custody::resources::RemoteDatabaseMsg;
    fn handle(&mut self, msg: Self::Msg, ctx: &mut Context<'_, Self::Msg>) {
        self.handled += 1;
        self.db.handle(msg, ctx);
    }
    fn idle(&mut self, ctx: &mut Context<'_, Self::Msg>) {
        self.db.idle(ctx);
        if self.handled >= STALL_AFTER {
            println!("stalled after {} committed", self.handled);
            // Killed by the parent long before this.
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Not a scenario of its own: the database owner process that
/// `a_remote_database_is_exactly_once_when_its_owner_is_killed` starts and
/// kills. Started by anything else, it returns at once.
#[cfg(feature = "sqlite")]
#[test]
#[ignore = "an owner process started by a test of this file"]
fn db_owner_process_for_the_kill_test() {
    let Ok(arg) = std::env::var(DB_CHILD_VAR) else {
        return;
    };
    let (name, path) = arg.split_once('|').unwrap();
    let rt = Runtime::new();
    let broker = connect(builder().prefetch(8));
    let owner = StallAfterCommit {
        db: remote_database(std::path::Path::new(path)),
        handled: 0,
    };
    let served = broker.serve(&rt, name, owner).unwrap();
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

#[cfg(feature = "sqlite")]
#[test]
fn a_remote_database_is_exactly_once_when_its_owner_is_killed() {
    use custody::resources::RemoteDatabaseMsg;
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(|| {
        const N: u64 = 600;
        const CHUNK: u64 = 10;
        let queues = Queues::new("db-kill");
        let file = DbFile::new("db-kill");
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "db_owner_process_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                DB_CHILD_VAR,
                format!("{}|{}", queues.name, file.0.to_str().unwrap()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
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
        // The producer: distinct ids, a chunk at a time.
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        let producer = {
            let db = db.clone();
            std::thread::spawn(move || {
                for start in (0..N).step_by(CHUNK as usize) {
                    let writes =
                        (start..start + CHUNK).map(|n| RemoteDatabaseMsg::Execute(insert(n)));
                    db.tell_all(writes).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        // Kill the owner while its last committed batch is unacknowledged.
        while !next_line().starts_with("stalled") {}
        let (at_kill, _, _) = file.counts();
        child.0.kill().unwrap(); // SIGKILL: no goodbye to the broker
        child.0.wait().unwrap();
        producer.join().unwrap();
        db.join().unwrap();
        let (rows, distinct, applied) = file.counts();
        eprintln!("killed the owner at {at_kill} of {N} rows; now {rows} rows");
        assert!(
            (STALL_AFTER..N).contains(&at_kill),
            "{at_kill} rows committed at the kill"
        );
        assert_eq!((rows, distinct, applied), (N, N, N));
        served.stop();
        drop(child);
        drop(db);
        drop(queues);
    });
}

/// The environment variable that makes `calc_owner_process` serve.
const CALC_CHILD_VAR: &str = "CUSTODY_BROKER_TEST_CALC_OWNER";

/// Not a scenario of its own: the owner process of
/// `tell_ask_join_and_ask_timeout_between_two_processes`. Started by anything
/// else, it returns at once.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn calc_owner_process() {
    let Ok(name) = std::env::var(CALC_CHILD_VAR) else {
        return;
    };
    let rt = Runtime::new();
    let broker = connect(builder());
    let served = broker.serve(&rt, &name, Sum::default()).unwrap();
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

#[test]
fn tell_ask_join_and_ask_timeout_between_two_processes() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(|| {
        let queues = Queues::new("procs");
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "calc_owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CALC_CHILD_VAR, &queues.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let serving = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "serving");
        assert!(serving, "the owner process ended before serving");

        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        calc.tell_all((1..=20).map(Calc::Add)).unwrap();
        calc.tell(Calc::Add(1)).unwrap();
        calc.join().unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 211);
        assert_eq!(
            calc.ask_timeout(Calc::Total, Duration::from_secs(10))
                .unwrap(),
            211
        );
        // The owner keeps this reply and never answers: the deadline ends it.
        let started = Instant::now();
        let err = calc
            .ask_timeout(Calc::Hold, Duration::from_millis(300))
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(child);
        drop(calc);
        drop(queues);
    });
}
