//! The group-commit engine, over any transactional store: a batch of writes
//! in one transaction, each in a savepoint of its own, committed (after an
//! optional check) when the batch ends. `Database` and `RemoteDatabase` run
//! it on a SQLite connection (`database/group_commit.rs`), `PgState` on a
//! PostgreSQL one (`postgres/store.rs`).
//!
//! ```text
//! first write of a batch:   begin
//! each write:               prepare (the store's own work for it, outside
//!                           any savepoint), then
//!   the batch keeps nothing yet:  run it bare; error or panic -> roll the
//!                                 whole transaction back (nothing else is
//!                                 lost), answer or unwind
//!   otherwise:                    savepoint, run it;
//!                                 ok    -> release, hold the answer
//!                                 error -> rollback-to, answer the error now
//!                                 panic -> rollback-to, let the panic go on
//! batch full, or the manager says so (idle, a call, stopping):
//!                           check (inside the transaction), commit,
//!                           then answer every held write
//! ```
//!
//! So the first write of a batch, and a batch of one write, pays for no
//! savepoint. Invariant: a held write is answered `Ok` only after the
//! commit that made it durable returned; anything else (a refused check, a
//! failed commit, a transaction the store lost) answers it with an error.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

/// A transactional connection the engine drives. Each method is one
/// transaction-control step; `in_transaction` is the check that a
/// transaction is still open and may commit (a store that lost it, or whose
/// transaction can no longer commit, says `false`).
pub(crate) trait Store {
    /// A write message's work, as a trait object.
    type Op: ?Sized + Outcome<Self::Error>;
    /// What a failed write is answered with.
    type Error: fmt::Display;
    /// Why a COMMIT failed, shared by every write of the batch.
    type CommitFailure: Clone + fmt::Display;

    /// Opens the batch's transaction.
    fn begin(&mut self) -> Result<(), Self::Error>;
    /// The store's own work for `op`, inside the transaction and outside
    /// any savepoint (what it does there stays until the batch ends, even
    /// if `op` fails). An error fails `op` only.
    fn prepare(&mut self, _op: &mut Self::Op) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Opens the write savepoint.
    fn savepoint(&mut self) -> Result<(), Self::Error>;
    /// Keeps what the write did (the savepoint is released).
    fn release(&mut self) -> Result<(), Self::Error>;
    /// Undoes what the write did, and ends its savepoint.
    fn rollback_to(&mut self) -> Result<(), Self::Error>;
    /// Commits the transaction.
    fn commit(&mut self) -> Result<(), Self::CommitFailure>;
    /// Rolls back the transaction, if one is open.
    fn rollback(&mut self) -> Result<(), Self::Error>;
    /// Whether a transaction is open and can still commit.
    fn in_transaction(&self) -> bool;
    /// Runs the write (in its savepoint, or bare).
    fn run(&mut self, op: &mut Self::Op) -> Result<(), Self::Error>;
    /// The error of a write whose batch was rolled back for `reason`.
    fn aborted(reason: &'static str) -> Self::Error;
    /// The error of a write whose batch failed to commit.
    fn commit_failed(failure: Self::CommitFailure) -> Self::Error;
}

/// What the engine does with a write besides running it: answer it.
pub(crate) trait Outcome<E> {
    /// Whether someone waits for the answer (an ask rather than a tell).
    fn is_asked(&self) -> bool;
    /// Whether the write is held until its batch ends and told its outcome
    /// even when nobody waits for it.
    fn wants_outcome(&self) -> bool;
    /// What to call this write in a log line.
    fn describe(&self) -> &str;
    /// The batch committed: answer `Ok`.
    fn succeed(self: Box<Self>);
    /// The write, or its batch, failed: answer the error.
    fn fail(self: Box<Self>, error: E);
}

/// Runs inside a batch's transaction just before its COMMIT, and may refuse
/// it: the batch is then rolled back and its held writes fail with the
/// store's `aborted(reason)`.
pub(crate) trait Check<S: ?Sized> {
    /// `Err(reason)` refuses the commit.
    fn before_commit(&mut self, store: &mut S) -> Result<(), &'static str>;
}

/// Commits unconditionally.
pub(crate) struct NoCheck;

impl<S: ?Sized> Check<S> for NoCheck {
    fn before_commit(&mut self, _store: &mut S) -> Result<(), &'static str> {
        Ok(())
    }
}

/// The engine's counters (each store's manager reports them in its own
/// stats type).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commits: u64,
    pub(crate) committed_writes: u64,
    pub(crate) failed_writes: u64,
    pub(crate) failed_told_writes: u64,
    pub(crate) panicked_writes: u64,
    pub(crate) failed_commits: u64,
}

