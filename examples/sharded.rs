//! Accounts spread over the partitions of a sharded kind, owned by three
//! owner processes, one of which is SIGKILLed halfway and started again.
//!
//! One binary, two roles:
//!
//! - `sharded` (no argument): the orchestrator. It makes a PostgreSQL
//!   database of its own, starts the owner processes (children of this
//!   executable) and two producer threads, prints which process owns each
//!   partition every time that changes, SIGKILLs one owner once half the
//!   operations are confirmed, starts it again, and at the end checks, from
//!   the database, that every account's balance is the sum of its confirmed
//!   operations and that no operation was applied twice. It exits 0 only
//!   when that holds, and drops its database and queues.
//! - `sharded owner KIND DB`: a member of the kind: serves the partitions
//!   the members' assignment gives it, each with a manager that claims its
//!   partition in PostgreSQL at its first message and applies each
//!   operation once, by id, fenced by the partition's epoch. Prints
//!   `serving [..]` when its share changes; leaves gracefully when its
//!   standard input closes.
//!
//! The workload: deposits to any account (across partitions), and transfers
//! between two accounts of one partition (so that one owner applies both
//! sides in one transaction). A producer sends each operation until the
//! broker confirms it, with the same id every time, so an operation cut by
//! a failure is sent again and applied once.
//!
//! Needs RabbitMQ (`CUSTODY_AMQP_URL`, default guest@127.0.0.1:5672) and
//! PostgreSQL (`CUSTODY_PG_URL`, default postgres://postgres@127.0.0.1:5432).
//! Run with `cargo run --features amqp,postgres --example sharded`.
//! Options: `--owners N` (default 3), `--ops N` per producer (default
//! 400), `--batch N` (operations a producer sends at once with `tell_all`,
//! default 1: one confirmed `tell` after another), `--no-kill`, `--cluster` (the nodes of `scripts/rabbitmq-cluster`,
//! `CUSTODY_CLUSTER_URLS` or 127.0.0.1:5681-5683).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use custody::broker::{Broker, PartitionKey, partition_of};
use custody::resources::postgres::client::{Client, NoTls};
use custody::resources::postgres::{PgState, PgStateError, PgStateHandle};
use custody::{Context, Manager, Runtime};
use serde::{Deserialize, Serialize};

const PARTITIONS: u32 = 6;
const ACCOUNTS: usize = 36;
const PRODUCERS: usize = 2;

/// An operation on the accounts; `id` is its message id in PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountOp {
    Deposit {
        id: String,
        account: String,
        cents: i64,
    },
    /// Between two accounts of one partition.
    Transfer {
        id: String,
        from: String,
        to: String,
        cents: i64,
    },
}

impl AccountOp {
    fn id(&self) -> &str {
        match self {
            AccountOp::Deposit { id, .. } | AccountOp::Transfer { id, .. } => id,
        }
    }
}

/// Counts confirmed operations into the expected balances.
fn record(confirmed: &Mutex<Confirmed>, sent: &AtomicU64, ops: Vec<AccountOp>) {
    let mut c = confirmed.lock().unwrap();
    for op in ops {
        match op {
            AccountOp::Deposit { account, cents, .. } => {
                *c.balances.entry(account).or_default() += cents;
            }
            AccountOp::Transfer {
                from, to, cents, ..
            } => {
                *c.balances.entry(from).or_default() -= cents;
                *c.balances.entry(to).or_default() += cents;
            }
        }
        c.ops += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
}

impl PartitionKey for AccountOp {
    fn partition_key(&self) -> Cow<'_, [u8]> {
        match self {
            AccountOp::Deposit { account, .. } => Cow::Borrowed(account.as_bytes()),
            AccountOp::Transfer { from, .. } => Cow::Borrowed(from.as_bytes()),
        }
    }
}

/// One partition's manager in an owner process.
struct Accounts {
    partition: String,
    state: PgStateHandle,
    claimed: bool,
}

impl Manager for Accounts {
    type Msg = AccountOp;

