//! `RemoteDatabase`: a [`Database`] served from a broker queue, with
//! exactly-once effects (features `amqp` and `sqlite`).
//!
//! The broker delivers at least once: after a crash of the owner, the
//! standby gets again every message the owner had not acknowledged, some of
//! which the owner may have committed. So each write carries an id chosen by
//! its sender, and the manager records the id in the table
//! `custody_applied`, inside the write's own savepoint, in the same
//! transaction as the write:
//!
//! ```text
//! SAVEPOINT custody_write
//! INSERT OR IGNORE INTO custody_applied (id) VALUES (?)
//!     0 rows -> already applied: run nothing, answer Ok(0)
//!     1 row  -> run the statement (if it fails, the savepoint is rolled
//!               back, the id with it, and the write fails)
//! RELEASE custody_write ... check the owner epoch, COMMIT in `idle`,
//! then the broker acks
//! ```
//!
//! A batch is acknowledged only after `idle`, which commits, so a write the
//! broker redelivers was either committed with its id (and is skipped) or
//! not at all (and is applied now).
//!
//! An owner claims the database (the table `custody_owner`) before its
//! first write and checks its claim before each commit, so that a
//! superseded owner commits nothing; a write that fails for a transient
//! reason is held and run again. Both are described on [`RemoteDatabase`].
//!
//! Each id is stored with the time it was applied (`applied_at`, Unix
//! milliseconds), and ids older than the applied horizon (7 days by
//! default, [`RemoteDatabase::applied_horizon`]) are deleted inside a
//! batch's transaction, just before its COMMIT, at most once a minute: the
//! table stays bounded at no cost per write beyond an index entry.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql};
use serde::{Deserialize, Serialize};

use super::database::{
    CommitCheck, Database, DatabaseBuilder, DatabaseError, DatabaseStats, GroupCommit, OpenError,
    WriteOp,
};
use crate::broker::{Ownership, RemoteReply};
use crate::{Context, Manager};

/// The table of applied ids, created when a [`RemoteDatabase`] opens. A
/// table made before ids had a time gets the column `applied_at` added (see
/// [`RemoteDatabase::new`]).
const CREATE_APPLIED: &str = "CREATE TABLE IF NOT EXISTS custody_applied \
     (id TEXT PRIMARY KEY NOT NULL, applied_at INTEGER) WITHOUT ROWID";
/// What pruning searches by.
const CREATE_APPLIED_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS custody_applied_at ON custody_applied (applied_at)";
const RECORD_APPLIED: &str =
    "INSERT OR IGNORE INTO custody_applied (id, applied_at) VALUES (?1, ?2)";
/// Deletes at most `?2` ids applied before `?1`.
const PRUNE_APPLIED: &str = "DELETE FROM custody_applied WHERE id IN \
     (SELECT id FROM custody_applied WHERE applied_at < ?1 LIMIT ?2)";
/// The most ids one commit prunes; more wait for the next commit.
const PRUNE_LIMIT: i64 = 10_000;

/// The default [`RemoteDatabase::applied_horizon`]: 7 days.
pub const DEFAULT_APPLIED_HORIZON: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The default [`RemoteDatabase::prune_interval`]: a minute.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// The owner epoch, one row, created when a [`RemoteDatabase`] opens.
const CREATE_OWNER: &str = "CREATE TABLE IF NOT EXISTS custody_owner \
     (id INTEGER PRIMARY KEY CHECK (id = 0), epoch INTEGER NOT NULL)";
const CLAIM: &str = "INSERT INTO custody_owner (id, epoch) VALUES (0, 1) \
     ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1";
const READ_EPOCH: &str = "SELECT epoch FROM custody_owner WHERE id = 0";

/// A SQLite value that crosses the broker: the serde mirror of
/// [`rusqlite::types::Value`].
///
/// # Examples
///
/// ```
/// use custody::resources::SqlValue;
///
/// assert_eq!(SqlValue::from(7), SqlValue::Integer(7));
/// assert_eq!(SqlValue::from("seven"), SqlValue::Text("seven".to_owned()));
/// assert_eq!(SqlValue::from(None::<i64>), SqlValue::Null);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl From<SqlValue> for Value {
    fn from(value: SqlValue) -> Value {
        match value {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(n) => Value::Integer(n),
            SqlValue::Real(x) => Value::Real(x),
            SqlValue::Text(s) => Value::Text(s),
            SqlValue::Blob(b) => Value::Blob(b),
        }
    }
}

