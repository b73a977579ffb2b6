//! Seed programs: `locked_db.py` and `locks_threading_ex.py` (the tutorial's
//! "Basic Synchronization Using Lock").
//!
//! Lesson: a lock lets one thread at a time into the read-modify-write, so
//! no update is lost; and a manager gets the same result without any lock.
//!
//! 1. `locked_db.py`: `racecond`'s `FakeDatabase`, its value now inside a
//!    `Mutex`, held while the update copies, sleeps and writes back. Three
//!    updates end at 3. (In Rust the lock owns the value: there is no way to
//!    reach it without taking the lock, whereas the tutorial warns that
//!    Python's locks "don't lock anything" and can be ignored.)
//! 2. `locks_threading_ex.py`: ten workers, a counter lock and a printer lock
//!    (taken inside the counter lock); the count is exact and the lines come
//!    out whole and in order, even with a pause between each step.
//! 3. The manager way: the same `FakeDatabase`, with a plain `u64` and no
//!    lock, handed to an `Owner`. Each thread asks the owner to run the same
//!    update (pause and all); only the owner's thread ever touches the value,
//!    one update after another. Three updates end at 3. (The manager way of
//!    `locks_threading_ex.py` is the `counter_printer` example.)
//!
//! The seed's `logging.debug` lines about the lock are logged at `DEBUG`,
//! which this example turns on.
//!
//! Run: `cargo run --example locked_db`
//! Exits 0 only if all three parts came out exact.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use custody::Runtime;
use custody::resources::SharedBuffer;
use tracing::{Level, debug, info};

const THREADS: u64 = 3;
const WORKERS: u64 = 10;

/// The seed's `time.sleep(0.1)` between the read and the write.
const WORK: Duration = Duration::from_millis(100);

/// A pause between the steps of `locks_threading_ex.py`'s worker, inviting
/// the other workers in (the lock keeps them out).
const PAUSE: Duration = Duration::from_millis(5);

const RULE: &str = "---------------";

/// Part 1: `locked_db.py`'s `FakeDatabase`.
struct LockedDatabase {
    value: Mutex<u64>,
}

impl LockedDatabase {
    fn locked_update(&self, name: u64) {
        info!("Thread {name}: starting update");
        debug!("Thread {name} about to lock");
        {
            let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
            debug!("Thread {name} has lock");
            let mut local_copy = *value;
            local_copy += 1;
            thread::sleep(WORK);
            *value = local_copy;
            debug!("Thread {name} about to release lock");
        } // the guard is dropped here: the lock is released
        debug!("Thread {name} after release");
        info!("Thread {name}: finishing update");
    }
}

fn part1() -> u64 {
    let database = LockedDatabase {
        value: Mutex::new(0),
    };
    let value = |db: &LockedDatabase| *db.value.lock().unwrap_or_else(PoisonError::into_inner);
    info!("Testing update. Starting value is {}.", value(&database));
    thread::scope(|s| {
        for index in 0..THREADS {
            let database = &database;
            s.spawn(move || database.locked_update(index));
        }
    });
    let end = value(&database);
    info!("Testing update. Ending value is {end}.");
    end
}

/// Part 2: `locks_threading_ex.py`. The printer lock owns the terminal.
fn part2() -> Vec<String> {
    let counter_lock = Mutex::new(0u64);
    let printer_lock = Mutex::new(SharedBuffer::new());
    let print = |terminal: &mut SharedBuffer, line: &str| {
        let _ = writeln!(terminal, "{line}");
    };
    print(
        &mut printer_lock.lock().unwrap_or_else(PoisonError::into_inner),
        "Starting up",
    );
    thread::scope(|s| {
        for _ in 0..WORKERS {
            let (counter_lock, printer_lock) = (&counter_lock, &printer_lock);
            s.spawn(move || {
                // "My job is to increment the counter and print the count."
                // Both guards are held to the end of this closure: the
                // printing happens inside the counter lock, as in the seed.
                let mut counter = counter_lock.lock().unwrap_or_else(PoisonError::into_inner);
                let old = *counter;
                thread::sleep(PAUSE);
                *counter = old + 1;
                let mut terminal = printer_lock.lock().unwrap_or_else(PoisonError::into_inner);
                print(&mut terminal, &format!("The count is {}", *counter));
                thread::sleep(PAUSE);
                print(&mut terminal, RULE);
            });
        }
    });
    let mut terminal = printer_lock.lock().unwrap_or_else(PoisonError::into_inner);
    print(&mut terminal, "Finishing up");
    println!("What the terminal showed:");
    for line in terminal.lines() {
        println!("  | {line}");
    }
    terminal.lines()
}

/// Part 3: the same `FakeDatabase`, no lock: it belongs to one thread.
struct FakeDatabase {
    value: u64,
}

impl FakeDatabase {
    fn update(&mut self, name: u64) {
        info!("Thread {name}: starting update");
        let mut local_copy = self.value;
        local_copy += 1;
        thread::sleep(WORK);
        self.value = local_copy;
        info!("Thread {name}: finishing update");
    }
}

fn part3() -> Result<u64, Box<dyn std::error::Error>> {
    let rt = Runtime::new();
    let database = rt.own("database", FakeDatabase { value: 0 })?;
    info!(
        "Testing update. Starting value is {}.",
        database.call(|db| db.value)?
    );
    thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|index| {
                let database = &database;
                // `call` runs the update on the database's thread and waits
                // for it, as calling `update` directly would.
                s.spawn(move || database.call(move |db| db.update(index)))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("an update thread panicked"))
            .collect::<Result<Vec<()>, _>>()
    })?;
    let end = database.call(|db| db.value)?;
    info!("Testing update. Ending value is {end}.");
    rt.shutdown();
    Ok(end)
}

fn main() -> ExitCode {
    common::init_logging(Level::DEBUG);
    let mut failures = Vec::new();

    println!("== 1. locked_db.py: the update holds a Mutex ==");
    let end = part1();
    if end != THREADS {
        failures.push(format!(
            "with a lock, the value ended at {end}, not {THREADS}"
        ));
    }

    println!();
    println!("== 2. locks_threading_ex.py: a counter lock and a printer lock ==");
    let lines = part2();
    let mut expected = vec!["Starting up".to_owned()];
    for n in 1..=WORKERS {
        expected.push(format!("The count is {n}"));
        expected.push(RULE.to_owned());
    }
    expected.push("Finishing up".to_owned());
    if lines != expected {
        failures.push(format!("with two locks, the terminal showed {lines:?}"));
    }

    println!();
    println!("== 3. the manager way: the database belongs to one thread, no lock ==");
    match part3() {
        Ok(end) if end == THREADS => {}
        Ok(end) => failures.push(format!(
            "through the manager, the value ended at {end}, not {THREADS}"
        )),
        Err(error) => failures.push(format!("the manager part failed: {error}")),
    }

    if failures.is_empty() {
        println!();
        println!(
            "Every update counted: {THREADS} with a lock, {WORKERS} with two, {THREADS} through a manager."
        );
    }
    common::verdict(failures)
}
