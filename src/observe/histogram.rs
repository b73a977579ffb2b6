//! A log-linear histogram of durations with one writer (the manager thread)
//! and any number of readers (stats, the watchdog, the live view).
//!
//! Each power of two of nanoseconds is cut into eight equal buckets, so a
//! percentile read back is within 12.5% of the true value, from 1 ns to
//! centuries, in 496 counters (about 4 KiB). The writer does a plain load
//! and store per record (no read-modify-write): with one writer nothing is
//! lost, and readers see recent counts.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two (a power of two itself).
const SUB: u64 = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Buckets: the values below `SUB` one each, then `SUB` per power of two.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// Percentiles read from a histogram.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let n = rt.own("n", 0u64)?;
/// for _ in 0..64 {
///     n.call(|n| *n += 1)?;
/// }
/// n.join()?;
/// let service = n.handle().stats().service.expect("sampled");
/// assert!(service.samples >= 1);
/// assert!(service.p50 <= service.p99 && service.p99 <= service.max);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Percentiles {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest value recorded (to within its bucket).
    pub max: Duration,
    /// How many values were recorded (a sample of the messages handled).
    pub samples: u64,
}

/// The histogram itself. Its buckets (about 4 KiB) are allocated by the
/// first value recorded, not at spawn: a runtime of 10,000 mostly idle
/// managers would otherwise hold 80 MiB of zeros.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: OnceLock<Box<[AtomicU64]>>,
    count: AtomicU64,
}

fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (ns >> shift) & (SUB - 1);
    (SUB + u64::from(shift) * SUB + sub) as usize
}

/// The middle of a bucket, in nanoseconds.
fn middle(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = (index - SUB) / SUB;
    let sub = (index - SUB) % SUB;
    let lower = (SUB + sub) << shift;
    let width = 1u64 << shift;
    lower.saturating_add(width / 2)
}

impl Histogram {
    /// Records one value. Only the owning thread calls this.
    pub(crate) fn record(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let buckets = self
            .buckets
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
        let bucket = &buckets[index(ns)];
        bucket.store(bucket.load(Relaxed) + 1, Relaxed);
        self.count.store(self.count.load(Relaxed) + 1, Relaxed);
    }

    /// The count of every bucket.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn counts(&self) -> Vec<u64> {
        match self.buckets.get() {
            Some(buckets) => buckets.iter().map(|b| b.load(Relaxed)).collect(),
            None => vec![0; BUCKETS],
        }
    }

    /// The value a bucket stands for: its middle.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn bucket_value(index: usize) -> Duration {
        Duration::from_nanos(middle(index))
    }

    /// The p50, p99 and max of what was recorded; `None` before the first.
    pub(crate) fn percentiles(&self) -> Option<Percentiles> {
        self.buckets.get()?;
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            // The rank of the q-quantile, 1-based: ceil(q * total).
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(middle(i));
                }
            }
            Duration::from_nanos(middle(BUCKETS - 1))
        };
        let max = counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(Duration::ZERO, |i| Duration::from_nanos(middle(i)));
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max,
            samples: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_middle_is_within_an_eighth() {
        let mut values: Vec<u64> = (0..4096).collect();
        values.extend((12..64).map(|e| 1u64 << e));
        values.extend((12..63).map(|e| (1u64 << e) + 12345));
        values.push(u64::MAX);
        for v in values {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            let m = middle(i);
            let error = m.abs_diff(v) as f64;
            assert!(error <= v as f64 / 8.0 + 0.5, "{v}: middle {m}");
        }
    }

    #[test]
    fn buckets_increase_with_the_value() {
        let mut last = 0;
        for e in 0..64 {
            for v in [1u64 << e, (1u64 << e) | ((1u64 << e) >> 1)] {
                let i = index(v);
                assert!(i >= last, "{v}");
                last = i;
            }
        }
    }

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let h = Histogram::default();
        assert_eq!(h.percentiles(), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles().unwrap();
        assert_eq!(p.samples, 100);
        let near = |d: Duration, us: u64| {
            let ns = d.as_nanos() as f64;
            (ns - us as f64 * 1000.0).abs() <= us as f64 * 1000.0 / 8.0
        };
        assert!(near(p.p50, 50), "{p:?}");
        assert!(near(p.p99, 99), "{p:?}");
        assert!(near(p.max, 100), "{p:?}");
    }
}
