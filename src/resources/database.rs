//! `Database`: one SQLite connection owned by one manager thread, with
//! group-committed writes.
//!
//! # How a batch of writes is committed
//!
//! ```text
//! first write of a batch:   BEGIN IMMEDIATE
//! each write message:       SAVEPOINT custody_write
//!                           run the statement or closure
//!                           ok    -> RELEASE custody_write, hold the reply
//!                           error -> ROLLBACK TO + RELEASE, answer the error now
//!                           panic -> ROLLBACK TO + RELEASE, let the panic go on
//! mailbox dry, batch full,
//! a `call`, or stopping:    COMMIT, then answer every held reply
//!                           (or, if COMMIT fails, give each the error)
//! ```
//!
//! So a write acknowledged with `Ok` is committed, and a write that failed
//! left no trace, while a busy database pays for one commit (one `fsync` with
//! `synchronous = FULL`) per batch rather than per write.
//!
//! The same group commit serves `RemoteDatabase` (features `amqp` and
//! `sqlite`), a database served from a broker queue whose writes carry ids:
//! each id is recorded inside its write's savepoint, so a write delivered
//! again after a crash changes nothing. It adds a check run inside the
//! transaction just before COMMIT (its owner epoch), which may roll the
//! batch back instead, and it is told the outcome of every write, told ones
//! too, so that it can run again the writes that failed for a transient
//! reason ([`DatabaseError::is_transient`]).

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use thiserror::Error;

use crate::SendError;
use crate::{AskError, Context, Handle, Manager, Reply, Runtime, SpawnError};

/// The savepoint wrapped around each write message, and the statements that
/// open, release and undo it.
const SAVEPOINT: &str = "custody_write";
const OPEN_SAVEPOINT: &str = "SAVEPOINT custody_write";
const RELEASE_SAVEPOINT: &str = "RELEASE custody_write";
const UNDO_SAVEPOINT: &str = "ROLLBACK TO custody_write; RELEASE custody_write";

/// The default for [`DatabaseBuilder::max_batch`].
pub const DEFAULT_MAX_BATCH_WRITES: usize = 512;

/// Builds a `Vec<rusqlite::types::Value>` of owned SQL parameters for
/// [`DatabaseHandle::execute`], converting each argument with
/// `Value::from` (integers, floats, `bool`, `String`, `Vec<u8>`, `Option`s of
/// those; write string literals as `String`s).
///
/// # Examples
///
/// ```
/// use custody::sql_values;
/// use custody::resources::rusqlite::types::Value;
///
/// let params = sql_values![7, "seven".to_owned(), None::<i64>];
/// assert_eq!(params, vec![Value::Integer(7), Value::Text("seven".into()), Value::Null]);
/// ```
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
macro_rules! sql_values {
    ($($value:expr),* $(,)?) => {
        ::std::vec![$($crate::resources::rusqlite::types::Value::from($value)),*]
    };
}

/// The `PRAGMA synchronous` level of a [`Database`] connection: how hard
/// SQLite works to make a commit survive a power cut.
///
/// # Examples
///
/// ```
/// use custody::resources::{Database, Synchronous};
///
/// assert_eq!(Synchronous::default(), Synchronous::Full);
/// let db = Database::in_memory().synchronous(Synchronous::Normal).open()?;
/// # drop(db);
/// # Ok::<(), custody::resources::DatabaseError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Synchronous {
    /// `FULL`: every commit is synced to disk before it is acknowledged.
    #[default]
    Full,
    /// `NORMAL`: in WAL mode, a commit survives a crash of the process but
    /// the last ones may be lost in a power cut.
    Normal,
    /// `OFF`: no syncing at all.
    Off,
}

impl Synchronous {
    /// The pragma's keyword: `"FULL"`, `"NORMAL"` or `"OFF"`.
    pub fn keyword(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }

    /// The number `PRAGMA synchronous` reads back: 2, 1 or 0.
    pub fn level(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
            Synchronous::Off => 0,
        }
    }
}

