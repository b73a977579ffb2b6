//! Seed program: `racecond.py` (the tutorial's "Race Conditions explained").
//!
//! Lesson: a read-modify-write on shared data, with a pause between the read
//! and the write, loses updates. `FakeDatabase::update` copies the value,
//! adds one, sleeps (the seed's `time.sleep(0.1)`, standing for slow work),
//! and writes the copy back. Three threads start one after another; each
//! reads before any has written, so each writes back 0 + 1, and three updates
//! end at 1, not 3.
//!
//! The value is an `AtomicU64` only so that it can be shared without a lock
//! or `unsafe`; the separate `load` and `store` make the update exactly as
//! non-atomic as Python's `local_copy = self.value ... self.value =
//! local_copy`. `locked_db` shows two fixes: a lock, and a manager.
//!
//! Run: `cargo run --example racecond`
//! Exits 0 only if updates were lost (the value ends below 3; on all but the
//! most overloaded machines, at 1).

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tracing::{Level, info};

const THREADS: u64 = 3;

/// The seed's `time.sleep(0.1)` between the read and the write.
const WORK: Duration = Duration::from_millis(100);

struct FakeDatabase {
    value: AtomicU64,
}

impl FakeDatabase {
    fn new() -> FakeDatabase {
        FakeDatabase {
            value: AtomicU64::new(0),
        }
    }

    fn update(&self, name: u64) {
        info!("Thread {name}: starting update");
        let mut local_copy = self.value.load(Ordering::SeqCst);
        local_copy += 1;
        thread::sleep(WORK);
        self.value.store(local_copy, Ordering::SeqCst);
        info!("Thread {name}: finishing update");
    }
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);

    let database = FakeDatabase::new();
    info!(
        "Testing update. Starting value is {}.",
        database.value.load(Ordering::SeqCst)
    );
    thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|index| {
                let database = &database;
                s.spawn(move || database.update(index))
            })
            .collect();
        for thread in threads {
            thread.join().expect("an update thread panicked");
        }
    });
    let value = database.value.load(Ordering::SeqCst);
    info!("Testing update. Ending value is {value}.");

    if value < THREADS {
        println!(
            "{THREADS} updates, ending value {value}: {} update(s) lost to the race.",
            THREADS - value
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "check failed: the value ended at {value}: no update was lost, the race did not show"
        );
        ExitCode::FAILURE
    }
}
