//! What a database call can fail with, and a refused told write.

use std::sync::Arc;

use thiserror::Error;

use crate::resources::RefusedWrite;
use crate::{AskError, SpawnError};

/// Why a database request failed. (Opening a database fails with an
/// [`OpenError`] instead.)
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
    /// Opening the database failed (for a function that opens one and
    /// then sends it requests, so that `?` serves both).
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Why a database could not be opened, or its manager spawned: an error of
/// the start, handled once, where [`DatabaseError`] is one of a request.
///
/// # Examples
///
/// ```
/// use custody::resources::{Database, OpenError};
///
/// let left_open = Database::in_memory().init_sql("BEGIN").open().unwrap_err();
/// assert!(matches!(left_open, OpenError::InitLeftTransaction));
/// let bad_sql = Database::in_memory().init_sql("CREATE TABLE").open().unwrap_err();
/// assert!(matches!(bad_sql, OpenError::Sqlite(_)));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Opening the connection, a pragma or the init SQL failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The database could not be switched to write-ahead logging.
    #[error("the database could not be switched to WAL mode: its journal mode is `{mode}`")]
    NotWal {
        /// The journal mode SQLite reported.
        mode: String,
    },
    /// The init SQL began a transaction and did not end it.
    #[error("the init SQL left a transaction open")]
    InitLeftTransaction,
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
    /// A `RemoteDatabase` (features `amqp` and `sqlite`) holds a write
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
            DatabaseError::Open(OpenError::Sqlite(error)) => is_transient_sqlite(error),
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
