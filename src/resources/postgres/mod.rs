//! `PgState`: state in PostgreSQL that any owner process can reach, owned by
//! one manager thread per connection, with group-committed writes,
//! exactly-once effects by message id, and fencing epochs per partition
//! (cargo feature `postgres`).
//!
//! This module is the only place that names the `postgres` crate (and,
//! through it, tokio, whose runtime that crate runs inside each
//! connection). What it exposes is blocking and thread-based.
//!
//! Write closures get a [`PgConn`], a thin wrapper of the manager's own,
//! not the crate's `Transaction` or `Client`: a batch's transaction spans
//! many messages, so no `Transaction` (which borrows the client for as long
//! as it lives) can be handed to each write, and a bare `Client` would let a
//! closure COMMIT the batch, or open a transaction of its own, past the
//! fencing check. `PgConn` sends one statement at a time and refuses
//! transaction control. What is left of the crate in the API is what
//! wrapping would only copy: parameters (`ToSql`) and rows (`Row`), and the
//! crate's `Error` as the source of [`PgStateError::Postgres`] and of the
//! open errors; the crate is re-exported as [`client`] so that users name
//! the same version.
//!
//! # How a batch is committed
//!
//! The group-commit engine of the SQLite `Database` runs here on a
//! PostgreSQL connection:
//!
//! ```text
//! first write of a batch:       BEGIN
//! first write of a partition    SELECT epoch FROM custody_epochs
//! in the batch (fenced):          WHERE partition = $1 FOR SHARE
//!                               epoch != claimed -> Fenced: this write fails,
//!                                                   the owner steps down
//! the batch's first kept write: runs bare (no savepoint); if it fails,
//!                               ROLLBACK (there is nothing else to lose)
//! every later write:            [RELEASE custody_write;] SAVEPOINT custody_write
//!                               INSERT INTO custody_applied ... ON CONFLICT
//!                                 DO NOTHING  (fenced writes: 0 rows ->
//!                                 Duplicate, the closure is not run)
//!                               the closure's statements
//!                               error -> ROLLBACK TO + RELEASE, answer now
//!                               ok    -> hold the answer
//! (the RELEASE and the SAVEPOINT are not sent on their own: they go out in
//! one round trip with the message id's INSERT, or just before the write's
//! first statement, and a COMMIT makes a trailing RELEASE moot)
//! mailbox dry, batch full,
//! a call or a claim, stopping:  COMMIT, then answer every held write
//! ```
//!
//! # Fencing
//!
//! A partition's owner is whoever last bumped its row in `custody_epochs`
//! ([`claim`](PgStateHandle::claim)). Every batch transaction that writes
//! to a partition reads its epoch `FOR SHARE` before its first write there,
//! and keeps that lock until it ends. So:
//!
//! - a claim racing a batch in flight waits on the row lock until that
//!   batch commits or rolls back; the new owner's first write comes after
//!   its claim, hence after the old owner's last commit;
//! - any later batch of the old owner reads the new epoch, and its writes
//!   to the partition fail with [`PgStateError::Fenced`] without running;
//!   the old owner steps down for that partition (every later write to it
//!   fails the same way) until it claims it again;
//! - each applied message id is stored with the epoch it was applied
//!   under, so the order of owners can be checked from the tables.
//!
//! At every moment, at most one owner of a partition can commit writes to
//! it. The check comes before the partition's first write in the batch
//! rather than just before the COMMIT: the lock then covers every write of
//! the batch to that partition, a fenced owner's closures never run (nor
//! anything they would do outside the database), and the writes refused
//! are those of the fenced partition only, not the whole batch. It runs
//! outside any write's savepoint, since rolling a savepoint back releases
//! the row locks taken inside it. What the check does not cover: unfenced writes
//! ([`write`](PgStateHandle::write)), and rows a closure writes outside the
//! partition its write names.
//!
//! # Failure cases
//!
//! - *The connection is lost mid-batch* (PostgreSQL restarted, a network
//!   cut): the server rolls the transaction back; the held writes fail with
//!   [`PgStateError::BatchAborted`] (or the statement's error), and the next
//!   batch connects again. Claims survive: the next batch checks the epoch
//!   anew, so a claim taken meanwhile by another owner fences this one.
//! - *The connection is lost with the COMMIT in flight*: nobody can know
//!   whether it committed. Each write of the batch fails with
//!   [`PgStateError::CommitOutcomeUnknown`]: its caller should send it again
//!   with the same message id, which either applies it or answers
//!   [`Applied::Duplicate`]; unfenced writes without an id have no such
//!   remedy.
//! - *The COMMIT is refused* (a deferred constraint, a serialization
//!   failure): the batch is rolled back; [`PgStateError::Commit`].
//! - *An owner frozen inside a transaction* holds its partitions' rows
//!   share-locked, so a claim waits; the builder sets the session's
//!   `idle_in_transaction_session_timeout` (10 s by default) so that the
//!   server ends such a session and releases its locks, and its owner's
//!   writes then fail, or are fenced on its next batch. A claim waits for
//!   such locks at most its claim timeout (30 s by default,
//!   [`PgStateBuilder::claim_timeout`]), then fails with a transient error
//!   (PostgreSQL's `lock_not_available`) and may be tried again.
//! - *A claim whose connection is lost* may or may not have bumped the
//!   epoch; its caller gets the error and claims again.
//! - *An owner killed* (SIGKILL): its open transaction is rolled back by the
//!   server; writes answered `Ok` were committed, and those in flight are
//!   sent again by id to the next owner.

