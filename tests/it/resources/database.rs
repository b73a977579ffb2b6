//! The `Database` manager, on every backend, against real SQLite files.
#![cfg(feature = "sqlite")]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{each_backend, runtime};
use crate::support::within;
use custody::resources::rusqlite::{self, Connection};
use custody::resources::{
    Database, DatabaseError, DatabaseHandle, OpenError, RefusedWrite, Synchronous,
};
use custody::{AskError, Backend, sql_values};

const SCHEMA: &str = "CREATE TABLE rows (
    id INTEGER PRIMARY KEY,
    writer INTEGER NOT NULL,
    seq INTEGER NOT NULL
)";

/// A database file in the system temp dir, removed (with its `-wal` and
/// `-shm` files) when dropped.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new(test: &str, backend: Backend) -> TempDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "custody-test-{}-{test}-{backend}-{unique}.db",
            std::process::id()
        ));
        let temp = TempDb { path };
        temp.remove();
        temp
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }

    /// Opens the rows table through a manager named "db".
    fn spawn(&self, rt: &custody::Runtime) -> DatabaseHandle {
        Database::builder(&self.path)
            .init_sql(SCHEMA)
            .spawn(rt, "db")
            .expect("opening the test database")
    }

    /// The ids in the file, read by a fresh connection.
    fn ids_on_disk(&self) -> BTreeSet<i64> {
        let conn = Connection::open(&self.path).unwrap();
        let mut statement = conn.prepare("SELECT id FROM rows").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

fn insert(id: i64) -> (&'static str, Vec<rusqlite::types::Value>) {
    (
        "INSERT INTO rows (id, writer, seq) VALUES (?1, ?2, ?3)",
        sql_values![id, -1, 0],
    )
}

fn ids(db: &DatabaseHandle) -> BTreeSet<i64> {
    db.call(|c| {
        let mut statement = c.prepare("SELECT id FROM rows")?;
        statement
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<BTreeSet<i64>>>()
    })
    .unwrap()
    .unwrap()
}

/// Holds the manager inside a `call` until the returned sender is used (or
/// dropped), so that the messages sent meanwhile form one batch.
fn block(db: &DatabaseHandle) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let db = db.clone();
    let blocker = thread::spawn(move || {
        db.call(move |_| {
            entered_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })
        .unwrap();
    });
    entered_rx
        .recv()
        .expect("the manager runs the blocking call");
    (release_tx, blocker)
}

/// Waits until `n` messages are queued behind the blocking call.
fn wait_queued(db: &DatabaseHandle, n: usize) {
    while db.handle().len() < n {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `ask` from a new thread and waits until its message is queued, so
/// that asks queue up in a known order.
fn queue_ask<T: Send + 'static>(
    db: &DatabaseHandle,
    ask: impl FnOnce(&DatabaseHandle) -> T + Send + 'static,
) -> JoinHandle<T> {
    let before = db.handle().len();
    let asker = {
        let db = db.clone();
        thread::spawn(move || ask(&db))
    };
    wait_queued(db, before + 1);
    asker
}

fn is_sqlite_error(result: &Result<usize, DatabaseError>, needle: &str) -> bool {
    matches!(result, Err(DatabaseError::Sqlite(e)) if e.to_string().contains(needle))
}

#[test]
fn acknowledged_rows_are_exactly_the_rows_on_disk() {
    each_backend(
        "acknowledged_rows_are_exactly_the_rows_on_disk",
        |backend| {
            const WRITERS: i64 = 8;
            const WRITES: i64 = 150;
            let temp = TempDb::new("acked", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let db = db.clone();
                    thread::spawn(move || {
                        let mut acked = Vec::new();
                        let mut failed = 0;
                        for seq in 0..WRITES {
                            let id = w * 1_000 + seq;
                            // Every seventh write reuses the previous id: a
                            // UNIQUE violation (unless that one failed too).
                            let id = if seq % 7 == 6 { id - 1 } else { id };
                            let result = if seq % 2 == 0 {
                                db.execute(
                                    "INSERT INTO rows (id, writer, seq) VALUES (?1, ?2, ?3)",
                                    sql_values![id, w, seq],
                                )
                                .map(|_| ())
                            } else {
                                db.write(move |c| {
                                    c.execute(
                                        "INSERT INTO rows (id, writer, seq) VALUES (?1, ?2, ?3)",
                                        [id, w, seq],
                                    )?;
                                    Ok(())
                                })
                            };
                            match result {
                                Ok(()) => acked.push(id),
                                Err(DatabaseError::Sqlite(_)) => failed += 1,
                                Err(other) => panic!("unexpected error {other}"),
                            }
                        }
                        (acked, failed)
                    })
                })
                .collect();
            let mut acked = BTreeSet::new();
            let mut failed = 0;
            for writer in writers {
                let (ids, failures) = writer.join().unwrap();
                for id in ids {
                    assert!(acked.insert(id), "id {id} acknowledged twice");
                }
                failed += failures;
            }
            assert_eq!(failed, WRITERS * (WRITES / 7), "every duplicate fails");
            let stats = db.stats().unwrap();
            assert_eq!(stats.committed_writes, acked.len() as u64);
            assert_eq!(stats.failed_writes, failed as u64);
            assert!(stats.commits >= 1);

            rt.shutdown();
            assert_eq!(temp.ids_on_disk(), acked);
        },
    );
}