impl From<Value> for SqlValue {
    fn from(value: Value) -> SqlValue {
        match value {
            Value::Null => SqlValue::Null,
            Value::Integer(n) => SqlValue::Integer(n),
            Value::Real(x) => SqlValue::Real(x),
            Value::Text(s) => SqlValue::Text(s),
            Value::Blob(b) => SqlValue::Blob(b),
        }
    }
}

macro_rules! sql_value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for SqlValue {
            fn from(v: $t) -> SqlValue {
                SqlValue::$variant(v.into())
            }
        })*
    };
}

sql_value_from!(
    i64 => Integer, i32 => Integer, i16 => Integer, i8 => Integer,
    u32 => Integer, u16 => Integer, u8 => Integer, bool => Integer,
    f64 => Real, f32 => Real,
    String => Text, &str => Text,
    Vec<u8> => Blob, &[u8] => Blob,
);

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> SqlValue {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// One write for a [`RemoteDatabase`]: a SQL statement, its parameters, and
/// the id that makes it apply at most once.
///
/// **Choosing the id.** It must be unique to this write, across every sender
/// of the database and for as long as the database lives, and a sender that
/// retries a write (for example after a [`RemoteSendError`] gave it back)
/// must send it again *with the same id*, which reusing the `RemoteWrite`
/// does. [`RemoteWrite::new`] makes a fresh id (random per process, then a
/// counter); [`RemoteWrite::with_id`] takes one of the application's, such
/// as a key of the business event the write records.
///
/// [`RemoteSendError`]: crate::broker::RemoteSendError
///
/// # Examples
///
/// ```
/// use custody::resources::RemoteWrite;
///
/// let a = RemoteWrite::new("INSERT INTO t VALUES (?1)", vec![1.into()]);
/// let b = RemoteWrite::new("INSERT INTO t VALUES (?1)", vec![1.into()]);
/// assert_ne!(a.id, b.id); // two writes, even of the same row
/// let order = RemoteWrite::with_id("order-42", "INSERT INTO orders VALUES (42)", vec![]);
/// assert_eq!(order.id, "order-42");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteWrite {
    /// The write's id: the database applies each id at most once.
    pub id: String,
    /// One SQL statement.
    pub sql: String,
    /// Its parameters, bound as `?1`, `?2`, ...
    pub params: Vec<SqlValue>,
}

impl RemoteWrite {
    /// A write with a fresh id, unique to this process run: a random
    /// per-process prefix, the clock at the first call, and a counter.
    pub fn new(sql: impl Into<String>, params: Vec<SqlValue>) -> RemoteWrite {
        RemoteWrite::with_id(fresh_id(), sql, params)
    }

    /// A write with the id `id` (see the type's docs for how to choose it).
    pub fn with_id(
        id: impl Into<String>,
        sql: impl Into<String>,
        params: Vec<SqlValue>,
    ) -> RemoteWrite {
        RemoteWrite {
            id: id.into(),
            sql: sql.into(),
            params,
        }
    }
}

fn fresh_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        // RandomState's keys are random per process.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        format!("{:016x}.{nanos:x}", hasher.finish())
    });
    format!("{prefix}.{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A message for a [`RemoteDatabase`], sent through a
/// [`RemoteHandle<RemoteDatabaseMsg>`](crate::broker::RemoteHandle).
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
/// use custody::resources::{RemoteDatabaseMsg, RemoteWrite};
///
/// let db = Broker::from_env()?.remote_handle::<RemoteDatabaseMsg>("ledger")?;
/// let write = RemoteWrite::new("INSERT INTO entries (amount) VALUES (?1)", vec![10.into()]);
/// db.tell(RemoteDatabaseMsg::Execute(write.clone()))?;
/// // The same write again (a retry): applied once all the same, and the
/// // ask answers 0 rows changed.
/// assert_eq!(db.ask(|reply| RemoteDatabaseMsg::ExecuteAsk(write, reply))?, Ok(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteDatabaseMsg {
    /// Apply the write unless its id was applied before. A transient failure
    /// ([`DatabaseError::is_transient`]) holds the write and runs it again;
    /// any other failure (the statement itself) is logged and counted in the
    /// database's `failed_told_writes`, and the message is acknowledged.
    Execute(RemoteWrite),
    /// The same, answered once its batch is committed: the rows changed (0
    /// if the id was already applied), or the statement's error as text.
    ExecuteAsk(RemoteWrite, RemoteReply<Result<usize, String>>),
}