/// Why a database request failed.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Database, DatabaseError};
///
/// let rt = Runtime::new();
/// let db = Database::in_memory()
///     .init_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
///     .spawn(&rt, "db")?;
/// db.execute("INSERT INTO t VALUES (1)", vec![])?;
/// let duplicate = db.execute("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
/// assert!(matches!(duplicate, DatabaseError::Sqlite(_)));
/// assert!(duplicate.to_string().contains("UNIQUE"));
/// # Ok::<(), DatabaseError>(())
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// SQLite refused the statement or closure (its savepoint was rolled
    /// back), or opening or setting up the connection failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The write succeeded but committing its batch failed, so it was rolled
    /// back with the rest of the batch.
    #[error("committing the write batch failed, so this write was rolled back")]
    Commit(#[source] Arc<rusqlite::Error>),
    /// The batch's transaction was lost before it could commit (SQLite rolls
    /// a transaction back by itself after some I/O and memory errors), so
    /// this write is not committed.
    #[error("the write batch was abandoned before its commit: {reason}")]
    BatchAborted {
        /// What happened to the batch.
        reason: &'static str,
    },
    /// The database could not be switched to write-ahead logging.
    #[error("the database could not be switched to WAL mode: its journal mode is `{mode}`")]
    NotWal {
        /// The journal mode SQLite reported.
        mode: String,
    },
    /// The init SQL began a transaction and did not end it.
    #[error("the init SQL left a transaction open")]
    InitLeftTransaction,
    /// A fire-and-forget write was refused: the manager is stopping or
    /// stopped. The told methods return a [`RefusedWrite`], which holds the
    /// write; this variant is what it becomes when converted (by `?` in a
    /// function returning `DatabaseError`), which drops the write.
    #[error("manager `{manager}` is stopped")]
    Stopped {
        /// The manager's name.
        manager: String,
    },
    /// The manager could not be asked (stopped, or the request panicked).
    #[error(transparent)]
    Runtime(#[from] AskError),
    /// The manager could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl DatabaseError {
    /// Whether the failure says nothing about the write itself, so that the
    /// same write may succeed when tried again: SQLite was busy or locked
    /// (another connection held the write lock past the busy timeout), an
    /// I/O error, a full disk, no memory, a file that could not be opened,
    /// or a batch rolled back because of something other than this write
    /// ([`BatchAborted`](DatabaseError::BatchAborted)). A failed statement
    /// (a constraint, a syntax error, a type) is not transient: it would
    /// fail again.
    ///
    /// A [`RemoteDatabase`](crate::resources::RemoteDatabase) holds a write
    /// that failed this way and runs it again, instead of settling it.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    /// use custody::resources::Database;
    ///
    /// let rt = Runtime::new();
    /// let db = Database::in_memory()
    ///     .init_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    ///     .spawn(&rt, "db")?;
    /// db.execute("INSERT INTO t VALUES (1)", vec![])?;
    /// let duplicate = db.execute("INSERT INTO t VALUES (1)", vec![]).unwrap_err();
    /// assert!(!duplicate.is_transient()); // it would fail again
    /// # Ok::<(), custody::resources::DatabaseError>(())
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            DatabaseError::Sqlite(error) => is_transient_sqlite(error),
            DatabaseError::Commit(error) => is_transient_sqlite(error),
            DatabaseError::BatchAborted { .. } => true,
            _ => false,
        }
    }
}

/// SQLite's result codes for failures of the moment rather than of the
/// statement.
fn is_transient_sqlite(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::CannotOpen
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}

/// A told write ([`tell_execute`](DatabaseHandle::tell_execute) or
/// [`tell_write`](DatabaseHandle::tell_write)) that the database manager
/// refused; the write comes back: `(sql, params)` for `tell_execute`, the
/// closure for `tell_write`.
///
/// Its `Debug` does not need `T: Debug` (closures are not), and it converts
/// into [`DatabaseError::Stopped`] for `?`, dropping the write: call
/// [`into_inner`](RefusedWrite::into_inner) first to keep it.
///
/// # Examples
///
/// ```
/// use custody::{Runtime, sql_values};
/// use custody::resources::{Database, RefusedWrite};
///
/// let rt = Runtime::new();
/// let db = Database::in_memory().spawn(&rt, "db")?;
/// db.stop();
/// db.join()?;
/// let refused = db.tell_execute("INSERT INTO t VALUES (?1)", sql_values![7]).unwrap_err();
/// assert!(matches!(&refused, RefusedWrite::Stopped { manager, .. } if manager == "db"));
/// assert_eq!(refused.to_string(), "database manager `db` is stopped: the told write was refused");
/// let (sql, params) = refused.into_inner();
/// assert_eq!(sql, "INSERT INTO t VALUES (?1)");
/// assert_eq!(params, sql_values![7]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Error)]
#[non_exhaustive]
pub enum RefusedWrite<T> {
    /// The manager is stopping or stopped.
    #[error("database manager `{manager}` is stopped: the told write was refused")]
    Stopped {
        /// The manager's name.
        manager: String,
        /// The write that was not sent.
        write: T,
    },
    /// Told from a manager into the database's full bounded mailbox while the
    /// database waits (through a chain of asks) on that manager: waiting for
    /// room would never end.
    #[error("telling database manager `{manager}` would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The manager's name.
        manager: String,
        /// The write that was not sent.
        write: T,
        /// The managers around the cycle, the sender first and last.
        cycle: Vec<String>,
    },
}

impl<T> RefusedWrite<T> {
    /// The write that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            RefusedWrite::Stopped { write, .. } | RefusedWrite::Deadlock { write, .. } => write,
        }
    }

    /// The write that was not sent, borrowed.
    pub fn write(&self) -> &T {
        match self {
            RefusedWrite::Stopped { write, .. } | RefusedWrite::Deadlock { write, .. } => write,
        }
    }

    /// The name of the manager that refused it.
    pub fn manager(&self) -> &str {
        match self {
            RefusedWrite::Stopped { manager, .. } | RefusedWrite::Deadlock { manager, .. } => {
                manager
            }
        }
    }
}

impl<T> fmt::Debug for RefusedWrite<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusedWrite::Stopped { manager, .. } => f
                .debug_struct("Stopped")
                .field("manager", manager)
                .finish_non_exhaustive(),
            RefusedWrite::Deadlock { manager, cycle, .. } => f
                .debug_struct("Deadlock")
                .field("manager", manager)
                .field("cycle", cycle)
                .finish_non_exhaustive(),
        }
    }
}

