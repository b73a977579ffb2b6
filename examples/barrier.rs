//! Seed: the tutorial's `Barrier` section.
//!
//! Lesson: a barrier keeps a fixed number of threads in step. Each worker
//! initialises itself (taking a different time), then waits on the barrier;
//! nobody starts working until every worker is ready. The barrier's action
//! runs once per trip, before anyone is released, and each waiter gets a
//! distinct index.
//!
//! Run: `cargo run --example barrier`
//! Exits 0 only if no worker started before the last one was initialised, the
//! action ran once, and the indices were 0..N.

mod common;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use custody::sync::Barrier;
use tracing::{Level, info};

const WORKERS: usize = 5;

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let actions = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&actions);
    let barrier = Arc::new(
        Barrier::builder(WORKERS)
            .action(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                info!("everyone is ready: go");
            })
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a barrier for five"),
    );
    let ready_at = Arc::new(Mutex::new(Vec::new()));
    let started_at = Arc::new(Mutex::new(Vec::new()));

    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let (barrier, ready_at, started_at) = (
                Arc::clone(&barrier),
                Arc::clone(&ready_at),
                Arc::clone(&started_at),
            );
            thread::spawn(move || {
                info!("Worker {index}: initialising");
                thread::sleep(Duration::from_millis(20 * (index as u64 + 1)));
                ready_at.lock().unwrap().push(Instant::now());
                info!("Worker {index}: ready, waiting for the others");
                let turn = barrier.wait().expect("the barrier holds");
                started_at.lock().unwrap().push(Instant::now());
                info!("Worker {index}: working (index {turn} at the barrier)");
                turn
            })
        })
        .collect();
    let turns: BTreeSet<usize> = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread"))
        .collect();

    let last_ready = ready_at.lock().unwrap().iter().max().copied();
    let first_start = started_at.lock().unwrap().iter().min().copied();
    let in_step = matches!((last_ready, first_start), (Some(r), Some(s)) if s >= r);
    let expected: BTreeSet<usize> = (0..WORKERS).collect();
    let actions = actions.load(Ordering::SeqCst);
    info!("in step: {in_step}; actions: {actions}; indices: {turns:?}");
    if in_step && actions == 1 && turns == expected {
        ExitCode::SUCCESS
    } else {
        eprintln!("check failed: in step {in_step}, actions {actions}, indices {turns:?}");
        ExitCode::FAILURE
    }
}