/// A [`Database`] served remotely, with exactly-once effects: its messages
/// are [`RemoteDatabaseMsg`]s, and each write's id is recorded in the table
/// `custody_applied` in the same transaction as the write, so that a write
/// delivered again after a crash changes nothing.
///
/// Serve it with [`Broker::serve`](crate::broker::Broker::serve); an owner
/// and its standbys open the same database file. Group commit is the
/// `Database`'s own: a savepoint per write, a transaction per batch,
/// committed in `idle`, before the broker acknowledges the batch.
///
/// **One owner commits (fencing).** Two owners can act at once: one frozen
/// (a SIGSTOP, a long pause) or cut off without knowing it still holds
/// deliveries when the broker makes a standby active. So, served from a
/// broker, an owner claims the database before its first write, and commits
/// only while its claim is the latest:
///
/// ```text
/// claim:  ask the broker (a round trip on the owner's channel): still active?
///         BEGIN IMMEDIATE; custody_owner.epoch += 1; COMMIT  -> mine
///         ask the broker again: still active?   no -> step down
/// commit: in the batch's transaction, before COMMIT:
///         custody_owner.epoch == mine?   no -> roll the batch back, ask
///         the broker; still active: claim again and run the batch again;
///         not: step down
/// step down: roll back the batch in hand, drop the held writes (nothing
///         of them settled, answered or acknowledged: their deliveries go
///         back to the queue), forget the claim; the next write claims anew
/// ```
///
/// SQLite's write lock makes the check and the COMMIT one step, and the
/// epoch only grows, so once the new owner's claim is committed no batch of
/// an older owner commits: an owner that was frozen, or cut off without
/// knowing, while a standby took over commits nothing after the new owner's
/// first commit; its batch is rolled back and nothing of it is answered or
/// acknowledged (its deliveries are the new owner's). A claim committed
/// after the new owner's can only be a superseded owner's, which the broker
/// then does not confirm: it costs the live owner one batch run again,
/// never its place. An owner whose broker does not answer the round trip
/// within the confirm timeout takes its channel for lost and steps down.
/// After stepping down the manager keeps running: with reconnecting on
/// ([`BrokerBuilder::reconnect`](crate::broker::BrokerBuilder::reconnect),
/// the default) its process subscribes again, as a standby if another
/// owner is active, and the database claims anew when deliveries come to it
/// again; with reconnecting off, serving ends and the manager stops at
/// once. Not served from a broker, it claims nothing and checks nothing.
///
/// **Transient failures are not done.** A write or a COMMIT that fails for
/// a reason of the moment ([`DatabaseError::is_transient`]: SQLite busy or
/// locked past its busy timeout, as when another process holds the write
/// lock, or an I/O error) is held with the rest of its batch and run again,
/// backing off, until it commits; it is acknowledged and reported done only
/// then. A stop while writes are held stops at once instead, leaving them to
/// the queue. A write whose statement fails (a constraint, a syntax error)
/// fails for good: askers get the error, told writes are logged, and the
/// message is acknowledged; the senders must retry what they need, with the
/// same ids.
///
/// **Applied ids are kept for a horizon.** Each id is stored with the time
/// it was applied, and ids older than
/// [`applied_horizon`](RemoteDatabase::applied_horizon) (7 days by default)
/// are deleted inside a batch's transaction, before its COMMIT, at most once
/// per [`prune_interval`](RemoteDatabase::prune_interval): no transaction or
/// fsync of its own. A write that comes back after its id was pruned is
/// applied again, so the horizon must exceed how long a write can come back
/// (a sender's retries, a message's wait in the queue).
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
/// use custody::resources::{Database, RemoteDatabase};
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let db = RemoteDatabase::open(
///     Database::builder("ledger.db").init_sql("CREATE TABLE IF NOT EXISTS entries (amount INTEGER)"),
/// )?;
/// let served = Broker::from_env()?.serve(&rt, "ledger", db)?;
/// # drop(served);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteDatabase {
    db: GroupCommit,
    /// What the batch's writes came to, filled as the `Database` settles
    /// them, drained after each call into it.
    outcomes: Outcomes,
    /// Writes held for another try after a transient failure, in order.
    retry: Vec<Pending>,
    /// A write of the open batch failed for a transient reason: the rest of
    /// the batch waits in `retry` without running.
    blocked: bool,
    next_seq: u64,
    fence: Fence,
    prune: Prune,
    retries: u64,
}