impl<T> From<RefusedWrite<T>> for DatabaseError {
    /// Keeps the reason and drops the write.
    fn from(refused: RefusedWrite<T>) -> DatabaseError {
        match refused {
            RefusedWrite::Stopped { manager, .. } => DatabaseError::Stopped { manager },
            RefusedWrite::Deadlock { cycle, .. } => {
                DatabaseError::Runtime(AskError::Deadlock { cycle })
            }
        }
    }
}

/// A snapshot of a database manager's counters.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::Database;
///
/// let rt = Runtime::new();
/// let db = Database::in_memory().init_sql("CREATE TABLE t (x)").spawn(&rt, "db")?;
/// db.execute("INSERT INTO t VALUES (1)", vec![])?;
/// db.tell_execute("INSERT INTO nowhere VALUES (1)", vec![])?;
/// db.join()?; // told writes are settled too
/// let stats = db.database_stats()?;
/// assert_eq!(stats.committed_writes, 1);
/// assert_eq!(stats.failed_writes, 1);
/// assert_eq!(stats.failed_told_writes, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatabaseStats {
    /// Write transactions committed.
    pub commits: u64,
    /// Writes committed, asked and told.
    pub committed_writes: u64,
    /// Writes that failed (their statement, closure or commit failed, or they
    /// panicked), asked and told.
    pub failed_writes: u64,
    /// Of the failed writes, those sent without waiting: nobody got their
    /// error, which was logged with `tracing::warn!`.
    pub failed_told_writes: u64,
    /// Writes whose closure panicked.
    pub panicked_writes: u64,
    /// Commits that failed.
    pub failed_commits: u64,
}

#[derive(Clone, Debug)]
enum Target {
    File(PathBuf),
    Memory,
}

/// Configures and opens a [`Database`]; made by [`Database::builder`] or
/// [`Database::in_memory`].
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Database, Synchronous};
///
/// let path = std::env::temp_dir().join(format!("custody-doc-builder-{}.db", std::process::id()));
/// let rt = Runtime::new();
/// let db = Database::builder(&path)
///     .synchronous(Synchronous::Normal)
///     .max_batch(128)
///     .init_sql("CREATE TABLE IF NOT EXISTS events (name TEXT NOT NULL)")
///     .spawn(&rt, "events")?;
/// db.execute("INSERT INTO events VALUES (?1)", vec!["started".to_owned().into()])?;
/// let mode: String = db.call(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))??;
/// assert_eq!(mode, "wal");
/// rt.shutdown();
/// for suffix in ["", "-wal", "-shm"] {
///     let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a DatabaseBuilder does nothing until `open` or `spawn`"]
pub struct DatabaseBuilder {
    target: Target,
    synchronous: Synchronous,
    max_batch: usize,
    init_sql: Option<String>,
}

impl DatabaseBuilder {
    fn new(target: Target) -> DatabaseBuilder {
        DatabaseBuilder {
            target,
            synchronous: Synchronous::default(),
            max_batch: DEFAULT_MAX_BATCH_WRITES,
            init_sql: None,
        }
    }

    /// The `PRAGMA synchronous` level; [`Synchronous::Full`] by default.
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// The most write messages in one transaction: a batch that reaches it is
    /// committed at once, even if more writes are queued. 0 is taken as 1.
    /// [`DEFAULT_MAX_BATCH_WRITES`] (512) by default.
    pub fn max_batch(mut self, writes: usize) -> Self {
        self.max_batch = writes.max(1);
        self
    }

    /// SQL run once right after opening (several statements are fine), for
    /// example `CREATE TABLE IF NOT EXISTS ...`.
    pub fn init_sql(mut self, sql: impl Into<String>) -> Self {
        self.init_sql = Some(sql.into());
        self
    }

