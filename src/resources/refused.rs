//! `RefusedWrite`: a told write that a database manager (the SQLite
//! `Database`, or `PgState`) refused, given back; and the one way both take
//! a refused write back out of its message.

use std::any::Any;
use std::fmt;

use thiserror::Error;

use crate::SendError;

/// A told write that a database manager refused (the SQLite `Database`'s
/// `tell_execute` and `tell_write`, and, feature `postgres`, `PgState`'s
/// `tell_write` and `tell_apply`); the write comes back: `(sql, params)` for
/// `tell_execute`, the closure for the others.
///
/// Its `Debug` does not need `T: Debug` (closures are not), and it converts
/// into the resource's own error (`DatabaseError::Stopped`,
/// `PgStateError::Stopped`) for `?`, dropping the write: call
/// [`into_inner`](RefusedWrite::into_inner) first to keep it.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use custody::{Runtime, sql_values};
/// use custody::resources::{Database, RefusedWrite};
///
/// let rt = Runtime::new();
/// let db = Database::in_memory().spawn(&rt, "db")?;
/// db.stop();
/// db.join()?;
/// let refused = db.tell_execute("INSERT INTO t VALUES (?1)", sql_values![7]).unwrap_err();
/// assert!(matches!(&refused, RefusedWrite::Stopped { manager, .. } if manager == "db"));
/// assert_eq!(refused.to_string(), "database manager `db` is stopped: the told write was refused");
/// let (sql, params) = refused.into_inner();
/// assert_eq!(sql, "INSERT INTO t VALUES (?1)");
/// assert_eq!(params, sql_values![7]);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Error)]
#[non_exhaustive]
pub enum RefusedWrite<T> {
    /// The manager is stopping or stopped.
    #[error("database manager `{manager}` is stopped: the told write was refused")]
    Stopped {
        /// The manager's name.
        manager: String,
        /// The write that was not sent.
        write: T,
    },
    /// Told from a manager into the database's full bounded mailbox while the
    /// database waits (through a chain of asks) on that manager: waiting for
    /// room would never end.
    #[error("telling database manager `{manager}` would deadlock: {}", cycle.join(" -> "))]
    Deadlock {
        /// The manager's name.
        manager: String,
        /// The write that was not sent.
        write: T,
        /// The managers around the cycle, the sender first and last.
        cycle: Vec<String>,
    },
}

impl<T> RefusedWrite<T> {
    /// The write that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            RefusedWrite::Stopped { write, .. } | RefusedWrite::Deadlock { write, .. } => write,
        }
    }

    /// The write that was not sent, borrowed.
    pub fn write(&self) -> &T {
        match self {
            RefusedWrite::Stopped { write, .. } | RefusedWrite::Deadlock { write, .. } => write,
        }
    }

    /// The name of the manager that refused it.
    pub fn manager(&self) -> &str {
        match self {
            RefusedWrite::Stopped { manager, .. } | RefusedWrite::Deadlock { manager, .. } => {
                manager
            }
        }
    }
}

impl<T> fmt::Debug for RefusedWrite<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusedWrite::Stopped { manager, .. } => f
                .debug_struct("Stopped")
                .field("manager", manager)
                .finish_non_exhaustive(),
            RefusedWrite::Deadlock { manager, cycle, .. } => f
                .debug_struct("Deadlock")
                .field("manager", manager)
                .field("cycle", cycle)
                .finish_non_exhaustive(),
        }
    }
}

/// Turns a refused tell of a boxed write back into a [`RefusedWrite`]:
/// `write_of` takes the boxed write out of the returned message, and
/// `input` gives the caller's own input back out of the write.
///
/// # Panics
///
/// If the message does not hold a write of type `O`: a refused tell always
/// gives back the message it was sent.
pub(crate) fn refused_write<M, O: Any, T>(
    refused: SendError<M>,
    manager: &str,
    write_of: impl FnOnce(M) -> Option<Box<dyn Any>>,
    input: impl FnOnce(O) -> T,
) -> RefusedWrite<T> {
    let cycle = match &refused {
        SendError::Deadlock { cycle, .. } => Some(cycle.clone()),
        _ => None,
    };
    let op = write_of(refused.into_inner())
        .and_then(|op| op.downcast::<O>().ok())
        .expect("a refused tell gives back the write it was sent");
    let manager = manager.to_owned();
    let write = input(*op);
    match cycle {
        Some(cycle) => RefusedWrite::Deadlock {
            manager,
            write,
            cycle,
        },
        None => RefusedWrite::Stopped { manager, write },
    }
}
