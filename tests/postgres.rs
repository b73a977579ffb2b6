//! `PgState` against a real PostgreSQL server: group commit, exactly-once
//! effects, fencing of superseded owners, a SIGKILLed owner process, and an
//! unreachable server.
//!
//! The server is `CUSTODY_PG_URL` (a URL without a database name; default
//! `postgres://postgres@127.0.0.1:5432`). Each test creates a database of
//! its own and drops it at the end, even on failure; a test fails (never
//! skips) when the server cannot be reached.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use custody::resources::postgres::client::error::SqlState;
use custody::resources::postgres::{
    Applied, PgOpenError, PgState, PgStateError, PgStateHandle, PgStateStats,
};
use custody::{AskError, Backend, Runtime};

/// The TCP proxy of the broker tests, here between a manager and
/// PostgreSQL: it cuts every connection through it on demand.
#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;

#[path = "common/pg.rs"]
mod pg;
use pg::{TestDb, server};

/// For `proxy`: `url`'s server address, and `url` through the proxy on
/// `port`.
fn through_proxy(url: &str, port: u16) -> (String, String) {
    let authority_start = url
        .find('@')
        .map_or_else(|| url.find("://").unwrap() + 3, |at| at + 1);
    let authority_end = url[authority_start..]
        .find(['/', '?'])
        .map_or(url.len(), |end| authority_start + end);
    let upstream = url[authority_start..authority_end].to_owned();
    let proxied = format!(
        "{}127.0.0.1:{port}{}",
        &url[..authority_start],
        &url[authority_end..]
    );
    (upstream, proxied)
}

/// For `proxy`: the server (unused here, each test names its database).
#[allow(dead_code)]
fn url() -> String {
    server()
}

/// Runs `f` on a thread of its own and fails the test if it takes longer
/// than `limit` (a hang becomes a failure).
fn within_limit<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the scenario did not finish within {limit:?}"),
    }
}

/// Runs `f` within 60 s.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within_limit(Duration::from_secs(60), f)
}

/// Runs the scenario once per mailbox backend, each within 60 s.
fn per_backend(scenario: impl Fn(Backend) + Send + Sync + Clone + 'static) {
    for backend in Backend::ALL {
        let scenario = scenario.clone();
        within(move || scenario(backend));
    }
}

/// The server, without a database name.
/// A `PgState` on `db`, on a mailbox of `backend`.
fn spawn(rt: &Runtime, db: &TestDb, name: &str, backend: Backend) -> PgStateHandle {
    let state = PgState::builder(db.url()).owner(name).open().unwrap();
    PgStateHandle::from(rt.manager(name).backend(backend).spawn(state).unwrap())
}

/// The table the tests write: each row stamped with the owner's epoch, and
/// a sequence number drawn when it was inserted.
const ROWS: &str = "CREATE TABLE rows (
    seq   bigserial PRIMARY KEY,
    id    text NOT NULL,
    epoch bigint,
    n     bigint NOT NULL DEFAULT 0
)";

fn create_rows(state: &PgStateHandle) {
    state.execute(ROWS).unwrap();
}

/// Inserts the row `id` stamped with the write's epoch.
fn insert_row(
    c: &mut custody::resources::postgres::PgConn<'_>,
    id: &str,
) -> Result<u64, PgStateError> {
    let epoch = c.epoch();
    c.execute(
        "INSERT INTO rows (id, epoch) VALUES ($1, $2)",
        &[&id, &epoch],
    )
}

/// Blocks the manager inside a call until the returned sender is used (or
/// dropped); returns once the manager is inside it.
fn hold(state: &PgStateHandle) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (inside_tx, inside_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let held = state.clone();
    let holder = thread::spawn(move || {
        held.call(move |_| {
            inside_tx.send(()).unwrap();
            let _ = go_rx.recv();
        })
        .unwrap();
    });
    inside_rx.recv().unwrap();
    (go_tx, holder)
}

/// Waits until `n` messages are queued behind the held call.
fn wait_queued(state: &PgStateHandle, n: usize) {
    while state.handle().len() < n {
        thread::yield_now();
    }
}

