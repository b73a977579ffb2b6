//! Seed: the tutorial's `Semaphore` section ("a pool of connections").
//!
//! Lesson: a semaphore is a counter whose decrement waits at zero. Ten
//! workers share a pool of three connections: each takes a permit before it
//! uses a connection and gives it back after, so never more than three are in
//! use at once. A `BoundedSemaphore` also catches the classic bug of releasing
//! more often than acquiring: the extra release is an error, and changes
//! nothing.
//!
//! Run: `cargo run --example semaphore`
//! Exits 0 only if at most three connections were ever in use at once, all
//! three were used together at some point, and every worker got one.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use custody::sync::BoundedSemaphore;
use tracing::{Level, info, warn};

const POOL: usize = 3;
const WORKERS: usize = 10;

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let pool = Arc::new(BoundedSemaphore::new(POOL));
    let in_use = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));

    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let (pool, in_use, most, served) = (
                Arc::clone(&pool),
                Arc::clone(&in_use),
                Arc::clone(&most),
                Arc::clone(&served),
            );
            thread::spawn(move || {
                let _permit = pool.acquire_guard();
                let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                info!("Worker {index}: got a connection ({now} in use)");
                thread::sleep(Duration::from_millis(30));
                in_use.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                info!("Worker {index}: gave it back");
                // Dropping the permit releases it.
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }

    let over_release = pool.release();
    match &over_release {
        Err(e) => info!("an extra release is refused: {e}"),
        Ok(()) => warn!("an extra release was accepted"),
    }
    let most = most.load(Ordering::SeqCst);
    let served = served.load(Ordering::SeqCst);
    info!("at most {most} connections were in use at once; {served} workers served");
    if most <= POOL && most == POOL && served == WORKERS && over_release.is_err() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "check failed: most in use {most}, served {served}, over-release {over_release:?}"
        );
        ExitCode::FAILURE
    }
}