#[test]
fn a_failing_statement_fails_only_its_own_caller_in_a_batch() {
    each_backend(
        "a_failing_statement_fails_only_its_own_caller_in_a_batch",
        |backend| {
            let temp = TempDb::new("failing", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let (sql, params) = insert(1);
            db.execute(sql, params).unwrap();
            let commits_before = db.stats().unwrap().commits;

            let (release, blocker) = block(&db);
            let good_a = queue_ask(&db, |db| {
                let (sql, params) = insert(10);
                db.execute(sql, params)
            });
            let duplicate = queue_ask(&db, |db| {
                let (sql, params) = insert(1);
                db.execute(sql, params)
            });
            let bad_sql = queue_ask(&db, |db| {
                db.execute("INSERT INTO nowhere VALUES (1)", vec![])
            });
            let good_b = queue_ask(&db, |db| {
                db.write(|c| c.execute("INSERT INTO rows VALUES (11, 0, 0)", []))
            });
            // A closure that writes a row and then fails: its row must go.
            let half_done = queue_ask(&db, |db| {
                db.write(|c| {
                    c.execute("INSERT INTO rows VALUES (12, 0, 0)", [])?;
                    c.execute("INSERT INTO rows VALUES (1, 0, 0)", [])
                })
            });
            let good_c = queue_ask(&db, |db| {
                let (sql, params) = insert(13);
                db.execute(sql, params)
            });
            release.send(()).unwrap();
            blocker.join().unwrap();

            assert_eq!(good_a.join().unwrap().unwrap(), 1);
            assert!(is_sqlite_error(&duplicate.join().unwrap(), "UNIQUE"));
            assert!(is_sqlite_error(&bad_sql.join().unwrap(), "no such table"));
            assert_eq!(good_b.join().unwrap().unwrap(), 1);
            assert!(is_sqlite_error(&half_done.join().unwrap(), "UNIQUE"));
            assert_eq!(good_c.join().unwrap().unwrap(), 1);

            let stats = db.stats().unwrap();
            assert_eq!(
                stats.commits - commits_before,
                1,
                "the six writes were one batch"
            );
            assert_eq!(stats.failed_writes, 3);
            assert_eq!(ids(&db), BTreeSet::from([1, 10, 11, 13]));
            rt.shutdown();
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1, 10, 11, 13]));
        },
    );
}

