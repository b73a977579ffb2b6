//! `async-write`: the write path of an async service. `requests` tokio tasks
//! (a multi-thread runtime with 2 workers, as on this machine's 2 cores) each
//! make `k` requests one after another; a request inserts one row into one
//! SQLite file (WAL, `synchronous = FULL`) and awaits its commit. Every
//! request's latency is timed; each run gets a fresh file, whose rows must
//! equal the acknowledged requests (checked, untimed, after every run).
//!
//! The designs are what an async service can write with today:
//! - `tokio-rusqlite`: tokio-rusqlite 0.7's `Connection::call(..).await`
//!   (a thread owns the connection; each insert is its own transaction);
//! - `mutex-spawn-blocking`: a `Mutex<rusqlite::Connection>` locked inside
//!   `spawn_blocking` (each insert its own transaction);
//! - `custody-spawn-blocking`: custody's group-committing `Database`, its
//!   blocking `execute` inside `spawn_blocking` (the workaround before
//!   awaitable handles);
//! - `custody-async`: the same `Database`, its `execute_async` awaited in the
//!   task itself.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody::resources::rusqlite::{self, Connection};
use custody::resources::{Database, DatabaseHandle, Synchronous};
use custody::{Runtime, sql_values};

use crate::database::{DbFile, INSERT, NOTE, SCHEMA, count_rows};
use crate::measure::{Latency, Sample};

/// The workload's name.
pub const NAME: &str = "async-write";

/// The designs, the reference (`tokio-rusqlite`) first.
pub const DESIGNS: [&str; 4] = [
    "tokio-rusqlite",
    "mutex-spawn-blocking",
    "custody-spawn-blocking",
    "custody-async",
];

/// The concurrent requests measured.
pub const THREADS: [usize; 4] = [1, 16, 64, 256];

/// One run of `design`: `requests` tasks each make `k` requests, each
/// acknowledged once committed. Returns the time until the last
/// acknowledgement and the requests' latency percentiles.
///
/// # Panics
///
/// On an unknown design, an SQLite error, a failed request, or if the file
/// does not end up with one row per acknowledged request.
pub fn run(design: &str, requests: usize, k: u64) -> Sample {
    let file = DbFile::new();
    let tokio = tokio_runtime();
    let mut done = match design {
        "tokio-rusqlite" => tokio.block_on(tokio_rusqlite(&file, requests, k)),
        "mutex-spawn-blocking" => tokio.block_on(mutex_spawn_blocking(&file, requests, k)),
        "custody-spawn-blocking" => custody_spawn_blocking(&tokio, &file, requests, k),
        "custody-async" => custody_async(&tokio, &file, requests, k),
        other => panic!("{NAME}: unknown design `{other}`"),
    };
    drop(tokio);
    // Every design has closed its connection: count what the file holds.
    let conn = Connection::open(&file.path).expect("opening the database to count");
    let rows = count_rows(&conn).expect("counting");
    let acknowledged = done.latencies.len();
    assert_eq!(
        u64::try_from(rows).ok(),
        Some(acknowledged as u64),
        "{NAME}/{design}, {requests} requests: {rows} rows in the file, \
         {acknowledged} requests acknowledged"
    );
    assert_eq!(
        acknowledged as u64,
        requests as u64 * k,
        "{NAME}/{design}: requests went unacknowledged"
    );
    Sample {
        elapsed: done.elapsed,
        latency: Latency::of(&mut done.latencies),
    }
}

/// The runtime every design runs its requests on: multi-thread, 2 workers.
pub(crate) fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("compare-tokio")
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// The requests of one run: the time from the first request's start until
/// the last was acknowledged, and each acknowledged request's latency.
pub(crate) struct Done {
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

/// Spawns `tasks` tokio tasks, releases them together, and has each make
/// `k` requests in turn (`request(task, i)`, awaited). A request that fails
/// panics, and the panic is raised again here.
pub(crate) async fn drive<R, F>(tasks: usize, k: u64, request: R) -> Done
where
    R: Fn(usize, u64) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send,
{
    let gate = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (gate, request) = (Arc::clone(&gate), request.clone());
            tokio::spawn(async move {
                gate.wait().await;
                let started = Instant::now();
                let mut latencies = Vec::with_capacity(usize::try_from(k).unwrap_or(0));
                for i in 0..k {
                    let start = Instant::now();
                    request(task, i).await;
                    latencies.push(start.elapsed());
                }
                (started, latencies)
            })
        })
        .collect();
    gate.wait().await;
    let mut first = Instant::now();
    let mut latencies = Vec::with_capacity(tasks * usize::try_from(k).unwrap_or(0));
    for handle in handles {
        match handle.await {
            Ok((started, mine)) => {
                first = first.min(started);
                latencies.extend(mine);
            }
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a request task was cancelled: {error}"),
        }
    }
    Done {
        elapsed: first.elapsed(),
        latencies,
    }
}

