//! custody: every shared resource is owned by exactly one thread, and
//! everyone else talks to it through a typed message queue.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod queue;
pub mod sync;

pub use queue::JoinableQueue;
pub use sync::{Barrier, BoundedSemaphore, Event, Semaphore, Timer};