/// How the write in hand is enclosed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// No write is running.
    None,
    /// A write runs in its savepoint.
    Savepoint,
    /// The batch's first kept write runs bare: undoing it is rolling the
    /// transaction back.
    Bare,
}

/// One connection and its open batch.
pub(crate) struct GroupCommit<S: Store> {
    pub(crate) store: S,
    pub(crate) max_batch: usize,
    /// A transaction was begun and not yet committed or rolled back.
    pub(crate) in_transaction: bool,
    /// How the write in hand is enclosed (a write is running, or panicked).
    open: Open,
    writes_in_batch: usize,
    /// Successful writes held for their outcome, answered after the commit.
    held: Vec<Box<S::Op>>,
    /// Successful told writes in the open batch, not held.
    told_in_batch: u64,
    pub(crate) counters: Counters,
}

impl<S: Store> GroupCommit<S> {
    /// The engine of a freshly opened store.
    pub(crate) fn with_store(store: S, max_batch: usize) -> Self {
        GroupCommit {
            store,
            max_batch,
            in_transaction: false,
            open: Open::None,
            writes_in_batch: 0,
            held: Vec::new(),
            told_in_batch: 0,
            counters: Counters::default(),
        }
    }

    fn write(&mut self, mut op: Box<S::Op>, check: &mut dyn Check<S>) {
        if !self.in_transaction {
            if let Err(error) = self.store.begin() {
                self.reject(op, error);
                return;
            }
            self.in_transaction = true;
        }
        self.writes_in_batch += 1;
        if let Err(error) = self.store.prepare(&mut op) {
            self.reject(op, error);
            self.check_transaction();
            return;
        }
        let bare = self.held.is_empty() && self.told_in_batch == 0;
        if bare {
            self.open = Open::Bare;
        } else {
            if let Err(error) = self.store.savepoint() {
                self.reject(op, error);
                self.check_transaction();
                return;
            }
            self.open = Open::Savepoint;
        }
        let ran = panic::catch_unwind(AssertUnwindSafe(|| self.store.run(&mut op)));
        let result = match ran {
            Ok(result) => result,
            Err(payload) => {
                self.counters.panicked_writes += 1;
                self.counters.failed_writes += 1;
                if !op.is_asked() {
                    self.counters.failed_told_writes += 1;
                }
                tracing::warn!(
                    write = op.describe(),
                    "a write panicked; rolling back what it did, keeping the rest of the batch"
                );
                self.undo_write();
                self.check_transaction();
                self.commit_if_full(check);
                // Unwinding drops `op`, and with it the reply: the runtime
                // answers the asker with the panic message.
                panic::resume_unwind(payload);
            }
        };
        if !self.store.in_transaction() && self.open == Open::Savepoint {
            // The store lost the whole transaction (SQLite rolls it back by
            // itself after some errors; a connection may be gone).
            self.open = Open::None;
            let lost = "the transaction was lost while a write ran";
            match result {
                Ok(()) => self.reject(op, S::aborted(lost)),
                Err(error) => self.reject(op, error),
            }
            self.abandon(lost);
            return;
        }
        let kept = match self.open {
            Open::Bare => result.and_then(|()| {
                if self.store.in_transaction() {
                    Ok(())
                } else {
                    Err(S::aborted("the transaction was lost while a write ran"))
                }
            }),
            _ => result.and_then(|()| self.store.release()),
        };
        match kept {
            Ok(()) => {
                self.open = Open::None;
                if op.wants_outcome() {
                    self.held.push(op);
                } else {
                    self.told_in_batch += 1;
                }
            }
            Err(error) => {
                self.undo_write();
                self.reject(op, error);
                self.check_transaction();
            }
        }
    }

    /// Answers a failed write now (or logs it, for a write nobody waits
    /// for); a write that wants its outcome is told it, asked or not.
    fn reject(&mut self, op: Box<S::Op>, error: S::Error) {
        self.counters.failed_writes += 1;
        if op.is_asked() {
            tracing::debug!(write = op.describe(), %error, "a write failed");
        } else {
            self.counters.failed_told_writes += 1;
            tracing::warn!(write = op.describe(), %error, "a told write failed");
        }
        if op.wants_outcome() {
            op.fail(error);
        }
    }