    /// Opens the connection on the calling thread, so that a bad path or init
    /// SQL fails here; the returned manager is then spawned.
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Sqlite`] if opening, a pragma or the init SQL fails,
    /// [`DatabaseError::NotWal`] if a file database refuses WAL mode,
    /// [`DatabaseError::InitLeftTransaction`] if the init SQL left a
    /// transaction open.
    pub fn open(self) -> Result<Database, DatabaseError> {
        let conn = match &self.target {
            Target::File(path) => {
                let conn = Connection::open(path)?;
                let mode: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(DatabaseError::NotWal { mode });
                }
                conn
            }
            Target::Memory => Connection::open_in_memory()?,
        };
        conn.pragma_update(None, "synchronous", self.synchronous.keyword())?;
        if let Some(sql) = &self.init_sql {
            conn.execute_batch(sql)?;
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK")?;
                return Err(DatabaseError::InitLeftTransaction);
            }
        }
        let restricted = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&restricted);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !flag.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match ctx.action {
                AuthAction::Transaction { .. } => Authorization::Deny,
                AuthAction::Savepoint { savepoint_name, .. }
                    if savepoint_name.eq_ignore_ascii_case(SAVEPOINT) =>
                {
                    Authorization::Deny
                }
                _ => Authorization::Allow,
            }
        }));
        Ok(Database {
            conn,
            max_batch: self.max_batch,
            in_transaction: false,
            savepoint_open: false,
            writes_in_batch: 0,
            held: Vec::new(),
            told_in_batch: 0,
            restricted,
            stats: DatabaseStats::default(),
        })
    }

    /// Opens the database and spawns its manager on `rt` with the runtime's
    /// defaults.
    ///
    /// # Errors
    ///
    /// As [`open`](DatabaseBuilder::open), plus [`DatabaseError::Spawn`].
    pub fn spawn(
        self,
        rt: &Runtime,
        name: impl Into<String>,
    ) -> Result<DatabaseHandle, DatabaseError> {
        Ok(self.open()?.spawn(rt, name)?)
    }
}

/// A write message's work, type-erased: run it, then either answer it after
/// the commit or fail it. (`Any`, so that a refused told write can be taken
/// back out of its message.)
pub(crate) trait WriteOp: Any + Send {
    /// Runs the write inside its savepoint, keeping any result for later.
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()>;
    /// Whether someone waits for the answer (an ask rather than a tell).
    fn is_asked(&self) -> bool;
    /// Whether the write is held until its batch ends and told its outcome
    /// (`succeed` or `fail`) even when nobody waits for it: a
    /// `RemoteDatabase` needs the outcome of every write, to retry or
    /// settle it.
    fn wants_outcome(&self) -> bool {
        self.is_asked()
    }
    /// What to call this write in a log line.
    fn describe(&self) -> &str;
    /// The batch committed: answer `Ok`.
    fn succeed(self: Box<Self>);
    /// The write, or its batch, failed: answer the error.
    fn fail(self: Box<Self>, error: DatabaseError);
}

/// Runs inside a batch's transaction just before its COMMIT, and may refuse
/// it: the batch is then rolled back and its held writes fail with
/// [`DatabaseError::BatchAborted`] and the reason. (`RemoteDatabase` checks
/// there that no other owner has claimed the database since it did.)
pub(crate) trait CommitCheck {
    /// `Err(reason)` refuses the commit.
    fn before_commit(&mut self, conn: &Connection) -> Result<(), &'static str>;
}

/// Commits unconditionally.
struct NoCheck;

impl CommitCheck for NoCheck {
    fn before_commit(&mut self, _conn: &Connection) -> Result<(), &'static str> {
        Ok(())
    }
}

struct ExecuteOp {
    sql: String,
    params: Vec<Value>,
    changed: usize,
    reply: Option<Reply<Result<usize, DatabaseError>>>,
}

impl WriteOp for ExecuteOp {
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut statement = conn.prepare_cached(&self.sql)?;
        self.changed = statement.execute(params_from_iter(self.params.iter()))?;
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.reply.is_some()
    }

    fn describe(&self) -> &str {
        &self.sql
    }

    fn succeed(self: Box<Self>) {
        if let Some(reply) = self.reply {
            reply.send(Ok(self.changed));
        }
    }

    fn fail(self: Box<Self>, error: DatabaseError) {
        if let Some(reply) = self.reply {
            reply.send(Err(error));
        }
    }
}

struct ClosureOp<F, T: Send + 'static> {
    work: Option<F>,
    value: Option<T>,
    reply: Option<Reply<Result<T, DatabaseError>>>,
}

impl<F, T> WriteOp for ClosureOp<F, T>
where
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    T: Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if let Some(work) = self.work.take() {
            self.value = Some(work(conn)?);
        }
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.reply.is_some()
    }

    fn describe(&self) -> &str {
        "a write closure"
    }

    fn succeed(self: Box<Self>) {
        if let (Some(reply), Some(value)) = (self.reply, self.value) {
            reply.send(Ok(value));
        }
    }

    fn fail(self: Box<Self>, error: DatabaseError) {
        if let Some(reply) = self.reply {
            reply.send(Err(error));
        }
    }
}

/// A job run on the connection outside any transaction.
type CallJob = Box<dyn FnOnce(&mut Connection) + Send>;

enum Op {
    Write(Box<dyn WriteOp>),
    Call(CallJob),
    Stats(Reply<DatabaseStats>),
}

/// A message for a [`Database`] manager. Its contents are private: build
/// messages with the methods of [`DatabaseHandle`].
///
/// # Examples
///
/// ```
/// use custody::{Handle, Runtime};
/// use custody::resources::{Database, DatabaseHandle, DbMsg};
///
/// let rt = Runtime::new();
/// let raw: Handle<DbMsg> = rt.spawn("db", Database::in_memory().open()?)?;
/// let db = DatabaseHandle::from(raw);
/// assert_eq!(db.call(|c| c.is_autocommit())?, true);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DbMsg(Op);

impl fmt::Debug for DbMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Op::Write(op) if op.is_asked() => "write",
            Op::Write(_) => "told write",
            Op::Call(_) => "call",
            Op::Stats(_) => "stats",
        };
        f.debug_tuple("DbMsg").field(&kind).finish()
    }
}

