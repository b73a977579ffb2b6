//! Seed program: `fuzzing.py` (the tutorial's "Fuzzing").
//!
//! Lesson: a race that testing almost never catches can be made to show on
//! nearly every run by pausing at random between the steps of the racy code.
//! The workers are `multithread_ex.py`'s: each reads the shared counter,
//! writes it back plus one, and prints the count in two writes, the text and
//! then the line end. Nothing in between invites another thread in, so most
//! runs come out right, and "testing proves the code is correct".
//!
//! `Runtime::builder().fuzz(seed)` turns fuzz mode on: the runtime pauses at
//! random at each send and before each handled message, and
//! `custody::fuzz::point()` (`fuzzing.py`'s `fuzz()`) pauses at random
//! wherever the program puts one. The pauses are drawn from a random seed,
//! printed when fuzz mode comes on and again in the summary;
//! `CUSTODY_FUZZ_SEED=<seed>` replays the same pauses on each named thread
//! (the operating system's scheduling still differs from run to run).
//!
//! The program runs the racy job for several trials without fuzzing, then
//! for as many trials with it, and counts the trials in which the race
//! showed: the count came out short, or a line came out jumbled. Fuzz mode
//! cannot be turned off once on (it is process-wide), so the unfuzzed trials
//! come first. Last, the same job the manager way (a counter owned by one
//! thread, a `Printer` manager for the output) under the same fuzzing comes
//! out exact in every trial: fuzzing finds races, and there are none to find.
//!
//! Run: `cargo run --example fuzzing [TRIALS]` (default 20; 10 workers each)
//! Exits 0 only if the race showed in at least 90% of the fuzzed trials and
//! the manager way was exact in all of them.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::resources::{Printer, PrinterHandle, SharedBuffer};
use custody::{Owner, Runtime, fuzz};
use tracing::{Level, info};

const WORKERS: u64 = 10;

/// The longest fuzz pause (`fuzzing.py`'s is up to a second).
const MAX_PAUSE: Duration = Duration::from_millis(1);

const RULE: &str = "---------------";

/// Python's `print(text, end='')`: one write.
fn write(terminal: &mut SharedBuffer, text: &str) {
    let _ = terminal.write_all(text.as_bytes());
}

/// `fuzzing.py`'s worker, fuzz point for fuzz point.
fn worker(counter: &AtomicU64, terminal: &mut SharedBuffer) {
    fuzz::point();
    let oldcnt = counter.load(Ordering::SeqCst);
    fuzz::point();
    counter.store(oldcnt + 1, Ordering::SeqCst);
    fuzz::point();
    write(
        terminal,
        &format!("The count is {}", counter.load(Ordering::SeqCst)),
    );
    fuzz::point();
    write(terminal, "\n");
    fuzz::point();
    write(terminal, RULE);
    fuzz::point();
    write(terminal, "\n");
    fuzz::point();
}

/// What one trial showed.
struct Trial {
    count: u64,
    lines_whole: bool,
    output: String,
}

impl Trial {
    fn race_showed(&self) -> bool {
        self.count != WORKERS || !self.lines_whole
    }

    fn describe(&self) -> String {
        format!(
            "count {:>2} of {WORKERS}, lines {}: {}",
            self.count,
            if self.lines_whole {
                "whole  "
            } else {
                "jumbled"
            },
            if self.race_showed() {
                "race showed"
            } else {
                "race hidden"
            }
        )
    }
}

/// Whether the output is whole lines of the job (in any order).
fn lines_are_whole(output: &str) -> bool {
    let body: Vec<&str> = output
        .lines()
        .filter(|l| *l != "Starting up" && *l != "Finishing up")
        .collect();
    body.len() == 2 * WORKERS as usize
        && body.chunks(2).all(|pair| {
            pair[0]
                .strip_prefix("The count is ")
                .is_some_and(|n| n.parse::<u64>().is_ok())
                && pair[1] == RULE
        })
}

/// One run of `fuzzing.py`'s program. Worker threads are named after the trial,
/// so that each trial gets its own replayable pause sequence.
fn racy_trial(label: &str) -> Trial {
    let counter = AtomicU64::new(0);
    let mut terminal = SharedBuffer::new();
    write(&mut terminal, "Starting up\n");
    fuzz::point();
    thread::scope(|s| {
        for i in 0..WORKERS {
            let (counter, mut terminal) = (&counter, terminal.clone());
            thread::Builder::new()
                .name(format!("{label}-worker-{i}"))
                .spawn_scoped(s, move || worker(counter, &mut terminal))
                .expect("start a worker");
            fuzz::point();
        }
        write(&mut terminal, "Finishing up\n");
        fuzz::point();
    });
    let output = terminal.contents();
    Trial {
        count: counter.load(Ordering::SeqCst),
        lines_whole: lines_are_whole(&output),
        output,
    }
}