/// WAL and `synchronous = FULL` on a plain connection, and the table: what
/// custody's `Database` sets up itself.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    assert!(mode.eq_ignore_ascii_case("wal"), "journal mode is {mode}");
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)
}

fn insert_row(conn: &Connection, task: usize, i: u64) -> rusqlite::Result<usize> {
    conn.prepare_cached(INSERT)?
        .execute((task as i64, i as i64, NOTE))
}

async fn tokio_rusqlite(file: &DbFile, tasks: usize, k: u64) -> Done {
    let conn = tokio_rusqlite::Connection::open(&file.path)
        .await
        .expect("opening the database");
    conn.call(|c| configure(c))
        .await
        .expect("configuring the database");
    let done = drive(tasks, k, {
        let conn = conn.clone();
        move |task, i| {
            let conn = conn.clone();
            async move {
                conn.call(move |c| insert_row(c, task, i))
                    .await
                    .expect("tokio-rusqlite: inserting");
            }
        }
    })
    .await;
    conn.close().await.expect("closing the database");
    done
}

async fn mutex_spawn_blocking(file: &DbFile, tasks: usize, k: u64) -> Done {
    let conn = Connection::open(&file.path).expect("opening the database");
    configure(&conn).expect("configuring the database");
    let conn = Arc::new(Mutex::new(conn));
    drive(tasks, k, move |task, i| {
        let conn = Arc::clone(&conn);
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = conn.lock().expect("poisoned");
                insert_row(&conn, task, i)
            })
            .await
            .expect("the blocking insert panicked")
            .expect("mutex-spawn-blocking: inserting");
        }
    })
    .await
}

/// Opens custody's `Database` on `file` in a runtime of its own.
fn custody_database(file: &DbFile) -> (Runtime, DatabaseHandle) {
    let rt = Runtime::new();
    let db = Database::builder(&file.path)
        .synchronous(Synchronous::Full)
        .init_sql(SCHEMA)
        .spawn(&rt, "db")
        .expect("opening the database");
    (rt, db)
}

/// Checks the database's own counters and shuts its runtime down (on this
/// thread, outside the tokio runtime).
fn custody_finish(rt: Runtime, db: &DatabaseHandle, design: &str) {
    let stats = db.stats().expect("database stats");
    assert_eq!(stats.failed_writes, 0, "{NAME}/{design}: failed writes");
    let report = rt.shutdown();
    assert!(
        report.is_complete(),
        "{NAME}/{design}: shutdown left work: {report:?}"
    );
}

fn custody_spawn_blocking(
    tokio: &tokio::runtime::Runtime,
    file: &DbFile,
    tasks: usize,
    k: u64,
) -> Done {
    let (rt, db) = custody_database(file);
    let done = tokio.block_on(drive(tasks, k, {
        let db = db.clone();
        move |task, i| {
            let db = db.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    db.execute(INSERT, sql_values![task as i64, i as i64, NOTE.to_owned()])
                })
                .await
                .expect("the blocking insert panicked")
                .expect("custody-spawn-blocking: inserting");
            }
        }
    }));
    custody_finish(rt, &db, "custody-spawn-blocking");
    done
}

fn custody_async(tokio: &tokio::runtime::Runtime, file: &DbFile, tasks: usize, k: u64) -> Done {
    let (rt, db) = custody_database(file);
    let done = tokio.block_on(drive(tasks, k, {
        let db = db.clone();
        move |task, i| {
            let db = db.clone();
            async move {
                db.execute_async(INSERT, sql_values![task as i64, i as i64, NOTE.to_owned()])
                    .await
                    .expect("custody-async: inserting");
            }
        }
    }));
    custody_finish(rt, &db, "custody-async");
    done
}