    fn handle(&mut self, op: AccountOp, _ctx: &mut Context<'_, AccountOp>) {
        if !self.claimed {
            // The first message proves this process is the partition's
            // active owner: a new epoch fences every earlier owner.
            self.state.claim(self.partition.clone()).expect("claim");
            self.claimed = true;
        }
        let id = match &op {
            AccountOp::Deposit { id, .. } | AccountOp::Transfer { id, .. } => id.clone(),
        };
        let applied = self
            .state
            .apply(self.partition.clone(), id.clone(), move |c| {
                let credit = "INSERT INTO accounts (id, balance) VALUES ($1, $2) \
                              ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + $2";
                match &op {
                    AccountOp::Deposit { account, cents, .. } => {
                        c.execute(credit, &[account, cents])?;
                    }
                    AccountOp::Transfer {
                        from, to, cents, ..
                    } => {
                        c.execute(credit, &[from, &-cents])?;
                        c.execute(credit, &[to, cents])?;
                    }
                }
                // No unique key: an operation applied twice would show.
                c.execute("INSERT INTO applied_ops (id) VALUES ($1)", &[&id])
            });
        match applied {
            Ok(_) => {}
            // A superseded owner (frozen while the partition moved): its
            // channel is gone and nothing it does is acknowledged.
            Err(PgStateError::Fenced { .. }) => {}
            Err(e) => panic!("operation not applied, to be redelivered: {e}"),
        }
    }
}

fn pg_server() -> String {
    std::env::var("CUSTODY_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

fn owner(kind: &str, db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::new();
    let state = PgState::builder(db)
        .owner(format!("pid-{}", std::process::id()))
        .spawn(&rt, "accounts-state")?;
    let member = Broker::from_env()?
        .sharded(kind, PARTITIONS)
        .serve(&rt, move |p| Accounts {
            partition: format!("p{p}"),
            state: state.clone(),
            claimed: false,
        })?;
    // Standard input closing (the orchestrator is done, or gone) ends it.
    let (closed_tx, closed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        let _ = closed_tx.send(());
    });
    let mut out = std::io::stdout();
    let mut last = None;
    while closed.recv_timeout(Duration::from_millis(20)).is_err() {
        let serving = member.serving();
        if last.as_ref() != Some(&serving) {
            let list: Vec<String> = serving.iter().map(u32::to_string).collect();
            writeln!(out, "serving [{}]", list.join(","))?;
            out.flush()?;
            last = Some(serving);
        }
    }
    member.stop();
    Ok(())
}

/// Which owner slot serves each partition, as the owners report it.
#[derive(Default)]
struct Ownership {
    by_slot: BTreeMap<usize, Vec<u32>>,
    started: Option<Instant>,
}

impl Ownership {
    fn line(&self) -> String {
        let mut owners = vec!["-".to_owned(); PARTITIONS as usize];
        for (slot, set) in &self.by_slot {
            for &p in set {
                let name = ((b'A' + *slot as u8) as char).to_string();
                owners[p as usize] = if owners[p as usize] == "-" {
                    name
                } else {
                    format!("{}+{name}", owners[p as usize])
                };
            }
        }
        let t = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let cells: Vec<String> = owners
            .iter()
            .enumerate()
            .map(|(p, o)| format!("p{p}:{o:<3}"))
            .collect();
        format!("{t:6.2}s  {}", cells.join(" "))
    }

    /// Whether each partition has exactly one owner, and the loads are
    /// within one.
    fn is_balanced(&self, owners: usize) -> bool {
        let mut count = vec![0; PARTITIONS as usize];
        for set in self.by_slot.values() {
            for &p in set {
                count[p as usize] += 1;
            }
        }
        let loads: Vec<usize> = self.by_slot.values().map(Vec::len).collect();
        self.by_slot.len() == owners
            && count.iter().all(|&c| c == 1)
            && loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0) <= 1
    }
}

struct Owners {
    children: Vec<Option<Child>>,
    ownership: Arc<Mutex<Ownership>>,
    kind: String,
    db: String,
}

