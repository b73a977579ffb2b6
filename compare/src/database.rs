//! `database`: `writers` threads each insert `k` rows into one SQLite file in
//! the temporary directory (WAL, `synchronous = FULL`); a write counts only
//! once it is committed. Each run gets a fresh file, checked (untimed) and
//! deleted afterwards with its `-wal` and `-shm`.

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use custody::resources::rusqlite::{self, Connection};
use custody::resources::{Database, DatabaseHandle, Synchronous};
use custody::{Runtime, sql_values};

use crate::measure::{race, temp_path};

/// The workload's name.
pub const NAME: &str = "database";

/// The designs, the reference (`mutex-connection`) first.
pub const DESIGNS: [&str; 3] = ["mutex-connection", "manager-ask", "manager-pipelined"];

/// The writer counts measured.
pub const THREADS: [usize; 3] = [1, 4, 8];

pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    writer INTEGER NOT NULL,
    n INTEGER NOT NULL,
    note TEXT NOT NULL
)";

pub(crate) const INSERT: &str = "INSERT INTO events (writer, n, note) VALUES (?1, ?2, ?3)";

pub(crate) const NOTE: &str = "one row of a compare run";

/// One run of `design`: `writers` threads each insert `k` rows, each
/// acknowledged only once committed. Returns the time until the last
/// acknowledgement.
///
/// # Panics
///
/// On an unknown design, an SQLite error, or if the table does not end up
/// with `writers * k` rows.
pub fn run(design: &str, writers: usize, k: u64) -> Duration {
    let file = DbFile::new();
    let rows = writers as u64 * k;
    match design {
        "mutex-connection" => mutex_connection(&file, writers, k),
        "manager-ask" => manager(&file, writers, k, false),
        "manager-pipelined" => manager(&file, writers, k, true),
        other => panic!("database: unknown design `{other}`"),
    }
    .check(design, rows)
}

/// The elapsed time of a run and the rows found afterwards.
struct Outcome {
    elapsed: Duration,
    rows: i64,
}

impl Outcome {
    fn check(self, design: &str, rows: u64) -> Duration {
        assert_eq!(
            u64::try_from(self.rows).ok(),
            Some(rows),
            "database/{design}: wrong number of rows"
        );
        self.elapsed
    }
}

pub(crate) fn count_rows(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0))
}

/// A fresh database path; the file, its `-wal` and its `-shm` are deleted
/// when this is dropped.
pub(crate) struct DbFile {
    pub(crate) path: PathBuf,
}

impl DbFile {
    pub(crate) fn new() -> DbFile {
        DbFile {
            path: temp_path("db"),
        }
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let _ = fs::remove_file(name);
        }
    }
}

/// One connection behind a lock; every insert is its own transaction
/// (autocommit), so each pays for its own commit.
fn mutex_connection(file: &DbFile, writers: usize, k: u64) -> Outcome {
    let conn = Connection::open(&file.path).expect("opening the database");
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .expect("switching to WAL");
    assert!(mode.eq_ignore_ascii_case("wal"), "journal mode is {mode}");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("setting synchronous");
    conn.execute_batch(SCHEMA).expect("creating the table");
    let conn = Mutex::new(conn);
    let elapsed = race(
        writers,
        |w| {
            for i in 0..k {
                let conn = conn.lock().expect("poisoned");
                conn.prepare_cached(INSERT)
                    .and_then(|mut insert| insert.execute((w as i64, i as i64, NOTE)))
                    .expect("inserting");
            }
        },
        || {},
    );
    let rows = count_rows(&conn.lock().expect("poisoned")).expect("counting");
    Outcome { elapsed, rows }
}

fn insert(db: &DatabaseHandle, w: usize, i: u64) -> usize {
    db.execute(INSERT, sql_values![w as i64, i as i64, NOTE.to_owned()])
        .expect("inserting")
}

/// The `Database` manager owns the connection. `manager-ask` waits for each
/// insert's commit; `manager-pipelined` sends all but the last without
/// waiting, then waits for the last (committed after all the others).
fn manager(file: &DbFile, writers: usize, k: u64, pipelined: bool) -> Outcome {
    let rt = Runtime::new();
    let db = Database::builder(&file.path)
        .synchronous(Synchronous::Full)
        .init_sql(SCHEMA)
        .spawn(&rt, "db")
        .expect("opening the database");
    let elapsed = race(
        writers,
        |w| {
            if pipelined {
                for i in 0..k.saturating_sub(1) {
                    db.tell_execute(INSERT, sql_values![w as i64, i as i64, NOTE.to_owned()])
                        .expect("database stopped");
                }
                if k > 0 {
                    insert(&db, w, k - 1);
                }
            } else {
                for i in 0..k {
                    insert(&db, w, i);
                }
            }
        },
        || {},
    );
    let stats = db.stats().expect("database stats");
    assert_eq!(stats.failed_writes, 0, "database: failed writes");
    let rows = db
        .call(|conn| count_rows(conn))
        .expect("asking the database")
        .expect("counting");
    rt.shutdown();
    Outcome { elapsed, rows }
}