    /// Undoes the write in hand: its savepoint, or, for a bare write, the
    /// transaction (which then holds nothing else). If a savepoint cannot be
    /// rolled back, the batch can no longer be trusted and is abandoned.
    fn undo_write(&mut self) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Savepoint => {
                if let Err(error) = self.store.rollback_to() {
                    tracing::error!(%error, "rolling back a write's savepoint failed");
                    self.abandon("rolling back a failed write's savepoint failed");
                }
            }
            Open::Bare => {
                self.rollback_transaction("the transaction of a failed first write");
                self.in_transaction = false;
                self.writes_in_batch = 0;
            }
        }
    }

    /// Abandons a batch whose transaction vanished under us.
    fn check_transaction(&mut self) {
        if self.in_transaction && !self.store.in_transaction() {
            self.abandon("its transaction ended outside the manager's control");
        }
    }

    /// Commits when the batch has reached its size limit; otherwise `idle`
    /// (the mailbox ran dry) commits it.
    pub(crate) fn commit_if_full(&mut self, check: &mut dyn Check<S>) {
        if self.in_transaction && self.writes_in_batch >= self.max_batch {
            self.commit(check);
        }
    }

    /// Commits the open batch and answers its held writers; `check` may
    /// refuse the commit first, from inside the transaction, which then
    /// rolls the batch back.
    fn commit(&mut self, check: &mut dyn Check<S>) {
        if !self.in_transaction {
            return;
        }
        if let Err(reason) = check.before_commit(&mut self.store) {
            self.abandon(reason);
            self.counters.failed_commits += 1;
            return;
        }
        self.in_transaction = false;
        self.writes_in_batch = 0;
        let (writes, told) = self.take_counts();
        match self.store.commit() {
            Ok(()) => {
                self.counters.commits += 1;
                self.counters.committed_writes += writes;
                for op in self.held.drain(..) {
                    op.succeed();
                }
                tracing::trace!(writes, "write batch committed");
            }
            Err(failure) => {
                self.rollback_transaction("after a failed commit");
                self.counters.failed_commits += 1;
                self.counters.failed_writes += writes;
                self.counters.failed_told_writes += told;
                tracing::error!(%failure, writes, told, "committing a write batch failed");
                for op in self.held.drain(..) {
                    op.fail(S::commit_failed(failure.clone()));
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
        self.open = Open::None;
        self.writes_in_batch = 0;
        let (writes, told) = self.take_counts();
        self.counters.failed_writes += writes;
        self.counters.failed_told_writes += told;
        tracing::error!(reason, writes, told, "a write batch was abandoned");
        for op in self.held.drain(..) {
            op.fail(S::aborted(reason));
        }
    }

    /// Puts the store back in a known state before the next piece of work:
    /// undoes a write left open by a panic, abandons a batch whose
    /// transaction vanished, and rolls back a transaction opened outside a
    /// batch.
    pub(crate) fn restore(&mut self) {
        if self.open != Open::None {
            tracing::warn!("a write was left open; rolling it back");
            self.undo_write();
        }
        self.check_transaction();
        if !self.in_transaction && self.store.in_transaction() {
            tracing::warn!("a call left a transaction open; rolling it back");
            self.rollback_transaction("a transaction a call left open");
        }
    }

    /// Rolls back whatever transaction is open, if any.
    fn rollback_transaction(&mut self, what: &str) {
        if let Err(error) = self.store.rollback() {
            tracing::error!(%error, "rolling back {what} failed");
        }
    }
}

/// The engine's interface: what a manager running the group commit calls
/// from its hooks.
impl<S: Store> GroupCommit<S> {
    /// Handles one write message: into the open batch, which is committed
    /// if it reached its size limit.
    pub(crate) fn handle_write(&mut self, op: Box<S::Op>) {
        self.handle_write_checked(op, &mut NoCheck);
    }

    /// [`handle_write`](GroupCommit::handle_write), with `check` run inside
    /// the transaction before a commit it leads to.
    pub(crate) fn handle_write_checked(&mut self, op: Box<S::Op>, check: &mut dyn Check<S>) {
        self.restore();
        self.write(op, check);
        self.commit_if_full(check);
    }

    /// The mailbox ran dry, or the manager stops: commit the open batch.
    pub(crate) fn settle(&mut self) {
        self.settle_checked(&mut NoCheck);
    }

    /// [`settle`](GroupCommit::settle), with `check` run inside the
    /// transaction before the commit.
    pub(crate) fn settle_checked(&mut self, check: &mut dyn Check<S>) {
        self.restore();
        self.commit(check);
    }

    /// Rolls the open batch back, failing its held writes with the store's
    /// `aborted(reason)`.
    #[cfg_attr(not(all(feature = "amqp", feature = "sqlite")), allow(dead_code))] // RemoteDatabase
    pub(crate) fn abandon_batch(&mut self, reason: &'static str) {
        self.restore();
        if self.in_transaction {
            self.abandon(reason);
        }
    }

    /// The store, when no batch is open (for work of its own transaction);
    /// `None` while a batch is open.
    #[cfg_attr(not(all(feature = "amqp", feature = "sqlite")), allow(dead_code))] // RemoteDatabase
    pub(crate) fn store_between_batches(&mut self) -> Option<&mut S> {
        self.restore();
        (!self.in_transaction).then_some(&mut self.store)
    }

    /// A panic escaped: roll back what it left open.
    pub(crate) fn recover_after_panic(&mut self) {
        self.restore();
    }

    /// Commits the open batch, then runs `job` on the store outside any
    /// transaction (a `call`).
    pub(crate) fn call_store<T>(&mut self, job: impl FnOnce(&mut S) -> T) -> T {
        self.restore();
        self.commit(&mut NoCheck);
        let value = job(&mut self.store);
        self.restore();
        value
    }
}

#[cfg(test)]
mod tests {
    //! The engine on a store that only writes down the steps it is asked
    //! for: which writes pay for a savepoint, and what a failure undoes.

    use std::sync::{Arc, Mutex};

    use super::{GroupCommit, Outcome, Store};

    type Log = Arc<Mutex<Vec<String>>>;

    struct FakeStore {
        log: Log,
        open: bool,
    }

    impl FakeStore {
        fn step(&mut self, step: &str) {
            self.log.lock().unwrap().push(step.to_owned());
        }
    }

    /// A write that succeeds, fails or panics, and logs its answer.
    struct FakeOp {
        name: &'static str,
        outcome: Result<(), &'static str>,
        panics: bool,
        log: Log,
    }

    impl Outcome<String> for FakeOp {
        fn is_asked(&self) -> bool {
            true
        }
        fn wants_outcome(&self) -> bool {
            true
        }
        fn describe(&self) -> &str {
            self.name
        }
        fn succeed(self: Box<Self>) {
            self.log.lock().unwrap().push(format!("{}: ok", self.name));
        }
        fn fail(self: Box<Self>, error: String) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}: {error}", self.name));
        }
    }

    impl Store for FakeStore {
        type Op = FakeOp;
        type Error = String;
        type CommitFailure = String;
        fn begin(&mut self) -> Result<(), String> {
            self.open = true;
            self.step("begin");
            Ok(())
        }
        fn savepoint(&mut self) -> Result<(), String> {
            self.step("savepoint");
            Ok(())
        }
        fn release(&mut self) -> Result<(), String> {
            self.step("release");
            Ok(())
        }
        fn rollback_to(&mut self) -> Result<(), String> {
            self.step("rollback-to");
            Ok(())
        }
        fn commit(&mut self) -> Result<(), String> {
            self.open = false;
            self.step("commit");
            Ok(())
        }
        fn rollback(&mut self) -> Result<(), String> {
            if self.open {
                self.open = false;
                self.step("rollback");
            }
            Ok(())
        }
        fn in_transaction(&self) -> bool {
            self.open
        }
        fn run(&mut self, op: &mut FakeOp) -> Result<(), String> {
            self.step(&format!("run {}", op.name));
            assert!(!op.panics, "{} panics", op.name);
            op.outcome.map_err(str::to_owned)
        }
        fn aborted(reason: &'static str) -> String {
            reason.to_owned()
        }
        fn commit_failed(failure: String) -> String {
            failure
        }
    }

    /// Runs `writes` as one batch and returns the steps and answers.
    fn batch(writes: &[(&'static str, Result<(), &'static str>, bool)]) -> Vec<String> {
        let log = Log::default();
        let store = FakeStore {
            log: log.clone(),
            open: false,
        };
        let mut engine = GroupCommit::with_store(store, 100);
        for &(name, outcome, panics) in writes {
            let op = FakeOp {
                name,
                outcome,
                panics,
                log: log.clone(),
            };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.handle_write(Box::new(op));
            }));
        }
        engine.settle();
        log.lock().unwrap().clone()
    }

    #[test]
    fn a_batch_of_one_write_pays_for_no_savepoint() {
        assert_eq!(
            batch(&[("a", Ok(()), false)]),
            ["begin", "run a", "commit", "a: ok"]
        );
    }

    #[test]
    fn later_writes_run_in_savepoints_and_fail_alone() {
        assert_eq!(
            batch(&[
                ("a", Ok(()), false),
                ("b", Err("bad"), false),
                ("c", Ok(()), false),
                ("d", Ok(()), true),
            ]),
            [
                "begin",
                "run a",
                "savepoint",
                "run b",
                "rollback-to",
                "b: bad",
                "savepoint",
                "run c",
                "release",
                "savepoint",
                "run d",
                "rollback-to",
                "commit",
                "a: ok",
                "c: ok",
            ]
        );
    }

    #[test]
    fn a_failing_first_write_rolls_back_the_transaction_it_had_alone() {
        assert_eq!(
            batch(&[
                ("a", Err("bad"), false),
                ("b", Ok(()), true),
                ("c", Ok(()), false),
            ]),
            [
                "begin", "run a", "rollback", "a: bad", "begin", "run b", "rollback", "begin",
                "run c", "commit", "c: ok",
            ]
        );
    }
}