impl RemoteDatabase {
    /// Opens the database `builder` describes and creates the
    /// `custody_applied` and `custody_owner` tables if they are missing.
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open`], or [`OpenError::Sqlite`] if a table
    /// cannot be created.
    pub fn open(builder: DatabaseBuilder) -> Result<RemoteDatabase, OpenError> {
        RemoteDatabase::new(builder.open()?)
    }

    /// Serves an opened database remotely; creates the `custody_applied`
    /// and `custody_owner` tables if they are missing. A `custody_applied`
    /// table without applied times (made by an earlier version) gets the
    /// column `applied_at`, with its ids stamped as applied now: they are
    /// kept for a whole [`applied_horizon`](RemoteDatabase::applied_horizon)
    /// from here.
    ///
    /// # Errors
    ///
    /// [`OpenError::Sqlite`] if a table cannot be created or updated.
    pub fn new(db: Database) -> Result<RemoteDatabase, OpenError> {
        let mut db = db.into_engine();
        db.setup(&format!("{CREATE_APPLIED}; {CREATE_OWNER}"))?;
        if let Some(conn) = db.connection_between_batches() {
            add_applied_times(conn)?;
        }
        db.setup(CREATE_APPLIED_INDEX)?;
        Ok(RemoteDatabase {
            db,
            outcomes: Outcomes::default(),
            retry: Vec::new(),
            blocked: false,
            next_seq: 0,
            fence: Fence::default(),
            prune: Prune::default(),
            retries: 0,
        })
    }

    /// How long an applied id is kept (default
    /// [`DEFAULT_APPLIED_HORIZON`], 7 days); older ones are deleted, and a
    /// write arriving again with such an id is applied again.
    ///
    /// **Keep it longer than a write can come back.** A write comes back
    /// when the broker redelivers it (after an owner crash, at once) or when
    /// its sender sends it again with the same id, after a `tell` that was
    /// not confirmed: the copy may then wait in the queue behind others, or
    /// sit there while no owner runs. The horizon must exceed the longest a
    /// sender goes on retrying plus the longest a message waits in the
    /// queue. Time is this machine's clock: a clock set back keeps ids
    /// longer, one set forward prunes them sooner.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::resources::{Database, RemoteDatabase};
    ///
    /// let db = RemoteDatabase::open(Database::in_memory())?
    ///     .applied_horizon(Duration::from_secs(30 * 24 * 60 * 60)); // 30 days
    /// assert_eq!(db.pruned_ids(), 0);
    /// # Ok::<(), custody::resources::DatabaseError>(())
    /// ```
    #[must_use]
    pub fn applied_horizon(mut self, horizon: Duration) -> Self {
        self.prune.horizon = horizon;
        self
    }