#[test]
fn writes_are_answered_after_commit_and_visible_to_another_connection() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        create_rows(&state);
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let state = state.clone();
                let mut client = db.client();
                thread::spawn(move || {
                    for i in 0..20 {
                        let id = format!("w{w}-{i}");
                        let key = id.clone();
                        state.write(move |c| insert_row(c, &key)).unwrap();
                        // Answered Ok: committed, so another connection sees it.
                        let seen: i64 = client
                            .query_one("SELECT count(*) FROM rows WHERE id = $1", &[&id])
                            .unwrap()
                            .get(0);
                        assert_eq!(seen, 1, "{id} was answered Ok but is not visible");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(db.count("SELECT count(*) FROM rows"), 320);
        let stats = state.stats().unwrap();
        assert_eq!(stats.committed_writes, 321); // and the CREATE TABLE
        assert!(stats.commits <= stats.committed_writes);
        assert_eq!(stats.failed_writes, 0);
    });
}

#[test]
fn a_failing_write_rolls_back_only_itself() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        create_rows(&state);
        state
            .execute("CREATE UNIQUE INDEX rows_id ON rows (id)")
            .unwrap();
        state.write(|c| insert_row(c, "taken")).unwrap();

        // One batch: a failing write first (it runs without a savepoint),
        // then good and failing ones (each in its savepoint).
        let (go, holder) = hold(&state);
        let mut asks = Vec::new();
        for (i, id) in [
            "first-fails",
            "a",
            "mid-fails",
            "b",
            "swallowed",
            "c",
            "commit",
        ]
        .into_iter()
        .enumerate()
        {
            let sender = state.clone();
            asks.push(thread::spawn(move || {
                sender.write(move |c| {
                    insert_row(c, id)?;
                    match id {
                        // Its own row first, then a duplicate key.
                        "first-fails" | "mid-fails" => insert_row(c, "taken"),
                        // A statement fails, the write says Ok regardless.
                        "swallowed" => {
                            let _ = insert_row(c, "taken");
                            Ok(1)
                        }
                        "commit" => c.execute("COMMIT", &[]),
                        _ => Ok(1),
                    }
                })
            }));
            wait_queued(&state, i + 1);
        }
        go.send(()).unwrap();
        holder.join().unwrap();
        let results: Vec<_> = asks.into_iter().map(|a| a.join().unwrap()).collect();
        assert!(
            matches!(&results[0], Err(PgStateError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION)),
            "{:?}",
            results[0]
        );
        assert_eq!(results[1].as_ref().unwrap(), &1);
        assert!(
            matches!(&results[2], Err(PgStateError::Postgres(_))),
            "{:?}",
            results[2]
        );
        assert_eq!(results[3].as_ref().unwrap(), &1);
        assert!(
            matches!(&results[4], Err(PgStateError::IgnoredError)),
            "{:?}",
            results[4]
        );
        assert_eq!(results[5].as_ref().unwrap(), &1);
        assert!(
            matches!(&results[6], Err(PgStateError::TransactionControl { statement }) if statement == "COMMIT"),
            "{:?}",
            results[6]
        );
        let ids: BTreeSet<String> = db
            .client()
            .query("SELECT id FROM rows", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: BTreeSet<String> = ["taken", "a", "b", "c"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(ids, expected);
        let stats = state.stats().unwrap();
        assert_eq!(stats.failed_writes, 4);
        assert_eq!(stats.failed_commits, 0);
    });
}

#[test]
fn a_refused_commit_fails_every_write_of_its_batch() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        // Checked only at COMMIT: every write succeeds, the batch cannot commit.
        state
            .execute("CREATE TABLE once (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
            .unwrap();
        let (go, holder) = hold(&state);
        let asks: Vec<_> = (0..3)
            .map(|i| {
                let sender = state.clone();
                let ask = thread::spawn(move || {
                    sender.write(|c| c.execute("INSERT INTO once VALUES (1)", &[]))
                });
                wait_queued(&state, i + 1);
                ask
            })
            .collect();
        go.send(()).unwrap();
        holder.join().unwrap();
        for ask in asks {
            let result = ask.join().unwrap();
            assert!(
                matches!(&result, Err(PgStateError::Commit(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION)),
                "{result:?}"
            );
        }
        assert_eq!(db.count("SELECT count(*) FROM once"), 0);
        let stats = state.stats().unwrap();
        assert_eq!((stats.failed_commits, stats.failed_writes), (1, 3));
        // The next batch commits.
        assert_eq!(
            state
                .write(|c| c.execute("INSERT INTO once VALUES (1)", &[]))
                .unwrap(),
            1
        );
    });
}

