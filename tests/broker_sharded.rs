//! Sharded kinds against a real RabbitMQ broker (CUSTODY_AMQP_URL) and, for
//! the exactly-once checks, PostgreSQL (CUSTODY_PG_URL): keys route stably
//! and keep their order; the partition count is checked; members balance
//! the partitions and move them when one leaves, joins, or is SIGKILLed,
//! losing nothing and applying nothing twice. Fails, never skips, without
//! the services.

#![cfg(all(feature = "amqp", feature = "postgres"))]

#[path = "common/mod.rs"]
mod common;
#[path = "common/pg.rs"]
mod pg;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{builder, connect, unique_name, within_limit};
use custody::broker::{
    Broker, BrokerError, PartitionKey, RemoteReply, Sharded, fnv1a_64, partition_of,
};
use custody::resources::postgres::{PgState, PgStateError, PgStateHandle};
use custody::{Backend, Context, Manager, Runtime};
use pg::TestDb;
use serde::{Deserialize, Serialize};

/// A fast pace for the tests: a dead member is noticed within a second.
const BEAT: Duration = Duration::from_millis(150);
const MEMBER_TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    /// `seq` is the n-th message of `key`.
    Add { id: u64, key: String, seq: u64 },
    /// How many messages this partition's current manager handled.
    Count {
        key: String,
        reply: RemoteReply<u64>,
    },
}

impl PartitionKey for Op {
    fn partition_key(&self) -> Cow<'_, [u8]> {
        match self {
            Op::Add { key, .. } | Op::Count { key, .. } => Cow::Borrowed(key.as_bytes()),
        }
    }
}

/// What every partition manager of a test saw: (partition, id, key, seq).
type Seen = Arc<Mutex<Vec<(u32, u64, String, u64)>>>;

struct Part {
    partition: u32,
    seen: Seen,
    count: u64,
}

impl Manager for Part {
    type Msg = Op;
    fn handle(&mut self, op: Op, _ctx: &mut Context<'_, Op>) {
        match op {
            Op::Add { id, key, seq } => {
                self.count += 1;
                self.seen
                    .lock()
                    .unwrap()
                    .push((self.partition, id, key, seq));
            }
            Op::Count { reply, .. } => {
                reply.send(self.count);
            }
        }
    }
}

/// Deletes a kind's queues when dropped, pass or fail.
struct Kind {
    broker: Broker,
    name: String,
    partitions: u32,
}

impl Kind {
    fn new(label: &str, partitions: u32) -> Kind {
        Kind {
            broker: connect(builder()),
            name: unique_name(label),
            partitions,
        }
    }
}

impl Drop for Kind {
    fn drop(&mut self) {
        if let Err(e) = self.broker.delete_sharded(&self.name, self.partitions) {
            eprintln!("could not delete the kind {}: {e}", self.name);
        }
    }
}

fn member(kind: &Kind, rt: &Runtime, seen: &Seen) -> Sharded<Op> {
    let seen = Arc::clone(seen);
    connect(builder())
        .sharded(&kind.name, kind.partitions)
        .beat(BEAT)
        .member_timeout(MEMBER_TIMEOUT)
        .serve(rt, move |partition| Part {
            partition,
            seen: Arc::clone(&seen),
            count: 0,
        })
        .unwrap()
}

/// Waits until `check` holds, or fails naming `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the members' partitions are disjoint, cover `partitions`, and
/// are within one of even.
fn balanced(sets: &[Vec<u32>], partitions: u32) -> bool {
    let all: BTreeSet<u32> = sets.iter().flatten().copied().collect();
    let total: usize = sets.iter().map(Vec::len).sum();
    let min = sets.iter().map(Vec::len).min().unwrap_or(0);
    let max = sets.iter().map(Vec::len).max().unwrap_or(0);
    all.len() == partitions as usize && total == partitions as usize && max - min <= 1
}

