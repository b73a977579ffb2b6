//! Seed program: `multithread_ex.py` (the tutorial's "Race Conditions /
//! Example: Scripting style", after `scripting_ex.py` and `function_ex.py`).
//!
//! Lesson: ten workers that each do `counter += 1` and print the count have
//! two races, not one. The counter race loses updates: each worker reads the
//! counter, and before it writes back, others read the same old value. The
//! print race jumbles the output: each `print` writes its text and its line
//! end separately, so another worker's text can land in between.
//!
//! Part 1 runs the workers unsynchronised. The counter is an `AtomicU64`
//! used with a separate `load` and `store` (a non-atomic read-modify-write,
//! like Python's `counter += 1`, without `unsafe`), and the "terminal" takes
//! each write whole but nothing more, like a real one. The workers start
//! together (a `Barrier`), and between each step a worker lets the others run
//! (a yield and a short sleep, as `racecond.py`'s `time.sleep` does), so the
//! races show on every run rather than once in a while; `fuzzing` shows the
//! same races brought out by random pauses instead.
//!
//! Part 2 does the same job the manager way (`queue_threading.py`): the
//! counter is owned by one thread, and the workers send it "add one"; it
//! sends each count to a `Printer` manager, which owns the terminal. (The
//! counter is an `Owner<u64>`: the ready-made `Counter` manager only adds
//! and answers `get`, so it could not pass on the count each addition
//! made.) The same
//! read, pause, write now runs on the counter's own thread, where nobody else
//! can get in between: the count is exact and the lines come out in order.
//!
//! Run: `cargo run --example race_print [WORKERS]` (default 10)
//! Exits 0 only if part 1 lost updates and jumbled its lines, and part 2 was
//! exact.

mod common;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use custody::Runtime;
use custody::resources::{Printer, SharedBuffer};

/// How long a worker pauses between steps.
const PAUSE: Duration = Duration::from_millis(10);

const RULE: &str = "---------------";

/// Invites a thread switch here: what an unlucky moment does at random.
fn let_others_run() {
    thread::yield_now();
    thread::sleep(PAUSE);
}

/// Python's `print(text, end=end)`: the text and the end are two writes.
fn print(terminal: &mut SharedBuffer, text: &str, end: &str) {
    let _ = terminal.write_all(text.as_bytes());
    let_others_run();
    let _ = terminal.write_all(end.as_bytes());
}

/// "My job is to increment the counter and print the current count."
fn worker(counter: &AtomicU64, terminal: &mut SharedBuffer) {
    let old = counter.load(Ordering::SeqCst);
    let_others_run();
    counter.store(old + 1, Ordering::SeqCst);
    let_others_run();
    let count = counter.load(Ordering::SeqCst);
    print(terminal, &format!("The count is {count}"), "\n");
    let_others_run();
    print(terminal, RULE, "\n");
}

/// The lines a correct run prints, counts in order.
fn expected_lines(workers: u64) -> Vec<String> {
    let mut lines = vec!["Starting up".to_owned()];
    for n in 1..=workers {
        lines.push(format!("The count is {n}"));
        lines.push(RULE.to_owned());
    }
    lines.push("Finishing up".to_owned());
    lines
}

/// Whether every line is a whole line of the job: "The count is N" followed
/// by a rule, with nothing run together.
fn lines_are_whole(lines: &[String]) -> bool {
    let body: Vec<&String> = lines
        .iter()
        .filter(|l| *l != "Starting up" && *l != "Finishing up")
        .collect();
    body.chunks(2).all(|pair| {
        pair.len() == 2
            && pair[0]
                .strip_prefix("The count is ")
                .is_some_and(|n| n.parse::<u64>().is_ok())
            && pair[1] == RULE
    })
}

/// Shows what the terminal got, each line behind a `| ` margin.
fn show(terminal: &SharedBuffer) {
    println!("What the terminal showed:");
    for line in terminal.contents().lines() {
        println!("  | {line}");
    }
}

/// Part 1: `multithread_ex.py`, with the races.
fn unsynchronised(workers: u64) -> (u64, Vec<String>) {
    let counter = AtomicU64::new(0);
    let mut terminal = SharedBuffer::new();
    let start = Barrier::new(workers as usize);
    print(&mut terminal, "Starting up", "\n");
    thread::scope(|s| {
        for _ in 0..workers {
            let mut terminal = terminal.clone();
            let (counter, start) = (&counter, &start);
            s.spawn(move || {
                start.wait();
                worker(counter, &mut terminal);
            });
        }
        // As in the seed, the main thread does not wait for the workers
        // before it prints this; the end of the scope waits for them, as
        // Python waits for its non-daemon threads at exit.
        print(&mut terminal, "Finishing up", "\n");
    });
    show(&terminal);
    (counter.load(Ordering::SeqCst), terminal.lines())
}

/// Part 2: the same job, the counter and the terminal each owned by a manager.
fn managed(workers: u64) -> Result<(u64, Vec<String>), Box<dyn std::error::Error>> {
    let rt = Runtime::new();
    let terminal = SharedBuffer::new();
    let printer = Printer::new(terminal.clone()).spawn(&rt, "printer")?;
    // "I have EXCLUSIVE rights to update the counter variable."
    let counter = rt.own("counter", 0u64)?;

    printer.print("Starting up")?;
    let start = Barrier::new(workers as usize);
    thread::scope(|s| {
        for _ in 0..workers {
            let (counter, printer, start) = (&counter, printer.clone(), &start);
            s.spawn(move || {
                start.wait();
                // The worker's whole job: ask the counter to add one.
                counter
                    .cast(move |n| {
                        // The same read, pause, write as in part 1; on this
                        // thread nobody else touches `n` in between.
                        let old = *n;
                        let_others_run();
                        *n = old + 1;
                        let _ = printer.print_job([format!("The count is {}", *n), RULE.into()]);
                    })
                    .expect("the counter is running");
            });
        }
    });
    counter.join()?; // every "add one" handled, every count sent on
    printer.print("Finishing up")?;
    printer.join()?; // printed and flushed
    let count = counter.call(|n| *n)?;
    rt.shutdown();
    show(&terminal);
    Ok((count, terminal.lines()))
}

fn main() -> ExitCode {
    let workers = match common::positive_arg::<u64>("workers", 10) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = Vec::new();

    println!("== Part 1: {workers} unsynchronised workers ==");
    let (count, lines) = unsynchronised(workers);
    let whole = lines_are_whole(&lines);
    println!(
        "The count is {count}, not {workers}: {} update(s) lost.",
        workers - count
    );
    println!(
        "The lines are {}.",
        if whole {
            "whole (the print race did not show this time)"
        } else {
            "jumbled: texts ran together before their line ends"
        }
    );
    if count >= workers {
        failures.push(format!("part 1 lost no update (count {count})"));
    }
    if whole {
        failures.push("part 1 printed whole lines: the print race did not show".to_owned());
    }

    println!();
    println!("== Part 2: the same job through a counter manager and a printer manager ==");
    match managed(workers) {
        Ok((count, lines)) => {
            let in_order = lines == expected_lines(workers);
            println!(
                "The count is {count}, and the lines are {}.",
                if in_order {
                    "whole and in order"
                } else {
                    "NOT as expected"
                }
            );
            if count != workers {
                failures.push(format!("part 2 counted {count}, not {workers}"));
            }
            if !in_order {
                failures.push(format!("part 2 printed {lines:?}"));
            }
        }
        Err(error) => failures.push(format!("part 2 failed: {error}")),
    }

    common::verdict(failures)
}