#[test]
fn a_panicking_write_does_not_lose_the_rest_of_its_batch() {
    each_backend(
        "a_panicking_write_does_not_lose_the_rest_of_its_batch",
        |backend| {
            let temp = TempDb::new("panic", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let commits_before = db.stats().unwrap().commits;

            let (release, blocker) = block(&db);
            let before = queue_ask(&db, |db| {
                let (sql, params) = insert(1);
                db.execute(sql, params)
            });
            let panicking = queue_ask(&db, |db| {
                db.write(|c| -> rusqlite::Result<()> {
                    c.execute("INSERT INTO rows VALUES (2, 0, 0)", [])?;
                    panic!("boom in the middle of a write");
                })
            });
            let (sql, params) = insert(3);
            db.tell_execute(sql, params).unwrap();
            wait_queued(&db, 3);
            let after = queue_ask(&db, |db| {
                db.write(|c| c.execute("INSERT INTO rows VALUES (4, 0, 0)", []))
            });
            release.send(()).unwrap();
            blocker.join().unwrap();

            assert_eq!(before.join().unwrap().unwrap(), 1);
            match panicking.join().unwrap() {
                Err(DatabaseError::Runtime(AskError::Panicked { message, .. })) => {
                    assert!(message.contains("boom"), "{message}");
                }
                other => panic!("expected the panic, got {other:?}"),
            }
            assert_eq!(after.join().unwrap().unwrap(), 1);
            db.join().unwrap();

            let stats = db.stats().unwrap();
            assert_eq!(stats.panicked_writes, 1);
            assert_eq!(
                stats.commits - commits_before,
                1,
                "the four writes were one batch"
            );
            assert_eq!(ids(&db), BTreeSet::from([1, 3, 4]));
            // The manager carries on.
            let (sql, params) = insert(5);
            db.execute(sql, params).unwrap();
            rt.shutdown();
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1, 3, 4, 5]));
        },
    );
}

