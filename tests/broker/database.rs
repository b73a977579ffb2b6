//! `RemoteDatabase`: a write id applied once, also across an owner's SIGKILL.

use super::*;

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
                "database::db_owner_process_for_the_kill_test",
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