/// A manager owning one SQLite connection, opened in WAL mode, whose writes
/// are group-committed.
///
/// Writes ([`execute`](DatabaseHandle::execute),
/// [`write`](DatabaseHandle::write) and their fire-and-forget forms) that
/// arrive together share one transaction: each runs in its own savepoint, so a
/// failing statement or a panicking closure fails only its own caller, and the
/// batch is committed when the mailbox runs dry, when it reaches
/// [`max_batch`](DatabaseBuilder::max_batch) writes, before a
/// [`call`](DatabaseHandle::call), and when the manager stops. Successful
/// writers are answered only after the commit, so `Ok` means committed.
///
/// Write closures may not begin, commit or roll back transactions, nor touch
/// the manager's own savepoint: an authorizer refuses those statements with
/// SQLite's "not authorized" error, failing only that write. (Replacing the
/// connection's authorizer in a [`call`](DatabaseHandle::call) removes this
/// guard.)
///
/// # Examples
///
/// ```
/// use custody::{Runtime, sql_values};
/// use custody::resources::Database;
///
/// let rt = Runtime::new();
/// let db = Database::in_memory()
///     .init_sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
///     .spawn(&rt, "kv")?;
/// assert_eq!(db.execute("INSERT INTO kv VALUES (?1, ?2)", sql_values!["a".to_owned(), 1])?, 1);
/// // A read-modify-write, atomic because only this thread touches the connection.
/// let new = db.write(|c| {
///     let v: i64 = c.query_row("SELECT v FROM kv WHERE k = 'a'", [], |r| r.get(0))?;
///     c.execute("UPDATE kv SET v = ?1 WHERE k = 'a'", [v + 1])?;
///     Ok(v + 1)
/// })?;
/// assert_eq!(new, 2);
/// # Ok::<(), custody::resources::DatabaseError>(())
/// ```
pub struct Database {
    conn: Connection,
    max_batch: usize,
    /// A `BEGIN` was issued and not yet committed or rolled back.
    in_transaction: bool,
    /// A write's savepoint is open (a write is running, or panicked).
    savepoint_open: bool,
    writes_in_batch: usize,
    /// Successful asked writes, answered after the commit.
    held: Vec<Box<dyn WriteOp>>,
    /// Successful told writes in the open batch.
    told_in_batch: u64,
    /// Set while user code runs inside a write: the authorizer then refuses
    /// transaction control.
    restricted: Arc<AtomicBool>,
    stats: DatabaseStats,
}

impl Database {
    /// Configures a database stored in the file at `path` (created if
    /// missing), opened in WAL mode.
    pub fn builder(path: impl AsRef<Path>) -> DatabaseBuilder {
        DatabaseBuilder::new(Target::File(path.as_ref().to_path_buf()))
    }

    /// Configures a private in-memory database, for tests and examples. It has
    /// no write-ahead log (SQLite keeps in-memory databases in `memory`
    /// journal mode); everything else behaves as with a file.
    pub fn in_memory() -> DatabaseBuilder {
        DatabaseBuilder::new(Target::Memory)
    }

    /// Opens the file at `path` with the default settings.
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Database, DatabaseError> {
        Database::builder(path).open()
    }

