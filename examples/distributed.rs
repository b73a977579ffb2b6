//! Exactly-once effects on top of at-least-once delivery, across processes,
//! with the active owner killed halfway.
//!
//! One binary, three roles:
//!
//! - `distributed` (no argument): the orchestrator. It starts an owner, a
//!   standby (a second owner of the same name) and three producers, all as
//!   child processes of this executable; once half the writes are committed
//!   it SIGKILLs the active owner; it waits for the producers to finish and
//!   join; then it reads the database and checks that its rows are exactly
//!   the writes the broker confirmed to the producers, none missing and none
//!   twice. It exits 0 only when that holds.
//! - `distributed owner NAME DB`: serves the manager `NAME` from its broker
//!   queue: a `RemoteDatabase`, whose writes carry ids recorded in the same
//!   transaction as the writes (group-committed in `idle`, before the broker
//!   acknowledges the batch). A crash between the commit and the ack
//!   redelivers the batch to the standby, which skips the ids already
//!   applied. Stops when its standard input closes.
//! - `distributed producer NAME K COUNT`: sends `COUNT` writes with ids
//!   `K.0`, `K.1`, ... through a `RemoteHandle`, a few at a time, prints
//!   how many the broker confirmed, then joins.
//!
//! Needs a RabbitMQ broker (`CUSTODY_AMQP_URL`, default guest@127.0.0.1:5672).
//! Run with `cargo run --features amqp --example distributed`. With
//! `--cluster` it runs against the three-node cluster of
//! `scripts/rabbitmq-cluster` instead (the nodes in `CUSTODY_CLUSTER_URLS`,
//! comma-separated, default 127.0.0.1:5681-5683): every process connects to
//! the first node that answers.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use custody::Runtime;
use custody::broker::Broker;
use custody::resources::rusqlite::{self, Connection};
use custody::resources::{Database, OpenError, RemoteDatabase, RemoteDatabaseMsg, RemoteWrite};

const PRODUCERS: u32 = 3;
const WRITES_PER_PRODUCER: u32 = 600;
/// Writes a producer sends at once (`tell_all`), then a pause: the run
/// spreads over a few seconds, so the kill lands mid-stream.
const CHUNK: u32 = 20;
const PAUSE: Duration = Duration::from_millis(40);

/// The owner's manager: a [`RemoteDatabase`] on `path`. The table has no
/// unique key, so a write applied twice would show as two rows.
fn ledger(path: &Path) -> Result<RemoteDatabase, OpenError> {
    RemoteDatabase::open(Database::builder(path).init_sql(
        "CREATE TABLE IF NOT EXISTS writes (id TEXT NOT NULL, producer INTEGER NOT NULL)",
    ))
}

/// The cluster's nodes, when run with `--cluster`: passed to every child as
/// `CUSTODY_AMQP_URL`, so `Broker::from_env` connects to one of them.
static CLUSTER_URLS: OnceLock<String> = OnceLock::new();

/// The nodes of `scripts/rabbitmq-cluster` when `CUSTODY_CLUSTER_URLS` is unset.
const DEFAULT_CLUSTER_URLS: &str = "amqp://guest:guest@127.0.0.1:5681/%2f,\
amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f";