#[test]
fn a_panicking_write_fails_only_itself() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        create_rows(&state);
        let (go, holder) = hold(&state);
        let mut asks = Vec::new();
        for (i, id) in ["panics-first", "a", "panics-mid", "b"]
            .into_iter()
            .enumerate()
        {
            let sender = state.clone();
            asks.push(thread::spawn(move || {
                sender.write(move |c| {
                    insert_row(c, id)?;
                    if id.starts_with("panics") {
                        panic!("boom in {id}");
                    }
                    Ok(())
                })
            }));
            wait_queued(&state, i + 1);
        }
        go.send(()).unwrap();
        holder.join().unwrap();
        let results: Vec<_> = asks.into_iter().map(|a| a.join().unwrap()).collect();
        for (i, result) in results.iter().enumerate() {
            if i % 2 == 0 {
                assert!(
                    matches!(result, Err(PgStateError::Runtime(AskError::Panicked { message, .. })) if message.contains("boom")),
                    "{result:?}"
                );
            } else {
                assert!(result.is_ok(), "{result:?}");
            }
        }
        let ids: BTreeSet<String> = db
            .client()
            .query("SELECT id FROM rows", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, ["a", "b"].into_iter().map(String::from).collect());
        let stats = state.stats().unwrap();
        assert_eq!(stats.panicked_writes, 2);
        // The manager carries on.
        state.write(|c| insert_row(c, "after")).unwrap();
        assert_eq!(db.count("SELECT count(*) FROM rows WHERE id = 'after'"), 1);
    });
}

#[test]
fn duplicate_message_ids_are_applied_once_under_concurrent_senders() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        create_rows(&state);
        assert_eq!(state.claim("p").unwrap(), 1);
        const SENDERS: usize = 8;
        const IDS: usize = 100;
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let state = state.clone();
                thread::spawn(move || {
                    let (mut done, mut duplicate) = (0, 0);
                    for i in 0..IDS {
                        // Each sender its own order over the same ids.
                        let id = format!("m{}", (i * 7 + s * 13) % IDS);
                        let key = id.clone();
                        let told = s % 2 == 1 && i % 3 == 0;
                        if told {
                            state
                                .tell_apply("p", id, move |c| insert_row(c, &key))
                                .unwrap();
                            continue;
                        }
                        match state.apply("p", id, move |c| insert_row(c, &key)).unwrap() {
                            Applied::Done(1) => done += 1,
                            Applied::Duplicate => duplicate += 1,
                            other => panic!("{other:?}"),
                        }
                    }
                    (done, duplicate)
                })
            })
            .collect();
        let mut done = 0;
        for sender in senders {
            done += sender.join().unwrap().0;
        }
        state.join().unwrap();
        let per_id: BTreeMap<String, i64> = db
            .client()
            .query("SELECT id, count(*) FROM rows GROUP BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(per_id.len(), IDS);
        assert!(per_id.values().all(|&n| n == 1), "{per_id:?}");
        assert_eq!(db.count("SELECT count(*) FROM custody_applied"), IDS as i64);
        assert!(done <= IDS);
        let stats = state.stats().unwrap();
        assert_eq!(stats.duplicates, (SENDERS * IDS - IDS) as u64);
        assert_eq!(stats.failed_writes, 0);
    });
}

#[test]
fn message_ids_are_recorded_exactly_as_given() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", Backend::Crossbeam);
        create_rows(&state);
        state.claim("it's \\ p").unwrap();
        let ids = [
            "plain",
            "it's",
            r"back\slash",
            r"\'); DROP TABLE rows; --",
            "naïve ✓",
            "",
        ];
        // One batch, so that all but the first go out with their savepoint.
        for round in 0..2 {
            let (go, holder) = hold(&state);
            let asks: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let sender = state.clone();
                    let id = id.to_string();
                    let ask = thread::spawn(move || {
                        let key = id.clone();
                        sender.apply("it's \\ p", id, move |c| insert_row(c, &key))
                    });
                    wait_queued(&state, i + 1);
                    ask
                })
                .collect();
            go.send(()).unwrap();
            holder.join().unwrap();
            for ask in asks {
                let applied = ask.join().unwrap().unwrap();
                assert_eq!(applied.is_duplicate(), round == 1);
            }
        }
        let recorded: BTreeSet<(String, String)> = db
            .client()
            .query("SELECT partition, message_id FROM custody_applied", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: BTreeSet<(String, String)> = ids
            .iter()
            .map(|id| ("it's \\ p".to_owned(), id.to_string()))
            .collect();
        assert_eq!(recorded, expected);
        assert_eq!(db.count("SELECT count(*) FROM rows"), ids.len() as i64);
        // A NUL cannot be stored: that write fails alone.
        let error = state
            .apply("it's \\ p", "nul\0", |c| insert_row(c, "nul"))
            .unwrap_err();
        assert!(matches!(error, PgStateError::Postgres(_)), "{error:?}");
    });
}

