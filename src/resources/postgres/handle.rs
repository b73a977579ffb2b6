//! `PgStateHandle` and the messages it sends: writes (unfenced, or fenced by
//! a partition's claim with a message id), calls, claims, counters.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::store::{PgConn, PgWriteOp, Session};
use super::{Applied, PgStateError, PgStateStats};
use crate::resources::refused::{RefusedWrite, refused_write};
use crate::{Handle, Reply};

/// An unfenced write: a closure, answered with its value.
struct WriteOp<F, T: Send + 'static> {
    work: Option<F>,
    value: Option<T>,
    reply: Option<Reply<Result<T, PgStateError>>>,
}

impl<F, T> PgWriteOp for WriteOp<F, T>
where
    F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    T: Send + 'static,
{
    fn partition(&self) -> Option<&str> {
        None
    }

    fn run(&mut self, session: &mut Session) -> Result<(), PgStateError> {
        if let Some(work) = self.work.take() {
            self.value = Some(work(&mut session.conn(None))?);
        }
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.reply.is_some()
    }

    fn describe(&self) -> &str {
        "a write"
    }

    fn succeed(self: Box<Self>) {
        if let (Some(reply), Some(value)) = (self.reply, self.value) {
            reply.send(Ok(value));
        }
    }

    fn fail(self: Box<Self>, error: PgStateError) {
        if let Some(reply) = self.reply {
            reply.send(Err(error));
        }
    }
}

/// A fenced write with a message id: run once per id, in a partition this
/// owner holds.
struct ApplyOp<F, T: Send + 'static> {
    partition: String,
    message_id: String,
    work: Option<F>,
    value: Option<Applied<T>>,
    reply: Option<Reply<Result<Applied<T>, PgStateError>>>,
}

impl<F, T> PgWriteOp for ApplyOp<F, T>
where
    F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    T: Send + 'static,
{
    fn partition(&self) -> Option<&str> {
        Some(&self.partition)
    }

    fn run(&mut self, session: &mut Session) -> Result<(), PgStateError> {
        let Some(work) = self.work.take() else {
            return Ok(());
        };
        if !session.record_applied(&self.partition, &self.message_id)? {
            tracing::debug!(partition = %self.partition, id = %self.message_id, "applied before: skipped");
            self.value = Some(Applied::Duplicate);
            return Ok(());
        }
        let value = work(&mut session.conn(Some(&self.partition)))?;
        self.value = Some(Applied::Done(value));
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.reply.is_some()
    }

    fn describe(&self) -> &str {
        &self.message_id
    }

    fn succeed(self: Box<Self>) {
        if let (Some(reply), Some(value)) = (self.reply, self.value) {
            reply.send(Ok(value));
        }
    }

    fn fail(self: Box<Self>, error: PgStateError) {
        if let Some(reply) = self.reply {
            reply.send(Err(error));
        }
    }
}

/// A job run on the session between batches.
type CallJob = Box<dyn FnOnce(&mut Session) + Send>;

pub(super) enum Op {
    Write(Box<dyn PgWriteOp>),
    Call(CallJob),
    Claim(String, Reply<Result<i64, PgStateError>>),
    Resign(String, Reply<bool>),
    Claims(Reply<BTreeMap<String, i64>>),
    Stats(Reply<PgStateStats>),
}

/// A message for a [`PgState`](super::PgState) manager. Its contents are
/// private: build messages with the methods of [`PgStateHandle`].
pub struct PgStateMsg(pub(super) Op);

impl fmt::Debug for PgStateMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Op::Write(op) if op.is_asked() => "write",
            Op::Write(_) => "told write",
            Op::Call(_) => "call",
            Op::Claim(..) => "claim",
            Op::Resign(..) => "resign",
            Op::Claims(_) => "claims",
            Op::Stats(_) => "stats",
        };
        f.debug_tuple("PgStateMsg").field(&kind).finish()
    }
}