    /// How often old applied ids are pruned at most (default
    /// [`DEFAULT_PRUNE_INTERVAL`], a minute). Pruning rides on a batch's
    /// commit (its own DELETE inside the batch's transaction, before the
    /// COMMIT), so it adds no transaction and no fsync; an idle database
    /// prunes nothing. One commit deletes at most 10 000 ids; when there are
    /// more, the next commit goes on.
    #[must_use]
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.prune.interval = interval;
        self
    }

    /// Applied ids deleted so far for being older than the horizon.
    pub fn pruned_ids(&self) -> u64 {
        self.prune.pruned
    }

    /// The owner epoch this database holds: its claim on the database,
    /// confirmed by the broker. `None` before its first write, and when it
    /// is not served from a broker.
    ///
    /// The manager's state lives on its thread: read this (and the other
    /// counters) from a manager that wraps a `RemoteDatabase`, for example
    /// to log them in `idle`.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::{Database, RemoteDatabase};
    ///
    /// let db = RemoteDatabase::open(Database::in_memory())?;
    /// assert_eq!(db.epoch(), None); // not served: nothing claimed
    /// assert!(!db.is_superseded());
    /// assert_eq!((db.rejected_commits(), db.retries(), db.held_writes()), (0, 0, 0));
    /// # Ok::<(), custody::resources::DatabaseError>(())
    /// ```
    pub fn epoch(&self) -> Option<u64> {
        self.fence.epoch.and_then(|e| u64::try_from(e).ok())
    }

    /// Whether this owner has stepped down at least once: the broker did
    /// not confirm it as the active owner (its channel was lost, or another
    /// owner had claimed the database), so it rolled back its batch in hand
    /// and dropped its claim. It claims again if deliveries come to it
    /// again.
    pub fn is_superseded(&self) -> bool {
        self.fence.superseded
    }

    /// Batches rolled back at their commit because another owner had
    /// claimed the database since this one did.
    pub fn rejected_commits(&self) -> u64 {
        self.fence.rejected_commits
    }

    /// Tries to run again writes held after a transient failure or a
    /// rejected commit.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Writes held now after a transient failure, waiting for their next
    /// try: neither acknowledged nor reported done.
    pub fn held_writes(&self) -> usize {
        self.retry.len()
    }

    /// The underlying database's counters.
    pub fn stats(&self) -> DatabaseStats {
        self.db.stats()
    }
}

impl std::fmt::Debug for RemoteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDatabase")
            .field("db", &self.db)
            .field("epoch", &self.epoch())
            .field("superseded", &self.fence.superseded)
            .field("held", &self.retry.len())
            .field("applied_horizon", &self.prune.horizon)
            .finish_non_exhaustive()
    }
}

/// A write not yet settled: what it takes to run it again.
struct Pending {
    /// Its place in the order the writes arrived.
    seq: u64,
    write: RemoteWrite,
    reply: Option<RemoteReply<Result<usize, String>>>,
}

impl Pending {
    fn is_asked(&self) -> bool {
        self.reply.as_ref().is_some_and(RemoteReply::is_bound)
    }
}

/// The writes the `Database` settled, with what became of each.
type Outcomes = Arc<Mutex<Vec<(Pending, Result<usize, DatabaseError>)>>>;

/// A write applied at most once per id; its outcome goes back to the
/// `RemoteDatabase`, which answers it, or holds it for another try.
struct AppliedOnceOp {
    pending: Pending,
    changed: usize,
    outcomes: Outcomes,
}

impl AppliedOnceOp {
    fn settled(self, result: Result<usize, DatabaseError>) {
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((self.pending, result));
    }
}

/// A parameter bound by reference, so that a write can run again.
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(n) => ValueRef::Integer(*n),
            SqlValue::Real(x) => ValueRef::Real(*x),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl WriteOp for AppliedOnceOp {
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let write = &self.pending.write;
        let recorded = conn
            .prepare_cached(RECORD_APPLIED)?
            .execute(rusqlite::params![write.id, unix_millis(SystemTime::now())])?;
        if recorded == 0 {
            tracing::debug!(id = %write.id, "a write applied before: skipped");
            self.changed = 0;
            return Ok(());
        }
        let mut statement = conn.prepare_cached(&write.sql)?;
        self.changed =
            statement.execute(rusqlite::params_from_iter(write.params.iter().map(Param)))?;
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.pending.is_asked()
    }

    fn wants_outcome(&self) -> bool {
        true
    }

    fn describe(&self) -> &str {
        &self.pending.write.sql
    }

    fn succeed(self: Box<Self>) {
        let changed = self.changed;
        self.settled(Ok(changed));
    }

    fn fail(self: Box<Self>, error: DatabaseError) {
        self.settled(Err(error));
    }
}

