//! The group-commit engine (`resources/group_commit.rs`) on a SQLite
//! connection: the `Sqlite` store, the write messages' trait, and the
//! calls `Database` and `RemoteDatabase` make that name the connection.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;

use super::{DatabaseError, DatabaseStats};
use crate::resources::group_commit::{self as engine, Check, Outcome, Store};

pub(crate) use engine::NoCheck;

/// The savepoint wrapped around each write message, and the statements that
/// open, release and undo it.
pub(super) const SAVEPOINT: &str = "custody_write";
const OPEN_SAVEPOINT: &str = "SAVEPOINT custody_write";
const RELEASE_SAVEPOINT: &str = "RELEASE custody_write";
const UNDO_SAVEPOINT: &str = "ROLLBACK TO custody_write; RELEASE custody_write";

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

impl Outcome<DatabaseError> for dyn WriteOp {
    fn is_asked(&self) -> bool {
        WriteOp::is_asked(self)
    }
    fn wants_outcome(&self) -> bool {
        WriteOp::wants_outcome(self)
    }
    fn describe(&self) -> &str {
        WriteOp::describe(self)
    }
    fn succeed(self: Box<Self>) {
        WriteOp::succeed(self);
    }
    fn fail(self: Box<Self>, error: DatabaseError) {
        WriteOp::fail(self, error);
    }
}

/// Runs inside a batch's transaction just before its COMMIT, and may refuse
/// it: the batch is then rolled back and its held writes fail with
/// [`DatabaseError::BatchAborted`] and the reason. (`RemoteDatabase` checks
/// there that no other owner has claimed the database since it did.)
pub(crate) trait CommitCheck {
    /// `Err(reason)` refuses the commit.
    fn before_commit(&mut self, conn: &Connection) -> Result<(), &'static str>;
}

impl<T: CommitCheck> Check<Sqlite> for T {
    fn before_commit(&mut self, store: &mut Sqlite) -> Result<(), &'static str> {
        CommitCheck::before_commit(self, &store.conn)
    }
}

/// A SQLite connection as the engine's store.
pub(crate) struct Sqlite {
    conn: Connection,
    /// Set while user code runs inside a write: the authorizer then refuses
    /// transaction control.
    restricted: Arc<AtomicBool>,
}

/// Clears the authorizer's flag when a write ends, however it ends.
struct Unrestrict<'a>(&'a AtomicBool);

impl Drop for Unrestrict<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Store for Sqlite {
    type Op = dyn WriteOp;
    type Error = DatabaseError;
    type CommitFailure = Arc<rusqlite::Error>;

    fn begin(&mut self) -> Result<(), DatabaseError> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn savepoint(&mut self) -> Result<(), DatabaseError> {
        Ok(self.conn.execute_batch(OPEN_SAVEPOINT)?)
    }

    fn release(&mut self) -> Result<(), DatabaseError> {
        Ok(self.conn.execute_batch(RELEASE_SAVEPOINT)?)
    }

    fn rollback_to(&mut self) -> Result<(), DatabaseError> {
        Ok(self.conn.execute_batch(UNDO_SAVEPOINT)?)
    }

    fn commit(&mut self) -> Result<(), Arc<rusqlite::Error>> {
        self.conn.execute_batch("COMMIT").map_err(Arc::new)
    }

    fn rollback(&mut self) -> Result<(), DatabaseError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    fn run(&mut self, op: &mut dyn WriteOp) -> Result<(), DatabaseError> {
        self.restricted.store(true, Ordering::Relaxed);
        let _unrestrict = Unrestrict(&self.restricted);
        Ok(op.run(&self.conn)?)
    }

    fn aborted(reason: &'static str) -> DatabaseError {
        DatabaseError::BatchAborted { reason }
    }

    fn commit_failed(failure: Arc<rusqlite::Error>) -> DatabaseError {
        DatabaseError::Commit(failure)
    }
}

/// The group commit that `Database` and `RemoteDatabase` both run.
pub(crate) type GroupCommit = engine::GroupCommit<Sqlite>;

/// The calls that name the SQLite connection.
impl engine::GroupCommit<Sqlite> {
    /// The engine of a freshly opened connection; `restricted` is the flag
    /// its authorizer reads.
    pub(super) fn new(conn: Connection, max_batch: usize, restricted: Arc<AtomicBool>) -> Self {
        engine::GroupCommit::with_store(Sqlite { conn, restricted }, max_batch)
    }

    /// The connection, when no batch is open (for work of its own
    /// transaction); `None` while a batch is open.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn connection_between_batches(&mut self) -> Option<&Connection> {
        self.store_between_batches().map(|store| &store.conn)
    }

    /// The counters.
    pub(crate) fn stats(&self) -> DatabaseStats {
        let c = self.counters;
        DatabaseStats {
            commits: c.commits,
            committed_writes: c.committed_writes,
            failed_writes: c.failed_writes,
            failed_told_writes: c.failed_told_writes,
            panicked_writes: c.panicked_writes,
            failed_commits: c.failed_commits,
        }
    }

    /// Runs `sql` (outside any batch) on the connection, for setup.
    #[cfg(feature = "amqp")] // only RemoteDatabase uses it
    pub(crate) fn setup(&mut self, sql: &str) -> rusqlite::Result<()> {
        self.settle();
        self.store.conn.execute_batch(sql)
    }

    /// Commits the open batch, then runs `job` on the connection outside
    /// any transaction (a `DatabaseHandle::call`).
    pub(crate) fn call(&mut self, job: impl FnOnce(&mut Connection)) {
        self.call_store(|store| job(&mut store.conn));
    }
}

impl fmt::Debug for engine::GroupCommit<Sqlite> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.store.conn.path())
            .field("max_batch", &self.max_batch)
            .field("in_transaction", &self.in_transaction)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