#[test]
fn pruned_message_ids_are_applied_again_and_newer_ones_are_kept() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", Backend::Flume);
        create_rows(&state);
        state.claim("p").unwrap();
        for id in ["a", "b"] {
            state.apply("p", id, move |c| insert_row(c, id)).unwrap();
        }
        assert_eq!(state.prune_applied(Duration::from_secs(3600)).unwrap(), 0);
        assert!(
            state
                .apply("p", "a", |c| insert_row(c, "a"))
                .unwrap()
                .is_duplicate()
        );
        assert_eq!(state.prune_applied(Duration::ZERO).unwrap(), 2);
        assert_eq!(db.count("SELECT count(*) FROM custody_applied"), 0);
        assert_eq!(
            state.apply("p", "a", |c| insert_row(c, "a")).unwrap(),
            Applied::Done(1)
        );
        assert_eq!(db.count("SELECT count(*) FROM rows WHERE id = 'a'"), 2);
    });
}

#[test]
fn a_zombie_owner_is_fenced_and_commits_nothing_after_the_new_owner() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let old = spawn(&rt, &db, "old", Backend::Crossbeam);
        let new = spawn(&rt, &db, "new", Backend::Flume);
        create_rows(&old);
        assert_eq!(old.claim("p").unwrap(), 1);
        assert_eq!(old.claim("q").unwrap(), 1);
        for i in 0..5 {
            let id = format!("old-{i}");
            let key = id.clone();
            assert!(
                !old.apply("p", id, move |c| insert_row(c, &key))
                    .unwrap()
                    .is_duplicate()
            );
        }
        // The new owner takes p over.
        assert_eq!(new.claim("p").unwrap(), 2);
        new.apply("p", "new-0", |c| insert_row(c, "new-0")).unwrap();

        // The zombie's next batch: its writes to p are refused, without
        // running; its write to q (still its own) commits.
        let (go, holder) = hold(&old);
        let mut asks = Vec::new();
        for (i, (partition, id)) in [("p", "zombie-0"), ("q", "q-0"), ("p", "zombie-1")]
            .into_iter()
            .enumerate()
        {
            let sender = old.clone();
            asks.push(thread::spawn(move || {
                sender.apply(partition, id, move |c| insert_row(c, id))
            }));
            wait_queued(&old, i + 1);
        }
        go.send(()).unwrap();
        holder.join().unwrap();
        let results: Vec<_> = asks.into_iter().map(|a| a.join().unwrap()).collect();
        for i in [0, 2] {
            assert!(
                matches!(&results[i], Err(PgStateError::Fenced { partition, held: 1, current: Some(2) }) if partition == "p"),
                "{:?}",
                results[i]
            );
        }
        assert_eq!(results[1].as_ref().unwrap(), &Applied::Done(1));
        // Stepped down for p until it claims again.
        assert!(matches!(
            old.apply("p", "zombie-2", |c| insert_row(c, "zombie-2")),
            Err(PgStateError::Fenced { .. })
        ));
        assert_eq!(old.claims().unwrap(), BTreeMap::from([("q".to_owned(), 1)]));
        assert_eq!(
            db.count("SELECT count(*) FROM rows WHERE id LIKE 'zombie%'"),
            0
        );
        assert_eq!(
            db.count("SELECT count(*) FROM custody_applied WHERE message_id LIKE 'zombie%'"),
            0
        );
        let stats: PgStateStats = old.stats().unwrap();
        assert_eq!(stats.fenced_writes, 3);
        new.apply("p", "new-1", |c| insert_row(c, "new-1")).unwrap();

        // From the tables: every row of epoch 1 in p was written before
        // every row of epoch 2, and the epochs agree with custody_applied.
        let last_old = db.count("SELECT max(seq) FROM rows WHERE epoch = 1 AND id LIKE 'old%'");
        let first_new = db.count("SELECT min(seq) FROM rows WHERE epoch = 2");
        assert!(last_old < first_new);
        assert_eq!(
            db.count(
                "SELECT count(*) FROM rows r JOIN custody_applied a \
                 ON a.message_id = r.id AND a.epoch = r.epoch"
            ),
            8 // old-0..4, new-0, new-1, q-0
        );
        assert_eq!(
            db.count("SELECT epoch FROM custody_epochs WHERE partition = 'p'"),
            2
        );
    });
}

