//! Seed program: `multiple_threads.py`.
//!
//! Lesson: several threads started one after another need not finish in that
//! order; the operating system decides, and the order changes from run to
//! run. Each worker here is a manager given one message; the main thread
//! `join`s each in turn, and `join` waits until that worker's message has
//! been handled, whichever worker happens to finish first.
//!
//! The start and finish events go to one more manager, an `Owner` of the
//! event list, so that recording them needs no lock. Every worker sleeps the
//! same time, as in the seed, so on an idle machine the two orders often
//! agree; under load they often do not. Nothing in the program promises
//! either, and the check does not depend on it.
//!
//! Run: `cargo run --example multiple_threads [WORKERS]` (default 3)
//! Exits 0 only if every worker started and finished exactly once, and each
//! `join` returned only after its worker had finished.

mod common;

use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use custody::{Context, Handle, Manager, Owner, Runtime};
use tracing::{Level, info};

/// The seed's `time.sleep(2)`, shortened.
const SLEEP: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Started(u32),
    Finished(u32),
}

/// `thread_function`: one message, the worker's index.
struct Worker {
    events: Owner<Vec<Event>>,
}

impl Manager for Worker {
    type Msg = u32;

    fn handle(&mut self, index: u32, _ctx: &mut Context<'_, u32>) {
        info!("Thread {index}: starting");
        let _ = self.events.cast(move |e| e.push(Event::Started(index)));
        thread::sleep(SLEEP);
        info!("Thread {index}: finishing");
        let _ = self.events.cast(move |e| e.push(Event::Finished(index)));
    }
}

fn order(events: &[Event], pick: fn(Event) -> Option<u32>) -> String {
    let ids: Vec<String> = events
        .iter()
        .filter_map(|&e| pick(e))
        .map(|i| i.to_string())
        .collect();
    ids.join(", ")
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let workers = match common::positive_arg::<u32>("workers", 3) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };

    let rt = Runtime::new();
    let events = rt.own("events", Vec::new()).expect("spawn the event log");

    let mut threads: Vec<Handle<u32>> = Vec::new();
    for index in 0..workers {
        info!("Main : create and start thread {index}.");
        let worker = Worker {
            events: events.clone(),
        };
        let x = rt
            .spawn(format!("thread-{index}"), worker)
            .expect("spawn a worker");
        x.tell(index).expect("the worker is running");
        threads.push(x);
    }

    // Whether each join returned only once its worker had finished.
    let mut joined_after_finish = Vec::new();
    for (index, thread) in (0..).zip(&threads) {
        info!("Main : before joining thread {index}.");
        thread.join().expect("join a worker");
        // The worker's "finished" event was sent before its message counted
        // as handled, so it is queued ahead of this call.
        let finished = events
            .call(move |e| e.contains(&Event::Finished(index)))
            .expect("the event log answers");
        joined_after_finish.push(finished);
        info!("Main : thread {index} done");
    }

    let events_handle = events;
    let events = events_handle
        .call(|e| e.clone())
        .expect("the event log answers");
    events_handle.join().expect("join the event log");
    println!();
    println!(
        "start order:  {}",
        order(&events, |e| match e {
            Event::Started(i) => Some(i),
            Event::Finished(_) => None,
        })
    );
    println!(
        "finish order: {}",
        order(&events, |e| match e {
            Event::Finished(i) => Some(i),
            Event::Started(_) => None,
        })
    );
    println!();
    print!("{}", rt.stats());
    rt.shutdown();

    let mut failures = Vec::new();
    for index in 0..workers {
        let count = |wanted: Event| events.iter().filter(|&&e| e == wanted).count();
        let started = count(Event::Started(index));
        let finished = count(Event::Finished(index));
        if started != 1 || finished != 1 {
            failures.push(format!(
                "worker {index} started {started} and finished {finished} time(s)"
            ));
        }
        let start_at = events.iter().position(|&e| e == Event::Started(index));
        let finish_at = events.iter().position(|&e| e == Event::Finished(index));
        if start_at > finish_at {
            failures.push(format!("worker {index} finished before it started"));
        }
    }
    for (index, ok) in joined_after_finish.iter().enumerate() {
        if !ok {
            failures.push(format!(
                "joining worker {index} returned before it finished"
            ));
        }
    }
    if joined_after_finish.len() != threads.len() {
        failures.push("the main thread did not join every worker".to_owned());
    }
    common::verdict(failures)
}
