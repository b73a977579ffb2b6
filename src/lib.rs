//! custody: every shared resource is owned by exactly one thread, and
//! everyone else talks to it through a typed message queue.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod current;
mod error;
mod handle;
mod mailbox;
mod manager;
mod manager_thread;
mod owner;
mod reply;
pub mod resources;
mod runtime;
mod stats;

pub use error::{
    AskError, BuildError, CapacityError, JoinError, SendError, SendTimeoutError, SpawnError,
    TrySendError,
};
pub use handle::Handle;
pub use mailbox::{Backend, Capacity};
pub use manager::{Context, Manager};
pub use owner::{Job, Owner};
pub use reply::Reply;
pub use resources::{Counter, CounterHandle, Printer, PrinterHandle, SharedBuffer};
#[cfg(feature = "sqlite")]
pub use resources::{Database, DatabaseError, DatabaseHandle};
pub use runtime::{
    Builder, DEFAULT_MAX_BATCH, ManagerBuilder, Runtime, ShutdownReport, StopRecord,
};
pub use stats::{ManagerState, ManagerStats, Stats};