impl Owners {
    fn start(&mut self, slot: usize) -> Result<(), Box<dyn std::error::Error>> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["owner", &self.kind, &self.db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(urls) = CLUSTER_URLS.get() {
            command.env("CUSTODY_AMQP_URL", urls);
        }
        let mut child = command.spawn()?;
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let ownership = Arc::clone(&self.ownership);
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let Some(list) = line
                    .strip_prefix("serving [")
                    .and_then(|l| l.strip_suffix(']'))
                else {
                    continue;
                };
                let set = list.split(',').filter_map(|s| s.parse().ok()).collect();
                let mut o = ownership.lock().unwrap();
                o.by_slot.insert(slot, set);
                println!("{}", o.line());
            }
            let mut o = ownership.lock().unwrap();
            o.by_slot.remove(&slot);
            println!(
                "{}   (owner {} gone)",
                o.line(),
                (b'A' + slot as u8) as char
            );
        });
        self.children[slot] = Some(child);
        Ok(())
    }

    fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Ownership) -> bool,
    ) -> Duration {
        let started = Instant::now();
        while !check(&self.ownership.lock().unwrap()) {
            if started.elapsed() > limit {
                panic!("{what}: not within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }
}

impl Drop for Owners {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            drop(child.stdin.take()); // leave gracefully
        }
        for child in self.children.iter_mut().flatten() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the producers had confirmed: each account's expected balance, and
/// the operations.
#[derive(Default)]
struct Confirmed {
    balances: HashMap<String, i64>,
    ops: u64,
}

fn orchestrate(args: &[String]) -> Result<bool, Box<dyn std::error::Error>> {
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let owners_n = value("--owners", 3).clamp(1, 26) as usize;
    let ops_per_producer = value("--ops", 400);
    let batch = value("--batch", 1).max(1) as usize;
    if flag("--cluster") {
        let urls = std::env::var("CUSTODY_CLUSTER_URLS").unwrap_or_else(|_| {
            (5681..=5683)
                .map(|p| format!("amqp://guest:guest@127.0.0.1:{p}/%2f"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let _ = CLUSTER_URLS.set(urls);
    }
    let kind = format!("example.accounts.{}", std::process::id());
    let db_name = format!("custody_sharded_example_{}", std::process::id());
    let mut admin = Client::connect(&format!("{}/postgres", pg_server()), NoTls)?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {db_name}"))?;
    let db = format!("{}/{db_name}", pg_server());
    let result = run(
        &kind,
        &db,
        owners_n,
        ops_per_producer,
        batch,
        !flag("--no-kill"),
    );
    let broker = broker()?;
    if let Err(e) = broker.delete_sharded(&kind, PARTITIONS) {
        eprintln!("the kind's queues were not deleted: {e}");
    }
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))?;
    result
}

/// The cluster's nodes, with `--cluster`: passed to the owners as
/// `CUSTODY_AMQP_URL`.
static CLUSTER_URLS: OnceLock<String> = OnceLock::new();

fn broker() -> Result<Broker, custody::broker::BrokerError> {
    match CLUSTER_URLS.get() {
        Some(urls) => Broker::connect(urls),
        None => Broker::from_env(),
    }
}

fn run(
    kind: &str,
    db: &str,
    owners_n: usize,
    ops_per_producer: u64,
    batch: usize,
    kill: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    // The tables, before the owners race to create them.
    Client::connect(db, NoTls)?.batch_execute(
        "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE applied_ops (id text NOT NULL);",
    )?;
    {
        let rt = Runtime::new();
        PgState::builder(db).spawn(&rt, "setup")?.claims()?;
    }
    let sender = broker()?;
    let ops = sender.sharded_handle::<AccountOp>(kind, PARTITIONS)?;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|a| format!("acct-{a:02}")).collect();
    let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for a in &accounts {
        by_partition
            .entry(partition_of(a.as_bytes(), PARTITIONS))
            .or_default()
            .push(a.clone());
    }

    let mut owners = Owners {
        children: (0..owners_n).map(|_| None).collect(),
        ownership: Arc::new(Mutex::new(Ownership {
            started: Some(Instant::now()),
            ..Ownership::default()
        })),
        kind: kind.to_owned(),
        db: db.to_owned(),
    };
    println!("kind {kind}: {PARTITIONS} partitions, {owners_n} owner processes (A, B, ...)");
    for slot in 0..owners_n {
        owners.start(slot)?;
    }
    owners.wait_until("the owners balance", Duration::from_secs(60), |o| {
        o.is_balanced(owners_n)
    });

    let confirmed = Arc::new(Mutex::new(Confirmed::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|k| {
            let (ops, confirmed, sent) = (ops.clone(), Arc::clone(&confirmed), Arc::clone(&sent));
            let (accounts, by_partition) = (accounts.clone(), by_partition.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut chunk = Vec::new();
                for i in 0..ops_per_producer {
                    let id = format!("op-{k}-{i}");
                    let cents = (next() % 1000) as i64 + 1;
                    let op = if i % 3 == 0 {
                        let account = accounts[(next() % ACCOUNTS as u64) as usize].clone();
                        AccountOp::Deposit { id, account, cents }
                    } else {
                        let group = &by_partition[&((next() % PARTITIONS as u64) as u32)];
                        let from = group[(next() % group.len() as u64) as usize].clone();
                        let to = group[(next() % group.len() as u64) as usize].clone();
                        AccountOp::Transfer {
                            id,
                            from,
                            to,
                            cents,
                        }
                    };
                    chunk.push(op);
                    if chunk.len() < batch && i + 1 < ops_per_producer {
                        continue;
                    }
                    // Until confirmed, with the same ids: applied once.
                    let mut unconfirmed = std::mem::take(&mut chunk);
                    while !unconfirmed.is_empty() {
                        let all = unconfirmed.clone();
                        match ops.tell_all(unconfirmed) {
                            Ok(()) => {
                                record(&confirmed, &sent, all);
                                break;
                            }
                            Err(e) => {
                                eprintln!("{} not confirmed, sent again", e.refused.len());
                                let refused = e.into_inner();
                                let ids: HashSet<&str> =
                                    refused.iter().map(AccountOp::id).collect();
                                record(
                                    &confirmed,
                                    &sent,
                                    all.into_iter()
                                        .filter(|op| !ids.contains(op.id()))
                                        .collect(),
                                );
                                unconfirmed = refused;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }
            })
        })
        .collect();

    let total = ops_per_producer * PRODUCERS as u64;
    let mut failover = None;
    let mut rebalance = None;
    if kill && owners_n > 1 {
        while sent.load(Ordering::Relaxed) < total / 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let victim = 1 % owners_n;
        let victim_set = owners
            .ownership
            .lock()
            .unwrap()
            .by_slot
            .get(&victim)
            .cloned()
            .unwrap_or_default();
        println!("-- SIGKILL owner {}", (b'A' + victim as u8) as char);
        if let Some(mut child) = owners.children[victim].take() {
            child.kill()?;
            child.wait()?;
        }
        failover = Some(owners.wait_until(
            "the killed owner's partitions served again",
            Duration::from_secs(30),
            |o| {
                !o.by_slot.contains_key(&victim)
                    && victim_set
                        .iter()
                        .all(|p| o.by_slot.values().any(|s| s.contains(p)))
            },
        ));
        println!("-- owner {} started again", (b'A' + victim as u8) as char);
        owners.start(victim)?;
        rebalance = Some(owners.wait_until(
            "the owners balance again",
            Duration::from_secs(60),
            |o| o.is_balanced(owners_n),
        ));
    }
    for p in producers {
        p.join().expect("a producer panicked");
    }
    ops.join_timeout(Duration::from_secs(120))?;
    let elapsed = started.elapsed();
    drop(owners);

    // The check, from the database.
    let mut client = Client::connect(db, NoTls)?;
    let balances: HashMap<String, i64> = client
        .query("SELECT id, balance FROM accounts", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM applied_ops", &[])?
        .get(0);
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT id) FROM applied_ops", &[])?
        .get(0);
    let epochs: i64 = client
        .query_one("SELECT coalesce(max(epoch), 0) FROM custody_epochs", &[])?
        .get(0);
    let confirmed = confirmed.lock().unwrap();
    let wrong: Vec<String> = confirmed
        .balances
        .iter()
        .filter(|(a, b)| balances.get(*a).copied().unwrap_or(0) != **b)
        .map(|(a, b)| {
            format!(
                "{a}: {} in the database, {b} confirmed",
                balances.get(a).copied().unwrap_or(0)
            )
        })
        .collect();
    println!(
        "\n{} operations confirmed in {:.2}s ({:.0} ops/s with {owners_n} owner processes)",
        confirmed.ops,
        elapsed.as_secs_f64(),
        confirmed.ops as f64 / elapsed.as_secs_f64()
    );
    if let (Some(f), Some(r)) = (failover, rebalance) {
        println!(
            "after the SIGKILL, every partition served again in {:.2}s; balanced again {:.2}s after the owner returned",
            f.as_secs_f64(),
            r.as_secs_f64()
        );
    }
    println!(
        "applied {applied} operations, {distinct} distinct (each exactly once: {}); highest epoch {epochs}",
        applied == distinct && distinct as u64 == confirmed.ops
    );
    for w in &wrong {
        println!("MISMATCH {w}");
    }
    let ok = wrong.is_empty() && applied == distinct && distinct as u64 == confirmed.ops;
    println!(
        "check: every balance equals the sum of its confirmed operations, none applied twice: {}",
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("owner") {
        return match owner(&args[1], &args[2]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("owner: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match orchestrate(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sharded: {e}");
            ExitCode::FAILURE
        }
    }
}
