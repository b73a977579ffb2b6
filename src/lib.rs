//! Every shared resource is owned by exactly one thread, and everyone else
//! talks to it through a typed message queue.
//!
//! # A tour
//!
//! A [`Manager`] is a resource plus the handler of its messages. The
//! [`Runtime`] runs each manager on a thread of its own and hands back a
//! [`Handle`]: cloneable, `Send + Sync`, the only way to reach the resource.
//!
//! ```
//! use custody::{Context, Manager, Reply, Runtime};
//!
//! enum Msg {
//!     Add(u64),
//!     Get(Reply<u64>),
//! }
//!
//! struct Counter(u64);
//!
//! impl Manager for Counter {
//!     type Msg = Msg;
//!     fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
//!         match msg {
//!             Msg::Add(n) => self.0 += n,
//!             Msg::Get(reply) => reply.send(self.0),
//!         }
//!     }
//! }
//!
//! let rt = Runtime::new();
//! let counter = rt.spawn("counter", Counter(0))?;
//! counter.tell(Msg::Add(2))?; // fire and forget
//! counter.join()?; // every accepted message handled (Python's queue.join())
//! assert_eq!(counter.ask(Msg::Get)?, 2); // request and reply
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Any value, no trait: `Owner`
//!
//! ```
//! let rt = custody::Runtime::new();
//! let names = rt.own("names", Vec::<&str>::new())?;
//! names.cast(|v| v.push("ada"))?;
//! assert_eq!(names.call(|v| v.len())?, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Kinds of mailbox
//!
//! Mailboxes are unbounded by default; a bounded one makes `tell` block while
//! it is full (back-pressure), `try_tell` fail with `Full`, and `tell_timeout`
//! give up after a while. The channel comes from crossbeam-channel or flume.
//!
//! ```
//! use std::sync::mpsc;
//! use custody::{Backend, Capacity, Runtime};
//!
//! let rt = Runtime::new();
//! let slow = rt
//!     .manager("slow")
//!     .backend(Backend::Flume)
//!     .capacity(Capacity::bounded(1)?)
//!     .own(())?;
//! let (busy, is_busy) = mpsc::channel();
//! let (go, wait) = mpsc::channel::<()>();
//! slow.cast(move |_| {
//!     busy.send(()).unwrap();
//!     wait.recv().ok();
//! })?;
//! is_busy.recv()?;
//! // The manager is busy; one message fits in the mailbox, the next does not.
//! slow.handle().try_tell(custody::Job::new(|_| {}))?;
//! assert!(slow.handle().try_tell(custody::Job::new(|_| {})).unwrap_err().is_full());
//! go.send(())?;
//! slow.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Stopping
//!
//! [`Handle::stop`] and [`Runtime::shutdown`] are graceful: later sends are
//! refused (the message comes back in the error), accepted messages are still
//! handled, the `stopped` hook runs. Dropping the runtime shuts it down the
//! same way. [`Runtime::shutdown_now`] discards what is queued and reports how
//! much.
//!
//! ```
//! let rt = custody::Runtime::new();
//! let n = rt.own("n", 0u32)?;
//! n.cast(|n| *n += 1)?;
//! let report = rt.shutdown();
//! assert_eq!(report.total_unhandled(), 0);
//! assert!(n.cast(|n| *n += 1).is_err()); // refused, and handed back
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Every ask ends
//!
//! An [`ask`](Handle::ask) returns the answer or an [`AskError`]: `Timeout`,
//! `Stopped`, `Panicked` (with the panic message), `NoReply`, or `Deadlock`
//! when a manager asks itself, at once instead of hanging.

#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs` (Cargo.toml's [package.metadata.docs.rs])
// on nightly, and marks feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod broker;
mod current;
mod deadlock;
mod error;
pub mod future;
pub mod fuzz;
mod handle;
#[cfg(all(test, loom))]
mod loom_models;
mod mailbox;
mod manager;
mod manager_thread;
pub mod observe;
mod owner;
pub mod queue;
mod reply;
pub mod resources;
mod runtime;
mod schedule;
mod stats;
mod supervision;
pub mod sync;
mod sync_shim;
mod util;
mod wakers;

pub use error::{
    AskError, BuildError, CapacityError, JoinError, ScheduleError, SendError, SendTimeoutError,
    SignalError, SpawnError, TrySendError,
};
pub use handle::Handle;
pub use mailbox::{Backend, Capacity};
pub use manager::{Context, Manager};
pub use owner::{Job, Owner};
pub use reply::Reply;
pub use runtime::{
    DEFAULT_MAX_BATCH, HandledSignals, ManagerBuilder, Runtime, RuntimeBuilder, ShutdownReport,
    StopRecord,
};
pub use schedule::{ScheduleStatus, Scheduled};
pub use stats::{ManagerState, ManagerStats, OutsideStats, Stats};
pub use supervision::PanicPolicy;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
