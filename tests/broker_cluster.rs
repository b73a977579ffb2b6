//! Tests against a three-node RabbitMQ cluster (features `amqp` and
//! `sqlite`): `scripts/rabbitmq-cluster start` runs one beside the machine's
//! broker, `.ci/cluster` starts it, runs these tests and stops it. The URLs of
//! nodes 1, 2 and 3, in that order, come from `CUSTODY_CLUSTER_URLS`
//! (comma-separated), or are the script's (127.0.0.1:5681 to 5683); the tests
//! kill and restart nodes through the script. A cluster that cannot be
//! reached fails these tests; it never skips them.
//!
//! The fault scenarios run at a smoke size by default, and at full size with
//! `CUSTODY_CLUSTER_FULL=1`. They take the cluster for themselves (one at a
//! time, whatever the test threads), restart the node they killed before
//! they return, pass or fail, and run inside `within`, which fails them after
//! 60 s (300 s at full size) instead of hanging.

#![cfg(all(feature = "amqp", feature = "sqlite"))]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use custody::broker::{Broker, BrokerBuilder, BrokerError, RemoteHandle};
use custody::resources::{Database, RemoteDatabase, RemoteDbMsg, RemoteWrite, SqlValue};
use custody::{Context, Manager, Runtime};

/// The nodes' URLs, comma-separated, in the order of the script's numbers.
const URLS_VAR: &str = "CUSTODY_CLUSTER_URLS";
/// Set (to anything but `0` or nothing) for the full-size scenarios.
const FULL_VAR: &str = "CUSTODY_CLUSTER_FULL";
/// Set to a level (`debug`, `info`, ...) to print custody's log lines.
const LOG_VAR: &str = "CUSTODY_CLUSTER_LOG";

/// Prints custody's log lines at the level in `CUSTODY_CLUSTER_LOG`, if set.
fn log() {
    use tracing_subscriber::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    let Some(level) = std::env::var(LOG_VAR)
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
    else {
        return;
    };
    ONCE.call_once(|| {
        let filter = tracing_subscriber::filter::Targets::new().with_target("custody", level);
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .try_init();
    });
}

fn full() -> bool {
    std::env::var(FULL_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs `f` on a thread of its own and fails the test if it takes longer
/// than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the scenario did not finish within {limit:?}"),
    }
}

/// The fault scenarios kill nodes: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static CLUSTER: Mutex<()> = Mutex::new(());
    CLUSTER.lock().unwrap_or_else(PoisonError::into_inner)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster")
}

/// Runs `scripts/rabbitmq-cluster ARGS`; its standard output, trimmed.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    assert!(
        out.status.success(),
        "scripts/rabbitmq-cluster {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Node `n` (1, 2 or 3) of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node(usize);

impl Node {
    const ALL: [Node; 3] = [Node(1), Node(2), Node(3)];

    fn url(self) -> String {
        urls()[self.0 - 1].clone()
    }

    /// `host:port`, as [`Broker::host`] says it.
    fn host(self) -> String {
        let url = self.url();
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        authority.rsplit('@').next().unwrap_or(authority).to_owned()
    }

    fn others(self) -> Vec<Node> {
        Node::ALL.into_iter().filter(|&n| n != self).collect()
    }

    /// A broker connected to this node only.
    fn connect(self) -> Broker {
        let broker = BrokerBuilder::urls([self.url()])
            .connect()
            .unwrap_or_else(|e| {
                panic!(
                    "the cluster tests need node {} of a three-node cluster \
                     (scripts/rabbitmq-cluster start, or {URLS_VAR}): {e}",
                    self.0
                )
            });
        assert_eq!(broker.host(), self.host());
        broker
    }

    /// Settings for a broker that tries this node first, then the others.
    /// Reconnecting off: the producers replace a lost connection themselves
    /// (a new broker and a new handle), which these scenarios check; the
    /// broker's own reconnecting is tests/broker_reconnect.rs.
    fn first(self) -> BrokerBuilder {
        let mut urls = vec![self.url()];
        urls.extend(self.others().into_iter().map(Node::url));
        BrokerBuilder::urls(urls).reconnect(false)
    }

    /// SIGKILLs the node and waits until its process is gone; when the
    /// signal was sent, and how long the process took to go.
    fn kill(self) -> (Instant, Duration) {
        let pid = cluster(&["pid", &self.0.to_string()]);
        let sent = Instant::now();
        let status = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        assert!(status.success(), "kill -KILL {pid}: {status}");
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        (sent, sent.elapsed())
    }

