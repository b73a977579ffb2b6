//! Timing: start worker threads together, stop the clock when the work is
//! done, and take the median of several runs.

use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `work(t)` on `threads` fresh threads, all released at once, and
/// returns the time from the first one's start until every one has returned
/// and `finish` (which waits for what they handed over, and checks it) is
/// done.
///
/// Spawning the threads is not timed: they wait on a barrier first. Each
/// worker reads the clock itself once released (the calling thread may not
/// be scheduled again until the workers are done, on a busy machine).
pub fn race<W, F>(threads: usize, work: W, finish: F) -> Duration
where
    W: Fn(usize) + Sync,
    F: FnOnce(),
{
    let barrier = Barrier::new(threads + 1);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, work) = (&barrier, &work);
                thread::Builder::new()
                    .name(format!("compare-worker-{t}"))
                    .spawn_scoped(s, move || {
                        barrier.wait();
                        let start = Instant::now();
                        work(t);
                        start
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        barrier.wait();
        let mut start = Instant::now();
        for worker in workers {
            match worker.join() {
                Ok(started) => start = start.min(started),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        finish();
        start.elapsed()
    })
}

/// Picks the number of operations per thread for runs of about `budget`,
/// between `min` and `max`: pilot runs (`run(k)`) from `min` up, four times
/// larger each, until one takes an eighth of the budget or reaches `max`;
/// its pace then sets the size.
pub fn fit(mut run: impl FnMut(u64) -> Duration, min: u64, max: u64, budget: Duration) -> u64 {
    let min = min.max(1);
    let max = max.max(min);
    let mut k = min;
    loop {
        let elapsed = run(k);
        if k >= max || elapsed >= budget / 8 {
            let per_op = elapsed.as_secs_f64() / k as f64;
            if per_op <= 0.0 {
                return max;
            }
            let fitted = (budget.as_secs_f64() / per_op).min(u64::MAX as f64) as u64;
            return fitted.clamp(min, max);
        }
        k = k.saturating_mul(4).min(max);
    }
}

/// The median of `values` (the mean of the middle two for an even count).
///
/// # Panics
///
/// If `values` is empty.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "the median of nothing");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Nanoseconds per operation of one run.
pub fn ns_per_op(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_nanos() as f64 / ops.max(1) as f64
}

/// A path in the temporary directory that no other run of this process (or
/// of another process) uses: `custody-compare-<pid>-<n>.<extension>`.
pub fn temp_path(extension: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "custody-compare-{}-{n}.{extension}",
        std::process::id()
    ))
}
