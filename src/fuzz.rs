//! Fuzz mode: seeded random pauses that make races show up.
//!
//! The seed tutorial's `fuzzing.py` sprinkles `time.sleep(random.random())`
//! between the steps of a racy program so that a thread switch lands inside
//! every critical section. [`Builder::fuzz`](crate::Builder::fuzz) builds that
//! in: a runtime in fuzz mode pauses at random at each send and before each
//! handled message, and [`point`] lets user code add pauses of its own.
//!
//! Pauses come from a per-thread generator seeded from the run's seed and the
//! thread's name, so a seed replays the same pause sequence on each named
//! thread (thread scheduling itself is still the operating system's). The seed
//! is printed when a fuzzing runtime is built; set `CUSTODY_FUZZ_SEED` to
//! replay it with [`seed_from_env`].
//!
//! When fuzz mode is off, [`point`] is one relaxed atomic load, and the
//! runtime's send and receive paths test a boolean.
//!
//! # Examples
//!
//! ```
//! use custody::{Runtime, fuzz};
//!
//! let rt = Runtime::builder().fuzz(42).build()?;
//! assert_eq!(fuzz::seed(), Some(42));
//! fuzz::point(); // may pause for a moment
//! # Ok::<(), custody::BuildError>(())
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest pause by default.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_micros(500);

static ENABLED: AtomicBool = AtomicBool::new(false);
static SEED: AtomicU64 = AtomicU64::new(0);
static MAX_PAUSE_NANOS: AtomicU64 = AtomicU64::new(0);
static UNNAMED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0 until first use on this thread (or after a reseed).
    static STATE: Cell<u64> = const { Cell::new(0) };
    static EPOCH: Cell<u64> = const { Cell::new(0) };
}

/// Bumped on every `enable`, so threads reseed from the new seed.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Switches fuzz mode on for the whole process.
pub(crate) fn enable(seed: u64, max_pause: Duration) {
    SEED.store(seed, Relaxed);
    MAX_PAUSE_NANOS.store(
        u64::try_from(max_pause.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1),
        Relaxed,
    );
    GENERATION.fetch_add(1, Relaxed);
    ENABLED.store(true, Relaxed);
    tracing::info!(seed, "fuzz mode on");
    eprintln!("custody: fuzz mode on, seed {seed} (replay with CUSTODY_FUZZ_SEED={seed})");
}

/// Switches [`point`] off again for the whole process (runtimes built with
/// [`Builder::fuzz`](crate::Builder::fuzz) keep pausing at their own sends and
/// messages; build a new runtime without it to stop those).
///
/// # Examples
///
/// ```
/// use custody::{Runtime, fuzz};
///
/// let fuzzed = Runtime::builder().fuzz(1).build()?;
/// assert!(fuzz::seed().is_some());
/// fuzz::disable();
/// assert_eq!(fuzz::seed(), None);
/// # Ok::<(), custody::BuildError>(())
/// ```
pub fn disable() {
    ENABLED.store(false, Relaxed);
}

/// The seed of the current fuzz run, if fuzz mode is on.
pub fn seed() -> Option<u64> {
    ENABLED.load(Relaxed).then(|| SEED.load(Relaxed))
}

/// The seed in `CUSTODY_FUZZ_SEED`, or a fresh one from the clock.
///
/// # Examples
///
/// ```
/// let seed = custody::fuzz::seed_from_env();
/// let rt = custody::Runtime::builder().fuzz(seed).build()?;
/// # Ok::<(), custody::BuildError>(())
/// ```
pub fn seed_from_env() -> u64 {
    std::env::var("CUSTODY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        })
}

/// A fuzz point: when fuzz mode is on, maybe pause for a short random while.
#[inline]
pub fn point() {
    if ENABLED.load(Relaxed) {
        pause();
    }
}

/// Pauses at random: half the time not at all, a quarter a yield, a quarter a
/// sleep of up to the maximum pause.
#[cold]
pub(crate) fn pause() {
    let r = next_random();
    match r & 3 {
        0 | 1 => {}
        2 => thread::yield_now(),
        _ => {
            let max = MAX_PAUSE_NANOS.load(Relaxed).max(1);
            thread::sleep(Duration::from_nanos((r >> 2) % max));
        }
    }
}

fn next_random() -> u64 {
    let generation = GENERATION.load(Relaxed);
    let mut state = STATE.with(Cell::get);
    if state == 0 || EPOCH.with(Cell::get) != generation {
        state = thread_seed();
        EPOCH.with(|e| e.set(generation));
    }
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    STATE.with(|s| s.set(state));
    splitmix(state)
}

/// The run's seed mixed with this thread's name (or its order of first use).
fn thread_seed() -> u64 {
    let tag = match thread::current().name() {
        Some(name) => name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
        None => UNNAMED.fetch_add(1, Relaxed),
    };
    splitmix(SEED.load(Relaxed) ^ tag) | 1
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_name_give_the_same_sequence() {
        let a = splitmix(7 ^ 3);
        let b = splitmix(7 ^ 3);
        assert_eq!(a, b);
        assert_ne!(splitmix(7), splitmix(8));
    }
}