#[test]
fn keys_route_by_their_hash_and_keep_their_order_on_both_backends() {
    for backend in Backend::ALL {
        within_limit(Duration::from_secs(60), backend.name(), move || {
            let kind = Kind::new("route", 4);
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let seen: Seen = Arc::default();
            let member = member(&kind, &rt, &seen);
            wait_for(Duration::from_secs(20), "one member serves all", || {
                member.serving().len() == 4
            });
            let sender = connect(builder());
            let ops = sender.sharded_handle::<Op>(&kind.name, 4).unwrap();
            let keys: Vec<String> = (0..24).map(|k| format!("account-{k}")).collect();
            let mut seqs: HashMap<String, u64> = HashMap::new();
            let mut msgs = Vec::new();
            for id in 0..480u64 {
                let key = keys[(id * 7 % 24) as usize].clone();
                let seq = seqs.entry(key.clone()).or_default();
                *seq += 1;
                msgs.push(Op::Add { id, key, seq: *seq });
            }
            // Half routed by the message's own key, half by an explicit one.
            let second = msgs.split_off(240);
            ops.tell_all(msgs).unwrap();
            for op in second {
                let Op::Add { key, .. } = &op else {
                    unreachable!()
                };
                ops.tell_to(key.clone(), op).unwrap();
            }
            ops.join_timeout(Duration::from_secs(30)).unwrap();

            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 480, "every message handled once");
            let mut last: HashMap<&str, u64> = HashMap::new();
            for (partition, _, key, seq) in &seen {
                // FNV-1a 64 of the key's bytes, modulo 4: computed here
                // without the crate's routing.
                let mut h: u64 = 0xcbf29ce484222325;
                for b in key.as_bytes() {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
                }
                assert_eq!(*partition as u64, h % 4, "{key} in partition {partition}");
                assert_eq!(h, fnv1a_64(key.as_bytes()));
                let prev = last.insert(key, *seq).unwrap_or(0);
                assert_eq!(*seq, prev + 1, "{key}: message {seq} after {prev}");
            }
            let used: BTreeSet<u32> = seen.iter().map(|s| s.0).collect();
            assert_eq!(used.len(), 4, "24 keys reach every partition");
            // An ask goes to the key's partition and is answered by its owner.
            let key = &keys[5];
            let in_partition = seen
                .iter()
                .filter(|s| s.0 == partition_of(key.as_bytes(), 4))
                .count() as u64;
            let count = ops
                .ask(|reply| Op::Count {
                    key: key.clone(),
                    reply,
                })
                .unwrap();
            assert_eq!(count, in_partition);
            assert_eq!(
                ops.ask_to(key, |reply| Op::Count {
                    key: String::new(),
                    reply
                })
                .unwrap(),
                in_partition
            );
            member.stop();
            rt.shutdown();
        });
    }
}

#[test]
fn a_partition_count_other_than_the_recorded_one_is_a_typed_error() {
    within_limit(Duration::from_secs(60), "count", || {
        let kind = Kind::new("count", 4);
        let broker = connect(builder());
        let _first = broker.sharded_handle::<Op>(&kind.name, 4).unwrap();
        match broker.sharded_handle::<Op>(&kind.name, 6) {
            Err(BrokerError::PartitionMismatch {
                recorded, asked, ..
            }) => {
                assert_eq!(recorded, Some(4));
                assert_eq!(asked, 6);
            }
            other => panic!("expected PartitionMismatch, got {other:?}"),
        }
        let rt = Runtime::new();
        let served = broker.sharded(&kind.name, 5).serve(&rt, |partition| Part {
            partition,
            seen: Arc::default(),
            count: 0,
        });
        assert!(matches!(
            served,
            Err(BrokerError::PartitionMismatch {
                recorded: Some(4),
                asked: 5,
                ..
            })
        ));
        assert!(matches!(
            broker.sharded_handle::<Op>(&kind.name, 0),
            Err(BrokerError::InvalidPartitions { partitions: 0, .. })
        ));
        // The connection is still usable, and the recorded count still works.
        let again = broker.sharded_handle::<Op>(&kind.name, 4).unwrap();
        assert_eq!(again.partitions(), 4);
    });
}

