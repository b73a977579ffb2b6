//! `ask`: one caller makes `k` sequential round trips (request, then wait for
//! the answer); each answer is checked.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::{Context, Manager, Reply, Runtime};

use crate::measure::race;

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
    match design {
        "spin-pingpong" => spin_pingpong(k),
        "raw-crossbeam-pingpong" => raw_crossbeam_pingpong(k),
        "mutex-read" => mutex_read(k),
        "manager-ask" => manager_ask(k),
        "owner-call" => owner_call(k),
        other => panic!("ask: unknown design `{other}`"),
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
fn spin_pingpong(k: u64) -> Duration {
    let line = Line(AtomicU64::new(0));
    let cell = &line.0;
    thread::scope(|s| {
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
                for i in 0..k {
                    let answer = 2 * i + 2;
                    cell.store(2 * i + 1, Ordering::Release);
                    spin_until(|| (cell.load(Ordering::Acquire) == answer).then_some(answer));
                }
            },
            || assert_eq!(cell.load(Ordering::Acquire), 2 * k, "spin-pingpong"),
        )
    })
}

struct StopOnDrop<'a>(&'a AtomicU64);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(STOP, Ordering::Release);
    }
}

fn raw_crossbeam_pingpong(k: u64) -> Duration {
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
            for i in 0..k {
                requests.send(i).expect("owner gone");
                let answer = replies.recv().expect("owner gone");
                assert_eq!(answer, i ^ VALUE, "raw-crossbeam-pingpong");
            }
        },
        || {},
    );
    drop(requests);
    owner.join().expect("owner thread panicked");
    elapsed
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

fn manager_ask(k: u64) -> Duration {
    let rt = Runtime::new();
    let value = rt.spawn("value", Value(VALUE)).expect("spawning");
    race(
        1,
        |_| {
            for _ in 0..k {
                let v = value.ask(Query::Get).expect("asking");
                assert_eq!(v, VALUE, "manager-ask");
            }
        },
        || {},
    )
}

fn owner_call(k: u64) -> Duration {
    let rt = Runtime::new();
    let value = rt.own("value", VALUE).expect("spawning");
    race(
        1,
        |_| {
            for _ in 0..k {
                let v = value.call(|v| *v).expect("calling");
                assert_eq!(v, VALUE, "owner-call");
            }
        },
        || {},
    )
}
