//! The workloads, timing and reports of `custody-compare`: when does a
//! manager thread beat a lock, on this machine?
//!
//! The binary (`src/main.rs`) runs them and prints the table; the criterion
//! bench (`benches/compare.rs`) runs the same workloads under criterion.
//! Each workload module has a `NAME`, its `DESIGNS` (the reference first),
//! the `THREADS` counts it is measured at, and `run(design, threads, k)`,
//! which does `k` operations per thread and returns the time they took (the
//! async workloads, whose "threads" are concurrent tokio tasks, also return
//! their requests' latency percentiles).

pub mod ask;
pub mod async_ask;
pub mod async_write;
#[cfg(feature = "amqp")]
pub mod broker;
pub mod counter;
pub mod database;
pub mod measure;
pub mod printer;
pub mod python_queue;
pub mod report;
pub mod scale;
pub mod section;