#[test]
fn members_balance_and_move_partitions_when_one_leaves_and_one_joins_losing_nothing() {
    within_limit(Duration::from_secs(150), "balance", || {
        let kind = Kind::new("balance", 12);
        let rt = Runtime::new();
        let seen: Seen = Arc::default();
        let mut members: Vec<Sharded<Op>> = (0..3).map(|_| member(&kind, &rt, &seen)).collect();
        let sets = |ms: &[Sharded<Op>]| ms.iter().map(Sharded::serving).collect::<Vec<_>>();
        wait_for(
            Duration::from_secs(30),
            "3 members balance 12 partitions",
            || balanced(&sets(&members), 12),
        );
        assert!(sets(&members).iter().all(|s| s.len() == 4));

        // Messages flow while the partitions move.
        let sender = connect(builder());
        let ops = sender.sharded_handle::<Op>(&kind.name, 12).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let producer = {
            let (ops, sent) = (ops.clone(), Arc::clone(&sent));
            std::thread::spawn(move || {
                let mut seqs: HashMap<String, u64> = HashMap::new();
                let mut id = 0u64;
                while stop_rx.try_recv().is_err() {
                    let key = format!("k{}", id % 40);
                    let seq = seqs.entry(key.clone()).or_default();
                    *seq += 1;
                    ops.tell(Op::Add { id, key, seq: *seq }).unwrap();
                    id += 1;
                    sent.store(id, Ordering::SeqCst);
                }
            })
        };

        // One leaves gracefully: the two others take 6 each.
        let leaving = members.remove(0);
        leaving.stop();
        wait_for(
            Duration::from_secs(30),
            "2 members take 12 partitions",
            || balanced(&sets(&members), 12),
        );
        // One joins: 4 each again.
        members.push(member(&kind, &rt, &seen));
        wait_for(Duration::from_secs(30), "3 members balance again", || {
            balanced(&sets(&members), 12)
        });
        wait_for(Duration::from_secs(10), "messages were sent", || {
            sent.load(Ordering::SeqCst) > 50
        });
        stop_tx.send(()).unwrap();
        producer.join().unwrap();
        ops.join_timeout(Duration::from_secs(30)).unwrap();

        // Graceful moves: every message handled exactly once, each key in
        // its order.
        let seen = seen.lock().unwrap().clone();
        let sent = sent.load(Ordering::SeqCst);
        let ids: BTreeMap<u64, usize> = seen.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.1).or_default() += 1;
            m
        });
        assert_eq!(ids.len() as u64, sent, "a message was lost");
        assert!(ids.values().all(|&n| n == 1), "a message handled twice");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (_, _, key, seq) in &seen {
            let prev = last.insert(key, *seq).unwrap_or(0);
            assert_eq!(*seq, prev + 1, "{key} out of order across a move");
        }
        for m in members {
            assert!(m.moves().0 >= 4);
            m.stop();
        }
    });
}

// ---------------------------------------------------------------------
// Owner processes, SIGKILL, and exactly-once effects in PostgreSQL.

/// The environment variable that makes `sharded_owner_process` run: the
/// kind, then the database URL, separated by a space.
const OWNER_VAR: &str = "CUSTODY_SHARDED_TEST_OWNER";
const KILL_PARTITIONS: u32 = 6;

/// A partition's manager in an owner process: claims its partition at
/// its first message, applies each message once by id.
struct Ledger {
    partition: u32,
    state: PgStateHandle,
    claimed: bool,
}

impl Manager for Ledger {
    type Msg = Op;
    fn handle(&mut self, op: Op, _ctx: &mut Context<'_, Op>) {
        let Op::Add { id, key, .. } = op else {
            return;
        };
        let partition = format!("p{}", self.partition);
        if !self.claimed {
            self.state.claim(partition.clone()).expect("claim");
            self.claimed = true;
        }
        let applied = self.state.apply(partition, id.to_string(), move |c| {
            c.execute(
                "INSERT INTO ledger (id, key) VALUES ($1, $2)",
                &[&(id as i64), &key],
            )
        });
        match applied {
            Ok(_) => {}
            // A zombie: its channel is gone, nothing it does is acknowledged.
            Err(PgStateError::Fenced { .. }) => {}
            // Anything else: not applied; redelivered.
            Err(e) => panic!("not applied: {e}"),
        }
    }
}