/// The broker this process uses: the cluster's nodes, or `CUSTODY_AMQP_URL`.
fn connect() -> Result<Broker, custody::broker::BrokerError> {
    match CLUSTER_URLS.get() {
        Some(urls) => Broker::builder(urls.as_str()).connect(),
        None => Broker::from_env(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        [] => orchestrate(),
        ["--cluster"] => {
            let urls = std::env::var("CUSTODY_CLUSTER_URLS")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_CLUSTER_URLS.to_owned());
            println!("against the cluster: {} nodes", urls.split(',').count());
            let _ = CLUSTER_URLS.set(urls);
            orchestrate()
        }
        ["owner", name, db] => own(name, Path::new(db)),
        ["producer", name, k, count] => match (k.parse(), count.parse()) {
            (Ok(k), Ok(count)) => produce(name, k, count),
            _ => Err("producer: K and COUNT must be numbers".to_owned()),
        },
        _ => {
            Err("usage: distributed [--cluster | owner NAME DB | producer NAME K COUNT]".to_owned())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distributed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The owner role: serve until standard input closes.
fn own(name: &str, db: &Path) -> Result<(), String> {
    let ledger = ledger(db).map_err(|e| format!("opening {}: {e}", db.display()))?;
    let rt = Runtime::new();
    let broker = Broker::from_env().map_err(|e| e.to_string())?;
    let served = broker.serve(&rt, name, ledger).map_err(|e| e.to_string())?;
    println!("serving");
    // Until the orchestrator closes our standard input (or dies).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    served.stop();
    Ok(())
}

/// The producer role: send, count the confirmed writes, join.
fn produce(name: &str, k: u32, count: u32) -> Result<(), String> {
    let broker = Broker::from_env().map_err(|e| e.to_string())?;
    let ledger = broker
        .remote_handle::<RemoteDatabaseMsg>(name)
        .map_err(|e| e.to_string())?;
    let mut confirmed = 0;
    let mut next = 0;
    while next < count {
        let end = (next + CHUNK).min(count);
        let writes = (next..end).map(|i| {
            let id = format!("{k}.{i}");
            RemoteDatabaseMsg::Execute(RemoteWrite::with_id(
                id.clone(),
                "INSERT INTO writes (id, producer) VALUES (?1, ?2)",
                vec![id.into(), k.into()],
            ))
        });
        match ledger.tell_all(writes) {
            Ok(()) => confirmed += end - next,
            Err(e) => {
                confirmed += u32::try_from(e.confirmed).unwrap_or(u32::MAX);
                eprintln!("producer {k}: {e}");
            }
        }
        next = end;
        std::thread::sleep(PAUSE);
    }
    ledger
        .join_timeout(Duration::from_secs(30))
        .map_err(|e| format!("producer {k}: join: {e}"))?;
    println!("confirmed {confirmed}");
    Ok(())
}

/// A child process with its output lines arriving on a channel.
struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(label: &str, args: &[&str]) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        if let Some(urls) = CLUSTER_URLS.get() {
            command.env("CUSTODY_AMQP_URL", urls);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {label}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            label: label.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// The next line of output, within `timeout`.
    fn line(&self, timeout: Duration) -> Result<String, String> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|_| format!("{}: no output within {timeout:?}", self.label))
    }

    /// Closes its standard input and waits for it to exit successfully.
    fn finish(&mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", self.label))
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only a child still running after an error is killed here.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Deletes the run's queues and database files, pass or fail.
struct Cleanup {
    name: String,
    db: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match connect() {
            Ok(broker) => {
                if let Err(e) = broker.delete_queues(&self.name) {
                    eprintln!("could not delete the queues of {}: {e}", self.name);
                }
            }
            Err(e) => eprintln!("could not delete the queues of {}: {e}", self.name),
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.db.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Committed rows in the database, read by a connection of our own.
fn rows(db: &Path) -> rusqlite::Result<u64> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.query_row("SELECT count(*) FROM writes", [], |r| r.get(0))
}

fn orchestrate() -> Result<(), String> {
    let started = Instant::now();
    let pid = std::process::id();
    let cleanup = Cleanup {
        name: format!("example.distributed.{pid}"),
        db: std::env::temp_dir().join(format!("custody-distributed-{pid}.db")),
    };
    let name = cleanup.name.as_str();
    let db = cleanup.db.to_str().ok_or("temporary path is not UTF-8")?;
    let ready = Duration::from_secs(10);

    // The first consumer registered is the active one: wait for each.
    let mut active = Proc::start("owner", &["owner", name, db])?;
    expect(&active, "serving", ready)?;
    let mut standby = Proc::start("standby", &["owner", name, db])?;
    expect(&standby, "serving", ready)?;
    println!(
        "owner pid {} (active) and standby pid {} serving `custody.{name}`",
        active.child.id(),
        standby.child.id()
    );

    let count = WRITES_PER_PRODUCER.to_string();
    let mut producers = Vec::new();
    for k in 0..PRODUCERS {
        let label = format!("producer {k}");
        producers.push(Proc::start(
            &label,
            &["producer", name, &k.to_string(), &count],
        )?);
    }
    let total = u64::from(PRODUCERS * WRITES_PER_PRODUCER);

    // Halfway: once half the writes are committed, SIGKILL the active owner.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let committed = rows(&cleanup.db).unwrap_or(0);
        if committed >= total / 2 {
            active
                .child
                .kill() // SIGKILL on Unix: no graceful anything
                .map_err(|e| format!("killing the owner: {e}"))?;
            let _ = active.child.wait();
            println!("SIGKILLed the active owner at {committed} of {total} rows");
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {committed} of {total} rows after 20 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut confirmed = 0u64;
    for producer in &mut producers {
        let line = producer.line(Duration::from_secs(40))?;
        let n: u64 = line
            .strip_prefix("confirmed ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{}: unexpected output {line:?}", producer.label))?;
        confirmed += n;
        producer.finish()?;
    }
    println!("producers joined: {confirmed} writes confirmed");

    standby.finish()?;

    let conn = Connection::open(&cleanup.db).map_err(|e| e.to_string())?;
    let (rows, distinct): (u64, u64) = conn
        .query_row("SELECT count(*), count(DISTINCT id) FROM writes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| e.to_string())?;
    drop(conn);
    println!(
        "rows {rows}, distinct ids {distinct}, confirmed writes {confirmed}, in {:.1?}",
        started.elapsed()
    );
    if rows == confirmed && distinct == rows && confirmed == total {
        println!("ok: every confirmed write is in the database exactly once");
        Ok(())
    } else {
        Err("the database does not hold exactly the confirmed writes".to_owned())
    }
}

/// Waits for `proc` to print `want`.
fn expect(proc: &Proc, want: &str, timeout: Duration) -> Result<(), String> {
    let line = proc.line(timeout)?;
    if line == want {
        Ok(())
    } else {
        Err(format!("{}: expected {want:?}, got {line:?}", proc.label))
    }
}
