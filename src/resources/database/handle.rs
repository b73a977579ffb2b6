//! `DatabaseHandle` and the messages it sends: a write (a statement or a
//! closure), a call on the connection, a request for the counters.

use std::any::Any;
use std::fmt;

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use super::group_commit::WriteOp;
use super::{DatabaseError, DatabaseStats};
use crate::resources::refused::{RefusedWrite, refused_write};
use crate::{Handle, Reply};

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

pub(super) enum Op {
    Write(Box<dyn WriteOp>),
    Call(CallJob),
    Stats(Reply<DatabaseStats>),
}

/// A message for a [`Database`](super::Database) manager. Its contents are private: build
/// messages with the methods of [`DatabaseHandle`].
///
/// # Examples
///
/// ```
/// use custody::{Handle, Runtime};
/// use custody::resources::{Database, DatabaseHandle, DatabaseMsg};
///
/// let rt = Runtime::new();
/// let raw: Handle<DatabaseMsg> = rt.spawn("db", Database::in_memory().open()?)?;
/// let db = DatabaseHandle::from(raw);
/// assert_eq!(db.call(|c| c.is_autocommit())?, true);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DatabaseMsg(pub(super) Op);

impl fmt::Debug for DatabaseMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Op::Write(op) if op.is_asked() => "write",
            Op::Write(_) => "told write",
            Op::Call(_) => "call",
            Op::Stats(_) => "stats",
        };
        f.debug_tuple("DatabaseMsg").field(&kind).finish()
    }
}

/// The handle of a [`Database`](super::Database), with one method per kind of request.
///
/// Asks return `Result<T, DatabaseError>`; the `tell_*` forms return once the
/// write is queued, their failures being logged and counted in
/// [`DatabaseStats`], and a write they could not queue (the manager is
/// stopping or stopped) comes back inside their [`RefusedWrite`] error. [`join`](DatabaseHandle::join) waits until
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
    handle: Handle<DatabaseMsg>,
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
            .ask(|reply| DatabaseMsg(Op::Call(Box::new(move |conn| reply.send(f(conn))))))?;
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
            DatabaseMsg(Op::Write(Box::new(ExecuteOp {
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
            DatabaseMsg(Op::Write(Box::new(ClosureOp {
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        })?
    }

    /// The awaitable [`call`](DatabaseHandle::call).
    ///
    /// # Errors
    ///
    /// As [`call`](DatabaseHandle::call).
    pub fn call_async<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, DatabaseError>> + Send + '_
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let ask = self
            .handle
            .ask_async(|reply| DatabaseMsg(Op::Call(Box::new(move |conn| reply.send(f(conn))))));
        async move { Ok(ask.await?) }
    }

    /// The awaitable [`execute`](DatabaseHandle::execute): resolves with the
    /// number of rows changed once the write's batch is committed, without
    /// blocking the thread that polls it. Dropped before it resolves, the
    /// write may still be committed (if it was sent): see
    /// [cancel safety](crate::future#cancel-safety).
    ///
    /// # Errors
    ///
    /// As [`execute`](DatabaseHandle::execute).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Runtime, sql_values};
    /// use custody::resources::Database;
    ///
    /// let rt = Runtime::new();
    /// let db = Database::in_memory().init_sql("CREATE TABLE t (n INTEGER)").spawn(&rt, "db")?;
    /// let count = futures_lite::future::block_on(async {
    ///     db.execute_async("INSERT INTO t VALUES (?1)", sql_values![7]).await?;
    ///     db.call_async(|conn| conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
    ///         .await
    /// })??;
    /// assert_eq!(count, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute_async(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> impl Future<Output = Result<usize, DatabaseError>> + Send + '_ {
        let sql = sql.into();
        let ask = self.handle.ask_async(|reply| {
            DatabaseMsg(Op::Write(Box::new(ExecuteOp {
                sql,
                params,
                changed: 0,
                reply: Some(reply),
            })))
        });
        async move { ask.await? }
    }

    /// The awaitable [`write`](DatabaseHandle::write): resolves with `f`'s
    /// value once its batch is committed.
    ///
    /// # Errors
    ///
    /// As [`write`](DatabaseHandle::write).
    pub fn write_async<T, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, DatabaseError>> + Send + '_
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let ask = self.handle.ask_async(|reply| {
            DatabaseMsg(Op::Write(Box::new(ClosureOp {
                work: Some(f),
                value: None,
                reply: Some(reply),
            })))
        });
        async move { ask.await? }
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
            .tell(DatabaseMsg(Op::Write(Box::new(op))))
            .map_err(|refused| {
                refused_write(
                    refused,
                    self.handle.name(),
                    |msg: DatabaseMsg| match msg.0 {
                        Op::Write(op) => Some(op as Box<dyn Any>),
                        Op::Call(_) | Op::Stats(_) => None,
                    },
                    input,
                )
            })
    }

    /// The database manager's own counters. (The runtime's counters for this
    /// manager are [`Handle::stats`], through
    /// [`handle`](DatabaseHandle::handle).)
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Runtime`] if the manager is stopped.
    pub fn stats(&self) -> Result<DatabaseStats, DatabaseError> {
        Ok(self.handle.ask(|reply| DatabaseMsg(Op::Stats(reply)))?)
    }

    /// The awaitable [`stats`](DatabaseHandle::stats).
    ///
    /// # Errors
    ///
    /// As [`stats`](DatabaseHandle::stats).
    pub fn stats_async(
        &self,
    ) -> impl Future<Output = Result<DatabaseStats, DatabaseError>> + Send + '_ {
        let ask = self.handle.ask_async(|reply| DatabaseMsg(Op::Stats(reply)));
        async move { Ok(ask.await?) }
    }

    /// The underlying handle: every other call ([`Handle::stats`] for the
    /// runtime's counters of this manager, [`Handle::len`], ...).
    pub fn handle(&self) -> &Handle<DatabaseMsg> {
        &self.handle
    }

    /// Unwraps the underlying handle.
    pub fn into_handle(self) -> Handle<DatabaseMsg> {
        self.handle
    }
}

super::super::lifecycle!(DatabaseHandle);

impl From<Handle<DatabaseMsg>> for DatabaseHandle {
    fn from(handle: Handle<DatabaseMsg>) -> DatabaseHandle {
        DatabaseHandle { handle }
    }
}
