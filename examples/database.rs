//! The seed's `FakeDatabase`, for real.
//!
//! The threading tutorial's race-condition database (`racecond.py`, then
//! `locked_db.py`) keeps one number; each thread's `update` reads it, adds
//! one, sleeps, and writes it back. Without a lock, threads overwrite each
//! other and updates are lost; `locked_db.py` fixes that by holding a
//! `threading.Lock` around the read-modify-write.
//!
//! The lesson here is the one the tutorial ends on: give the database to one
//! thread and let everyone else send it messages. The `Database` manager owns
//! a real SQLite connection; each writer thread asks it to run the same
//! read-modify-write, which cannot race because only the manager's thread ever
//! touches the connection, and there is no lock in sight. Writes that arrive
//! together share one transaction (group commit), and a writer hears `Ok` only
//! once its update is committed. So at the end, the number of acknowledged
//! updates must equal both the value and the number of rows read back from the
//! file by a fresh connection; the program exits non-zero if they differ.
//!
//! Run with `cargo run --example database [WRITERS] [UPDATES_PER_WRITER]`
//! (defaults: 8 writers, 250 updates each).

use std::process::ExitCode;
use std::thread;

use custody::Runtime;
use custody::resources::rusqlite::{self, Connection};
use custody::resources::{Database, DatabaseError};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS fake (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
    INSERT OR IGNORE INTO fake VALUES (1, 0);
    CREATE TABLE IF NOT EXISTS updates (writer INTEGER NOT NULL, seq INTEGER NOT NULL, value INTEGER NOT NULL);
";

fn arg(position: usize, default: u32) -> Result<u32, String> {
    match std::env::args().nth(position) {
        None => Ok(default),
        Some(text) => match text.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("expected a positive number, got {text:?}")),
        },
    }
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let writers = arg(1, 8)?;
    let updates = arg(2, 250)?;
    let path = std::env::temp_dir().join(format!("custody-example-{}.db", std::process::id()));
    remove_db(&path);

    let rt = Runtime::new();
    let database = Database::builder(&path)
        .init_sql(SCHEMA)
        .spawn(&rt, "database")?;
    let start: i64 =
        database.call(|c| c.query_row("SELECT value FROM fake", [], |r| r.get(0)))??;
    tracing::info!("Testing update. Starting value is {start}.");

    let threads: Vec<_> = (0..writers)
        .map(|index| {
            let database = database.clone();
            thread::spawn(move || -> Result<u64, DatabaseError> {
                tracing::info!("Thread {index}: starting update");
                let mut acknowledged = 0;
                for seq in 0..updates {
                    // FakeDatabase.update: read, add one, write back; plus a
                    // row recording the update, in the same savepoint.
                    database.write(move |c: &Connection| -> rusqlite::Result<i64> {
                        let local_copy: i64 =
                            c.query_row("SELECT value FROM fake", [], |r| r.get(0))?;
                        let local_copy = local_copy + 1;
                        c.execute("UPDATE fake SET value = ?1", [local_copy])?;
                        c.execute(
                            "INSERT INTO updates VALUES (?1, ?2, ?3)",
                            [i64::from(index), i64::from(seq), local_copy],
                        )?;
                        Ok(local_copy)
                    })?;
                    acknowledged += 1;
                }
                tracing::info!("Thread {index}: finishing update ({acknowledged} acknowledged)");
                Ok(acknowledged)
            })
        })
        .collect();

    let mut acknowledged = 0;
    for thread in threads {
        match thread.join().expect("a writer thread panicked") {
            Ok(n) => acknowledged += n,
            Err(error) => tracing::error!(%error, "a writer stopped early"),
        }
    }
    let stats = database.stats()?;
    tracing::info!(
        commits = stats.commits,
        committed_writes = stats.committed_writes,
        "all writers done; shutting down"
    );
    rt.shutdown();

    let fresh = Connection::open(&path)?;
    let value: i64 = fresh.query_row("SELECT value FROM fake", [], |r| r.get(0))?;
    let rows: i64 = fresh.query_row("SELECT count(*) FROM updates", [], |r| r.get(0))?;
    drop(fresh);
    remove_db(&path);
    tracing::info!("Testing update. Ending value is {value}.");

    println!("acknowledged updates: {acknowledged}");
    println!("rows read back:       {rows}");
    println!("value read back:      {value}");
    let expected = u64::from(writers) * u64::from(updates);
    let consistent = i64::try_from(acknowledged) == Ok(rows) && rows == value;
    if consistent && acknowledged == expected {
        println!("ok: every acknowledged update is in the file, and nothing else");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("MISMATCH: expected {expected} updates everywhere");
        Ok(ExitCode::FAILURE)
    }
}