    /// Spawns this manager on `rt` with the runtime's defaults.
    ///
    /// To choose a backend or capacity, spawn it with
    /// [`Runtime::manager`] and wrap the handle with
    /// [`DatabaseHandle::from`].
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`].
    pub fn spawn(
        self,
        rt: &Runtime,
        name: impl Into<String>,
    ) -> Result<DatabaseHandle, SpawnError> {
        rt.spawn(name, self).map(DatabaseHandle::from)
    }

    fn write(&mut self, mut op: Box<dyn WriteOp>, check: &mut dyn CommitCheck) {
        if !self.in_transaction {
            if let Err(error) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                self.reject(op, error.into());
                return;
            }
            self.in_transaction = true;
        }
        self.writes_in_batch += 1;
        if let Err(error) = self.conn.execute_batch(OPEN_SAVEPOINT) {
            self.reject(op, error.into());
            self.check_transaction();
            return;
        }
        self.savepoint_open = true;
        self.restricted.store(true, Ordering::Relaxed);
        let ran = panic::catch_unwind(AssertUnwindSafe(|| op.run(&self.conn)));
        self.restricted.store(false, Ordering::Relaxed);
        let result = match ran {
            Ok(result) => result,
            Err(payload) => {
                self.stats.panicked_writes += 1;
                self.stats.failed_writes += 1;
                if !op.is_asked() {
                    self.stats.failed_told_writes += 1;
                }
                tracing::warn!(
                    write = op.describe(),
                    "a write panicked; rolling back its savepoint, keeping the rest of the batch"
                );
                self.rollback_savepoint();
                self.check_transaction();
                self.commit_if_full(check);
                // Unwinding drops `op`, and with it the reply: the runtime
                // answers the asker with the panic message.
                panic::resume_unwind(payload);
            }
        };
        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back by itself.
            self.savepoint_open = false;
            let lost = "SQLite rolled its transaction back after an error";
            match result {
                Ok(()) => self.reject(op, DatabaseError::BatchAborted { reason: lost }),
                Err(error) => self.reject(op, error.into()),
            }
            self.abandon(lost);
            return;
        }
        match result.and_then(|()| self.conn.execute_batch(RELEASE_SAVEPOINT)) {
            Ok(()) => {
                self.savepoint_open = false;
                if op.wants_outcome() {
                    self.held.push(op);
                } else {
                    self.told_in_batch += 1;
                }
            }
            Err(error) => {
                self.rollback_savepoint();
                self.reject(op, error.into());
                self.check_transaction();
            }
        }
    }

    /// Answers a failed write now (or logs it, for a told write).
    fn reject(&mut self, op: Box<dyn WriteOp>, error: DatabaseError) {
        self.stats.failed_writes += 1;
        if op.is_asked() {
            tracing::debug!(write = op.describe(), %error, "a write failed");
            op.fail(error);
        } else {
            self.stats.failed_told_writes += 1;
            tracing::warn!(write = op.describe(), %error, "a told write failed");
        }
    }

    /// Undoes the open write savepoint; if even that fails, the batch can no
    /// longer be trusted and is abandoned.
    fn rollback_savepoint(&mut self) {
        if !self.savepoint_open {
            return;
        }
        self.savepoint_open = false;
        if let Err(error) = self.conn.execute_batch(UNDO_SAVEPOINT) {
            tracing::error!(%error, "rolling back a write's savepoint failed");
            self.abandon("rolling back a failed write's savepoint failed");
        }
    }

    /// Abandons a batch whose transaction vanished under us.
    fn check_transaction(&mut self) {
        if self.in_transaction && self.conn.is_autocommit() {
            self.abandon("its transaction ended outside the manager's control");
        }
    }

    /// Commits when the batch has reached its size limit; otherwise `idle`
    /// (the mailbox ran dry) commits it.
    fn commit_if_full(&mut self, check: &mut dyn CommitCheck) {
        if self.in_transaction && self.writes_in_batch >= self.max_batch {
            self.commit(check);
        }
    }

    /// Commits the open batch and answers its held writers; `check` may
    /// refuse the commit first, from inside the transaction, which then
    /// rolls the batch back.
    fn commit(&mut self, check: &mut dyn CommitCheck) {
        if !self.in_transaction {
            return;
        }
        if let Err(reason) = check.before_commit(&self.conn) {
            self.abandon(reason);
            self.stats.failed_commits += 1;
            return;
        }
        self.in_transaction = false;
        self.writes_in_batch = 0;
        let (writes, told) = self.take_counts();
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.stats.commits += 1;
                self.stats.committed_writes += writes;
                for op in self.held.drain(..) {
                    op.succeed();
                }
                tracing::trace!(writes, "write batch committed");
            }
            Err(error) => {
                self.rollback_transaction("after a failed commit");
                self.stats.failed_commits += 1;
                self.stats.failed_writes += writes;
                self.stats.failed_told_writes += told;
                tracing::error!(%error, writes, told, "committing a write batch failed; its writes are rolled back");
                let error = Arc::new(error);
                for op in self.held.drain(..) {
                    op.fail(DatabaseError::Commit(Arc::clone(&error)));
                }
            }
        }
    }

    /// The writes of the open batch and, of those, the told ones (counted
    /// only, or held for their outcome); resets the count of told writes.
    fn take_counts(&mut self) -> (u64, u64) {
        let counted = std::mem::take(&mut self.told_in_batch);
        let held_told = self.held.iter().filter(|op| !op.is_asked()).count() as u64;
        (self.held.len() as u64 + counted, counted + held_told)
    }

    /// Rolls the open batch back and fails every held writer.
    fn abandon(&mut self, reason: &'static str) {
        self.rollback_transaction("an abandoned batch");
        self.in_transaction = false;
        self.savepoint_open = false;
        self.writes_in_batch = 0;
        let (writes, told) = self.take_counts();
        self.stats.failed_writes += writes;
        self.stats.failed_told_writes += told;
        tracing::error!(reason, writes, told, "a write batch was abandoned");
        for op in self.held.drain(..) {
            op.fail(DatabaseError::BatchAborted { reason });
        }
    }

    /// Puts the connection back in a known state before the next piece of
    /// work: rolls back a write savepoint left open by a panic, abandons a
    /// batch whose transaction vanished, and rolls back a transaction that a
    /// `call` left open.
    fn restore(&mut self) {
        self.restricted.store(false, Ordering::Relaxed);
        if self.savepoint_open {
            tracing::warn!("a write's savepoint was left open; rolling it back");
            self.rollback_savepoint();
        }
        self.check_transaction();
        if !self.in_transaction && !self.conn.is_autocommit() {
            tracing::warn!("a call left a transaction open; rolling it back");
            self.rollback_transaction("a transaction a call left open");
        }
    }

    /// Rolls back whatever transaction is open, if any.
    fn rollback_transaction(&mut self, what: &str) {
        if self.conn.is_autocommit() {
            return;
        }
        if let Err(error) = self.conn.execute_batch("ROLLBACK") {
            tracing::error!(%error, "rolling back {what} failed");
        }
    }
}

/// The manager hooks, without a `Context`, so that another manager owning a
/// `Database` (the remotely served one) runs the same group commit.
impl Database {
    /// Handles one write message: into the open batch, which is committed
    /// if it reached its size limit.
    pub(crate) fn handle_write(&mut self, op: Box<dyn WriteOp>) {
        self.handle_write_checked(op, &mut NoCheck);
    }

    /// [`handle_write`](Database::handle_write), with `check` run inside the
    /// transaction before a commit it leads to.
    pub(crate) fn handle_write_checked(
        &mut self,
        op: Box<dyn WriteOp>,
        check: &mut dyn CommitCheck,
    ) {
        self.restore();
        self.write(op, check);
        self.commit_if_full(check);
    }

    /// The mailbox ran dry, or the manager stops: commit the open batch.
    pub(crate) fn settle(&mut self) {
        self.settle_checked(&mut NoCheck);
    }

    /// [`settle`](Database::settle), with `check` run inside the transaction
    /// before the commit.
    pub(crate) fn settle_checked(&mut self, check: &mut dyn CommitCheck) {
        self.restore();
        self.commit(check);
    }

    /// Rolls the open batch back, failing its held writes with
    /// [`DatabaseError::BatchAborted`] and `reason`.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn abandon_batch(&mut self, reason: &'static str) {
        self.restore();
        if self.in_transaction {
            self.abandon(reason);
        }
    }

    /// The connection, when no batch is open (for work of its own
    /// transaction); `None` while a batch is open.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn connection_between_batches(&mut self) -> Option<&Connection> {
        self.restore();
        (!self.in_transaction).then_some(&self.conn)
    }

    /// The counters.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn stats(&self) -> DatabaseStats {
        self.stats
    }

    /// A panic escaped: roll back what it left open.
    pub(crate) fn recover_after_panic(&mut self) {
        self.restore();
    }

    /// Runs `sql` (outside any batch) on the connection, for setup.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn setup(&mut self, sql: &str) -> rusqlite::Result<()> {
        self.settle();
        self.conn.execute_batch(sql)
    }
}

impl Manager for Database {
    type Msg = DbMsg;

    fn handle(&mut self, msg: DbMsg, _ctx: &mut Context<'_, DbMsg>) {
        match msg.0 {
            Op::Write(op) => self.handle_write(op),
            Op::Call(job) => {
                self.restore();
                self.commit(&mut NoCheck);
                job(&mut self.conn);
                self.restore();
            }
            Op::Stats(reply) => {
                self.restore();
                reply.send(self.stats);
                self.commit_if_full(&mut NoCheck);
            }
        }
    }

    fn idle(&mut self, _ctx: &mut Context<'_, DbMsg>) {
        self.settle();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, DbMsg>) {
        self.settle();
    }

    /// A panic escaped a `call` or a write: roll back what it left open, at
    /// once, before anything else reaches the connection.
    fn recover(&mut self, _panic: &str, _ctx: &mut Context<'_, DbMsg>) {
        self.recover_after_panic();
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.conn.path())
            .field("max_batch", &self.max_batch)
            .field("in_transaction", &self.in_transaction)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The handle of a [`Database`], with one method per kind of request.
///
/// Asks return `Result<T, DatabaseError>`; the `tell_*` forms return once the
/// write is queued, their failures being logged and counted in
/// [`DatabaseStats`], and a write they could not queue (the manager is
/// stopping or stopped) comes back inside their [`RefusedWrite`] error. [`join`](Handle::join) (through `Deref`) waits until
/// every write sent so far is settled: committed, or failed.
///
/// # Examples
///
/// ```
/// use custody::{Runtime, sql_values};
/// use custody::resources::Database;
///
/// let rt = Runtime::new();
/// let db = Database::in_memory().init_sql("CREATE TABLE t (n INTEGER)").spawn(&rt, "db")?;
/// for n in 0..10 {
///     db.tell_execute("INSERT INTO t VALUES (?1)", sql_values![n])?;
/// }
/// db.join()?; // all ten committed
/// let sum: i64 = db.call(|c| c.query_row("SELECT sum(n) FROM t", [], |r| r.get(0)))??;
/// assert_eq!(sum, 45);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct DatabaseHandle {
    handle: Handle<DbMsg>,
}

