//! What a user meets running managers on a broker: a queue declared again
//! with other arguments, and the `custody_applied` table of a
//! `RemoteDatabase` kept bounded.
//!
//! Against the RabbitMQ broker at `CUSTODY_AMQP_URL` (default
//! guest@127.0.0.1:5672); fails, never skips, when none is reachable. Each
//! scenario runs once per backend, with queue names of its own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Queues, builder, connect, unique_name, url};
use custody::broker::{BROKER_LIMIT_MARGIN, BrokerError, QueueMismatch};
use custody::resources::{Database, RemoteDatabase, RemoteDatabaseMsg, RemoteWrite};
use custody::{Backend, Context, Manager, Runtime};

/// The bound on one scenario.
fn limit() -> Duration {
    Duration::from_secs(60)
}

/// Runs `f` on a thread of its own and fails the test if it takes longer
/// than [`limit`].
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    common::within_limit(limit(), what, f)
}

/// Runs the scenario once per backend, each inside `within`.
fn per_backend(what: &'static str, scenario: impl Fn(Backend) + Send + Sync + Clone + 'static) {
    common::per_backend_within(limit(), what, scenario);
}

fn runtime(backend: Backend) -> Runtime {
    Runtime::builder().backend(backend).build().unwrap()
}

/// Adds up what it is sent.
struct Total(u64);

impl Manager for Total {
    type Msg = u64;
    fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
        self.0 += n;
    }
}

#[test]
fn serving_with_another_delivery_limit_is_a_typed_error_naming_the_argument() {
    per_backend("another delivery limit", |backend| {
        let queues = Queues::new("ops.limit");
        let name = queues.name.clone();
        let rt = runtime(backend);
        let first = connect(builder().delivery_limit(3));
        let served = first.serve(&rt, &name, Total(0)).unwrap();
        served.stop();

        let second = connect(builder().delivery_limit(7));
        let rt2 = runtime(backend);
        let err = second.serve(&rt2, &name, Total(0)).unwrap_err();
        let BrokerError::QueueMismatch(mismatch) = &err else {
            panic!("expected QueueMismatch, got {err:?}");
        };
        let QueueMismatch {
            queue,
            argument,
            current,
            requested,
            reply,
            ..
        } = &**mismatch;
        assert_eq!(queue, &format!("custody.{name}"));
        assert_eq!(argument.as_deref(), Some("x-delivery-limit"), "{reply}");
        // The owners' limits plus the broker's backstop margin.
        let on_broker = |limit: u32| (limit + BROKER_LIMIT_MARGIN).to_string();
        assert_eq!(current.as_deref(), Some(on_broker(3).as_str()), "{reply}");
        assert_eq!(requested.as_deref(), Some(on_broker(7).as_str()), "{reply}");
        let printed = err.to_string();
        assert!(
            printed.contains("x-delivery-limit") && printed.contains('3') && printed.contains('7'),
            "{printed}"
        );
        // A sender with the other limit is told the same.
        let err = second.remote_handle::<u64>(&name).unwrap_err();
        assert!(
            matches!(&err, BrokerError::QueueMismatch(m) if m.argument.as_deref() == Some("x-delivery-limit")),
            "{err:?}"
        );

        // The connection is still usable: another queue is served and used.
        let other = Queues::new("ops.limit.other");
        let served = second.serve(&rt2, &other.name, Total(0)).unwrap();
        let sender = second.remote_handle::<u64>(&other.name).unwrap();
        sender.tell(5).unwrap();
        sender.join().unwrap();
        served.stop();
        // And the queue with its old setting is still served with it.
        let again = first.serve(&rt, &name, Total(0)).unwrap();
        again.stop();
    });
}