mod error;
mod handle;
mod store;

use std::fmt;
use std::time::Duration;

pub use error::{PgOpenError, PgStateError};
pub use handle::{PgStateHandle, PgStateMsg};
pub use store::PgConn;

use handle::Op;
use store::Session;

use super::group_commit::{GroupCommit, NoCheck};
use crate::{Context, Manager, Runtime, SpawnError};

/// The `postgres` crate, re-exported so that write closures can name its
/// parameter and row types (`types::ToSql`, `Row`) without a dependency of
/// their own.
pub use ::postgres as client;

/// The writes a batch holds at most before it is committed, unless
/// [`PgStateBuilder::max_batch`] says otherwise.
pub const DEFAULT_MAX_BATCH_WRITES: usize = 1024;

/// What a fenced, exactly-once write ([`PgStateHandle::apply`]) did.
///
/// # Examples
///
/// ```
/// use custody::resources::postgres::Applied;
///
/// assert_eq!(Applied::Done(3).into_done(), Some(3));
/// assert!(Applied::<i32>::Duplicate.is_duplicate());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied<T> {
    /// The write ran and was committed; its closure's value.
    Done(T),
    /// Its message id was applied before (committed by this owner or an
    /// earlier one, or earlier in the same batch): the write did not run.
    Duplicate,
}

impl<T> Applied<T> {
    /// Whether the write was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Applied::Duplicate)
    }

    /// The closure's value, if it ran.
    pub fn into_done(self) -> Option<T> {
        match self {
            Applied::Done(value) => Some(value),
            Applied::Duplicate => None,
        }
    }
}

/// A snapshot of a `PgState` manager's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgStateStats {
    /// Write transactions committed.
    pub commits: u64,
    /// Writes committed, asked and told (duplicates included).
    pub committed_writes: u64,
    /// Writes that failed (their closure, their commit, a fence, a panic).
    pub failed_writes: u64,
    /// Of the failed writes, those sent without waiting.
    pub failed_told_writes: u64,
    /// Writes whose closure panicked.
    pub panicked_writes: u64,
    /// Commits that failed (or whose outcome is unknown).
    pub failed_commits: u64,
    /// Writes skipped because their message id was applied before.
    pub duplicates: u64,
    /// Writes refused because another owner claimed their partition.
    pub fenced_writes: u64,
    /// Claims made.
    pub claims: u64,
    /// Connections made again after one was lost.
    pub reconnects: u64,
}

/// Configures a [`PgState`]: the server, the owner's name, the batch size
/// and the session's timeouts.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use custody::Runtime;
/// use custody::resources::postgres::PgState;
///
/// let rt = Runtime::new();
/// let state = PgState::builder("host=127.0.0.1 user=postgres dbname=app")
///     .owner("node-a")
///     .max_batch(256)
///     .connect_timeout(Duration::from_secs(5))
///     .spawn(&rt, "state")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PgStateBuilder {
    url: String,
    owner: Option<String>,
    max_batch: usize,
    connect_timeout: Duration,
    idle_in_transaction_timeout: Duration,
    claim_timeout: Duration,
}

impl PgStateBuilder {
    /// The owner's name written with its claims (`custody_epochs.owner`);
    /// by default `pid-<process id>`.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The writes a batch holds at most before it is committed (at least
    /// 1); [`DEFAULT_MAX_BATCH_WRITES`] by default.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// How long connecting (at open, and again after a lost connection) may
    /// take; 10 s by default.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The session's `idle_in_transaction_session_timeout`: a frozen owner's
    /// transaction is ended by the server after this long, releasing the
    /// locks a new owner's claim waits for; 10 s by default, zero to turn
    /// it off. A write closure that works longer than this between two
    /// statements loses its batch.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// How long a claim waits for the previous owner's batch in flight
    /// (its lock on the partition's row) before it fails with a transient
    /// error; 30 s by default, zero to wait without a limit.
    pub fn claim_timeout(mut self, timeout: Duration) -> Self {
        self.claim_timeout = timeout;
        self
    }

