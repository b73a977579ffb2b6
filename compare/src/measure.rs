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

/// One run of a workload: its time, and for the workloads that time each
/// request (`async-write`, `async-ask`), the requests' latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// From the first operation's start until every one was done.
    pub elapsed: Duration,
    /// The requests' latencies, if the workload timed each one.
    pub latency: Option<Latency>,
}

impl From<Duration> for Sample {
    fn from(elapsed: Duration) -> Sample {
        Sample {
            elapsed,
            latency: None,
        }
    }
}

/// The median, 99th and 99.9th percentiles of one run's request latencies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

impl Latency {
    /// The percentiles of `latencies` (sorted in place), or `None` if there
    /// are none.
    pub fn of(latencies: &mut [Duration]) -> Option<Latency> {
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        Some(Latency {
            p50: percentile(latencies, 50.0),
            p99: percentile(latencies, 99.0),
            p999: percentile(latencies, 99.9),
        })
    }
}

/// Runs `op(i)` for `i` in `0..k` and returns each call's duration.
///
/// One clock read per call, whatever `op` is: each call is timed from the
/// previous call's end (the first from the start), so the overhead is the
/// same for every design timed this way, and the durations add up to the
/// whole loop's time. Room for the durations is allocated before the loop.
pub fn each(k: u64, mut op: impl FnMut(u64)) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(usize::try_from(k).unwrap_or(usize::MAX));
    let mut last = Instant::now();
    for i in 0..k {
        op(i);
        let now = Instant::now();
        latencies.push(now - last);
        last = now;
    }
    latencies
}

/// The `p`th percentile of `sorted` (ascending, not empty) by the nearest
/// rank: the smallest value that at least `p`% of the values do not exceed.
///
/// # Panics
///
/// If `sorted` is empty or `p` is not in `0..=100`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(!sorted.is_empty(), "the percentile of nothing");
    assert!((0.0..=100.0).contains(&p), "percentile {p} out of 0..=100");
    // Less a hair, so that 99.9 (not exact in binary) of 1000 values is
    // rank 999, not 1000.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut values = ms(&(1..=100).rev().collect::<Vec<_>>());
        let latency = Latency::of(&mut values).expect("100 values");
        assert_eq!(latency.p50, Duration::from_millis(50));
        assert_eq!(latency.p99, Duration::from_millis(99));
        assert_eq!(latency.p999, Duration::from_millis(100));
        assert_eq!(percentile(&values, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&values, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn percentiles_of_few_values() {
        let mut values = ms(&[7, 3]);
        let latency = Latency::of(&mut values).expect("two values");
        assert_eq!(latency.p50, Duration::from_millis(3));
        assert_eq!(latency.p99, Duration::from_millis(7));
        assert_eq!(latency.p999, Duration::from_millis(7));
        assert_eq!(Latency::of(&mut []), None);
    }

    #[test]
    fn p999_of_a_thousand_values_is_the_next_to_last() {
        let mut values: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let latency = Latency::of(&mut values).expect("1000 values");
        assert_eq!(latency.p999, Duration::from_micros(999));
    }

    #[test]
    fn each_times_every_call_and_adds_up() {
        let mut calls = Vec::new();
        let latencies = each(5, |i| {
            calls.push(i);
            if i == 3 {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        assert_eq!(calls, [0, 1, 2, 3, 4]);
        assert_eq!(latencies.len(), 5);
        assert!(latencies[3] >= Duration::from_millis(2));
    }
}