/// This owner's claim on the database, checked before each commit.
#[derive(Default)]
struct Fence {
    /// Whether the manager is served from a broker queue (learned at its
    /// first message); only then is there anything to fence.
    served: Option<bool>,
    /// The epoch this owner claimed, confirmed by the broker.
    epoch: Option<i64>,
    /// A commit found the epoch changed: ask the broker, and claim again,
    /// before the next try.
    stale: bool,
    superseded: bool,
    rejected_commits: u64,
}

impl Fence {
    fn is_served(&self) -> bool {
        self.served == Some(true)
    }

    /// Whether a claim must come before the next write.
    fn needs_claim(&self) -> bool {
        self.is_served() && (self.epoch.is_none() || self.stale)
    }
}

impl CommitCheck for Fence {
    fn before_commit(&mut self, conn: &Connection) -> Result<(), &'static str> {
        if !self.is_served() {
            return Ok(());
        }
        let Some(mine) = self.epoch else {
            return Err("this owner holds no claim on the database");
        };
        let current = conn
            .prepare_cached(READ_EPOCH)
            .and_then(|mut s| s.query_row([], |row| row.get::<_, i64>(0)));
        match current {
            Ok(current) if current == mine => Ok(()),
            Ok(current) => {
                tracing::warn!(
                    mine,
                    current,
                    "another owner claimed the database since this one did: batch rolled back"
                );
                self.stale = true;
                self.rejected_commits += 1;
                Err("another owner claimed the database since this one did")
            }
            Err(error) => {
                tracing::warn!(%error, "the owner epoch could not be read: batch rolled back");
                Err("the owner epoch could not be read")
            }
        }
    }
}

/// Adds `applied_at` to a `custody_applied` table made without it, and
/// stamps the ids there as applied now.
fn add_applied_times(conn: &Connection) -> rusqlite::Result<()> {
    let has_time = conn
        .prepare("SELECT 1 FROM pragma_table_info('custody_applied') WHERE name = 'applied_at'")?
        .exists([])?;
    if has_time {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let added = (|| {
        conn.execute_batch("ALTER TABLE custody_applied ADD COLUMN applied_at INTEGER")?;
        conn.execute(
            "UPDATE custody_applied SET applied_at = ?1",
            [unix_millis(SystemTime::now())],
        )?;
        conn.execute_batch("COMMIT")
    })();
    if added.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    added
}

/// Milliseconds since the Unix epoch (0 before it, saturating after 2^63).
fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes applied ids older than the horizon, inside a batch's
/// transaction, at most once per interval.
struct Prune {
    horizon: Duration,
    interval: Duration,
    /// When the last prune ran; `None` before the first.
    last: Option<Instant>,
    pruned: u64,
}

impl Default for Prune {
    fn default() -> Prune {
        Prune {
            horizon: DEFAULT_APPLIED_HORIZON,
            interval: DEFAULT_PRUNE_INTERVAL,
            last: None,
            pruned: 0,
        }
    }
}

impl Prune {
    /// Prunes if it is time, in the open transaction of `conn`. A failure is
    /// logged and does not stop the commit.
    fn run(&mut self, conn: &Connection) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return;
        }
        let cutoff = SystemTime::now()
            .checked_sub(self.horizon)
            .map_or(0, unix_millis);
        match conn
            .prepare_cached(PRUNE_APPLIED)
            .and_then(|mut s| s.execute(rusqlite::params![cutoff, PRUNE_LIMIT]))
        {
            Ok(deleted) => {
                self.pruned += deleted as u64;
                if deleted > 0 {
                    tracing::debug!(deleted, "pruned applied ids older than the horizon");
                }
                // A full round leaves more: the next commit goes on.
                if i64::try_from(deleted).unwrap_or(i64::MAX) < PRUNE_LIMIT {
                    self.last = Some(now);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "pruning old applied ids failed: tried again later");
                self.last = Some(now);
            }
        }
    }
}

/// What runs inside a batch's transaction before its COMMIT: the owner's
/// fence, then the pruning of old applied ids (only for a batch that will
/// commit).
struct BeforeCommit<'a> {
    fence: &'a mut Fence,
    prune: &'a mut Prune,
}

impl CommitCheck for BeforeCommit<'_> {
    fn before_commit(&mut self, conn: &Connection) -> Result<(), &'static str> {
        self.fence.before_commit(conn)?;
        self.prune.run(conn);
        Ok(())
    }
}