#[test]
fn told_writes_are_committed_when_join_returns() {
    each_backend("told_writes_are_committed_when_join_returns", |backend| {
        const THREADS: i64 = 4;
        const WRITES: i64 = 500;
        let temp = TempDb::new("told", backend);
        let rt = runtime(backend);
        let db = temp.spawn(&rt);
        let tellers: Vec<_> = (0..THREADS)
            .map(|t| {
                let db = db.clone();
                thread::spawn(move || {
                    for seq in 0..WRITES {
                        db.tell_execute(
                            "INSERT INTO rows (id, writer, seq) VALUES (?1, ?2, ?3)",
                            sql_values![t * 1_000 + seq, t, seq],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for teller in tellers {
            teller.join().unwrap();
        }
        // One that fails, with nobody to tell: it is counted.
        db.tell_write(|c| c.execute("INSERT INTO rows VALUES (0, 0, 0)", []))
            .unwrap();
        db.join().unwrap();
        // Read by another connection while the manager still runs: what join
        // waited for is committed.
        assert_eq!(temp.ids_on_disk().len() as i64, THREADS * WRITES);
        let stats = db.stats().unwrap();
        assert_eq!(stats.committed_writes, (THREADS * WRITES) as u64);
        assert_eq!(stats.failed_told_writes, 1);
    });
}

#[test]
fn max_batch_forces_a_commit() {
    each_backend("max_batch_forces_a_commit", |backend| {
        let temp = TempDb::new("max-batch", backend);
        let rt = runtime(backend);
        let db = Database::builder(&temp.path)
            .init_sql(SCHEMA)
            .max_batch(4)
            .spawn(&rt, "db")
            .unwrap();
        let (release, blocker) = block(&db);
        for id in 0..10 {
            let (sql, params) = insert(id);
            db.tell_execute(sql, params).unwrap();
        }
        release.send(()).unwrap();
        blocker.join().unwrap();
        db.join().unwrap();
        let stats = db.stats().unwrap();
        assert_eq!(stats.commits, 3, "batches of 4, 4 and 2");
        assert_eq!(stats.committed_writes, 10);
    });
}

#[test]
fn a_call_commits_the_open_batch_first_and_runs_outside_it() {
    each_backend(
        "a_call_commits_the_open_batch_first_and_runs_outside_it",
        |backend| {
            let temp = TempDb::new("call", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let (release, blocker) = block(&db);
            for id in 0..3 {
                let (sql, params) = insert(id);
                db.tell_execute(sql, params).unwrap();
            }
            let seen = queue_ask(&db, |db| {
                db.call(|c| {
                    let count: i64 = c.query_row("SELECT count(*) FROM rows", [], |r| r.get(0))?;
                    Ok::<_, rusqlite::Error>((count, c.is_autocommit()))
                })
            });
            let (sql, params) = insert(3);
            db.tell_execute(sql, params).unwrap();
            release.send(()).unwrap();
            blocker.join().unwrap();
            assert_eq!(seen.join().unwrap().unwrap().unwrap(), (3, true));
            db.join().unwrap();
            let stats = db.stats().unwrap();
            assert_eq!(stats.commits, 2, "one before the call, one after");
            assert_eq!(ids(&db), BTreeSet::from([0, 1, 2, 3]));
        },
    );
}

#[test]
fn a_transaction_left_open_by_a_call_is_rolled_back() {
    each_backend(
        "a_transaction_left_open_by_a_call_is_rolled_back",
        |backend| {
            let temp = TempDb::new("call-open", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            db.call(|c| c.execute_batch("BEGIN; INSERT INTO rows VALUES (1, 0, 0);"))
                .unwrap()
                .unwrap();
            let (sql, params) = insert(2);
            db.execute(sql, params).unwrap();
            assert_eq!(ids(&db), BTreeSet::from([2]));
        },
    );
}

#[test]
fn transaction_control_is_refused_inside_writes() {
    each_backend("transaction_control_is_refused_inside_writes", |backend| {
        let temp = TempDb::new("control", backend);
        let rt = runtime(backend);
        let db = temp.spawn(&rt);
        for sql in [
            "COMMIT",
            "ROLLBACK",
            "BEGIN",
            "END",
            "RELEASE custody_write",
            "ROLLBACK TO custody_write",
        ] {
            let refused = db.execute(sql, vec![]);
            assert!(
                is_sqlite_error(&refused, "not authorized"),
                "{sql}: {refused:?}"
            );
        }
        let refused = db.write(|c| c.execute_batch("INSERT INTO rows VALUES (1, 0, 0); COMMIT"));
        assert!(
            matches!(refused, Err(DatabaseError::Sqlite(_))),
            "{refused:?}"
        );
        // A write's own savepoints are fine.
        db.write(|c| {
            c.execute_batch(
                "SAVEPOINT mine; INSERT INTO rows VALUES (2, 0, 0); ROLLBACK TO mine;
                 INSERT INTO rows VALUES (3, 0, 0); RELEASE mine;",
            )
        })
        .unwrap();
        assert_eq!(ids(&db), BTreeSet::from([3]));
        assert_eq!(db.stats().unwrap().failed_writes, 7);
    });
}

#[test]
fn wal_and_synchronous_are_actually_set() {
    each_backend("wal_and_synchronous_are_actually_set", |backend| {
        let pragmas = |db: &DatabaseHandle| {
            db.call(|c| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok::<_, rusqlite::Error>((mode, sync))
            })
            .unwrap()
            .unwrap()
        };
        let temp = TempDb::new("pragmas", backend);
        let rt = runtime(backend);
        let db = temp.spawn(&rt);
        assert_eq!(pragmas(&db), ("wal".to_owned(), Synchronous::Full.level()));
        assert_eq!(Synchronous::Full.level(), 2);
        rt.shutdown();
        // WAL mode is stored in the file.
        let mode: String = Connection::open(&temp.path)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");

        for level in [Synchronous::Normal, Synchronous::Off] {
            let rt = runtime(backend);
            let db = Database::builder(&temp.path)
                .synchronous(level)
                .spawn(&rt, "db")
                .unwrap();
            assert_eq!(pragmas(&db), ("wal".to_owned(), level.level()));
        }
    });
}

#[test]
fn a_stopped_database_refuses_requests() {
    each_backend("a_stopped_database_refuses_requests", |backend| {
        let temp = TempDb::new("stopped", backend);
        let rt = runtime(backend);
        let db = temp.spawn(&rt);
        let (sql, params) = insert(1);
        db.tell_execute(sql, params).unwrap();
        rt.shutdown();
        assert_eq!(temp.ids_on_disk(), BTreeSet::from([1]));
        let (sql, params) = insert(2);
        let refused = db.tell_execute(sql, params.clone()).unwrap_err();
        assert!(matches!(&refused, RefusedWrite::Stopped { manager, .. } if manager == "db"));
        assert_eq!(refused.into_inner(), (sql.to_owned(), params));
        assert!(matches!(
            db.execute("SELECT 1", vec![]),
            Err(DatabaseError::Runtime(AskError::Stopped { .. }))
        ));
        assert!(matches!(
            db.call(|_| ()),
            Err(DatabaseError::Runtime(AskError::Stopped { .. }))
        ));
    });
}

#[test]
fn bad_init_sql_and_paths_fail_at_open() {
    each_backend("bad_init_sql_and_paths_fail_at_open", |backend| {
        let temp = TempDb::new("init", backend);
        let broken = Database::builder(&temp.path)
            .init_sql("CREATE TABLE (")
            .open();
        assert!(matches!(broken, Err(OpenError::Sqlite(_))));
        let open = Database::builder(&temp.path)
            .init_sql("BEGIN; CREATE TABLE t (x);")
            .open();
        assert!(matches!(open, Err(OpenError::InitLeftTransaction)));
        let missing_dir = temp.path.join("no-such-dir").join("x.db");
        assert!(matches!(
            Database::open(missing_dir),
            Err(OpenError::Sqlite(_))
        ));
        let rt = runtime(backend);
        assert!(matches!(
            Database::in_memory().spawn(&rt, ""),
            Err(OpenError::Spawn(_))
        ));
    });
}

#[test]
fn handles_and_errors_have_the_auto_traits() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<DatabaseHandle>();
    send::<Database>();
    send::<custody::resources::DatabaseMsg>();
    error::<DatabaseError>();
    error::<RefusedWrite<(String, Vec<rusqlite::types::Value>)>>();
}

/// With a runtime batch limit of one message the manager loop never calls
/// `idle`: writes must still be committed and answered when the mailbox is
/// empty, including after a panicking write.
#[test]
fn writes_commit_by_join_with_a_runtime_batch_limit_of_one() {
    each_backend(
        "writes_commit_by_join_with_a_runtime_batch_limit_of_one",
        |backend| {
            let temp = TempDb::new("no-idle", backend);
            let rt = runtime(backend);
            let handle = rt
                .manager("db")
                .max_batch(1)
                .spawn(
                    Database::builder(&temp.path)
                        .init_sql(SCHEMA)
                        .open()
                        .unwrap(),
                )
                .unwrap();
            let db = DatabaseHandle::from(handle);

            let (release, blocker) = block(&db);
            let held = queue_ask(&db, |db| {
                let (sql, params) = insert(1);
                db.execute(sql, params)
            });
            // The last message of the batch panics; the write before it must
            // still be committed and answered.
            let panicking = queue_ask(&db, |db| {
                db.write(|c| -> rusqlite::Result<()> {
                    c.execute("INSERT INTO rows VALUES (2, 0, 0)", [])?;
                    panic!("boom at the end of a batch");
                })
            });
            release.send(()).unwrap();
            blocker.join().unwrap();
            assert_eq!(held.join().unwrap().unwrap(), 1);
            assert!(matches!(
                panicking.join().unwrap(),
                Err(DatabaseError::Runtime(AskError::Panicked { .. }))
            ));

            for id in 10..20 {
                let (sql, params) = insert(id);
                db.tell_execute(sql, params).unwrap();
            }
            db.join().unwrap();
            let expected: BTreeSet<i64> = [1].into_iter().chain(10..20).collect();
            assert_eq!(temp.ids_on_disk(), expected);
        },
    );
}

backend_tests!(
    a_refused_tell_execute_gives_back_its_sql_and_params,
    a_refused_tell_write_gives_back_its_closure_unrun,
    a_stopping_database_gives_back_told_writes_it_did_not_accept,
    a_refused_told_write_converts_to_database_error_stopped,
);

/// Spawns another manager on `temp`'s file, under another name (the stopped
/// "db" may not have exited yet).
fn respawn(temp: &TempDb, rt: &custody::Runtime) -> DatabaseHandle {
    Database::builder(&temp.path)
        .spawn(rt, "db-again")
        .expect("reopening the test database")
}

fn a_refused_tell_execute_gives_back_its_sql_and_params(backend: Backend) {
    within(
        "a_refused_tell_execute_gives_back_its_sql_and_params",
        move || {
            let temp = TempDb::new("refused-execute", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let (sql, params) = insert(1);
            db.tell_execute(sql, params).unwrap();
            db.stop();
            db.join().unwrap();

            let sql = "INSERT INTO rows (id, writer, seq) VALUES (?1, ?2, ?3)";
            let params = sql_values![2, "refused".to_owned(), 2.5];
            let refused = db.tell_execute(sql, params.clone()).unwrap_err();
            assert_eq!(refused.manager(), "db");
            assert_eq!(
                refused.to_string(),
                "database manager `db` is stopped: the told write was refused"
            );
            assert_eq!(format!("{refused:?}"), r#"Stopped { manager: "db", .. }"#);
            assert_eq!(refused.write(), &(sql.to_owned(), params.clone()));
            let (back_sql, back_params) = refused.into_inner();
            assert_eq!(back_sql, sql);
            assert_eq!(back_params, params);
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1]));

            // What came back is the whole write: sent again, it is committed.
            let again = respawn(&temp, &rt);
            again.tell_execute(back_sql, back_params).unwrap();
            again.join().unwrap();
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1, 2]));
            let writer: String = again
                .call(|c| c.query_row("SELECT writer FROM rows WHERE id = 2", [], |r| r.get(0)))
                .unwrap()
                .unwrap();
            assert_eq!(writer, "refused");
        },
    );
}

fn a_refused_tell_write_gives_back_its_closure_unrun(backend: Backend) {
    within(
        "a_refused_tell_write_gives_back_its_closure_unrun",
        move || {
            let temp = TempDb::new("refused-write", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            db.tell_write(|c| c.execute("INSERT INTO rows VALUES (1, -1, 0)", []))
                .unwrap();
            db.stop();
            db.join().unwrap();

            let runs = Arc::new(AtomicUsize::new(0));
            let write = {
                let runs = Arc::clone(&runs);
                move |c: &Connection| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    c.execute("INSERT INTO rows VALUES (7, -1, 0)", [])?;
                    Ok(7_i64)
                }
            };
            let refused = db.tell_write(write).unwrap_err();
            // The closure is not `Debug`; the error is.
            assert_eq!(format!("{refused:?}"), r#"Stopped { manager: "db", .. }"#);
            assert_eq!(refused.manager(), "db");
            let write = refused.into_inner();
            assert_eq!(
                runs.load(Ordering::SeqCst),
                0,
                "a refused closure is not run"
            );
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1]));

            // Calling what came back does what the closure was told to do.
            let conn = Connection::open(&temp.path).unwrap();
            assert_eq!(write(&conn).unwrap(), 7);
            assert_eq!(runs.load(Ordering::SeqCst), 1);
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1, 7]));
        },
    );
}

