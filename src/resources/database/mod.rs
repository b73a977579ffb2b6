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

mod error;
mod group_commit;
mod handle;
mod open;

use std::fmt;
use std::path::Path;

pub use error::{DatabaseError, OpenError};
pub(crate) use group_commit::GroupCommit;
#[cfg(feature = "amqp")]
pub(crate) use group_commit::{CommitCheck, WriteOp};
pub use handle::{DatabaseHandle, DatabaseMsg};
pub use open::{DEFAULT_MAX_BATCH_WRITES, DatabaseBuilder, Synchronous};

use group_commit::NoCheck;
use handle::Op;
use open::Target;

use crate::{Context, Manager, Runtime, SpawnError};

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
/// let stats = db.stats()?;
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
    engine: GroupCommit,
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
    pub fn open(path: impl AsRef<Path>) -> Result<Database, OpenError> {
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

    /// Wraps an opened connection's engine.
    pub(super) fn from_engine(engine: GroupCommit) -> Database {
        Database { engine }
    }

    /// The group-commit engine, for a manager that runs it under its own
    /// messages (`RemoteDatabase`).
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn into_engine(self) -> GroupCommit {
        self.engine
    }
}

impl Manager for Database {
    type Msg = DatabaseMsg;

    fn handle(&mut self, msg: DatabaseMsg, _ctx: &mut Context<'_, DatabaseMsg>) {
        match msg.0 {
            Op::Write(op) => self.engine.handle_write(op),
            Op::Call(job) => self.engine.call(job),
            Op::Stats(reply) => {
                self.engine.recover_after_panic();
                reply.send(self.engine.stats());
                self.engine.commit_if_full(&mut NoCheck);
            }
        }
    }

    fn idle(&mut self, _ctx: &mut Context<'_, DatabaseMsg>) {
        self.engine.settle();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, DatabaseMsg>) {
        self.engine.settle();
    }

    /// A panic escaped a `call` or a write: roll back what it left open, at
    /// once, before anything else reaches the connection.
    fn recover(&mut self, _panic: &str, _ctx: &mut Context<'_, DatabaseMsg>) {
        self.engine.recover_after_panic();
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.engine, f)
    }
}
