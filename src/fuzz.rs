//! Fuzz mode: seeded random pauses that make races show up.
//!
//! The seed tutorial's `fuzzing.py` sprinkles `time.sleep(random.random())`
//! between the steps of a racy program so that a thread switch lands inside
//! every critical section. [`RuntimeBuilder::fuzz`](crate::RuntimeBuilder::fuzz) builds that
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
    crate::util::to_stderr(format_args!(
        "custody: fuzz mode on, seed {seed} (replay with CUSTODY_FUZZ_SEED={seed})\n"
    ));
}

/// Switches [`point`] off again for the whole process (runtimes built with
/// [`RuntimeBuilder::fuzz`](crate::RuntimeBuilder::fuzz) keep pausing at their own sends and
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
    next_pause().take();
}

/// What one fuzz point does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    None,
    Yield,
    Sleep(Duration),
}

impl Pause {
    /// The pause for one random word: its two low bits pick none (0, 1),
    /// a yield (2) or a sleep (3), of `(r >> 2) % max_nanos` nanoseconds.
    fn from_random(r: u64, max_nanos: u64) -> Pause {
        match r & 3 {
            0 | 1 => Pause::None,
            2 => Pause::Yield,
            _ => Pause::Sleep(Duration::from_nanos((r >> 2) % max_nanos.max(1))),
        }
    }

    fn take(self) {
        match self {
            Pause::None => {}
            Pause::Yield => thread::yield_now(),
            Pause::Sleep(d) => thread::sleep(d),
        }
    }
}

/// The golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One thread's pause generator: splitmix64, seeded from the run's seed and
/// the thread's tag.
#[derive(Clone, Copy)]
struct Pauses {
    state: u64,
}

impl Pauses {
    fn for_thread(seed: u64, tag: u64) -> Pauses {
        Pauses {
            state: splitmix(seed ^ tag) | 1,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        splitmix(self.state)
    }

    fn next(&mut self, max_nanos: u64) -> Pause {
        Pause::from_random(self.next_random(), max_nanos)
    }
}

/// The calling thread's next pause.
fn next_pause() -> Pause {
    let generation = GENERATION.load(Relaxed);
    let mut state = STATE.with(Cell::get);
    if state == 0 || EPOCH.with(Cell::get) != generation {
        state = Pauses::for_thread(SEED.load(Relaxed), thread_tag()).state;
        EPOCH.with(|e| e.set(generation));
    }
    let mut pauses = Pauses { state };
    let pause = pauses.next(MAX_PAUSE_NANOS.load(Relaxed));
    STATE.with(|s| s.set(pauses.state));
    pause
}

/// This thread's name hashed (FNV-1a), or its order of first use if unnamed.
fn thread_tag() -> u64 {
    match thread::current().name() {
        Some(name) => name_tag(name),
        None => UNNAMED.fetch_add(1, Relaxed),
    }
}

/// FNV-1a (64 bits) of a thread name.
fn name_tag(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The output function of splitmix64.
fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    //! The pause sequence is checked against a reference splitmix64 and
    //! FNV-1a written here from their published definitions (and checked
    //! against their published outputs), not against outputs of the code
    //! under test.

    use super::*;

    /// splitmix64 as in Vigna's `splitmix64.c`: advance, then mix.
    fn reference_splitmix64(x: &mut u64) -> u64 {
        *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// FNV-1a, 64 bits: offset basis 14695981039346656037, prime 2^40 + 435.
    fn reference_fnv1a(bytes: &[u8]) -> u64 {
        let mut h: u64 = 14_695_981_039_346_656_037;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul((1u64 << 40) + 435);
        }
        h
    }

    /// The documented pause sequence of a thread named `name` in a run
    /// seeded with `seed`: the thread's state is the splitmix64 mix of
    /// `seed ^ fnv1a(name)` with its low bit set, and each pause takes the
    /// next splitmix64 output `r`: none if `r % 4 < 2`, a yield if it is 2,
    /// else a sleep of `(r / 4) % max` nanoseconds.
    fn reference_pauses(seed: u64, name: &str, max_nanos: u64, n: usize) -> Vec<Pause> {
        // The mix alone is one splitmix64 step from one increment earlier.
        let mut before =
            (seed ^ reference_fnv1a(name.as_bytes())).wrapping_sub(0x9E37_79B9_7F4A_7C15);
        let mut state = reference_splitmix64(&mut before) | 1;
        (0..n)
            .map(|_| {
                let r = reference_splitmix64(&mut state);
                match r % 4 {
                    0 | 1 => Pause::None,
                    2 => Pause::Yield,
                    _ => Pause::Sleep(Duration::from_nanos((r / 4) % max_nanos)),
                }
            })
            .collect()
    }

    fn pauses(seed: u64, name: &str, max_nanos: u64, n: usize) -> Vec<Pause> {
        let mut p = Pauses::for_thread(seed, name_tag(name));
        (0..n).map(|_| p.next(max_nanos)).collect()
    }

    #[test]
    fn the_references_give_their_published_outputs() {
        let mut x = 1_234_567u64;
        let first: Vec<u64> = (0..5).map(|_| reference_splitmix64(&mut x)).collect();
        assert_eq!(
            first,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
        assert_eq!(reference_fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(reference_fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(reference_fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_pause_sequence_is_splitmix64_of_the_seed_and_thread_name() {
        for (seed, name) in [(7, "custody.worker"), (0, "a"), (u64::MAX, "")] {
            let got = pauses(seed, name, 500_000, 256);
            assert_eq!(
                got,
                reference_pauses(seed, name, 500_000, 256),
                "seed {seed}, {name:?}"
            );
            // All three kinds show up, so the comparison covers each.
            assert!(got.contains(&Pause::None));
            assert!(got.contains(&Pause::Yield));
            assert!(got.iter().any(|p| matches!(p, Pause::Sleep(_))));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_pauses_and_another_seed_others() {
        let a = pauses(7, "custody.worker", 500_000, 64);
        assert_eq!(a, pauses(7, "custody.worker", 500_000, 64));
        assert_ne!(a, pauses(8, "custody.worker", 500_000, 64));
        assert_ne!(a, pauses(7, "custody.other", 500_000, 64));
    }

    #[test]
    fn a_named_thread_replays_its_pauses_for_the_run_seed() {
        const SEED: u64 = 0xfeed_5eed;
        enable(SEED, Duration::from_micros(200));
        let run = || {
            thread::Builder::new()
                .name("fuzz-replay".to_owned())
                .spawn(|| (0..64).map(|_| next_pause()).collect::<Vec<_>>())
                .expect("spawn")
                .join()
                .expect("join")
        };
        let first = run();
        let second = run();
        disable();
        assert_eq!(first, reference_pauses(SEED, "fuzz-replay", 200_000, 64));
        assert_eq!(second, first);
    }
}