fn a_stopping_database_gives_back_told_writes_it_did_not_accept(backend: Backend) {
    within(
        "a_stopping_database_gives_back_told_writes_it_did_not_accept",
        move || {
            let temp = TempDb::new("refused-stopping", backend);
            let rt = runtime(backend);
            let db = temp.spawn(&rt);
            let (release, blocker) = block(&db);
            let (sql, params) = insert(1);
            db.tell_execute(sql, params).unwrap();
            db.stop();

            // Stopping, not yet stopped: the write queued before is still
            // to be handled, those told now come back.
            let (sql, params) = insert(2);
            let refused = db.tell_execute(sql, params.clone()).unwrap_err();
            assert_eq!(refused.into_inner(), (sql.to_owned(), params));
            let refused = db
                .tell_write(|c| c.execute("INSERT INTO rows VALUES (3, -1, 0)", []))
                .unwrap_err();
            let write = refused.into_inner();

            release.send(()).unwrap();
            blocker.join().unwrap();
            db.join().unwrap();
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1]));
            let conn = Connection::open(&temp.path).unwrap();
            assert_eq!(write(&conn).unwrap(), 1);
            assert_eq!(temp.ids_on_disk(), BTreeSet::from([1, 3]));
        },
    );
}

fn a_refused_told_write_converts_to_database_error_stopped(backend: Backend) {
    within(
        "a_refused_told_write_converts_to_database_error_stopped",
        move || {
            let rt = runtime(backend);
            let db = Database::in_memory().spawn(&rt, "memory").unwrap();
            db.stop();
            db.join().unwrap();
            let queue = |db: &DatabaseHandle| -> Result<(), DatabaseError> {
                db.tell_execute("SELECT 1", vec![])?;
                Ok(())
            };
            let error = queue(&db).unwrap_err();
            assert!(matches!(&error, DatabaseError::Stopped { manager } if manager == "memory"));
            assert_eq!(error.to_string(), "manager `memory` is stopped");
        },
    );
}