/// Not a scenario of its own: an owner process of
/// `a_sigkilled_owners_partitions_are_served_again_and_nothing_is_lost_or_applied_twice`.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn sharded_owner_process() {
    let Ok(spec) = std::env::var(OWNER_VAR) else {
        return;
    };
    let (kind, url) = spec.split_once(' ').unwrap();
    let rt = Runtime::new();
    let state = PgState::builder(url)
        .owner(format!("pid-{}", std::process::id()))
        .spawn(&rt, "state")
        .unwrap();
    // A short heartbeat: the broker gives up on a frozen owner in seconds.
    let member = connect(builder().heartbeat(Duration::from_secs(1)))
        .sharded(kind, KILL_PARTITIONS)
        .beat(BEAT)
        .member_timeout(MEMBER_TIMEOUT)
        .serve(&rt, move |partition| Ledger {
            partition,
            state: state.clone(),
            claimed: false,
        })
        .unwrap();
    let mut out = std::io::stdout();
    let mut last = None;
    let started = Instant::now();
    // Killed by the parent long before this; never outlive a failed parent.
    while started.elapsed() < Duration::from_secs(120) {
        let serving = member.serving();
        if last.as_ref() != Some(&serving) {
            let list: Vec<String> = serving.iter().map(u32::to_string).collect();
            writeln!(out, "\nserving [{}]", list.join(",")).unwrap();
            out.flush().unwrap();
            last = Some(serving);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An owner process whose `serving` lines land in `owners`, under `slot`.
fn spawn_owner(kind: &str, db_url: &str, slot: usize, owners: &Owners) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "sharded_owner_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OWNER_VAR, format!("{kind} {db_url}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let owners = Arc::clone(owners);
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(list) = line
                .trim()
                .strip_prefix("serving [")
                .and_then(|l| l.strip_suffix(']'))
            {
                let set: Vec<u32> = list
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                owners.lock().unwrap().insert(slot, set);
            }
        }
        // The process ended: it serves nothing.
        owners.lock().unwrap().remove(&slot);
    });
    child
}