#[test]
fn a_claim_racing_in_flight_batches_never_lets_an_old_owner_commit_after_a_new_one() {
    within_limit(Duration::from_secs(120), || {
        let db = TestDb::new();
        let rt = Runtime::new();
        let owners = [
            spawn(&rt, &db, "a", Backend::Crossbeam),
            spawn(&rt, &db, "b", Backend::Flume),
        ];
        create_rows(&owners[0]);
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicU64::new(0));
        // Writers keep every owner busy with fenced writes, whoever holds p.
        let writers: Vec<_> = owners
            .iter()
            .flat_map(|owner| std::iter::repeat_n(owner.clone(), 3))
            .map(|owner| {
                let (stop, next_id) = (stop.clone(), next_id.clone());
                thread::spawn(move || {
                    let mut committed = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("r{}", next_id.fetch_add(1, Ordering::Relaxed));
                        let key = id.clone();
                        match owner.apply("p", id.clone(), move |c| insert_row(c, &key)) {
                            Ok(Applied::Done(_)) => committed.push(id),
                            Ok(Applied::Duplicate) => panic!("{id} was never sent before"),
                            Err(PgStateError::Fenced { .. } | PgStateError::NotClaimed { .. }) => {
                                thread::yield_now()
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    committed
                })
            })
            .collect();
        const ROUNDS: i64 = 40;
        for round in 0..ROUNDS {
            let owner = &owners[(round % 2) as usize];
            assert_eq!(owner.claim("p").unwrap(), round + 1);
            // Let the new owner commit before the next claim.
            let before = owner.stats().unwrap().committed_writes;
            while owner.stats().unwrap().committed_writes == before {
                thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut committed = BTreeSet::new();
        for writer in writers {
            committed.extend(writer.join().unwrap());
        }
        // Ordered by insertion, the epochs never go back.
        let epochs: Vec<i64> = db
            .client()
            .query("SELECT epoch FROM rows ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            epochs.windows(2).all(|w| w[0] <= w[1]),
            "a row of an older epoch after a newer one: {epochs:?}"
        );
        assert_eq!(
            epochs.iter().copied().collect::<BTreeSet<_>>().len() as i64,
            ROUNDS
        );
        // Every row is a write answered Ok, and every one answered Ok is there.
        let rows: BTreeSet<String> = db
            .client()
            .query("SELECT id FROM rows", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(rows, committed);
        let fenced: u64 = owners
            .iter()
            .map(|o| o.stats().unwrap().fenced_writes)
            .sum();
        assert!(fenced > 0);
    });
}

#[test]
fn a_claim_waits_for_the_old_owners_batch_in_flight_which_commits_before_it() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let old = spawn(&rt, &db, "old", Backend::Flume);
        let new = spawn(&rt, &db, "new", Backend::Crossbeam);
        create_rows(&old);
        old.claim("p").unwrap();
        // The old owner's batch: one write done, the next one stopped inside
        // the transaction (the partition's row share-locked since the first).
        let (inside_tx, inside_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (first, second) = {
            let (a, b) = (old.clone(), old.clone());
            let (go, holder) = hold(&old);
            let first = thread::spawn(move || a.apply("p", "old-0", |c| insert_row(c, "old-0")));
            wait_queued(&old, 1);
            let second = thread::spawn(move || {
                b.apply("p", "old-1", move |c| {
                    insert_row(c, "old-1")?;
                    inside_tx.send(()).unwrap();
                    let _ = go_rx.recv();
                    Ok(1)
                })
            });
            wait_queued(&old, 2);
            go.send(()).unwrap();
            holder.join().unwrap();
            (first, second)
        };
        inside_rx.recv().unwrap();
        // The claim waits on the row lock.
        let claimer = new.clone();
        let claim = thread::spawn(move || claimer.claim("p"));
        let mut watcher = db.client();
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(!claim.is_finished());
        // The batch goes on and commits; only then does the claim go through.
        go_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), Applied::Done(1));
        assert_eq!(second.join().unwrap().unwrap(), Applied::Done(1));
        assert_eq!(claim.join().unwrap().unwrap(), 2);
        new.apply("p", "new-0", |c| insert_row(c, "new-0")).unwrap();
        assert!(matches!(
            old.apply("p", "old-2", |c| insert_row(c, "old-2")),
            Err(PgStateError::Fenced {
                held: 1,
                current: Some(2),
                ..
            })
        ));
        let order: Vec<(String, i64)> = db
            .client()
            .query("SELECT id, epoch FROM rows ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            order,
            [
                ("old-0".to_owned(), 1),
                ("old-1".to_owned(), 1),
                ("new-0".to_owned(), 2)
            ]
        );
    });
}

