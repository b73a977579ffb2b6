//! `counter`: every thread adds 1 to one shared count, `k` times.
//!
//! A run's time covers the increments and the wait until every one of them is
//! applied and the final count checked.

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::resources::{Counter, CounterHandle};
use custody::{Backend, Runtime};

use crate::measure::race;

/// The workload's name.
pub const NAME: &str = "counter";

/// The designs, the reference (`atomic`) first.
pub const DESIGNS: [&str; 8] = [
    "atomic",
    "mutex-std",
    "mutex-parking-lot",
    "raw-crossbeam",
    "raw-flume",
    "manager-crossbeam",
    "manager-flume",
    "manager-coalesced",
];

/// The thread counts measured.
pub const THREADS: [usize; 4] = [1, 2, 4, 8];

/// How many increments `manager-coalesced` folds into one `Add` message.
pub const COALESCE: u64 = 256;

/// One run of `design`: `threads` threads each add 1, `k` times. Returns the
/// time from the start until the last increment is applied and checked.
///
/// # Panics
///
/// On an unknown design, or if the final count is not `threads * k`.
pub fn run(design: &str, threads: usize, k: u64) -> Duration {
    match design {
        "atomic" => atomic(threads, k),
        "mutex-std" => mutex_std(threads, k),
        "mutex-parking-lot" => mutex_parking_lot(threads, k),
        "raw-crossbeam" => raw_crossbeam(threads, k),
        "raw-flume" => raw_flume(threads, k),
        "manager-crossbeam" => manager(Backend::Crossbeam, threads, k),
        "manager-flume" => manager(Backend::Flume, threads, k),
        "manager-coalesced" => manager_coalesced(threads, k),
        other => panic!("counter: unknown design `{other}`"),
    }
}

fn check(design: &str, count: u64, threads: usize, k: u64) {
    assert_eq!(
        count,
        threads as u64 * k,
        "counter/{design}: {threads} threads x {k} increments gave the wrong count"
    );
}

fn atomic(threads: usize, k: u64) -> Duration {
    let count = AtomicU64::new(0);
    race(
        threads,
        |_| {
            for _ in 0..k {
                count.fetch_add(1, Ordering::Relaxed);
            }
        },
        || check("atomic", count.load(Ordering::Relaxed), threads, k),
    )
}

fn mutex_std(threads: usize, k: u64) -> Duration {
    let count = Mutex::new(0u64);
    race(
        threads,
        |_| {
            for _ in 0..k {
                *count.lock().expect("poisoned") += 1;
            }
        },
        || check("mutex-std", *count.lock().expect("poisoned"), threads, k),
    )
}

fn mutex_parking_lot(threads: usize, k: u64) -> Duration {
    let count = parking_lot::Mutex::new(0u64);
    race(
        threads,
        |_| {
            for _ in 0..k {
                *count.lock() += 1;
            }
        },
        || check("mutex-parking-lot", *count.lock(), threads, k),
    )
}

/// What the owner thread of the `raw-*` designs accepts.
enum Raw<R> {
    Add(u64),
    /// Answer the count: every `Add` sent before has been applied.
    Done(R),
}

fn raw_crossbeam(threads: usize, k: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<Raw<crossbeam_channel::Sender<u64>>>();
    let owner = thread::spawn(move || {
        let mut count = 0u64;
        for msg in rx {
            match msg {
                Raw::Add(n) => count += n,
                Raw::Done(reply) => {
                    let _ = reply.send(count);
                }
            }
        }
    });
    let elapsed = race(
        threads,
        |_| {
            for _ in 0..k {
                tx.send(Raw::Add(1)).expect("owner gone");
            }
        },
        || {
            let (reply, answer) = crossbeam_channel::bounded(1);
            tx.send(Raw::Done(reply)).expect("owner gone");
            check(
                "raw-crossbeam",
                answer.recv().expect("no answer"),
                threads,
                k,
            );
        },
    );
    drop(tx);
    owner.join().expect("owner thread panicked");
    elapsed
}

fn raw_flume(threads: usize, k: u64) -> Duration {
    let (tx, rx) = flume::unbounded::<Raw<flume::Sender<u64>>>();
    let owner = thread::spawn(move || {
        let mut count = 0u64;
        for msg in rx {
            match msg {
                Raw::Add(n) => count += n,
                Raw::Done(reply) => {
                    let _ = reply.send(count);
                }
            }
        }
    });
    let elapsed = race(
        threads,
        |_| {
            for _ in 0..k {
                tx.send(Raw::Add(1)).expect("owner gone");
            }
        },
        || {
            let (reply, answer) = flume::bounded(1);
            tx.send(Raw::Done(reply)).expect("owner gone");
            check("raw-flume", answer.recv().expect("no answer"), threads, k);
        },
    );
    drop(tx);
    owner.join().expect("owner thread panicked");
    elapsed
}

fn spawn_counter(rt: &Runtime) -> CounterHandle {
    Counter::new()
        .spawn(rt, "counter")
        .expect("spawning the counter")
}

/// Waits until every `add` is handled, then reads the count back.
fn join_and_check(design: &str, counter: &CounterHandle, threads: usize, k: u64) {
    counter.join().expect("joining the counter");
    let count = counter.get().expect("asking the counter");
    check(
        design,
        u64::try_from(count).expect("negative count"),
        threads,
        k,
    );
}

fn manager(backend: Backend, threads: usize, k: u64) -> Duration {
    let rt = Runtime::builder()
        .backend(backend)
        .build()
        .expect("building the runtime");
    let counter = spawn_counter(&rt);
    let design = match backend {
        Backend::Crossbeam => "manager-crossbeam",
        Backend::Flume => "manager-flume",
    };
    race(
        threads,
        |_| {
            for _ in 0..k {
                counter.add(1).expect("counter stopped");
            }
        },
        || join_and_check(design, &counter, threads, k),
    )
}

fn manager_coalesced(threads: usize, k: u64) -> Duration {
    let rt = Runtime::new();
    let counter = spawn_counter(&rt);
    race(
        threads,
        |_| {
            // Each increment is counted locally; one `Add(n)` per batch.
            let mut pending = 0u64;
            for _ in 0..k {
                pending += black_box(1);
                if pending == COALESCE {
                    counter.add(pending as i64).expect("counter stopped");
                    pending = 0;
                }
            }
            if pending > 0 {
                counter.add(pending as i64).expect("counter stopped");
            }
        },
        || join_and_check("manager-coalesced", &counter, threads, k),
    )
}