    fn restart(self) {
        cluster(&["restart", &self.0.to_string()]);
    }
}

fn urls() -> Vec<String> {
    let urls: Vec<String> = match std::env::var(URLS_VAR) {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n))
            .collect(),
    };
    assert_eq!(urls.len(), 3, "{URLS_VAR} must name three nodes");
    urls
}

/// The node leading the quorum queue of manager `name`.
fn leader(name: &str) -> Node {
    let out = cluster(&["leader", &format!("custody.{name}")]);
    Node(
        out.parse()
            .unwrap_or_else(|_| panic!("no node number: {out}")),
    )
}

/// A manager name no other test run uses.
fn unique_name(label: &str) -> String {
    common::unique_name(&format!("cluster.{label}"))
}

/// Deletes the queues of a manager name when dropped, through any node.
struct Queues(String);

impl Drop for Queues {
    fn drop(&mut self) {
        let deleted = Broker::builder(urls().join(","))
            .connect()
            .and_then(|broker| broker.delete_queues(&self.0));
        if let Err(e) = deleted {
            eprintln!("could not delete the queues of {}: {e}", self.0);
        }
    }
}

/// Starts the node again when dropped, pass or fail, so that the next test
/// finds three nodes.
struct RestartOnDrop(Arc<Mutex<Option<Node>>>);

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let killed = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(node) = killed {
            let started = Instant::now();
            node.restart();
            eprintln!("node {} back in {:?}", node.0, started.elapsed());
        }
    }
}

/// Removes a SQLite file and its companions when dropped, pass or fail.
struct DbFile(PathBuf);

impl DbFile {
    fn new(label: &str) -> DbFile {
        DbFile(std::env::temp_dir().join(format!("custody-{}.db", unique_name(label))))
    }

    fn connection(&self) -> custody::resources::rusqlite::Connection {
        custody::resources::rusqlite::Connection::open(&self.0).unwrap()
    }