#[test]
fn a_claim_waits_for_a_batch_holding_the_partition_and_gives_up_after_its_timeout() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let old = spawn(&rt, &db, "old", Backend::Crossbeam);
        assert_eq!(old.claim("p").unwrap(), 1);
        let new = PgState::builder(db.url())
            .owner("new")
            .claim_timeout(Duration::from_millis(200))
            .spawn(&rt, "new")
            .unwrap();
        // A batch frozen in flight: the partition's row share-locked, as
        // the old owner's batch holds it from its check to its end.
        let mut frozen = db.client();
        frozen
            .batch_execute(
                "BEGIN; SELECT epoch FROM custody_epochs WHERE partition = 'p' FOR SHARE",
            )
            .unwrap();
        let error = new.claim("p").unwrap_err();
        assert!(
            matches!(&error, PgStateError::Postgres(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(new.claims().unwrap().is_empty());
        assert_eq!(db.count("SELECT epoch FROM custody_epochs"), 1);
        // The batch ends; the claim goes through, and the old owner is fenced.
        frozen.batch_execute("COMMIT").unwrap();
        assert_eq!(new.claim("p").unwrap(), 2);
        assert!(matches!(
            old.apply("p", "late", |c| c.execute("SELECT 1", &[])),
            Err(PgStateError::Fenced {
                held: 1,
                current: Some(2),
                ..
            })
        ));
        assert_eq!(new.stats().unwrap().claims, 1);
    });
}

/// The environment variable that makes `pg_owner_process` run.
const OWNER_CHILD_VAR: &str = "CUSTODY_PG_TEST_OWNER_URL";

