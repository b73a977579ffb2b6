//! What a `PgState` request can fail with, and why one could not be opened.
//! (A refused told write is the shared [`RefusedWrite`].)

use std::sync::Arc;

use ::postgres::error::SqlState;
use thiserror::Error;

use crate::resources::RefusedWrite;
use crate::{AskError, SpawnError};

/// Why a [`PgState`](super::PgState) request failed. (Opening one fails with
/// a [`PgOpenError`] instead.)
///
/// # Examples
///
/// ```
/// use custody::resources::postgres::PgStateError;
///
/// let fenced = PgStateError::Fenced { partition: "accounts/3".into(), held: 4, current: Some(5) };
/// assert_eq!(
///     fenced.to_string(),
///     "partition `accounts/3` was claimed by another owner (epoch 5) since this one claimed it (epoch 4): write refused"
/// );
/// assert!(!fenced.is_transient());
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgStateError {
    /// PostgreSQL refused a statement of the write (its savepoint was rolled
    /// back, nothing of it remains), or the connection failed.
    #[error(transparent)]
    Postgres(#[from] ::postgres::Error),
    /// A write's closure failed with an error of its own
    /// ([`PgStateError::write`]); nothing of it remains.
    #[error("the write failed: {0}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A statement of the write failed, and the write returned `Ok` anyway;
    /// the write is rolled back as if it had returned the error.
    #[error("a statement of this write failed, and the write returned Ok regardless: rolled back")]
    IgnoredError,
    /// The write (or a call) sent transaction control (`BEGIN`, `COMMIT`,
    /// `ROLLBACK`, `SAVEPOINT`, ...), which belongs to the manager; the
    /// statement was not sent.
    #[error("transaction control is the manager's: `{statement}` was not sent")]
    TransactionControl {
        /// The refused statement, as given.
        statement: String,
    },
    /// Another owner claimed the partition since this one did: the write is
    /// not run, and this owner steps down for the partition (every later
    /// write for it fails the same way) until it claims it again.
    #[error(
        "partition `{partition}` was claimed by another owner (epoch {}) since this one claimed it (epoch {held}): write refused",
        current.map_or_else(|| "unknown".to_owned(), |e| e.to_string())
    )]
    Fenced {
        /// The partition.
        partition: String,
        /// The epoch this owner claimed.
        held: i64,
        /// The partition's epoch now (`None` if its row is gone).
        current: Option<i64>,
    },
    /// The write names a partition this owner never claimed.
    #[error("partition `{partition}` is not claimed by this owner: write refused")]
    NotClaimed {
        /// The partition.
        partition: String,
    },
    /// PostgreSQL answered the COMMIT with an error: the batch, this write
    /// with it, is rolled back.
    #[error("committing the write batch failed, so this write was rolled back")]
    Commit(#[source] Arc<::postgres::Error>),
    /// The connection was lost while the COMMIT was in flight: the batch may
    /// or may not be committed. Send the write again with the same message
    /// id ([`apply`](super::PgStateHandle::apply)): it is then either
    /// applied, or answered [`Applied::Duplicate`](super::Applied::Duplicate).
    #[error("the connection was lost during the commit: this write may or may not be committed")]
    CommitOutcomeUnknown(#[source] Arc<::postgres::Error>),
    /// The batch was rolled back before its commit (its transaction failed
    /// or the connection was lost), so this write is not committed.
    #[error("the write batch was abandoned before its commit: {reason}")]
    BatchAborted {
        /// What happened to the batch.
        reason: &'static str,
    },
    /// A told write was refused (the manager is stopping or stopped); this
    /// is what a [`RefusedWrite`] becomes when converted by `?`.
    #[error("manager `{manager}` is stopped")]
    Stopped {
        /// The manager's name.
        manager: String,
    },
    /// The manager could not be asked (stopped, or the request panicked: a
    /// write whose closure panicked fails with this, and only that write).
    #[error(transparent)]
    Runtime(#[from] AskError),
    /// Opening failed (for a function that opens and then sends requests, so
    /// that `?` serves both).
    #[error(transparent)]
    Open(#[from] PgOpenError),
}

impl PgStateError {
    /// Wraps an error of the write's own (a business rule, a parse error),
    /// to fail the write from its closure: nothing of it remains.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::postgres::PgStateError;
    ///
    /// let error = PgStateError::write("insufficient funds");
    /// assert_eq!(error.to_string(), "the write failed: insufficient funds");
    /// ```
    pub fn write(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PgStateError {
        PgStateError::Write(error.into())
    }

    /// Whether the failure says nothing about the write itself, so that the
    /// same write (with the same message id) may succeed when sent again:
    /// the connection failed or was lost (also during the commit, whose
    /// outcome is then unknown), a serialization failure or deadlock, too
    /// many connections, the server shutting down, or a batch rolled back
    /// because of something other than this write. A failed statement, a
    /// fenced or unclaimed partition, or the write's own error is not.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::postgres::PgStateError;
    ///
    /// assert!(PgStateError::BatchAborted { reason: "lost" }.is_transient());
    /// assert!(!PgStateError::NotClaimed { partition: "p".into() }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            PgStateError::Postgres(error) => is_transient_pg(error),
            PgStateError::Commit(error) => is_transient_pg(error),
            PgStateError::CommitOutcomeUnknown(_) | PgStateError::BatchAborted { .. } => true,
            _ => false,
        }
    }
}

/// Whether a PostgreSQL error is one of the moment rather than of the
/// statement.
pub(super) fn is_transient_pg(error: &::postgres::Error) -> bool {
    match error.code() {
        None => true, // the connection: closed, I/O, timeout
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || code.code().starts_with("08") // connection exception
        }
    }
}

/// Why a [`PgState`](super::PgState) could not be opened or spawned.
///
/// # Examples
///
/// ```
/// use custody::resources::postgres::{PgOpenError, PgState};
///
/// let error = PgState::builder("this is not a url").open().unwrap_err();
/// assert!(matches!(error, PgOpenError::Config(_)));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgOpenError {
    /// The connection string could not be parsed.
    #[error("invalid PostgreSQL connection string")]
    Config(#[source] ::postgres::Error),
    /// The server could not be reached, or refused the connection (address,
    /// authentication, database).
    #[error("connecting to PostgreSQL failed")]
    Connect(#[source] ::postgres::Error),
    /// Creating the tables or setting up the session failed.
    #[error("setting up the PostgreSQL session or its tables failed")]
    Setup(#[source] ::postgres::Error),
    /// The owner name is empty.
    #[error("the owner name is empty")]
    EmptyOwner,
    /// The manager could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl<T> From<RefusedWrite<T>> for PgStateError {
    /// Keeps the reason and drops the write.
    fn from(refused: RefusedWrite<T>) -> PgStateError {
        match refused {
            RefusedWrite::Stopped { manager, .. } => PgStateError::Stopped { manager },
            RefusedWrite::Deadlock { cycle, .. } => {
                PgStateError::Runtime(AskError::Deadlock { cycle })
            }
        }
    }
}