impl DatabaseHandle {
    /// Runs `f` on the manager's thread with the connection, for reads and
    /// any other work, and returns its result.
    ///
    /// The open write batch is committed first (its writers answered), and
    /// `f` runs outside any transaction, seeing every write sent before it.
    /// A transaction that `f` leaves open is rolled back (and logged).
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Runtime`] if the manager is stopped or `f` panicked.
    pub fn call<T, F>(&self, f: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let value = self
            .handle
            .ask(|reply| DbMsg(Op::Call(Box::new(move |conn| reply.send(f(conn))))))?;
        Ok(value)
    }

    /// Runs one SQL statement with owned parameters (see [`sql_values!`]) as
    /// a group-committed write, and returns the number of rows changed once
    /// its batch is committed.
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Sqlite`] if the statement failed (nothing of it
    /// remains), [`DatabaseError::Commit`] or [`DatabaseError::BatchAborted`]
    /// if its batch could not be committed, [`DatabaseError::Runtime`] if the
    /// manager is stopped.
    ///
    /// [`sql_values!`]: crate::sql_values
    pub fn execute(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<usize, DatabaseError> {
        let sql = sql.into();
        self.handle.ask(|reply| {
            DbMsg(Op::Write(Box::new(ExecuteOp {
                sql,
                params,
                changed: 0,
                reply: Some(reply),
            })))
        })?
    }

    /// Runs `f` as a group-committed write and returns its value once the
    /// batch is committed. `f` runs inside a savepoint: if it returns an
    /// error or panics, everything it did is rolled back and the rest of the
    /// batch is kept.
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Sqlite`] with the error `f` returned,
    /// [`DatabaseError::Commit`] or [`DatabaseError::BatchAborted`] if its
    /// batch could not be committed, [`DatabaseError::Runtime`] if the
    /// manager is stopped or `f` panicked.
    pub fn write<T, F>(&self, f: F) -> Result<T, DatabaseError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.handle.ask(|reply| {
            DbMsg(Op::Write(Box::new(ClosureOp {
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        })?
    }

    /// Like [`execute`](DatabaseHandle::execute), without waiting: the write
    /// is group-committed with the others, and a failure is logged and
    /// counted in [`DatabaseStats::failed_told_writes`].
    ///
    /// # Errors
    ///
    /// [`RefusedWrite::Stopped`] if the manager is stopping or stopped; the
    /// SQL and its parameters come back inside, as `(sql, params)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Runtime, sql_values};
    /// use custody::resources::Database;
    ///
    /// let rt = Runtime::new();
    /// let db = Database::in_memory().init_sql("CREATE TABLE t (n INTEGER)").spawn(&rt, "db")?;
    /// db.tell_execute("INSERT INTO t VALUES (?1)", sql_values![1])?;
    /// db.stop();
    /// db.join()?; // the first write is committed, the manager has stopped
    /// let refused = db.tell_execute("INSERT INTO t VALUES (?1)", sql_values![2]).unwrap_err();
    /// let (sql, params) = refused.into_inner(); // nothing is lost: send it elsewhere, or retry
    /// assert_eq!(sql, "INSERT INTO t VALUES (?1)");
    /// assert_eq!(params, sql_values![2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_execute(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<(), RefusedWrite<(String, Vec<Value>)>> {
        let op = ExecuteOp {
            sql: sql.into(),
            params,
            changed: 0,
            reply: None,
        };
        self.tell(op, |op| (op.sql, op.params))
    }

    /// Like [`write`](DatabaseHandle::write), without waiting: `f`'s value is
    /// dropped, and a failure is logged and counted in
    /// [`DatabaseStats::failed_told_writes`].
    ///
    /// # Errors
    ///
    /// [`RefusedWrite::Stopped`] if the manager is stopping or stopped; `f`
    /// comes back inside, not run.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    /// use custody::resources::Database;
    /// use custody::resources::rusqlite::Connection;
    ///
    /// let rt = Runtime::new();
    /// let db = Database::in_memory().spawn(&rt, "db")?;
    /// db.stop();
    /// db.join()?;
    /// let refused = db
    ///     .tell_write(|c: &Connection| c.execute_batch("CREATE TABLE t (n INTEGER)"))
    ///     .unwrap_err();
    /// let create = refused.into_inner(); // the closure, never run
    /// let conn = Connection::open_in_memory()?;
    /// create(&conn)?;
    /// let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    /// assert_eq!(tables, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_write<T, F>(&self, f: F) -> Result<(), RefusedWrite<F>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let op = ClosureOp {
            work: Some(f),
            value: None,
            reply: None,
        };
        self.tell(op, |op| {
            op.work
                .expect("a told write's closure is taken only when it runs")
        })
    }

    /// Tells the write `op`; if it is refused, takes it back out of the
    /// message and gives the caller's input back with `input`.
    fn tell<O: WriteOp, T>(
        &self,
        op: O,
        input: impl FnOnce(O) -> T,
    ) -> Result<(), RefusedWrite<T>> {
        self.handle
            .tell(DbMsg(Op::Write(Box::new(op))))
            .map_err(|refused| {
                let cycle = match &refused {
                    SendError::Deadlock { cycle, .. } => Some(cycle.clone()),
                    _ => None,
                };
                let op = match refused.into_inner().0 {
                    Op::Write(op) => {
                        let op: Box<dyn Any> = op;
                        op.downcast::<O>().ok()
                    }
                    Op::Call(_) | Op::Stats(_) => None,
                };
                let op = op.expect("a refused tell gives back the write it was sent");
                let manager = self.handle.name().to_owned();
                let write = input(*op);
                match cycle {
                    Some(cycle) => RefusedWrite::Deadlock {
                        manager,
                        write,
                        cycle,
                    },
                    None => RefusedWrite::Stopped { manager, write },
                }
            })
    }

    /// The database manager's own counters. (The runtime's counters for this
    /// manager are [`Handle::stats`], through
    /// [`handle`](DatabaseHandle::handle).)
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Runtime`] if the manager is stopped.
    pub fn database_stats(&self) -> Result<DatabaseStats, DatabaseError> {
        Ok(self.handle.ask(|reply| DbMsg(Op::Stats(reply)))?)
    }

    /// The underlying handle.
    pub fn handle(&self) -> &Handle<DbMsg> {
        &self.handle
    }

    /// Unwraps the underlying handle.
    pub fn into_handle(self) -> Handle<DbMsg> {
        self.handle
    }
}

impl From<Handle<DbMsg>> for DatabaseHandle {
    fn from(handle: Handle<DbMsg>) -> DatabaseHandle {
        DatabaseHandle { handle }
    }
}

impl Deref for DatabaseHandle {
    type Target = Handle<DbMsg>;

    fn deref(&self) -> &Handle<DbMsg> {
        &self.handle
    }
}