/// The handle of a [`PgState`](super::PgState), with one method per kind of
/// request.
///
/// Writes are closures over a [`PgConn`], group-committed: each runs in its
/// own savepoint inside its batch's transaction and is answered only after
/// the COMMIT. [`write`](PgStateHandle::write) is unfenced;
/// [`apply`](PgStateHandle::apply) is fenced by a partition's claim and
/// applied at most once per message id. The `tell_*` forms return once the
/// write is queued; their failures are logged and counted.
///
/// # Examples
///
/// ```no_run
/// use custody::Runtime;
/// use custody::resources::postgres::{Applied, PgState};
///
/// let rt = Runtime::new();
/// let state = PgState::builder("postgres://postgres@127.0.0.1/app")
///     .owner("node-a")
///     .spawn(&rt, "accounts-3")?;
/// state.write(|c| c.execute("CREATE TABLE IF NOT EXISTS deposits (id text, amount bigint)", &[]))?;
/// let epoch = state.claim("accounts/3")?;
/// let first = state.apply("accounts/3", "deposit-17", |c| {
///     c.execute("INSERT INTO deposits VALUES ('deposit-17', 100)", &[])
/// })?;
/// assert_eq!(first, Applied::Done(1));
/// let again = state.apply("accounts/3", "deposit-17", |c| {
///     c.execute("INSERT INTO deposits VALUES ('deposit-17', 100)", &[])
/// })?;
/// assert_eq!(again, Applied::Duplicate); // not run a second time
/// # let _ = epoch;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PgStateHandle {
    handle: Handle<PgStateMsg>,
}