    /// Connects, sets the session up and creates `custody_epochs` and
    /// `custody_applied` if missing.
    ///
    /// # Errors
    ///
    /// [`PgOpenError::Config`] for a connection string that does not parse,
    /// [`PgOpenError::Connect`] if the server cannot be reached or refuses
    /// the connection, [`PgOpenError::Setup`] if the tables cannot be
    /// created, [`PgOpenError::EmptyOwner`].
    pub fn open(self) -> Result<PgState, PgOpenError> {
        let mut config: client::Config = self.url.parse().map_err(PgOpenError::Config)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("custody");
        }
        let owner = self
            .owner
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        if owner.is_empty() {
            return Err(PgOpenError::EmptyOwner);
        }
        let setup = format!(
            "SET idle_in_transaction_session_timeout = {}",
            self.idle_in_transaction_timeout
                .as_millis()
                .min(i32::MAX as u128)
        );
        let claim_timeout_ms = self.claim_timeout.as_millis().min(i32::MAX as u128) as i32;
        let session = Session::connect(config, setup, owner, claim_timeout_ms)?;
        Ok(PgState {
            engine: GroupCommit::with_store(session, self.max_batch),
        })
    }

    /// Opens the state and spawns its manager on `rt` with the runtime's
    /// defaults.
    ///
    /// # Errors
    ///
    /// As [`open`](PgStateBuilder::open), plus [`PgOpenError::Spawn`].
    pub fn spawn(
        self,
        rt: &Runtime,
        name: impl Into<String>,
    ) -> Result<PgStateHandle, PgOpenError> {
        Ok(self.open()?.spawn(rt, name)?)
    }
}

/// A manager owning one PostgreSQL connection, whose writes are
/// group-committed, applied once per message id, and fenced per partition.
/// See the [module docs](self) for the protocol and its failure cases.
///
/// # Examples
///
/// ```no_run
/// use custody::{Backend, Runtime};
/// use custody::resources::postgres::{PgState, PgStateHandle};
///
/// let rt = Runtime::new();
/// let state = PgState::builder("postgres://postgres@127.0.0.1/app").open()?;
/// // Spawned with options of its own, then wrapped.
/// let state = PgStateHandle::from(rt.manager("state").backend(Backend::Flume).spawn(state)?);
/// let n: i64 = state.call(|c| c.query_one("SELECT 1::bigint", &[]).map(|r| r.get(0)))??;
/// assert_eq!(n, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PgState {
    engine: GroupCommit<Session>,
}

impl PgState {
    /// Configures a `PgState` on the server at `url` (a `postgres://` URL
    /// or a `key=value` connection string).
    pub fn builder(url: impl Into<String>) -> PgStateBuilder {
        PgStateBuilder {
            url: url.into(),
            owner: None,
            max_batch: DEFAULT_MAX_BATCH_WRITES,
            connect_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(10),
            claim_timeout: Duration::from_secs(30),
        }
    }

    /// Spawns this manager on `rt` with the runtime's defaults.
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`].
    pub fn spawn(self, rt: &Runtime, name: impl Into<String>) -> Result<PgStateHandle, SpawnError> {
        rt.spawn(name, self).map(PgStateHandle::from)
    }

    fn stats(&self) -> PgStateStats {
        let c = self.engine.counters;
        let s = self.engine.store.stats;
        PgStateStats {
            commits: c.commits,
            committed_writes: c.committed_writes,
            failed_writes: c.failed_writes,
            failed_told_writes: c.failed_told_writes,
            panicked_writes: c.panicked_writes,
            failed_commits: c.failed_commits,
            duplicates: s.duplicates,
            fenced_writes: s.fenced_writes,
            claims: s.claims,
            reconnects: s.reconnects,
        }
    }
}

impl Manager for PgState {
    type Msg = PgStateMsg;

    fn handle(&mut self, msg: PgStateMsg, _ctx: &mut Context<'_, PgStateMsg>) {
        match msg.0 {
            Op::Write(op) => self.engine.handle_write(op),
            Op::Call(job) => self.engine.call_store(job),
            Op::Claim(partition, reply) => {
                reply.send(self.engine.call_store(|session| session.claim(&partition)));
            }
            Op::Resign(partition, reply) => {
                reply.send(self.engine.call_store(|session| session.resign(&partition)));
            }
            Op::Claims(reply) => reply.send(self.engine.store.claims()),
            Op::Stats(reply) => {
                self.engine.recover_after_panic();
                reply.send(self.stats());
                self.engine.commit_if_full(&mut NoCheck);
            }
        }
    }

    fn idle(&mut self, _ctx: &mut Context<'_, PgStateMsg>) {
        self.engine.settle();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, PgStateMsg>) {
        self.engine.settle();
    }

    /// A panic escaped a call: roll back what it left open.
    fn recover(&mut self, _panic: &str, _ctx: &mut Context<'_, PgStateMsg>) {
        self.engine.recover_after_panic();
    }
}

impl fmt::Debug for PgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgState")
            .field("max_batch", &self.engine.max_batch)
            .field("in_transaction", &self.engine.in_transaction)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
