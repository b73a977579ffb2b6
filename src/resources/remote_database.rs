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
//! RELEASE custody_write ... COMMIT in `idle`, then the broker acks
//! ```
//!
//! A batch is acknowledged only after `idle`, which commits, so a write the
//! broker redelivers was either committed with its id (and is skipped) or
//! not at all (and is applied now).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rusqlite::Connection;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::database::{Database, DatabaseBuilder, DatabaseError, WriteOp};
use crate::broker::RemoteReply;
use crate::{Context, Manager};

/// The table of applied ids, created when a [`RemoteDatabase`] opens.
const CREATE_APPLIED: &str =
    "CREATE TABLE IF NOT EXISTS custody_applied (id TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID";
const RECORD_APPLIED: &str = "INSERT OR IGNORE INTO custody_applied (id) VALUES (?1)";

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
/// [`RemoteHandle<RemoteDbMsg>`](crate::broker::RemoteHandle).
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
/// use custody::resources::{RemoteDbMsg, RemoteWrite};
///
/// let db = Broker::from_env()?.remote_handle::<RemoteDbMsg>("ledger")?;
/// let write = RemoteWrite::new("INSERT INTO entries (amount) VALUES (?1)", vec![10.into()]);
/// db.tell(RemoteDbMsg::Execute(write.clone()))?;
/// // The same write again (a retry): applied once all the same, and the
/// // ask answers 0 rows changed.
/// assert_eq!(db.ask(|reply| RemoteDbMsg::ExecuteAsk(write, reply))?, Ok(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteDbMsg {
    /// Apply the write unless its id was applied before. A failure is logged
    /// and counted in the database's `failed_told_writes`; the message is
    /// acknowledged all the same.
    Execute(RemoteWrite),
    /// The same, answered once its batch is committed: the rows changed (0
    /// if the id was already applied), or the error as text.
    ExecuteAsk(RemoteWrite, RemoteReply<Result<usize, String>>),
}

/// A [`Database`] served remotely, with exactly-once effects: its messages
/// are [`RemoteDbMsg`]s, and each write's id is recorded in the table
/// `custody_applied` in the same transaction as the write, so that a write
/// delivered again after a crash changes nothing.
///
/// Serve it with [`Broker::serve`](crate::broker::Broker::serve); an owner
/// and its standbys open the same database file. Group commit is the
/// `Database`'s own: a savepoint per write, a transaction per batch,
/// committed in `idle`, before the broker acknowledges the batch.
///
/// If a batch's COMMIT fails, its writes fail (askers get the error, told
/// writes are logged) and the batch is still acknowledged: the senders must
/// retry what they need, with the same ids.
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
    db: Database,
}

impl RemoteDatabase {
    /// Opens the database `builder` describes and creates the
    /// `custody_applied` table if it is missing.
    ///
    /// # Errors
    ///
    /// As [`DatabaseBuilder::open`], or [`DatabaseError::Sqlite`] if the
    /// table cannot be created.
    pub fn open(builder: DatabaseBuilder) -> Result<RemoteDatabase, DatabaseError> {
        RemoteDatabase::new(builder.open()?)
    }

    /// Serves an opened database remotely; creates the `custody_applied`
    /// table if it is missing.
    ///
    /// # Errors
    ///
    /// [`DatabaseError::Sqlite`] if the table cannot be created.
    pub fn new(mut db: Database) -> Result<RemoteDatabase, DatabaseError> {
        db.setup(CREATE_APPLIED)?;
        Ok(RemoteDatabase { db })
    }
}

impl std::fmt::Debug for RemoteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDatabase")
            .field("db", &self.db)
            .finish()
    }
}

/// A write applied at most once per id.
struct AppliedOnceOp {
    write: RemoteWrite,
    changed: usize,
    reply: Option<RemoteReply<Result<usize, String>>>,
}

impl WriteOp for AppliedOnceOp {
    fn run(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let recorded = conn
            .prepare_cached(RECORD_APPLIED)?
            .execute([&self.write.id])?;
        if recorded == 0 {
            tracing::debug!(id = %self.write.id, "a write applied before: skipped");
            self.changed = 0;
            return Ok(());
        }
        let params = std::mem::take(&mut self.write.params);
        let mut statement = conn.prepare_cached(&self.write.sql)?;
        self.changed = statement.execute(rusqlite::params_from_iter(
            params.into_iter().map(Value::from),
        ))?;
        Ok(())
    }

    fn is_asked(&self) -> bool {
        self.reply.as_ref().is_some_and(RemoteReply::is_bound)
    }

    fn describe(&self) -> &str {
        &self.write.sql
    }

    fn succeed(self: Box<Self>) {
        if let Some(reply) = self.reply {
            reply.send(Ok(self.changed));
        }
    }

    fn fail(self: Box<Self>, error: DatabaseError) {
        if let Some(reply) = self.reply {
            reply.send(Err(error.to_string()));
        }
    }
}

impl Manager for RemoteDatabase {
    type Msg = RemoteDbMsg;

    fn handle(&mut self, msg: RemoteDbMsg, _ctx: &mut Context<'_, RemoteDbMsg>) {
        let (write, reply) = match msg {
            RemoteDbMsg::Execute(write) => (write, None),
            RemoteDbMsg::ExecuteAsk(write, reply) => (write, Some(reply)),
        };
        self.db.handle_write(Box::new(AppliedOnceOp {
            write,
            changed: 0,
            reply,
        }));
    }

    /// Commits the batch; the broker acknowledges it only after this.
    fn idle(&mut self, _ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.settle();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.settle();
    }

    fn recover(&mut self, _panic: &str, _ctx: &mut Context<'_, RemoteDbMsg>) {
        self.db.recover_after_panic();
    }
}