/// Not a scenario of its own: the owner process of
/// `a_sigkilled_owner_loses_no_acknowledged_write_and_applies_none_twice`.
/// Started by anything else, it returns at once.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn pg_owner_process() {
    let Ok(url) = std::env::var(OWNER_CHILD_VAR) else {
        return;
    };
    let rt = Runtime::new();
    let state = PgState::builder(url)
        .owner("child")
        .spawn(&rt, "state")
        .unwrap();
    state.claim("p").unwrap();
    println!("claimed");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (state, out) = (state.clone(), out.clone());
            thread::spawn(move || {
                for i in 0..KILL_IDS / 4 {
                    let id = format!("k{}", i * 4 + w);
                    let key = id.clone();
                    state
                        .apply("p", id.clone(), move |c| insert_row(c, &key))
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ok {id}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    // Killed by the parent long before this; never outlive a failed parent.
    thread::sleep(Duration::from_secs(60));
}

/// The ids the owner process writes.
const KILL_IDS: usize = 4000;

#[test]
fn a_sigkilled_owner_loses_no_acknowledged_write_and_applies_none_twice() {
    use std::process::{Command, Stdio};

    within_limit(Duration::from_secs(120), || {
        let db = TestDb::new();
        db.client().batch_execute(ROWS).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "pg_owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OWNER_CHILD_VAR, db.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut acknowledged = BTreeSet::new();
        let mut lines = stdout.lines().map_while(Result::ok);
        assert!(
            // libtest's "test pg_owner_process ... " comes first, on the same line.
            lines.by_ref().any(|l| l.ends_with("claimed")),
            "the owner process ended before claiming"
        );
        for line in lines.by_ref() {
            if let Some(id) = line.strip_prefix("ok ") {
                acknowledged.insert(id.to_owned());
            }
            if acknowledged.len() >= 300 {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-load
        child.wait().unwrap();
        for line in lines {
            if let Some(id) = line.strip_prefix("ok ") {
                acknowledged.insert(id.to_owned());
            }
        }
        assert!(
            acknowledged.len() < KILL_IDS,
            "the owner finished before the kill"
        );

        // Every write answered Ok is committed.
        let rows: BTreeSet<String> = db
            .client()
            .query("SELECT id FROM rows", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            acknowledged.is_subset(&rows),
            "acknowledged writes are missing"
        );

        // A new owner; the producers send every id again.
        let rt = Runtime::new();
        let state = PgState::builder(db.url())
            .owner("successor")
            .spawn(&rt, "state")
            .unwrap();
        assert_eq!(state.claim("p").unwrap(), 2);
        let mut duplicates = BTreeSet::new();
        for i in 0..KILL_IDS {
            let id = format!("k{i}");
            let key = id.clone();
            if state
                .apply("p", id.clone(), move |c| insert_row(c, &key))
                .unwrap()
                .is_duplicate()
            {
                duplicates.insert(id);
            }
        }
        // The duplicates are exactly what the killed owner committed.
        assert_eq!(duplicates, rows);
        let per_id: BTreeMap<String, i64> = db
            .client()
            .query("SELECT id, count(*) FROM rows GROUP BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(per_id.len(), KILL_IDS);
        assert!(per_id.values().all(|&n| n == 1), "an id applied twice");
    });
}

#[test]
fn a_terminated_session_fails_only_its_moment_and_the_manager_connects_again() {
    within(|| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", Backend::Crossbeam);
        create_rows(&state);
        state.claim("p").unwrap();
        let pid: i32 = state
            .call(|c| {
                c.query_one("SELECT pg_backend_pid()", &[])
                    .map(|r| r.get(0))
            })
            .unwrap()
            .unwrap();
        db.client()
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        // A write may fail while the manager learns of the loss; each
        // failure is a transient one, and a later try reconnects.
        let mut tries = 0;
        loop {
            tries += 1;
            match state.apply("p", "after", |c| insert_row(c, "after")) {
                Ok(applied) => {
                    assert_eq!(applied, Applied::Done(1));
                    break;
                }
                Err(e) => assert!(e.is_transient() && tries < 5, "{e}"),
            }
        }
        assert_eq!(state.stats().unwrap().reconnects, 1);
        assert_eq!(db.count("SELECT count(*) FROM rows WHERE epoch = 1"), 1);
    });
}

#[test]
fn connections_cut_mid_load_lose_no_acknowledged_write_and_apply_none_twice() {
    within_limit(Duration::from_secs(120), || {
        let db = TestDb::new();
        db.client().batch_execute(ROWS).unwrap();
        let proxy = proxy::Proxy::to(&db.url());
        let rt = Runtime::new();
        let state = PgState::builder(proxy.url.clone())
            .owner("cut")
            .connect_timeout(Duration::from_secs(5))
            .spawn(&rt, "state")
            .unwrap();
        state.claim("p").unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let unknown = Arc::new(AtomicU64::new(0));
        const WRITERS: usize = 4;
        const PER_WRITER: usize = 150;
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (state, answered, unknown) = (state.clone(), answered.clone(), unknown.clone());
                thread::spawn(move || {
                    for i in 0..PER_WRITER {
                        let id = format!("c{w}-{i}");
                        // A producer sends an id again until it is answered.
                        loop {
                            let key = id.clone();
                            match state.apply("p", id.clone(), move |c| insert_row(c, &key)) {
                                Ok(_) => break,
                                Err(e) if e.is_transient() => {
                                    if matches!(e, PgStateError::CommitOutcomeUnknown(_)) {
                                        unknown.fetch_add(1, Ordering::Relaxed);
                                    }
                                    thread::sleep(Duration::from_millis(5));
                                }
                                Err(e) => panic!("{id}: {e}"),
                            }
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut cuts = 0;
        for round in 1..=5u64 {
            // Cut once the writers are well into their load.
            while answered.load(Ordering::Relaxed) < round * 80 {
                thread::yield_now();
            }
            // A cut that finds the manager between two connections (it
            // reconnects when the next write comes) cuts nothing: again.
            loop {
                let cut = proxy.cut();
                proxy.restore();
                if cut > 0 {
                    cuts += cut;
                    break;
                }
                if answered.load(Ordering::Relaxed) >= (WRITERS * PER_WRITER) as u64 {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(cuts >= 5, "the manager's connection was cut {cuts} times");
        let per_id: BTreeMap<String, i64> = db
            .client()
            .query("SELECT id, count(*) FROM rows GROUP BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            per_id.len(),
            WRITERS * PER_WRITER,
            "an answered write is missing"
        );
        assert!(per_id.values().all(|&n| n == 1), "an id applied twice");
        let stats = state.stats().unwrap();
        assert!(stats.reconnects >= 5, "{stats:?}");
        eprintln!(
            "{cuts} cuts, {} reconnects, {} commits with an unknown outcome",
            stats.reconnects,
            unknown.load(Ordering::Relaxed)
        );
    });
}

#[test]
fn an_unreachable_server_at_open_is_a_typed_error() {
    within(|| {
        // Nothing listens on port 1.
        let error = PgState::builder("postgres://postgres@127.0.0.1:1/custody")
            .connect_timeout(Duration::from_secs(5))
            .open()
            .unwrap_err();
        assert!(matches!(error, PgOpenError::Connect(_)), "{error:?}");
        assert!(std::error::Error::source(&error).is_some());
        let error = PgState::builder("postgres://[bad").open().unwrap_err();
        assert!(matches!(error, PgOpenError::Config(_)), "{error:?}");
        // The machine's server is there (the test fails, never skips, without it).
        let db = TestDb::new();
        let error = PgState::builder(db.url()).owner("").open().unwrap_err();
        assert!(matches!(error, PgOpenError::EmptyOwner), "{error:?}");
    });
}

#[test]
fn handles_and_errors_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<PgStateHandle>();
    send_sync::<PgStateStats>();
    send_sync::<Applied<String>>();
    error::<PgStateError>();
    error::<PgOpenError>();
    error::<custody::resources::RefusedWrite<fn()>>();
}

/// The awaitable twins from a one-thread tokio executor with many tasks at
/// once: claims, writes, fenced applies (each id once, duplicates answered
/// as such) and reads, all answered after their commits.
#[test]
fn awaited_writes_and_applies_from_many_tasks_are_each_committed_once() {
    per_backend(|backend| {
        let db = TestDb::new();
        let rt = Runtime::new();
        let state = spawn(&rt, &db, "state", backend);
        let executor = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        const TASKS: usize = 16;
        const IDS: usize = 20;
        let (done, duplicates) = executor.block_on(async {
            state.write_async(|c| c.execute(ROWS, &[])).await.unwrap();
            assert_eq!(state.claim_async("p").await.unwrap(), 1);
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let (mut done, mut duplicates) = (0, 0);
                        for i in 0..IDS {
                            let id = format!("m{}", (i + t) % IDS);
                            let key = id.clone();
                            match state
                                .apply_async("p", id, move |c| insert_row(c, &key))
                                .await
                                .unwrap()
                            {
                                Applied::Done(1) => done += 1,
                                Applied::Duplicate => duplicates += 1,
                                other => panic!("{other:?}"),
                            }
                        }
                        (done, duplicates)
                    })
                })
                .collect();
            let (mut done, mut duplicates) = (0, 0);
            for task in tasks {
                let (d, u) = task.await.unwrap();
                done += d;
                duplicates += u;
            }
            let rows = state
                .call_async(|c| {
                    c.query_one("SELECT count(*) FROM rows", &[])
                        .map(|r| r.get::<_, i64>(0))
                })
                .await
                .unwrap()
                .unwrap();
            assert_eq!(rows, IDS as i64, "every id once");
            (done, duplicates)
        });
        assert_eq!(done, IDS, "each id applied by exactly one task");
        assert_eq!(duplicates, TASKS * IDS - IDS);
        assert_eq!(db.count("SELECT count(*) FROM custody_applied"), IDS as i64);
    });
}