    /// Rows and distinct `n`s in `writes`, and rows in `custody_applied`.
    fn counts(&self) -> (u64, u64, u64) {
        self.connection()
            .query_row(
                "SELECT (SELECT count(*) FROM writes), (SELECT count(DISTINCT n) FROM writes), \
                 (SELECT count(*) FROM custody_applied)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    }

    /// The ids in `custody_applied`.
    fn applied(&self) -> HashSet<String> {
        let conn = self.connection();
        let mut stmt = conn.prepare("SELECT id FROM custody_applied").unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

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
fn remote_database(path: &Path) -> RemoteDatabase {
    RemoteDatabase::open(
        Database::builder(path).init_sql("CREATE TABLE IF NOT EXISTS writes (n INTEGER NOT NULL)"),
    )
    .unwrap()
}

/// The write of number `n`, with the id `w<n>`.
fn insert(n: u64) -> RemoteWrite {
    RemoteWrite::with_id(
        format!("w{n}"),
        "INSERT INTO writes (n) VALUES (?1)",
        vec![SqlValue::Integer(i64::try_from(n).unwrap())],
    )
}

fn number(msg: &RemoteDbMsg) -> u64 {
    let write = match msg {
        RemoteDbMsg::Execute(write) | RemoteDbMsg::ExecuteAsk(write, _) => write,
        other => panic!("not a write: {other:?}"),
    };
    write.id[1..].parse().unwrap()
}

/// What one serving process saw: how many messages it handled, and when it
/// handled its first one after the kill.
#[derive(Default)]
struct Seen {
    handled: AtomicU64,
    first_after_kill: OnceLock<Instant>,
}

/// A `RemoteDatabase` that counts what it handles.
struct Counted {
    db: RemoteDatabase,
    seen: Arc<Seen>,
    killed: Arc<OnceLock<Instant>>,
}

impl Manager for Counted {
    type Msg = RemoteDbMsg;
    fn handle(&mut self, msg: RemoteDbMsg, ctx: &mut Context<'_, RemoteDbMsg>) {
        self.seen.handled.fetch_add(1, Ordering::SeqCst);
        if self.killed.get().is_some() {
            self.seen.first_after_kill.get_or_init(Instant::now);
        }
        self.db.handle(msg, ctx);
    }
    fn idle(&mut self, ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.idle(ctx);
    }
    fn stopped(&mut self, ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.stopped(ctx);
    }
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.recover(panic, ctx);
    }
}

/// How much traffic a fault scenario makes.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// Writes confirmed before the kill, at least.
    before: u64,
    /// Writes confirmed after the service resumed, at least.
    after: u64,
    /// Writes per `tell_all`, and the pause between two.
    chunk: u64,
    pause: Duration,
    limit: Duration,
}

impl Size {
    fn get() -> Size {
        if full() {
            Size {
                before: 20_000,
                after: 20_000,
                chunk: 20,
                pause: Duration::from_millis(5),
                limit: Duration::from_secs(300),
            }
        } else {
            Size {
                before: 1_000,
                after: 1_000,
                chunk: 10,
                pause: Duration::from_millis(10),
                // After a takeover the standby takes the redelivered window
                // one message at a time (each charged durably), on a loaded
                // 2-core host: minutes, not seconds, are the honest bound.
                limit: Duration::from_secs(180),
            }
        }
    }
}

/// What the producers share with the scenario.
struct Traffic {
    size: Size,
    killed: Arc<OnceLock<Instant>>,
    /// When a write sent after the kill was first answered.
    resumed: OnceLock<Instant>,
    /// Confirms that arrived before the kill, after it, and after the
    /// service resumed.
    before: AtomicU64,
    after: AtomicU64,
    after_resumed: AtomicU64,
    /// Set when the scenario gives up: the producers stop.
    abort: AtomicBool,
}

impl Traffic {
    fn confirmed(&self, n: u64) {
        if self.killed.get().is_none() {
            self.before.fetch_add(n, Ordering::SeqCst);
            return;
        }
        self.after.fetch_add(n, Ordering::SeqCst);
        if self.resumed.get().is_some() {
            self.after_resumed.fetch_add(n, Ordering::SeqCst);
        }
    }

    fn done(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
            || self.after_resumed.load(Ordering::SeqCst) >= self.size.after
    }
}

/// What one producer did.
#[derive(Debug, Default)]
struct Produced {
    /// Every number it sent (each confirmed in the end).
    sent: Vec<u64>,
    /// Writes sent again because their confirm was lost.
    retried: u64,
    /// New connections after a lost one, and the nodes they reached.
    reconnected_to: Vec<String>,
    /// Why each connection was given up.
    lost: Vec<String>,
    /// From the kill to the first write confirmed through a new connection.
    back_after: Option<Duration>,
}

/// A producer: writes with numbers from `first` on, `size.chunk` at a time,
/// through a broker that prefers node `prefer`, until the traffic is done.
/// A write whose confirm was lost is sent again through a new connection
/// (the next node that answers) and a new handle. At the end it joins its
/// last handle and checks that join tells the truth: every write confirmed
/// through that handle is applied.
fn produce(name: &str, prefer: Node, first: u64, traffic: &Traffic, db: &DbFile) -> Produced {
    let connect = || -> (Broker, RemoteHandle<RemoteDbMsg>) {
        let broker = prefer
            .first()
            .connect()
            .unwrap_or_else(|e| panic!("no node answers: {e}"));
        let handle = broker.remote_handle::<RemoteDbMsg>(name).unwrap();
        (broker, handle)
    };
    let (mut broker, mut handle) = connect();
    let mut produced = Produced::default();
    // Confirmed through the current handle.
    let mut confirmed_here: Vec<u64> = Vec::new();
    let mut next = first;
    while !traffic.done() {
        let mut todo: Vec<u64> = (next..next + traffic.size.chunk).collect();
        next += traffic.size.chunk;
        produced.sent.extend(&todo);
        while !todo.is_empty() {
            match handle.tell_all(todo.iter().map(|&n| RemoteDbMsg::Execute(insert(n)))) {
                Ok(()) => {
                    traffic.confirmed(todo.len() as u64);
                    confirmed_here.append(&mut todo);
                    if let (Some(killed), false, None) = (
                        traffic.killed.get(),
                        produced.reconnected_to.is_empty(),
                        produced.back_after,
                    ) {
                        produced.back_after = Some(killed.elapsed());
                    }
                }
                Err(e) => {
                    produced.lost.push(e.to_string());
                    let refused: HashSet<u64> = e.into_inner().iter().map(number).collect();
                    let (lost, ok): (Vec<u64>, Vec<u64>) =
                        todo.iter().partition(|n| refused.contains(n));
                    traffic.confirmed(ok.len() as u64);
                    produced.retried += lost.len() as u64;
                    todo = lost;
                    // A new connection and a new handle: the old handle's
                    // done records are not waited for (nor can they be, if
                    // its node is gone).
                    drop(handle);
                    drop(broker);
                    (broker, handle) = connect();
                    confirmed_here.clear();
                    produced.reconnected_to.push(broker.host().to_owned());
                }
            }
        }
        std::thread::sleep(traffic.size.pause);
    }
    handle.join().unwrap_or_else(|e| {
        panic!(
            "join of the producer on {} after {} writes: {e}",
            broker.host(),
            confirmed_here.len()
        )
    });
    let applied = db.applied();
    let missing: Vec<&u64> = confirmed_here
        .iter()
        .filter(|n| !applied.contains(&format!("w{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "join returned, but {} of the {} writes confirmed through the handle are not applied: {:?}",
        missing.len(),
        confirmed_here.len(),
        &missing[..missing.len().min(10)]
    );
    produced
}

/// Asks for one write until it is answered; the time from the kill to the
/// answer. The write is the same each time, so retries apply it once.
fn probe(db: &RemoteHandle<RemoteDbMsg>, killed: Instant) -> Duration {
    let write = insert(u64::MAX >> 2);
    loop {
        match db.ask_timeout(
            |reply| RemoteDbMsg::ExecuteAsk(write.clone(), reply),
            Duration::from_secs(2),
        ) {
            Ok(Ok(_)) => return killed.elapsed(),
            Ok(Err(e)) => panic!("the probe write failed: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The fault a scenario injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the node the active owner is connected to (not the queue's
    /// leader).
    OwnersNode,
    /// SIGKILL the node that leads the manager's quorum queue (not the
    /// owner's).
    QueueLeader,
}

/// Checks that the three nodes answer.
fn three_nodes() {
    log();
    for node in Node::ALL {
        drop(node.connect());
    }
}

/// The fault scenario: an owner and a standby (each a `Broker` of its own,
/// on different nodes) serve a `RemoteDatabase`; two producers stream
/// writes with distinct ids, one through the node that is killed; `fault`
/// strikes mid-stream. Then every write sent is confirmed and applied once,
/// each producer's last `join` tells the truth, and the fault really hit.
fn fault_scenario(fault: Fault) {
    let _cluster = exclusive();
    three_nodes();
    let size = Size::get();
    let name = unique_name(match fault {
        Fault::OwnersNode => "owner-node",
        Fault::QueueLeader => "leader",
    });
    let queues = Queues(name.clone());
    let db = Arc::new(DbFile::new("cluster"));
    let killed_node = Arc::new(Mutex::new(None));
    let restart = RestartOnDrop(Arc::clone(&killed_node));
    let scenario_db = Arc::clone(&db);
    within(size.limit, move || {
        let db = scenario_db;
        // Declared through node 1: its leader is placed there.
        let declarer = Node(1).connect();
        drop(declarer.remote_handle::<RemoteDbMsg>(&name).unwrap());
        let lead = leader(&name);
        let members = cluster(&["members", &format!("custody.{name}")]);
        assert_eq!(members.lines().count(), 3, "replicas: {members}");
        let (victim, owner_node, standby_node) = match fault {
            Fault::OwnersNode => {
                let others = lead.others();
                (others[0], others[0], others[1])
            }
            Fault::QueueLeader => {
                let others = lead.others();
                (lead, others[0], others[1])
            }
        };
        let survivor = standby_node;
        let killed = Arc::new(OnceLock::new());
        let serve = |node: Node| {
            let rt = Runtime::new();
            let broker = node.connect();
            let seen = Arc::new(Seen::default());
            let served = broker
                .serve(
                    &rt,
                    &name,
                    Counted {
                        db: remote_database(&db.0),
                        seen: Arc::clone(&seen),
                        killed: Arc::clone(&killed),
                    },
                )
                .unwrap();
            (rt, broker, served, seen)
        };
        // The owner registers first, so it is the active one.
        let (_owner_rt, owner, owner_served, owner_seen) = serve(owner_node);
        let (_standby_rt, _standby, standby_served, standby_seen) = serve(standby_node);
        let traffic = Arc::new(Traffic {
            size,
            killed: Arc::clone(&killed),
            resumed: OnceLock::new(),
            before: AtomicU64::new(0),
            after: AtomicU64::new(0),
            after_resumed: AtomicU64::new(0),
            abort: AtomicBool::new(false),
        });
        // Stops the producers if the scenario fails.
        struct Abort(Arc<Traffic>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort.store(true, Ordering::SeqCst);
            }
        }
        let _abort = Abort(Arc::clone(&traffic));
        let producers: Vec<_> = [(victim, 1_000_000_000u64), (survivor, 2_000_000_000)]
            .into_iter()
            .map(|(prefer, first)| {
                let (name, traffic, db) = (name.clone(), Arc::clone(&traffic), Arc::clone(&db));
                std::thread::spawn(move || produce(&name, prefer, first, &traffic, &db))
            })
            .collect();
        // Progress, every 5 s, so that a stalled scenario shows where.
        {
            let (traffic, owner_seen, standby_seen, db, name) = (
                Arc::clone(&traffic),
                Arc::clone(&owner_seen),
                Arc::clone(&standby_seen),
                Arc::clone(&db),
                name.clone(),
            );
            std::thread::spawn(move || {
                let start = Instant::now();
                while !traffic.done() {
                    std::thread::sleep(Duration::from_secs(5));
                    eprintln!(
                        "[{:>5.1?}] {name}: confirmed {} before, {} after, {} after resumed; \
                         handled: owner {}, standby {}; rows {:?}",
                        start.elapsed(),
                        traffic.before.load(Ordering::SeqCst),
                        traffic.after.load(Ordering::SeqCst),
                        traffic.after_resumed.load(Ordering::SeqCst),
                        owner_seen.handled.load(Ordering::SeqCst),
                        standby_seen.handled.load(Ordering::SeqCst),
                        db.counts(),
                    );
                }
            });
        }
        // The probe's handle is on a node that survives.
        let probe_broker = survivor.connect();
        let probe_db = probe_broker.remote_handle::<RemoteDbMsg>(&name).unwrap();

        while traffic.before.load(Ordering::SeqCst) < size.before {
            assert!(
                producers.iter().all(|p| !p.is_finished()),
                "a producer ended before the kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let owner_before = owner_seen.handled.load(Ordering::SeqCst);
        assert!(
            owner_before > 0,
            "the owner handled nothing before the kill"
        );
        assert_eq!(
            standby_seen.handled.load(Ordering::SeqCst),
            0,
            "the standby handled messages while the owner was active"
        );
        match fault {
            Fault::OwnersNode => {
                assert_eq!(owner.host(), victim.host(), "the owner is on the victim");
                assert_ne!(leader(&name), victim, "the victim leads the queue");
            }
            Fault::QueueLeader => {
                assert_eq!(leader(&name), victim, "the victim leads the queue");
                assert_ne!(owner.host(), victim.host(), "the owner is on the victim");
            }
        }
        let (rows_at_kill, _, _) = db.counts();
        *killed_node.lock().unwrap() = Some(victim);
        let (killed_at, gone_after) = victim.kill();
        killed.set(killed_at).unwrap();
        let confirmed_before = traffic.before.load(Ordering::SeqCst);

        let resumed = probe(&probe_db, killed_at);
        traffic.resumed.set(killed_at + resumed).unwrap();
        let produced: Vec<Produced> = producers
            .into_iter()
            .map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        let confirmed_after = traffic.after.load(Ordering::SeqCst);
        let confirmed_after_resumed = traffic.after_resumed.load(Ordering::SeqCst);
        probe_db.join().unwrap();

        // Every write sent was confirmed in the end (the producers retried
        // the lost ones until they were); each must be applied, once. Those
        // confirmed through a lost handle cannot be joined: wait for them.
        let sent: HashSet<u64> = produced
            .iter()
            .flat_map(|p| p.sent.iter().copied())
            .collect();
        let expected = sent.len() as u64 + 1; // and the probe's write
        let (_, _, applied_at_end) = db.counts();
        let deadline = Instant::now() + Duration::from_secs(30);
        let waiting = Instant::now();
        while db.counts().2 < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let waited = waiting.elapsed();
        let (rows, distinct, applied) = db.counts();
        let leader_after = leader(&name);
        let standby_took_over = standby_seen.first_after_kill.get().copied();
        eprintln!(
            "{fault:?} ({}): killed node {} (owner on {}, standby on {}) at {rows_at_kill} rows, \
             its process gone {gone_after:?} after the signal; \
             {confirmed_before} writes confirmed before and {confirmed_after} after \
             ({confirmed_after_resumed} after the service resumed); \
             a write sent after the kill was answered {resumed:?} after the signal \
             ({:?} after the process was gone); \
             the standby handled its first message {:?} after the signal; \
             owner handled {}, standby {}; leader now node {}; \
             producers reconnected to {:?}, sent {:?} writes again, \
             and had one confirmed again {:?} after the kill; \
             {rows} rows, {distinct} distinct, {applied} ids applied of {expected} \
             ({applied_at_end} when the producers ended, the rest {waited:?} later); \
             connections given up: {:?}",
            if full() { "full" } else { "smoke" },
            victim.0,
            owner_node.0,
            standby_node.0,
            resumed.saturating_sub(gone_after),
            standby_took_over.map(|t| t.saturating_duration_since(killed_at)),
            owner_seen.handled.load(Ordering::SeqCst),
            standby_seen.handled.load(Ordering::SeqCst),
            leader_after.0,
            produced
                .iter()
                .map(|p| &p.reconnected_to)
                .collect::<Vec<_>>(),
            produced.iter().map(|p| p.retried).collect::<Vec<_>>(),
            produced.iter().map(|p| p.back_after).collect::<Vec<_>>(),
            produced.iter().map(|p| &p.lost).collect::<Vec<_>>(),
        );

        // The fault hit the traffic.
        assert!(confirmed_before >= size.before, "{confirmed_before}");
        assert!(
            confirmed_after_resumed >= size.after,
            "{confirmed_after_resumed}"
        );
        assert!(rows_at_kill > 0, "nothing committed before the kill");
        assert!(
            rows_at_kill < expected,
            "everything was committed before the kill"
        );
        // The producer on the victim lost its connection, and connecting
        // again skipped the dead node.
        let on_victim = &produced[0];
        assert!(
            !on_victim.reconnected_to.is_empty(),
            "the producer on node {} never lost its connection",
            victim.0
        );
        assert!(
            on_victim.reconnected_to.iter().all(|h| *h != victim.host()),
            "{:?}",
            on_victim.reconnected_to
        );
        match fault {
            Fault::OwnersNode => {
                let took_over = standby_took_over.expect("the standby never took over");
                assert!(took_over > killed_at);
            }
            Fault::QueueLeader => {
                assert_ne!(leader_after, victim, "the dead node still leads the queue");
            }
        }
        // Exactly once: every write sent is applied, none twice.
        assert_eq!(
            (rows, distinct, applied),
            (expected, expected, expected),
            "rows, distinct numbers, applied ids"
        );
        let applied_ids = db.applied();
        let unapplied: Vec<&u64> = sent
            .iter()
            .filter(|n| !applied_ids.contains(&format!("w{n}")))
            .take(10)
            .collect();
        assert!(unapplied.is_empty(), "not applied: {unapplied:?}");

        standby_served.stop();
        owner_served.stop();
        drop(probe_db);
    });
    drop(restart);
    drop(queues);
}

#[test]
fn a_standby_on_another_node_takes_over_when_the_owners_node_is_killed() {
    fault_scenario(Fault::OwnersNode);
}

#[test]
fn writes_stay_exactly_once_when_the_node_leading_the_queue_is_killed() {
    fault_scenario(Fault::QueueLeader);
}

#[test]
fn a_managers_queue_has_a_live_replica_on_every_node() {
    // Waiting for another scenario's turn does not count against the limit.
    let _cluster = exclusive();
    within(Duration::from_secs(60), || {
        three_nodes();
        let name = unique_name("replicas");
        let queues = Queues(name.clone());
        let broker = Node(2).connect();
        drop(broker.remote_handle::<u64>(&name).unwrap());
        let members = cluster(&["members", &format!("custody.{name}")]);
        let mut nodes: Vec<&str> = members.lines().map(|l| &l[..1]).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["1", "2", "3"], "{members}");
        assert!(
            members
                .lines()
                .all(|l| l.ends_with(" leader") || l.ends_with(" follower")),
            "{members}"
        );
        // Declared through node 2, led from there.
        assert_eq!(leader(&name), Node(2));
        drop(queues);
    });
}

#[test]
fn connecting_skips_a_node_that_does_not_answer() {
    // Waiting for another scenario's turn does not count against the limit.
    let _cluster = exclusive();
    within(Duration::from_secs(60), || {
        three_nodes();
        let closed_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dead = format!("amqp://guest:guest@127.0.0.1:{closed_port}/%2f");
        let broker = Broker::builder(format!("{dead},{},{}", Node(3).url(), Node(1).url()))
            .connect()
            .unwrap();
        assert_eq!(broker.host(), Node(3).host());
        // Nobody answering names every node tried.
        let err = BrokerBuilder::urls([dead.clone(), dead])
            .connect()
            .unwrap_err();
        assert!(
            matches!(&err, BrokerError::NoNodeReachable { attempts } if attempts.len() == 2),
            "{err:?}"
        );
    });
}
