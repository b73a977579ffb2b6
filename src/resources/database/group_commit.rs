//! The group-commit engine: a batch of writes in one transaction, each in a
//! savepoint of its own, committed (after an optional check) when the batch
//! ends; see the diagram in the module above.

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;

use super::{DatabaseError, DatabaseStats};

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

/// Runs inside a batch's transaction just before its COMMIT, and may refuse
/// it: the batch is then rolled back and its held writes fail with
/// [`DatabaseError::BatchAborted`] and the reason. (`RemoteDatabase` checks
/// there that no other owner has claimed the database since it did.)
pub(crate) trait CommitCheck {
    /// `Err(reason)` refuses the commit.
    fn before_commit(&mut self, conn: &Connection) -> Result<(), &'static str>;
}

/// Commits unconditionally.
pub(crate) struct NoCheck;

impl CommitCheck for NoCheck {
    fn before_commit(&mut self, _conn: &Connection) -> Result<(), &'static str> {
        Ok(())
    }
}

/// One SQLite connection and its open batch: the group commit that
/// `Database` and `RemoteDatabase` both run.
pub(crate) struct GroupCommit {
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

impl GroupCommit {
    /// The engine of a freshly opened connection; `restricted` is the flag
    /// its authorizer reads.
    pub(super) fn new(conn: Connection, max_batch: usize, restricted: Arc<AtomicBool>) -> Self {
        GroupCommit {
            conn,
            max_batch,
            in_transaction: false,
            savepoint_open: false,
            writes_in_batch: 0,
            held: Vec::new(),
            told_in_batch: 0,
            restricted,
            stats: DatabaseStats::default(),
        }
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
    pub(crate) fn commit_if_full(&mut self, check: &mut dyn CommitCheck) {
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

/// The engine's interface: what a manager running the group commit (a
/// `Database`, a `RemoteDatabase`) calls from its hooks.
impl GroupCommit {
    /// Handles one write message: into the open batch, which is committed
    /// if it reached its size limit.
    pub(crate) fn handle_write(&mut self, op: Box<dyn WriteOp>) {
        self.handle_write_checked(op, &mut NoCheck);
    }

    /// [`handle_write`](GroupCommit::handle_write), with `check` run inside the
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

    /// [`settle`](GroupCommit::settle), with `check` run inside the transaction
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

    /// Commits the open batch, then runs `job` on the connection outside
    /// any transaction (a `DatabaseHandle::call`).
    pub(crate) fn call(&mut self, job: impl FnOnce(&mut Connection)) {
        self.restore();
        self.commit(&mut NoCheck);
        job(&mut self.conn);
        self.restore();
    }
}

impl fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.conn.path())
            .field("max_batch", &self.max_batch)
            .field("in_transaction", &self.in_transaction)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