/// The same job the manager way, under the same fuzzing.
fn managed_trial(
    label: &str,
    counter: &Owner<u64>,
    printer: &PrinterHandle,
    terminal: &SharedBuffer,
) -> Trial {
    counter.call(|n| *n = 0).expect("the counter answers");
    terminal.clear();
    printer
        .print("Starting up")
        .expect("the printer is running");
    thread::scope(|s| {
        for i in 0..WORKERS {
            let printer = printer.clone();
            let worker = move || {
                fuzz::point();
                counter
                    .cast(move |n| {
                        fuzz::point();
                        let oldcnt = *n;
                        fuzz::point();
                        *n = oldcnt + 1;
                        fuzz::point();
                        let _ = printer.print_job([format!("The count is {n}"), RULE.into()]);
                    })
                    .expect("the counter is running");
                fuzz::point();
            };
            thread::Builder::new()
                .name(format!("{label}-worker-{i}"))
                .spawn_scoped(s, worker)
                .expect("start a worker");
        }
    });
    counter.join().expect("join the counter");
    printer
        .print("Finishing up")
        .expect("the printer is running");
    printer.join().expect("join the printer");
    let output = terminal.contents();
    let mut expected = String::from("Starting up\n");
    for n in 1..=WORKERS {
        expected.push_str(&format!("The count is {n}\n{RULE}\n"));
    }
    expected.push_str("Finishing up\n");
    Trial {
        count: counter.call(|n| *n).expect("the counter answers"),
        lines_whole: output == expected,
        output,
    }
}

fn show(output: &str) {
    println!("What the terminal showed:");
    for line in output.lines() {
        println!("  | {line}");
    }
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let trials = match common::positive_arg::<usize>("trials", 20) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };

    info!("{trials} trials of {WORKERS} workers without fuzzing");
    let mut unfuzzed_shown = 0;
    for t in 1..=trials {
        let trial = racy_trial(&format!("plain-{t}"));
        info!("  trial {t:>2}: {}", trial.describe());
        unfuzzed_shown += usize::from(trial.race_showed());
    }

    // From here on, fuzz::point() pauses, for the whole process.
    let seed = fuzz::seed_from_env();
    let rt = match Runtime::builder()
        .fuzz(seed)
        .fuzz_max_pause(MAX_PAUSE)
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("building the fuzzing runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    info!("{trials} trials of {WORKERS} workers with fuzzing");
    let mut fuzzed_shown = 0;
    let mut first_shown = None;
    for t in 1..=trials {
        let trial = racy_trial(&format!("fuzzed-{t}"));
        info!("  trial {t:>2}: {}", trial.describe());
        if trial.race_showed() {
            fuzzed_shown += 1;
            first_shown.get_or_insert(trial.output);
        }
    }
    if let Some(output) = &first_shown {
        show(output);
    }

    info!("{trials} trials of the manager way, with fuzzing");
    let terminal = SharedBuffer::new();
    let (counter, printer) = match (
        rt.own("counter", 0u64),
        Printer::new(terminal.clone()).spawn(&rt, "printer"),
    ) {
        (Ok(c), Ok(p)) => (c, p),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("spawning the managers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut managed_exact = 0;
    for t in 1..=trials {
        let trial = managed_trial(&format!("managed-{t}"), &counter, &printer, &terminal);
        let exact = !trial.race_showed();
        info!(
            "  trial {t:>2}: count {:>2} of {WORKERS}, lines {}",
            trial.count,
            if exact {
                "whole and in order"
            } else {
                "NOT as expected"
            }
        );
        managed_exact += usize::from(exact);
    }
    rt.shutdown();

    println!();
    println!("race showed without fuzzing: {unfuzzed_shown:>3} of {trials} trials");
    println!("race showed with fuzzing:    {fuzzed_shown:>3} of {trials} trials (seed {seed})");
    println!("manager way exact, fuzzed:   {managed_exact:>3} of {trials} trials");

    let mut failures = Vec::new();
    if fuzzed_shown * 10 < trials * 9 {
        failures.push(format!(
            "fuzzing exposed the race in only {fuzzed_shown} of {trials} trials (seed {seed})"
        ));
    }
    if managed_exact != trials {
        failures.push(format!(
            "the manager way was exact in only {managed_exact} of {trials} trials (seed {seed})"
        ));
    }
    common::verdict(failures)
}