/// What a claim came to.
enum Claim {
    Held,
    /// The database refused for now (busy, I/O): try again later.
    Later,
    /// The broker says another owner is active.
    Superseded,
}

/// The longest wait between two tries of held writes.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl RemoteDatabase {
    /// Runs one write into the open batch (which commits if full).
    fn run(&mut self, pending: Pending) {
        let op = AppliedOnceOp {
            pending,
            changed: 0,
            outcomes: Arc::clone(&self.outcomes),
        };
        let mut check = BeforeCommit {
            fence: &mut self.fence,
            prune: &mut self.prune,
        };
        self.db.handle_write_checked(Box::new(op), &mut check);
    }

    /// Commits the open batch, with the fence and the pruning inside it.
    fn settle_batch(&mut self) {
        let mut check = BeforeCommit {
            fence: &mut self.fence,
            prune: &mut self.prune,
        };
        self.db.settle_checked(&mut check);
    }

    /// Takes what the `Database` settled: answers the done writes and those
    /// that failed for good, holds those that failed for a transient reason
    /// (and with them the rest of their batch, rolled back).
    fn absorb(&mut self) {
        let mut taken = false;
        loop {
            let settled =
                std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner));
            if settled.is_empty() {
                break;
            }
            for (pending, result) in settled {
                match result {
                    Ok(changed) => {
                        if let Some(reply) = pending.reply {
                            reply.send(Ok(changed));
                        }
                    }
                    Err(error) if error.is_transient() => {
                        if !self.blocked {
                            tracing::warn!(id = %pending.write.id, %error, "a write failed for a transient reason: its batch is held and run again");
                        }
                        self.blocked = true;
                        self.retry.push(pending);
                        taken = true;
                    }
                    Err(error) => {
                        if !pending.is_asked() {
                            tracing::warn!(id = %pending.write.id, %error, "a told write failed");
                        }
                        if let Some(reply) = pending.reply {
                            reply.send(Err(error.to_string()));
                        }
                    }
                }
            }
            if self.blocked {
                // What else of the batch is open goes with it, in order.
                self.db.abandon_batch(
                    "a write of the batch failed for a transient reason: the batch is run again",
                );
            }
        }
        if taken {
            self.retry.sort_by_key(|p| p.seq);
        }
    }

    /// Claims the database for this owner: asks the broker, bumps the epoch
    /// in a transaction of its own, asks the broker again.
    fn claim(&mut self, ctx: &Context<'_, RemoteDatabaseMsg>) -> Claim {
        // A superseded owner learns it here, before it touches the epoch.
        // (Claims are made only by a served manager: not served any more,
        // its serving has ended.)
        if crate::broker::ownership(ctx.handle()) != Ownership::Active {
            return Claim::Superseded;
        }
        let Some(conn) = self.db.connection_between_batches() else {
            return Claim::Later;
        };
        let claimed = (|| {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.prepare_cached(CLAIM)?.execute([])?;
            let epoch = conn
                .prepare_cached(READ_EPOCH)?
                .query_row([], |row| row.get::<_, i64>(0))?;
            conn.execute_batch("COMMIT")?;
            Ok::<i64, rusqlite::Error>(epoch)
        })();
        let epoch = match claimed {
            Ok(epoch) => epoch,
            Err(error) => {
                if !conn.is_autocommit()
                    && let Err(error) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(%error, "rolling back a failed claim failed");
                }
                tracing::warn!(%error, "claiming the database failed: tried again later");
                return Claim::Later;
            }
        };
        // Confirmed after the claim committed: an owner the broker had
        // already replaced cannot pass this, whatever it claimed.
        if crate::broker::ownership(ctx.handle()) != Ownership::Active {
            return Claim::Superseded;
        }
        tracing::debug!(epoch, "claimed the database");
        self.fence.epoch = Some(epoch);
        self.fence.stale = false;
        Claim::Held
    }

    /// The broker did not confirm this owner: its channel is lost (the
    /// serving gives its deliveries back, and subscribes again or ends), or
    /// another owner is active. Nothing of this one's batch in hand counts:
    /// it is rolled back, its held writes dropped unanswered (their
    /// deliveries are redelivered), and the claim forgotten, so that a
    /// write handed over later claims the database again first.
    fn step_down(&mut self) {
        if let Some(epoch) = self.fence.epoch {
            tracing::warn!(
                epoch,
                "the broker did not confirm this owner: its batch in hand is rolled back and its claim dropped"
            );
        }
        self.fence.superseded = true;
        self.fence.epoch = None;
        self.fence.stale = false;
        self.drop_unsettled("this owner stepped down");
    }

    /// Rolls back the open batch and drops every write not settled, unanswered.
    fn drop_unsettled(&mut self, reason: &'static str) {
        self.db.abandon_batch(reason);
        self.outcomes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.retry.clear();
        self.blocked = false;
    }

    /// Commits the batch, then runs held writes again until none is left,
    /// the owner is superseded or stopped at once, or a stop is asked for
    /// (which stops at once, leaving them to the queue).
    fn settle(&mut self, ctx: &Context<'_, RemoteDatabaseMsg>) {
        self.settle_batch();
        self.absorb();
        let mut tries: u32 = 0;
        while !self.retry.is_empty() {
            let shared = &ctx.handle().shared;
            if shared.is_aborted() {
                self.drop_unsettled("the owner stopped at once");
                return;
            }
            if tries > 0 && shared.mailbox.gate.is_closed() {
                tracing::warn!(
                    held = self.retry.len(),
                    "stopping with writes held after transient failures: stopping at once, they go back to the queue"
                );
                shared.abort();
                self.drop_unsettled("the owner stopped with writes held");
                return;
            }
            std::thread::sleep(backoff(tries));
            tries = tries.saturating_add(1);
            self.retries += 1;
            self.blocked = false;
            if self.fence.needs_claim() {
                match self.claim(ctx) {
                    Claim::Held => {}
                    Claim::Later => continue,
                    Claim::Superseded => {
                        self.step_down();
                        return;
                    }
                }
            }
            for pending in std::mem::take(&mut self.retry) {
                if self.blocked {
                    self.retry.push(pending);
                } else {
                    self.run(pending);
                    self.absorb();
                }
            }
            if !self.blocked {
                self.settle_batch();
                self.absorb();
            }
        }
        self.blocked = false;
    }
}