#[test]
fn serving_a_classic_queue_is_a_typed_error_naming_the_queue_type() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{FieldTable, ShortString};
    use lapin::{Connection, ConnectionProperties};

    per_backend("a classic queue", |backend| {
        let queues = Queues::new("ops.classic");
        let name = queues.name.clone();
        // A classic queue of that name, declared by another client.
        futures_lite::future::block_on(async {
            let conn = Connection::connect(&url(), ConnectionProperties::default())
                .await
                .unwrap();
            let channel = conn.create_channel().await.unwrap();
            channel
                .queue_declare(
                    ShortString::from(format!("custody.{name}.dead")),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = conn.close(200, ShortString::from("OK")).await;
        });
        let broker = connect(builder());
        let rt = runtime(backend);
        let err = broker.serve(&rt, &name, Total(0)).unwrap_err();
        let BrokerError::QueueMismatch(mismatch) = &err else {
            panic!("expected QueueMismatch, got {err:?}");
        };
        let QueueMismatch {
            queue,
            argument,
            current,
            requested,
            reply,
            ..
        } = &**mismatch;
        assert_eq!(queue, &format!("custody.{name}.dead"));
        assert_eq!(argument.as_deref(), Some("x-queue-type"), "{reply}");
        assert_eq!(requested.as_deref(), Some("quorum"), "{reply}");
        // RabbitMQ 3.10 stores no `x-queue-type` for a classic queue
        // declared without one: it says `none`.
        assert!(
            current.as_deref().is_none_or(|c| c == "classic"),
            "{current:?} {reply}"
        );
        assert!(err.to_string().contains("x-queue-type"), "{err}");
        // The connection is still usable.
        let other = Queues::new("ops.classic.other");
        broker.serve(&rt, &other.name, Total(0)).unwrap().stop();
    });
}

/// A database file of its own, removed (with its WAL) when dropped.
struct DbFile(std::path::PathBuf);

