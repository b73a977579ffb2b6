//! Ready-made managers for the resources programs share most often.
//!
//! - [`Counter`]: a number many threads add to; the simplest manager.
//! - [`Printer`]: an output stream whose multi-line jobs never interleave.
//! - `Database` (cargo feature `sqlite`, on by default): a real SQLite
//!   connection whose writes are group-committed.
//! - `RemoteDatabase` (features `amqp` and `sqlite`): a `Database` served from
//!   a broker queue, whose writes carry ids and take effect exactly once.
//! - `postgres::PgState` (feature `postgres`): state in PostgreSQL, reachable
//!   from any owner process: group-committed writes, exactly-once effects by
//!   message id, and a fencing epoch per partition.
//!
//! Each manager comes with a message enum (or opaque message type) and a
//! handle wrapper ([`CounterHandle`], [`PrinterHandle`], `DatabaseHandle`)
//! whose methods build the messages, so callers write `counter.add(1)` rather
//! than `counter.tell(CounterMsg::Add(1))`. The wrappers dereference to the
//! runtime's [`Handle`](crate::Handle), and are made from one with `From`
//! when a manager is spawned with custom options.
//!
//! # Examples
//!
//! ```
//! use custody::Runtime;
//! use custody::resources::{Counter, Printer, SharedBuffer};
//!
//! let rt = Runtime::new();
//! let out = SharedBuffer::new();
//! let printer = Printer::new(out.clone()).spawn(&rt, "printer")?;
//! let counter = Counter::new().spawn(&rt, "counter")?;
//! counter.add(1)?;
//! printer.print_job([format!("The count is {}", counter.get()?), "-----".to_owned()])?;
//! printer.join()?;
//! assert_eq!(out.lines(), ["The count is 1", "-----"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The lifecycle calls every resource handle has (`join`, `join_async`,
/// `join_timeout`, `stop`, `name`), passed through to its `handle` field: one definition
/// for the three handles.
macro_rules! lifecycle {
    ($handle:ident) => {
        impl $handle {
            /// Waits until every message accepted so far has been handled
            /// (and, for a resource that commits in its `idle`, committed).
            ///
            /// # Errors
            ///
            /// As [`Handle::join`](crate::Handle::join).
            pub fn join(&self) -> Result<(), crate::JoinError> {
                self.handle.join()
            }

            #[doc = concat!("The awaitable [`join`](", stringify!($handle), "::join).")]
            ///
            /// # Errors
            ///
            /// As [`Handle::join_async`](crate::Handle::join_async).
            pub fn join_async(
                &self,
            ) -> impl std::future::Future<Output = Result<(), crate::JoinError>> + Send + '_ {
                self.handle.join_async()
            }

            #[doc = concat!("[`join`](", stringify!($handle), "::join) with a deadline.")]
            ///
            /// # Errors
            ///
            /// As [`Handle::join_timeout`](crate::Handle::join_timeout).
            pub fn join_timeout(
                &self,
                timeout: std::time::Duration,
            ) -> Result<(), crate::JoinError> {
                self.handle.join_timeout(timeout)
            }

            /// Stops the manager gracefully: it refuses new messages and
            /// exits once everything accepted is handled. As
            /// [`Handle::stop`](crate::Handle::stop).
            pub fn stop(&self) {
                self.handle.stop();
            }

            /// The manager's name.
            pub fn name(&self) -> &str {
                self.handle.name()
            }
        }
    };
}
use lifecycle;

mod counter;
#[cfg(feature = "sqlite")]
mod database;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group_commit;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod printer;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod refused;
#[cfg(all(feature = "amqp", feature = "sqlite"))]
mod remote_database;

pub use counter::{Counter, CounterHandle, CounterMsg};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use database::{
    DEFAULT_MAX_BATCH_WRITES, Database, DatabaseBuilder, DatabaseError, DatabaseHandle,
    DatabaseMsg, DatabaseStats, OpenError, Synchronous,
};
pub use printer::{Printer, PrinterError, PrinterHandle, PrinterMsg, PrinterStats, SharedBuffer};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use refused::RefusedWrite;
#[cfg(all(feature = "amqp", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "amqp", feature = "sqlite"))))]
pub use remote_database::{
    DEFAULT_APPLIED_HORIZON, DEFAULT_PRUNE_INTERVAL, RemoteDatabase, RemoteDatabaseMsg,
    RemoteWrite, SqlValue,
};
/// The SQLite bindings the [`Database`] manager is built on, re-exported so
/// that closures can name `Connection`, `types::Value` and friends without a
/// separate dependency.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use rusqlite;
