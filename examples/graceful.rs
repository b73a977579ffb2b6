//! Ctrl-C or SIGTERM without losing a row.
//!
//! Seed: the tutorial's rule that you never kill a thread from outside
//! ("you never know if that thread is holding a lock"), and the producer /
//! consumer programs that must drain the queue before they exit.
//!
//! Writer threads ingest rows through the `Database` manager until the
//! program is interrupted. The first Ctrl-C (SIGINT) or SIGTERM starts a
//! graceful shutdown: new writes are refused, every write already accepted is
//! committed and acknowledged, the manager's `stopped` hook runs, and the
//! threads are joined. (A second signal stops at once and prints what was
//! left.) Started with `&` from a script, where SIGINT is ignored, it leaves
//! SIGINT ignored and stops on SIGTERM. At the
//! end the program prints `acknowledged=<n>` (rows whose write was
//! acknowledged) and `database=<path>`, then checks the file: every
//! acknowledged row must be in it, and nothing else.
//!
//! Run: `cargo run --example graceful` and press Ctrl-C (or `kill` it), or
//! `cargo run --example graceful -- --interrupt-after 2` to have it send
//! itself the signal after two seconds (what CI does): SIGINT, or SIGTERM
//! when SIGINT is ignored. With `--db PATH` the
//! database is written there and kept; otherwise it goes to the temp dir and is
//! removed after the check.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::Runtime;
use custody::resources::rusqlite::Connection;
use custody::resources::{Database, DatabaseError};
use custody::sql_values;

const WRITERS: u64 = 4;
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rows (writer INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (writer, seq))";

/// Where to write, whether to keep the file, and when to interrupt oneself.
struct Args {
    interrupt_after: Option<f64>,
    path: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut interrupt_after = None;
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--interrupt-after" => {
                let secs = args
                    .next()
                    .ok_or("--interrupt-after needs a number of seconds")?;
                interrupt_after = Some(
                    secs.parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .ok_or(format!(
                            "--interrupt-after: not a number of seconds: {secs:?}"
                        ))?,
                );
            }
            "--db" => path = Some(PathBuf::from(args.next().ok_or("--db needs a path")?)),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (try --interrupt-after SECS, --db PATH)"
                ));
            }
        }
    }
    let keep = path.is_some();
    let path = path.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("custody-graceful-{}.db", std::process::id()))
    });
    Ok(Args {
        interrupt_after,
        path,
        keep,
    })
}

fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_target(false).init();
    let Args {
        interrupt_after,
        path,
        keep,
    } = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("graceful: {message}");
            return ExitCode::from(2);
        }
    };
    remove_db(&path);

    let rt = Runtime::new();
    let database = match Database::builder(&path)
        .init_sql(SCHEMA)
        .spawn(&rt, "database")
    {
        Ok(db) => db,
        Err(e) => {
            eprintln!("graceful: opening {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let handled = match rt.shutdown_on_signals() {
        Ok(handled) => handled,
        Err(e) => {
            eprintln!("graceful: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "ingesting into {}; stopping gracefully on {handled}",
        path.display()
    );

    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let database = database.clone();
            let acknowledged = Arc::clone(&acknowledged);
            thread::spawn(move || {
                for seq in 0u64.. {
                    let insert = database.execute(
                        "INSERT INTO rows (writer, seq) VALUES (?1, ?2)",
                        sql_values![writer as i64, seq as i64],
                    );
                    match insert {
                        Ok(_) => {
                            acknowledged.fetch_add(1, Ordering::SeqCst);
                        }
                        // Refused: the runtime is shutting down.
                        Err(DatabaseError::Stopped { .. } | DatabaseError::Runtime(_)) => return,
                        Err(e) => {
                            tracing::error!("writer {writer}: {e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let acknowledged = Arc::clone(&acknowledged);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(250));
                eprintln!("ingested {} rows", acknowledged.load(Ordering::SeqCst));
            }
        })
    };
    if let Some(secs) = interrupt_after {
        // SIGINT as a Ctrl-C would, unless it is ignored (started with `&`).
        let signal = if handled.interrupt { "INT" } else { "TERM" };
        thread::spawn(move || {
            thread::sleep(Duration::from_secs_f64(secs));
            tracing::info!("sending myself SIG{signal}");
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &std::process::id().to_string()])
                .status();
        });
    }

    let report = rt.wait();
    for writer in writers {
        let _ = writer.join();
    }
    done.store(true, Ordering::SeqCst);
    let _ = progress.join();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    tracing::info!("shut down; unhandled: {}", report.total_unhandled());
    println!("acknowledged={acknowledged}");
    println!("database={}", path.display());

    let rows: u64 = match Connection::open(&path)
        .and_then(|c| c.query_row("SELECT count(*) FROM rows", [], |r| r.get::<_, i64>(0)))
    {
        Ok(n) => n as u64,
        Err(e) => {
            eprintln!("graceful: reading back {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("rows={rows}");
    if !keep {
        remove_db(&path);
    }
    if rows == acknowledged && report.total_unhandled() == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "check failed: {acknowledged} acknowledged, {rows} rows in the file, {} unhandled",
            report.total_unhandled()
        );
        ExitCode::FAILURE
    }
}
