//! `ask`: one caller makes `k` sequential round trips (request, then wait for
//! the answer); each answer is checked. [`sample`] also times each round
//! trip (one clock read per round trip, for every design but `mutex-read`),
//! for the latency percentiles; [`run`] times only the whole loop.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::{Context, Manager, Reply, Runtime};

use crate::measure::{self, Latency, Sample, race};

/// The workload's name.
pub const NAME: &str = "ask";

/// The designs, the reference (`spin-pingpong`, the physical floor) first.
pub const DESIGNS: [&str; 5] = [
    "spin-pingpong",
    "raw-crossbeam-pingpong",
    "mutex-read",
    "manager-ask",
    "owner-call",
];

/// One caller only.
pub const THREADS: [usize; 1] = [1];

/// The value every server answers with.
pub(crate) const VALUE: u64 = 0x00C0_FFEE;

/// One run of `design`: `k` round trips from one caller. Returns their time.
///
/// # Panics
///
/// On an unknown design, a thread count other than 1, or a wrong answer.
pub fn run(design: &str, threads: usize, k: u64) -> Duration {
    assert_eq!(threads, 1, "ask: one caller only");
    pick(design)(k, false).elapsed
}

/// One run of `design` with each round trip timed: their time, and the
/// round trips' latency percentiles (none for `mutex-read`, whose 5 ns reads
/// a clock read would more than double).
///
/// # Panics
///
/// On an unknown design, a thread count other than 1, or a wrong answer.
pub fn sample(design: &str, threads: usize, k: u64) -> Sample {
    assert_eq!(threads, 1, "ask: one caller only");
    pick(design)(k, true)
}

/// One design's run: `k` round trips, each timed when `timed` is set.
type Design = fn(u64, bool) -> Sample;

fn pick(design: &str) -> Design {
    match design {
        "spin-pingpong" => spin_pingpong,
        "raw-crossbeam-pingpong" => raw_crossbeam_pingpong,
        "mutex-read" => |k, _| mutex_read(k).into(),
        "manager-ask" => manager_ask,
        "owner-call" => owner_call,
        other => panic!("ask: unknown design `{other}`"),
    }
}

/// The caller's loop: `k` round trips (`op(i)` is the `i`th), each timed
/// into `latencies` when `timed` is set.
fn caller(k: u64, timed: bool, latencies: &Mutex<Vec<Duration>>, op: impl FnMut(u64)) {
    if timed {
        let each = measure::each(k, op);
        *latencies.lock().expect("poisoned") = each;
    } else {
        (0..k).for_each(op);
    }
}

/// The run's time and, if its round trips were timed, their percentiles.
fn sampled(elapsed: Duration, latencies: Mutex<Vec<Duration>>) -> Sample {
    let mut latencies = latencies.into_inner().expect("poisoned");
    Sample {
        elapsed,
        latency: Latency::of(&mut latencies),
    }
}

/// One `AtomicU64` alone on its cache line(s).
#[repr(align(128))]
struct Line(AtomicU64);

/// Told by the caller to the server: stop spinning.
const STOP: u64 = u64::MAX;

/// Spins until `ready` returns a value; yields now and then so that a
/// preempted partner on a busy machine can run.
#[inline]
fn spin_until(mut ready: impl FnMut() -> Option<u64>) -> u64 {
    let mut spins = 0u32;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        spins += 1;
        if spins.is_multiple_of(1 << 10) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Request `i` is the odd number `2i + 1`; its answer is `2i + 2`, both
/// written to the same cache line.
fn spin_pingpong(k: u64, timed: bool) -> Sample {
    let latencies = Mutex::new(Vec::new());
    let line = Line(AtomicU64::new(0));
    let cell = &line.0;
    let elapsed = thread::scope(|s| {
        s.spawn(|| {
            let mut expect = 1;
            loop {
                let v = spin_until(|| {
                    let v = cell.load(Ordering::Acquire);
                    (v == expect || v == STOP).then_some(v)
                });
                if v == STOP {
                    break;
                }
                cell.store(v + 1, Ordering::Release);
                expect = v + 2;
            }
        });
        // Stops the server even if the caller panics.
        let _stop = StopOnDrop(cell);
        race(
            1,
            |_| {
                caller(k, timed, &latencies, |i| {
                    let answer = 2 * i + 2;
                    cell.store(2 * i + 1, Ordering::Release);
                    spin_until(|| (cell.load(Ordering::Acquire) == answer).then_some(answer));
                });
            },
            || assert_eq!(cell.load(Ordering::Acquire), 2 * k, "spin-pingpong"),
        )
    });
    sampled(elapsed, latencies)
}

struct StopOnDrop<'a>(&'a AtomicU64);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::Release);
    }
}

fn raw_crossbeam_pingpong(k: u64, timed: bool) -> Sample {
    let latencies = Mutex::new(Vec::new());
    let (requests, inbox) = crossbeam_channel::unbounded::<u64>();
    let (answers, replies) = crossbeam_channel::bounded::<u64>(1);
    let owner = thread::spawn(move || {
        for request in inbox {
            if answers.send(request ^ VALUE).is_err() {
                break;
            }
        }
    });
    let elapsed = race(
        1,
        |_| {
            caller(k, timed, &latencies, |i| {
                requests.send(i).expect("owner gone");
                let answer = replies.recv().expect("owner gone");
                assert_eq!(answer, i ^ VALUE, "raw-crossbeam-pingpong");
            });
        },
        || {},
    );
    drop(requests);
    owner.join().expect("owner thread panicked");
    sampled(elapsed, latencies)
}

fn mutex_read(k: u64) -> Duration {
    let value = Mutex::new(VALUE);
    race(
        1,
        |_| {
            for _ in 0..k {
                let v = *value.lock().expect("poisoned");
                assert_eq!(v, VALUE, "mutex-read");
            }
        },
        || {},
    )
}

/// The request `manager-ask` answers.
pub(crate) enum Query {
    Get(Reply<u64>),
}

/// A manager owning one value.
pub(crate) struct Value(pub(crate) u64);

impl Manager for Value {
    type Msg = Query;

    fn handle(&mut self, msg: Query, _ctx: &mut Context<'_, Query>) {
        match msg {
            Query::Get(reply) => reply.send(self.0),
        }
    }
}

fn manager_ask(k: u64, timed: bool) -> Sample {
    let latencies = Mutex::new(Vec::new());
    let rt = Runtime::new();
    let value = rt.spawn("value", Value(VALUE)).expect("spawning");
    let elapsed = race(
        1,
        |_| {
            caller(k, timed, &latencies, |_| {
                let v = value.ask(Query::Get).expect("asking");
                assert_eq!(v, VALUE, "manager-ask");
            });
        },
        || {},
    );
    sampled(elapsed, latencies)
}

fn owner_call(k: u64, timed: bool) -> Sample {
    let latencies = Mutex::new(Vec::new());
    let rt = Runtime::new();
    let value = rt.own("value", VALUE).expect("spawning");
    let elapsed = race(
        1,
        |_| {
            caller(k, timed, &latencies, |_| {
                let v = value.call(|v| *v).expect("calling");
                assert_eq!(v, VALUE, "owner-call");
            });
        },
        || {},
    );
    sampled(elapsed, latencies)
}