impl PgStateHandle {
    /// Claims `partition` for this owner: bumps its epoch in
    /// `custody_epochs` (creating it at 1) and returns the new epoch. From
    /// then on, every batch that writes to the partition checks, inside its
    /// own transaction, that the epoch is still this one. A claim waits for
    /// the batch a previous owner has in flight on the partition to end, and
    /// every later batch of that owner is fenced. The open batch is
    /// committed first. Claiming again re-arms a fenced owner.
    ///
    /// # Errors
    ///
    /// [`PgStateError::Postgres`] if the claim failed (nothing changed, or,
    /// with the connection lost during it, perhaps the epoch was bumped:
    /// claim again), [`PgStateError::Runtime`] if the manager is stopped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::{PgState, PgStateError};
    ///
    /// let rt = Runtime::new();
    /// let url = "postgres://postgres@127.0.0.1/app";
    /// let old = PgState::builder(url).owner("a").spawn(&rt, "old")?;
    /// let new = PgState::builder(url).owner("b").spawn(&rt, "new")?;
    /// let held = old.claim("p")?;
    /// let current = new.claim("p")?; // waits for old's batch in flight, if any
    /// assert_eq!(current, held + 1);
    /// let fenced = old.apply("p", "m-1", |c| c.execute("SELECT 1", &[])).unwrap_err();
    /// assert!(matches!(fenced, PgStateError::Fenced { held: h, current: Some(c), .. } if h == held && c == current));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn claim(&self, partition: impl Into<String>) -> Result<i64, PgStateError> {
        let partition = partition.into();
        self.handle
            .ask(|reply| PgStateMsg(Op::Claim(partition, reply)))?
    }

    /// Forgets this owner's claim on `partition` (its writes then fail with
    /// [`PgStateError::NotClaimed`]); `true` if there was one. The epoch in
    /// the table is left as it is.
    ///
    /// # Errors
    ///
    /// [`PgStateError::Runtime`] if the manager is stopped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::{PgState, PgStateError};
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.claim("p")?;
    /// assert!(state.resign("p")?);
    /// let refused = state.apply("p", "m-1", |c| c.execute("SELECT 1", &[])).unwrap_err();
    /// assert!(matches!(refused, PgStateError::NotClaimed { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resign(&self, partition: impl Into<String>) -> Result<bool, PgStateError> {
        let partition = partition.into();
        Ok(self
            .handle
            .ask(|reply| PgStateMsg(Op::Resign(partition, reply)))?)
    }

    /// The partitions this owner holds a claim on, with their epochs (a
    /// fenced partition is no longer among them).
    ///
    /// # Errors
    ///
    /// [`PgStateError::Runtime`] if the manager is stopped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// let epoch = state.claim("p")?;
    /// assert_eq!(state.claims()?.get("p"), Some(&epoch));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn claims(&self) -> Result<BTreeMap<String, i64>, PgStateError> {
        Ok(self.handle.ask(|reply| PgStateMsg(Op::Claims(reply)))?)
    }

    /// Runs `f` on the manager's thread with the connection, between
    /// batches (the open batch is committed first), outside any
    /// transaction: for reads. Each statement commits on its own.
    ///
    /// # Errors
    ///
    /// [`PgStateError::Postgres`] if the connection was lost and could not
    /// be made again, [`PgStateError::Runtime`] if the manager is stopped or
    /// `f` panicked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// let applied: i64 = state.call(|c| {
    ///     c.query_one("SELECT count(*) FROM custody_applied", &[]).map(|row| row.get(0))
    /// })??;
    /// # let _ = applied;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call<T, F>(&self, f: F) -> Result<T, PgStateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> T + Send + 'static,
    {
        self.handle.ask(|reply| {
            PgStateMsg(Op::Call(Box::new(move |session: &mut Session| {
                reply.send(session.between_batches().map(|mut conn| f(&mut conn)));
            })))
        })?
    }

    /// Deletes the message ids applied longer than `older_than` ago from
    /// `custody_applied`, in every partition, and returns how many. A write
    /// sent again with a pruned id is applied again: keep ids for longer
    /// than any sender may retry. Run between batches, in a transaction of
    /// its own.
    ///
    /// # Errors
    ///
    /// As [`call`](PgStateHandle::call), and [`PgStateError::Postgres`] if
    /// the DELETE failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// let pruned = state.prune_applied(Duration::from_secs(7 * 24 * 3600))?;
    /// # let _ = pruned;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_applied(&self, older_than: Duration) -> Result<u64, PgStateError> {
        let seconds = older_than.as_secs_f64();
        self.call(move |c| {
            c.execute(
                "DELETE FROM custody_applied WHERE applied_at < now() - make_interval(secs => $1)",
                &[&seconds],
            )
        })?
    }

    /// Runs one statement without parameters as an unfenced write, and
    /// returns the rows it changed once its batch is committed.
    ///
    /// # Errors
    ///
    /// As [`write`](PgStateHandle::write).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.execute("CREATE TABLE IF NOT EXISTS t (n bigint)")?;
    /// assert_eq!(state.execute("INSERT INTO t VALUES (1), (2)")?, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute(&self, sql: impl Into<String>) -> Result<u64, PgStateError> {
        let sql = sql.into();
        self.write(move |c| c.execute(&sql, &[]))
    }

    /// Runs `f` as an unfenced group-committed write and returns its value
    /// once the batch is committed. If `f` fails or panics, what it did is
    /// rolled back and the rest of the batch is kept.
    ///
    /// # Errors
    ///
    /// The error `f` returned ([`PgStateError::Postgres`],
    /// [`PgStateError::Write`], [`PgStateError::TransactionControl`], ...),
    /// [`PgStateError::IgnoredError`] if a statement failed and `f`
    /// returned `Ok`, [`PgStateError::Commit`] /
    /// [`PgStateError::CommitOutcomeUnknown`] /
    /// [`PgStateError::BatchAborted`] if its batch did not commit,
    /// [`PgStateError::Runtime`] if the manager is stopped or `f` panicked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::{PgState, PgStateError};
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.execute("CREATE TABLE IF NOT EXISTS balance (k text PRIMARY KEY, v bigint)")?;
    /// // A read-modify-write, rolled back alone when it refuses.
    /// let refused = state.write(|c| {
    ///     c.execute("INSERT INTO balance VALUES ('a', 10) ON CONFLICT DO NOTHING", &[])?;
    ///     let v: i64 = c.query_one("SELECT v FROM balance WHERE k = 'a'", &[])?.get(0);
    ///     if v < 100 {
    ///         return Err(PgStateError::write("insufficient funds"));
    ///     }
    ///     c.execute("UPDATE balance SET v = v - 100 WHERE k = 'a'", &[])
    /// });
    /// assert!(matches!(refused, Err(PgStateError::Write(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write<T, F>(&self, f: F) -> Result<T, PgStateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        self.handle.ask(|reply| {
            PgStateMsg(Op::Write(Box::new(WriteOp {
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        })?
    }

    /// Runs `f` as a fenced, exactly-once write in `partition`: in its
    /// batch's transaction, the partition's epoch is checked to be the one
    /// this owner claimed, `message_id` is recorded in `custody_applied`
    /// (with the epoch), and `f` runs, all in one savepoint. A message id
    /// already recorded is not run again: it is answered
    /// [`Applied::Duplicate`]. Answered after the COMMIT.
    ///
    /// # Errors
    ///
    /// As [`write`](PgStateHandle::write), and
    /// [`PgStateError::Fenced`] if another owner claimed the partition since
    /// this one did (this owner then steps down for it),
    /// [`PgStateError::NotClaimed`] if this owner holds no claim on it.
    pub fn apply<T, F>(
        &self,
        partition: impl Into<String>,
        message_id: impl Into<String>,
        f: F,
    ) -> Result<Applied<T>, PgStateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        let (partition, message_id) = (partition.into(), message_id.into());
        self.handle.ask(|reply| {
            PgStateMsg(Op::Write(Box::new(ApplyOp {
                partition,
                message_id,
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        })?
    }

    /// The awaitable [`claim`](PgStateHandle::claim).
    ///
    /// # Errors
    ///
    /// As [`claim`](PgStateHandle::claim).
    pub fn claim_async(
        &self,
        partition: impl Into<String>,
    ) -> impl Future<Output = Result<i64, PgStateError>> + Send + '_ {
        let partition = partition.into();
        let ask = self
            .handle
            .ask_async(|reply| PgStateMsg(Op::Claim(partition, reply)));
        async move { ask.await? }
    }

    /// The awaitable [`call`](PgStateHandle::call).
    ///
    /// # Errors
    ///
    /// As [`call`](PgStateHandle::call).
    pub fn call_async<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, PgStateError>> + Send + '_
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> T + Send + 'static,
    {
        let ask = self.handle.ask_async(|reply| {
            PgStateMsg(Op::Call(Box::new(move |session: &mut Session| {
                reply.send(session.between_batches().map(|mut conn| f(&mut conn)));
            })))
        });
        async move { ask.await? }
    }

    /// The awaitable [`write`](PgStateHandle::write): resolves with `f`'s
    /// value once its batch is committed, without blocking the thread that
    /// polls it. Dropped before it resolves, the write may still be
    /// committed (see [cancel safety](crate::future#cancel-safety)).
    ///
    /// # Errors
    ///
    /// As [`write`](PgStateHandle::write).
    pub fn write_async<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, PgStateError>> + Send + '_
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        let ask = self.handle.ask_async(|reply| {
            PgStateMsg(Op::Write(Box::new(WriteOp {
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        });
        async move { ask.await? }
    }

    /// The awaitable [`apply`](PgStateHandle::apply): fenced, once per
    /// message id, resolved after the commit. Dropped before it resolves,
    /// the write may still be committed; apply it again with the same id to
    /// learn its outcome (a `Duplicate` if it was).
    ///
    /// # Errors
    ///
    /// As [`apply`](PgStateHandle::apply).
    pub fn apply_async<T, F>(
        &self,
        partition: impl Into<String>,
        message_id: impl Into<String>,
        f: F,
    ) -> impl Future<Output = Result<Applied<T>, PgStateError>> + Send + '_
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        let (partition, message_id) = (partition.into(), message_id.into());
        let ask = self.handle.ask_async(|reply| {
            PgStateMsg(Op::Write(Box::new(ApplyOp {
                partition,
                message_id,
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        });
        async move { ask.await? }
    }

    /// Like [`write`](PgStateHandle::write), without waiting: `f`'s value is
    /// dropped, and a failure is logged and counted in
    /// [`PgStateStats::failed_told_writes`].
    ///
    /// # Errors
    ///
    /// [`RefusedWrite`] if the manager is stopping or stopped; `f` comes
    /// back inside, not run.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.tell_write(|c| c.execute("CREATE TABLE IF NOT EXISTS t (n bigint)", &[]))?;
    /// state.join()?; // committed (or failed, and counted)
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_write<T, F>(&self, f: F) -> Result<(), RefusedWrite<F>>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        let op = WriteOp {
            work: Some(f),
            value: None,
            reply: None,
        };
        self.tell(op, |op| op.work.expect("a refused write was never run"))
    }

    /// Like [`apply`](PgStateHandle::apply), without waiting.
    ///
    /// # Errors
    ///
    /// [`RefusedWrite`] if the manager is stopping or stopped; `f` comes
    /// back inside, not run.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.claim("p")?;
    /// for id in ["m-1", "m-2", "m-1"] {
    ///     state.tell_apply("p", id, |c| c.execute("INSERT INTO t VALUES (1)", &[]))?;
    /// }
    /// state.join()?;
    /// assert_eq!(state.stats()?.duplicates, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tell_apply<T, F>(
        &self,
        partition: impl Into<String>,
        message_id: impl Into<String>,
        f: F,
    ) -> Result<(), RefusedWrite<F>>
    where
        T: Send + 'static,
        F: FnOnce(&mut PgConn<'_>) -> Result<T, PgStateError> + Send + 'static,
    {
        let op = ApplyOp {
            partition: partition.into(),
            message_id: message_id.into(),
            work: Some(f),
            value: None,
            reply: None,
        };
        self.tell(op, |op| op.work.expect("a refused write was never run"))
    }

    /// Tells the write `op`; if it is refused, gives the caller's closure
    /// back.
    fn tell<O: PgWriteOp, T>(
        &self,
        op: O,
        input: impl FnOnce(O) -> T,
    ) -> Result<(), RefusedWrite<T>> {
        self.handle
            .tell(PgStateMsg(Op::Write(Box::new(op))))
            .map_err(|refused| {
                refused_write(
                    refused,
                    self.handle.name(),
                    |msg: PgStateMsg| match msg.0 {
                        Op::Write(op) => Some(op as Box<dyn Any>),
                        _ => None,
                    },
                    input,
                )
            })
    }

    /// The manager's own counters.
    ///
    /// # Errors
    ///
    /// [`PgStateError::Runtime`] if the manager is stopped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::Runtime;
    /// use custody::resources::postgres::PgState;
    ///
    /// let rt = Runtime::new();
    /// let state = PgState::builder("postgres://postgres@127.0.0.1/app").spawn(&rt, "state")?;
    /// state.execute("SELECT 1")?;
    /// let stats = state.stats()?;
    /// assert_eq!((stats.commits, stats.committed_writes), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Result<PgStateStats, PgStateError> {
        Ok(self.handle.ask(|reply| PgStateMsg(Op::Stats(reply)))?)
    }

    /// The underlying handle.
    pub fn handle(&self) -> &Handle<PgStateMsg> {
        &self.handle
    }

    /// Unwraps the underlying handle.
    pub fn into_handle(self) -> Handle<PgStateMsg> {
        self.handle
    }
}

super::super::lifecycle!(PgStateHandle);

impl From<Handle<PgStateMsg>> for PgStateHandle {
    fn from(handle: Handle<PgStateMsg>) -> PgStateHandle {
        PgStateHandle { handle }
    }
}
