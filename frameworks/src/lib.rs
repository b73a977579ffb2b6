//! custody beside the actor frameworks kameo, ractor and actix, on the same
//! counter: a `u64` behind one actor (or manager), incremented by messages.
//!
//! Workloads:
//! - **ask**: one caller, `k` sequential round trips (increment and get the
//!   new count, answer awaited and checked), each timed;
//! - **tell**: 2 producers each send `k` increments, then one ask waits
//!   until all have been handled (a mailbox is FIFO) and checks the count;
//! - **ring**: `n` actors pass a token around with tell, each forwarding it
//!   to the next until `hops` hops are done.
//!
//! Each framework is measured inside its own runtime (tokio for kameo and
//! ractor, actix's `System`) and from a plain `std::thread` calling in
//! (kameo's `blocking_send`; a `block_on` of ractor's and actix's futures,
//! which need no runtime context to be polled). custody is measured from a
//! plain thread (its native blocking API) and from a tokio task
//! (`ask_async`, `tell_async`). The reference, `raw-crossbeam`, is the
//! design under custody without it: a thread owning a `u64`, requests on a
//! crossbeam channel, answers on a crossbeam `bounded(1)`.

pub mod actix_side;
pub mod custody_side;
pub mod kameo_side;
pub mod ractor_side;
pub mod raw;

use std::time::{Duration, Instant};

/// What one run measured: its time, and each operation's when timed one
/// by one.
#[derive(Debug, Default)]
pub struct Sample {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

/// The three workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Ask,
    Tell,
    Ring,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Ask, Workload::Tell, Workload::Ring];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Ask => "ask",
            Workload::Tell => "tell",
            Workload::Ring => "ring",
        }
    }

    /// The designs, the reference first, then custody's native row.
    pub fn designs(self) -> &'static [&'static str] {
        match self {
            Workload::Ask | Workload::Tell => &[
                "raw-crossbeam",
                "custody-thread",
                "custody-tokio",
                "kameo-tokio",
                "kameo-thread",
                "ractor-tokio",
                "ractor-thread",
                "actix-system",
                "actix-thread",
            ],
            Workload::Ring => &["raw-crossbeam", "custody", "kameo", "ractor", "actix"],
        }
    }

    /// One run of `design`: `k` operations (asks; increments per producer;
    /// hops of the ring) and, for the ring, `actors` actors.
    ///
    /// # Panics
    ///
    /// On an unknown design or a wrong answer.
    pub fn run(self, design: &str, k: u64, actors: usize) -> Sample {
        let timed = |elapsed| Sample {
            elapsed,
            latencies: Vec::new(),
        };
        match (self, design) {
            (Workload::Ask, "raw-crossbeam") => raw::ask(k),
            (Workload::Ask, "custody-thread") => custody_side::ask_thread(k),
            (Workload::Ask, "custody-tokio") => custody_side::ask_tokio(k),
            (Workload::Ask, "kameo-tokio") => kameo_side::ask(k, Caller::Inside),
            (Workload::Ask, "kameo-thread") => kameo_side::ask(k, Caller::Thread),
            (Workload::Ask, "ractor-tokio") => ractor_side::ask(k, Caller::Inside),
            (Workload::Ask, "ractor-thread") => ractor_side::ask(k, Caller::Thread),
            (Workload::Ask, "actix-system") => actix_side::ask(k, Caller::Inside),
            (Workload::Ask, "actix-thread") => actix_side::ask(k, Caller::Thread),
            (Workload::Tell, "raw-crossbeam") => timed(raw::tell(k)),
            (Workload::Tell, "custody-thread") => timed(custody_side::tell_thread(k)),
            (Workload::Tell, "custody-tokio") => timed(custody_side::tell_tokio(k)),
            (Workload::Tell, "kameo-tokio") => timed(kameo_side::tell(k, Caller::Inside)),
            (Workload::Tell, "kameo-thread") => timed(kameo_side::tell(k, Caller::Thread)),
            (Workload::Tell, "ractor-tokio") => timed(ractor_side::tell(k, Caller::Inside)),
            (Workload::Tell, "ractor-thread") => timed(ractor_side::tell(k, Caller::Thread)),
            (Workload::Tell, "actix-system") => timed(actix_side::tell(k, Caller::Inside)),
            (Workload::Tell, "actix-thread") => timed(actix_side::tell(k, Caller::Thread)),
            (Workload::Ring, "raw-crossbeam") => timed(raw::ring(actors, k)),
            (Workload::Ring, "custody") => timed(custody_side::ring(actors, k)),
            (Workload::Ring, "kameo") => timed(kameo_side::ring(actors, k)),
            (Workload::Ring, "ractor") => timed(ractor_side::ring(actors, k)),
            (Workload::Ring, "actix") => timed(actix_side::ring(actors, k)),
            (workload, other) => panic!("{}: unknown design `{other}`", workload.name()),
        }
    }

    /// Operations of one run: for tell, both producers' increments.
    pub fn ops(self, k: u64) -> u64 {
        match self {
            Workload::Tell => PRODUCERS as u64 * k,
            Workload::Ask | Workload::Ring => k,
        }
    }
}

/// Producers in the tell workload.
pub const PRODUCERS: usize = 2;

/// Where the caller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A task of the framework's own runtime.
    Inside,
    /// A plain `std::thread`, outside any runtime.
    Thread,
}

/// A tokio runtime like a service's: multi-thread, 2 workers (this
/// machine's cores).
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

/// `k` sequential asks made by `ask(i)` (which returns the count after
/// increment `i`), each timed and checked: the count after the `i`th is
/// `i + 1`.
pub fn time_asks(k: u64, mut ask: impl FnMut() -> u64) -> Sample {
    let mut latencies = Vec::with_capacity(k as usize);
    let started = Instant::now();
    for i in 0..k {
        let t = Instant::now();
        let count = ask();
        latencies.push(t.elapsed());
        assert_eq!(count, i + 1, "a lost or doubled increment");
    }
    Sample {
        elapsed: started.elapsed(),
        latencies,
    }
}

/// The async twin of [`time_asks`].
pub async fn time_asks_async<F: Future<Output = u64>>(
    k: u64,
    mut ask: impl FnMut() -> F,
) -> Sample {
    let mut latencies = Vec::with_capacity(k as usize);
    let started = Instant::now();
    for i in 0..k {
        let t = Instant::now();
        let count = ask().await;
        latencies.push(t.elapsed());
        assert_eq!(count, i + 1, "a lost or doubled increment");
    }
    Sample {
        elapsed: started.elapsed(),
        latencies,
    }
}

/// The count after a tell run: both producers' increments.
pub fn check_told(count: u64, k: u64) {
    assert_eq!(count, PRODUCERS as u64 * k, "increments lost");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every design of every workload runs and checks its answers.
    #[test]
    fn every_design_runs_small() {
        for workload in Workload::ALL {
            for design in workload.designs() {
                let sample = workload.run(design, 20, 4);
                assert!(sample.elapsed > Duration::ZERO, "{design}");
                if workload == Workload::Ask {
                    assert_eq!(sample.latencies.len(), 20, "{design}");
                }
            }
        }
    }
}