/// 10 ms, doubling with each try, at most [`MAX_BACKOFF`].
fn backoff(tries: u32) -> Duration {
    Duration::from_millis(10)
        .saturating_mul(1 << tries.min(7))
        .min(MAX_BACKOFF)
}

impl Manager for RemoteDatabase {
    type Msg = RemoteDatabaseMsg;

    fn handle(&mut self, msg: RemoteDatabaseMsg, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        let (write, reply) = match msg {
            RemoteDatabaseMsg::Execute(write) => (write, None),
            RemoteDatabaseMsg::ExecuteAsk(write, reply) => (write, Some(reply)),
        };
        let pending = Pending {
            seq: self.next_seq,
            write,
            reply,
        };
        self.next_seq += 1;
        if ctx.handle().shared.is_aborted() {
            // Stopped at once: this delivery is the next owner's.
            return;
        }
        if self.blocked {
            self.retry.push(pending);
            return;
        }
        if self.fence.served.is_none() {
            self.fence.served = Some(crate::broker::is_served(ctx.handle()));
        }
        if self.fence.needs_claim() {
            match self.claim(ctx) {
                Claim::Held => {}
                Claim::Later => {
                    self.blocked = true;
                    self.retry.push(pending);
                    return;
                }
                Claim::Superseded => {
                    self.step_down();
                    return;
                }
            }
        }
        self.run(pending);
        self.absorb();
    }

    /// Commits the batch (running held writes again until they commit); the
    /// broker acknowledges it only after this.
    fn idle(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.settle(ctx);
    }

    fn stopped(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        if self.fence.is_served() && ctx.handle().shared.is_aborted() {
            // Stopped at once (the channel lost for good): nothing
            // handled since the last `idle` may commit; the broker gives
            // those deliveries to the next owner.
            self.drop_unsettled("the owner stopped at once");
            return;
        }
        self.settle(ctx);
    }

    fn recover(&mut self, _panic: &str, _ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.recover_after_panic();
    }
}