impl DbFile {
    fn new(name: &str) -> DbFile {
        DbFile(std::env::temp_dir().join(format!("custody-{name}.db")))
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A `RemoteDatabase` that reports, after each batch's `idle`, its commits
/// and the ids it pruned so far.
struct Probe {
    db: RemoteDatabase,
    report: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Manager for Probe {
    type Msg = RemoteDatabaseMsg;
    fn handle(&mut self, msg: RemoteDatabaseMsg, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.handle(msg, ctx);
    }
    fn idle(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.idle(ctx);
        let commits = self.db.stats().commits;
        self.report
            .lock()
            .unwrap()
            .push((commits, self.db.pruned_ids()));
    }
    fn stopped(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.stopped(ctx);
    }
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.recover(panic, ctx);
    }
}

fn unix_millis_ago(ago: Duration) -> i64 {
    let at = SystemTime::now() - ago;
    i64::try_from(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A write inserting its own id into `t`.
fn write_of(id: &str) -> RemoteDatabaseMsg {
    RemoteDatabaseMsg::Execute(RemoteWrite::with_id(
        id,
        "INSERT INTO t (id) VALUES (?1)",
        vec![id.into()],
    ))
}

fn column(path: &std::path::Path, sql: &str) -> Vec<String> {
    let conn = custody::resources::rusqlite::Connection::open(path).unwrap();
    let mut statement = conn.prepare(sql).unwrap();
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn applied_ids_older_than_the_horizon_are_pruned_inside_a_batch_commit_and_newer_ones_still_skip_writes()
 {
    per_backend("pruning applied ids", |backend| {
        let queues = Queues::new("ops.prune");
        let name = queues.name.clone();
        let file = DbFile::new(&name);
        let path = file.0.clone();
        // The tables, then two ids applied two hours ago and one a minute ago.
        drop(RemoteDatabase::open(Database::builder(&path)).unwrap());
        let conn = custody::resources::rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO custody_applied (id, applied_at) VALUES ('old-1', ?1), ('old-2', ?1), ('recent', ?2)",
            [
                unix_millis_ago(Duration::from_secs(2 * 3600)),
                unix_millis_ago(Duration::from_secs(60)),
            ],
        )
        .unwrap();
        drop(conn);
        // Each pruned id is logged with the rows `t` has at that moment, in
        // the transaction that deletes it.
        let db = RemoteDatabase::open(Database::builder(&path).init_sql(
            "CREATE TABLE IF NOT EXISTS t (id TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS prune_log (id TEXT NOT NULL, rows_of_t INTEGER NOT NULL);
             CREATE TEMP TRIGGER log_prune AFTER DELETE ON main.custody_applied BEGIN
                 INSERT INTO prune_log VALUES (old.id, (SELECT count(*) FROM main.t));
             END;",
        ))
        .unwrap()
        .applied_horizon(Duration::from_secs(3600));
        let report = Arc::new(Mutex::new(Vec::new()));
        let rt = runtime(backend);
        let broker = connect(builder());
        let served = broker
            .serve(
                &rt,
                &name,
                Probe {
                    db,
                    report: Arc::clone(&report),
                },
            )
            .unwrap();
        let sender = broker.remote_handle::<RemoteDatabaseMsg>(&name).unwrap();

        // One write, one batch: the old ids go at its commit, the only one.
        sender.tell(write_of("new-1")).unwrap();
        sender.join().unwrap();
        assert_eq!(report.lock().unwrap().last(), Some(&(1, 2)));
        // The prune ran after the batch's write, in its transaction.
        assert_eq!(
            column(
                &path,
                "SELECT id || ':' || rows_of_t FROM prune_log ORDER BY id"
            ),
            ["old-1:1", "old-2:1"]
        );

        // Within the horizon, a write coming again is skipped; an id
        // pruned is forgotten, and its write applied again.
        for id in ["recent", "new-1", "old-1"] {
            sender.tell(write_of(id)).unwrap();
        }
        sender.join().unwrap();
        served.stop();
        assert_eq!(
            column(&path, "SELECT id FROM t ORDER BY id"),
            ["new-1", "old-1"]
        );
        assert_eq!(
            column(&path, "SELECT id FROM custody_applied ORDER BY id"),
            ["new-1", "old-1", "recent"]
        );
        // Once a minute at most: the later batches pruned nothing more.
        let report = report.lock().unwrap();
        assert!(report.iter().all(|&(_, pruned)| pruned == 2), "{report:?}");
        assert_eq!(column(&path, "SELECT id FROM prune_log").len(), 2);
    });
}

#[test]
fn an_applied_table_without_times_is_stamped_now_and_kept_a_whole_horizon() {
    within("an applied table of an earlier version", || {
        let file = DbFile::new(&unique_name("ops.upgrade"));
        let conn = custody::resources::rusqlite::Connection::open(&file.0).unwrap();
        conn.execute_batch(
            "CREATE TABLE custody_applied (id TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
             INSERT INTO custody_applied VALUES ('a'), ('b');",
        )
        .unwrap();
        drop(conn);
        let before = unix_millis_ago(Duration::ZERO);
        drop(RemoteDatabase::open(Database::builder(&file.0)).unwrap());
        let stamped = column(
            &file.0,
            &format!(
                "SELECT id || ':' || (applied_at >= {before}) FROM custody_applied ORDER BY id"
            ),
        );
        assert_eq!(stamped, ["a:1", "b:1"]);
        // Opening again changes nothing.
        drop(RemoteDatabase::open(Database::builder(&file.0)).unwrap());
        assert_eq!(
            column(&file.0, "SELECT id FROM custody_applied ORDER BY id"),
            ["a", "b"]
        );
    });
}

/// Everything an error prints: its text, its Debug, and its causes'.
#[cfg(feature = "amqps")]
fn printed(err: &BrokerError) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(" {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(feature = "amqps")]
#[test]
fn an_amqps_url_to_a_plain_amqp_port_is_a_tls_error_without_the_password() {
    within("amqps to a plain port", || {
        // The broker's plain AMQP port: it answers a TLS hello with the
        // AMQP protocol header, and closes.
        let host = connect(builder()).host().to_owned();
        let url = format!("amqps://guest:hunter2@{host}/%2f");
        let err = custody::broker::Broker::builder(url.clone())
            .connect()
            .unwrap_err();
        assert!(
            matches!(&err, BrokerError::Tls { host: h, .. } if *h == host),
            "{err:?}"
        );
        assert!(!printed(&err).contains("hunter2"), "{}", printed(&err));
        let builder = custody::broker::Broker::builder(format!("{url},{url}"));
        assert!(!format!("{builder:?}").contains("hunter2"), "{builder:?}");
        let err = builder.connect().unwrap_err();
        let BrokerError::NoNodeReachable { attempts } = &err else {
            panic!("expected NoNodeReachable, got {err:?}");
        };
        assert!(
            attempts
                .iter()
                .all(|a| matches!(a, BrokerError::Tls { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("TLS"), "{err}");
        assert!(!printed(&err).contains("hunter2"), "{}", printed(&err));
    });
}