type Owners = Arc<Mutex<BTreeMap<usize, Vec<u32>>>>;

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` owner processes of `kind` writing to `db`, once they balance the
/// partitions.
fn start_owners(kind: &Kind, db: &TestDb, n: usize) -> (Owners, Killed) {
    let owners: Owners = Arc::default();
    let children = Killed(
        (0..n)
            .map(|slot| spawn_owner(&kind.name, &db.url(), slot, &owners))
            .collect(),
    );
    wait_for(
        Duration::from_secs(60),
        "the owner processes balance",
        || {
            let s: Vec<Vec<u32>> = owners.lock().unwrap().values().cloned().collect();
            s.len() == n && balanced(&s, KILL_PARTITIONS)
        },
    );
    (owners, children)
}

/// A database with the ledger the owner processes write, and the
/// `PgState` tables made before the owners race to make them.
fn ledger_db() -> TestDb {
    let db = TestDb::new();
    db.client()
        .batch_execute("CREATE TABLE ledger (id bigint NOT NULL, key text NOT NULL)")
        .unwrap();
    let rt = Runtime::new();
    let state = PgState::builder(db.url()).spawn(&rt, "setup").unwrap();
    state.claims().unwrap();
    db
}

/// Every id below `ids` is in the ledger once; and one owner at a time per
/// partition: in the order the transactions ran, a partition's epochs never
/// go back (no commit of a superseded owner after the new owner's first).
fn assert_applied_once_in_epoch_order(db: &TestDb, ids: u64) {
    let per_id: BTreeMap<i64, i64> = db
        .client()
        .query("SELECT id, count(*) FROM ledger GROUP BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_id.len() as u64, ids, "an id was lost");
    assert!(per_id.values().all(|&n| n == 1), "an id applied twice");
    let rows = db
        .client()
        .query(
            "SELECT partition, epoch FROM custody_applied ORDER BY partition, applied_at",
            &[],
        )
        .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &rows {
        let (partition, epoch): (String, i64) = (r.get(0), r.get(1));
        let prev = last.insert(partition.clone(), epoch).unwrap_or(0);
        assert!(
            epoch >= prev,
            "{partition}: epoch {epoch} committed after {prev}"
        );
    }
}

#[test]
fn a_sigkilled_owners_partitions_are_served_again_and_nothing_is_lost_or_applied_twice() {
    within_limit(Duration::from_secs(240), "sigkill", || {
        let db = ledger_db();
        let kind = Kind::new("kill", KILL_PARTITIONS);
        let (owners, mut children) = start_owners(&kind, &db, 3);
        let sets = || owners.lock().unwrap().values().cloned().collect::<Vec<_>>();

        // A producer sends ids in order, retrying each unconfirmed one.
        let sender = connect(builder());
        let ops = sender
            .sharded_handle::<Op>(&kind.name, KILL_PARTITIONS)
            .unwrap();
        const IDS: u64 = 600;
        let confirmed = Arc::new(AtomicU64::new(0));
        let producer = {
            let (ops, confirmed) = (ops.clone(), Arc::clone(&confirmed));
            std::thread::spawn(move || produce(&ops, 0, IDS, &confirmed))
        };
        wait_for(Duration::from_secs(60), "a third of the ids sent", || {
            confirmed.load(Ordering::SeqCst) >= IDS / 3
        });

        // SIGKILL the owner process of slot 0, mid-load.
        let victim_set = owners.lock().unwrap().get(&0).cloned().unwrap_or_default();
        assert!(!victim_set.is_empty());
        children.0[0].kill().unwrap();
        children.0[0].wait().unwrap();
        let killed_at = Instant::now();
        wait_for(
            Duration::from_secs(5),
            "the killed owner's partitions served again",
            || {
                let s = owners.lock().unwrap();
                !s.contains_key(&0) && {
                    let all: BTreeSet<u32> = s.values().flatten().copied().collect();
                    victim_set.iter().all(|p| all.contains(p))
                }
            },
        );
        eprintln!("served again {:?} after the kill", killed_at.elapsed());

        // It comes back: ownership is even again.
        children.0[0] = spawn_owner(&kind.name, &db.url(), 0, &owners);
        wait_for(
            Duration::from_secs(30),
            "the returning owner gets its share",
            || {
                let s = sets();
                s.len() == 3 && balanced(&s, KILL_PARTITIONS)
            },
        );

        producer.join().unwrap();
        ops.join_timeout(Duration::from_secs(60)).unwrap();

        assert_applied_once_in_epoch_order(&db, IDS);
        // The killed owner's partitions were claimed again.
        let epochs: i64 = db
            .client()
            .query_one("SELECT max(epoch) FROM custody_epochs", &[])
            .unwrap()
            .get(0);
        assert!(epochs >= 2, "no partition changed owner");
        drop(children);
        drop(kind);
    });
}

/// Sends ids `from..to` in order, retrying each until confirmed.
fn produce(ops: &custody::broker::ShardedHandle<Op>, from: u64, to: u64, confirmed: &AtomicU64) {
    for id in from..to {
        let key = format!("acct-{}", id % 30);
        let mut op = Op::Add { id, key, seq: 0 };
        loop {
            match ops.tell(op) {
                Ok(()) => break,
                Err(e) => op = e.into_inner(),
            }
        }
        confirmed.store(id + 1, Ordering::SeqCst);
    }
}

#[test]
fn a_frozen_owner_is_replaced_and_fenced_when_it_wakes_up() {
    within_limit(Duration::from_secs(240), "sigstop", || {
        let db = ledger_db();
        let kind = Kind::new("stop", KILL_PARTITIONS);
        let (owners, children) = start_owners(&kind, &db, 2);
        let sets = || owners.lock().unwrap().values().cloned().collect::<Vec<_>>();
        let sender = connect(builder());
        let ops = sender
            .sharded_handle::<Op>(&kind.name, KILL_PARTITIONS)
            .unwrap();
        let confirmed = AtomicU64::new(0);
        produce(&ops, 0, 200, &confirmed);
        ops.join_timeout(Duration::from_secs(30)).unwrap();

        // Freeze owner 0 with deliveries on their way to it.
        let frozen_set = owners.lock().unwrap().get(&0).cloned().unwrap();
        let pid = children.0[0].id().to_string();
        let signal = |sig: &str| {
            assert!(
                Command::new("kill")
                    .args([sig, &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        };
        signal("-STOP");
        produce(&ops, 200, 400, &confirmed);
        // The other owner serves the frozen one's partitions: it subscribes
        // once it stops hearing it, and the broker makes it active once the
        // frozen connection's heartbeat expires.
        wait_for(
            Duration::from_secs(60),
            "the frozen owner's partitions taken",
            || {
                owners
                    .lock()
                    .unwrap()
                    .get(&1)
                    .is_some_and(|s| frozen_set.iter().all(|p| s.contains(p)))
            },
        );
        ops.join_timeout(Duration::from_secs(60)).unwrap();
        // It wakes up, holding whatever it had been sent.
        signal("-CONT");
        produce(&ops, 400, 500, &confirmed);
        ops.join_timeout(Duration::from_secs(60)).unwrap();
        wait_for(
            Duration::from_secs(30),
            "balanced again after it woke up",
            || {
                let s = sets();
                s.len() == 2 && balanced(&s, KILL_PARTITIONS)
            },
        );
        produce(&ops, 500, 600, &confirmed);
        ops.join_timeout(Duration::from_secs(60)).unwrap();

        assert_applied_once_in_epoch_order(&db, 600);
        // The frozen owner's partitions changed owner at least once.
        for p in &frozen_set {
            let epoch: i64 = db
                .client()
                .query_one(
                    "SELECT epoch FROM custody_epochs WHERE partition = $1",
                    &[&format!("p{p}")],
                )
                .unwrap()
                .get(0);
            assert!(epoch >= 2, "p{p} was never claimed by another owner");
        }
        drop(children);
        drop(kind);
    });
}

/// Publishes raw bodies on a kind's members exchange, as any client can.
fn forge_beats(kind: &str, bodies: &[Vec<u8>]) {
    use futures_lite::future::block_on;
    use lapin::options::BasicPublishOptions;
    use lapin::types::ShortString;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    block_on(async {
        // The first node of a cluster's list will do.
        let url = common::url();
        let first = url.split(',').next().unwrap_or_default();
        let connection = Connection::connect(first, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for body in bodies {
            channel
                .basic_publish(
                    ShortString::from(format!("custody.{kind}.members")),
                    ShortString::from(""),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default(),
                )
                .await
                .unwrap();
        }
        let _ = connection.close(200, ShortString::from("done")).await;
    });
}

/// A beat as the members encode it (CBOR of a map), built by hand.
fn beat_body(member: &str, partitions: u32, ready: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct Beat<'a> {
        member: &'a str,
        partitions: u32,
        ready: bool,
        leaving: bool,
    }
    let mut body = Vec::new();
    ciborium::into_writer(
        &Beat {
            member,
            partitions,
            ready,
            leaving: false,
        },
        &mut body,
    )
    .unwrap();
    body
}

#[test]
fn forged_and_malformed_beats_are_counted_and_never_make_two_owners() {
    within_limit(Duration::from_secs(90), "forged beats", || {
        let kind = Kind::new("forged", 4);
        let rt = Runtime::new();
        let seen: Seen = Arc::default();
        let a = member(&kind, &rt, &seen);
        let b = member(&kind, &rt, &seen);
        let sets = || vec![a.serving(), b.serving()];
        wait_for(Duration::from_secs(30), "2 members balance", || {
            balanced(&sets(), 4)
        });
        let oversized = vec![0xa0; 4096];
        forge_beats(
            &kind.name,
            &[
                b"not cbor".to_vec(),
                oversized,
                beat_body("", 4, true),
                beat_body("other-count", 9, true),
            ],
        );
        wait_for(Duration::from_secs(10), "the bad beats counted", || {
            a.rejected_beats() >= 4 && b.rejected_beats() >= 4
        });
        // A forged member that beats once (ready): the others make room for
        // it, then forget it. Messages sent meanwhile are each handled once
        // and in order: the views moved, the single owner did not.
        let ops = connect(builder())
            .sharded_handle::<Op>(&kind.name, 4)
            .unwrap();
        forge_beats(&kind.name, &[beat_body("forged-member", 4, true)]);
        wait_for(Duration::from_secs(10), "the forged member heard", || {
            a.members().contains(&"forged-member".to_owned())
        });
        let mut seqs: HashMap<String, u64> = HashMap::new();
        for id in 0..200 {
            let key = format!("k{}", id % 10);
            let seq = seqs.entry(key.clone()).or_default();
            *seq += 1;
            ops.tell(Op::Add { id, key, seq: *seq }).unwrap();
        }
        wait_for(Duration::from_secs(30), "balanced again without it", || {
            balanced(&sets(), 4) && !a.members().contains(&"forged-member".to_owned())
        });
        ops.join_timeout(Duration::from_secs(30)).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 200, "every message handled once");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (_, _, key, seq) in &seen {
            let prev = last.insert(key, *seq).unwrap_or(0);
            assert_eq!(*seq, prev + 1, "{key} out of order");
        }
        a.stop();
        b.stop();
    });
}

#[test]
fn a_panicking_factory_is_retried_and_a_runtime_shutdown_ends_the_member() {
    within_limit(Duration::from_secs(90), "factory", || {
        let kind = Kind::new("factory", 3);
        let rt = Runtime::new();
        let seen: Seen = Arc::default();
        let failures = Arc::new(AtomicU64::new(0));
        let member = {
            let (seen, failures) = (Arc::clone(&seen), Arc::clone(&failures));
            connect(builder())
                .sharded(&kind.name, 3)
                .beat(BEAT)
                .member_timeout(MEMBER_TIMEOUT)
                .serve(&rt, move |partition| {
                    // Partition 1's factory panics its first three times.
                    if partition == 1 && failures.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("the factory of partition 1 failed");
                    }
                    Part {
                        partition,
                        seen: Arc::clone(&seen),
                        count: 0,
                    }
                })
                .unwrap()
        };
        wait_for(Duration::from_secs(30), "every partition served", || {
            member.serving() == vec![0, 1, 2]
        });
        assert!(failures.load(Ordering::SeqCst) >= 4);
        assert!(member.is_member());
        // The runtime shuts down: its partitions stop, and the member ends.
        rt.shutdown();
        wait_for(Duration::from_secs(30), "the member ended", || {
            !member.is_member()
        });
        assert!(member.serving().is_empty());
        member.stop();
    });
}

#[test]
fn a_member_whose_broker_is_closed_ends_and_says_why() {
    within_limit(Duration::from_secs(60), "closed", || {
        let kind = Kind::new("closed", 2);
        let rt = Runtime::new();
        let broker = connect(builder());
        let member = broker
            .sharded(&kind.name, 2)
            .beat(BEAT)
            .member_timeout(MEMBER_TIMEOUT)
            .serve(&rt, |partition| Part {
                partition,
                seen: Arc::default(),
                count: 0,
            })
            .unwrap();
        wait_for(Duration::from_secs(30), "both partitions served", || {
            member.serving().len() == 2
        });
        assert!(member.ended().is_none());
        broker.close();
        wait_for(Duration::from_secs(30), "the member ended", || {
            !member.is_member()
        });
        let why = member.ended().expect("a reason");
        assert!(why.contains("closed"), "{why}");
        assert!(member.serving().is_empty());
    });
}
