//! `python-queue`: CPython's `queue.Queue` beside custody's `JoinableQueue`,
//! the same program on each: P producers put items, C consumers get each
//! and call `task_done`, and `join` returns once every item is done. The
//! time runs from the producers' start to `join`'s return; ns per item is
//! that time over the items.
//!
//! Python runs as a child process (`python3` with an inline script) and
//! times itself with `time.perf_counter_ns`, so its start-up is not
//! counted. Without `python3` its rows say so and show no figure.

use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use custody::queue::JoinableQueue;

use crate::section::{Report, Settings, Value, median};

/// The workload's name.
pub const NAME: &str = "python-queue";

/// The program, in Python: `producers consumers items maxsize` on the
/// command line; prints the nanoseconds from the producers' start to the
/// return of `join`.
const SCRIPT: &str = r#"
import queue, sys, threading, time
producers, consumers, items, maxsize = map(int, sys.argv[1:5])
q = queue.Queue(maxsize)
def produce(n):
    for i in range(n):
        q.put(i)
def consume():
    while True:
        item = q.get()
        q.task_done()
        if item is None:
            return
workers = [threading.Thread(target=consume) for _ in range(consumers)]
for w in workers:
    w.start()
shares = [items // producers + (1 if p < items % producers else 0) for p in range(producers)]
started = time.perf_counter_ns()
threads = [threading.Thread(target=produce, args=(n,)) for n in shares]
for t in threads:
    t.start()
for t in threads:
    t.join()
q.join()
elapsed = time.perf_counter_ns() - started
for _ in workers:
    q.put(None)
for w in workers:
    w.join()
print(elapsed)
"#;

/// The shapes measured: (producers, consumers, maxsize; 0 is unbounded).
pub const SHAPES: [(usize, usize, usize); 4] = [(1, 1, 0), (4, 4, 0), (1, 1, 100), (4, 4, 100)];

/// What the targets ask: custody faster by this factor.
const TARGET: f64 = 50.0;

/// One run of the program in Python: `items` items in all. `Ok(None)`
/// when there is no `python3`.
///
/// # Errors
///
/// When `python3` runs but fails or prints no time.
pub fn python(
    producers: usize,
    consumers: usize,
    items: u64,
    maxsize: usize,
) -> Result<Option<Duration>, String> {
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .args([producers, consumers, items as usize, maxsize].map(|n| n.to_string()))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("running python3: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "python3 failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .trim()
        .parse()
        .map(|ns| Some(Duration::from_nanos(ns)))
        .map_err(|_| format!("python3 printed no time: {stdout}"))
}

/// One run of the same program on custody's `JoinableQueue`.
///
/// # Panics
///
/// If an item is lost (a put fails, or the sum of what the consumers got
/// is not the sum of what was put).
pub fn custody(producers: usize, consumers: usize, items: u64, maxsize: usize) -> Duration {
    let queue = Arc::new(JoinableQueue::new(maxsize));
    let workers: Vec<_> = (0..consumers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let mut sum = 0u64;
                while let Ok(item) = queue.get() {
                    sum += item;
                    queue.task_done().expect("more task_done than puts");
                }
                sum
            })
        })
        .collect();
    let share = |p: u64| items / producers as u64 + u64::from(p < items % producers as u64);
    let started = Instant::now();
    thread::scope(|s| {
        for p in 0..producers as u64 {
            let queue = &queue;
            s.spawn(move || {
                for i in 0..share(p) {
                    queue.put(i).expect("the queue shut down");
                }
            });
        }
    });
    queue.join();
    let elapsed = started.elapsed();
    queue.shutdown(false);
    let got: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("a consumer panicked"))
        .sum();
    let put: u64 = (0..producers as u64)
        .map(|p| share(p) * share(p).saturating_sub(1) / 2)
        .sum();
    assert_eq!(got, put, "{NAME}: items lost");
    elapsed
}

/// Items in one run: CPython is about a hundred times slower, so it gets
/// fewer.
fn items(settings: Settings) -> (u64, u64) {
    if settings.tiny {
        (1_000, 10_000)
    } else if settings.quick {
        (20_000, 200_000)
    } else {
        (40_000, 400_000)
    }
}

/// Measures every shape, runs of the two sides taking turns.
pub fn run(settings: Settings) -> Report {
    let runs = settings.runs();
    let (python_items, custody_items) = items(settings);
    let mut report = Report {
        workload: NAME,
        title: format!(
            "python-queue: put + get + task_done, then join; CPython's queue.Queue \
             ({python_items} items a run) beside JoinableQueue ({custody_items}), median of {runs}"
        ),
        columns: vec![
            "producers",
            "consumers",
            "maxsize",
            "python_ns_item",
            "custody_ns_item",
            "custody_faster",
            "target",
        ],
        ..Report::default()
    };
    let mut missing = false;
    for (producers, consumers, maxsize) in SHAPES {
        let mut python_ns = Vec::new();
        let mut custody_ns = Vec::new();
        for _ in 0..runs {
            match python(producers, consumers, python_items, maxsize) {
                Ok(Some(elapsed)) => {
                    python_ns.push(elapsed.as_nanos() as f64 / python_items as f64);
                }
                Ok(None) => missing = true,
                Err(message) => report.notes.push(format!("failed: {message}")),
            }
            let elapsed = custody(producers, consumers, custody_items, maxsize);
            custody_ns.push(elapsed.as_nanos() as f64 / custody_items as f64);
        }
        let custody_ns = median(&mut custody_ns);
        let (python_cell, factor, verdict) = if python_ns.is_empty() {
            (Value::Missing, Value::Missing, Value::Text("-".to_owned()))
        } else {
            let python_ns = median(&mut python_ns);
            let factor = python_ns / custody_ns;
            let verdict = if factor >= TARGET { "met" } else { "NOT met" };
            (
                Value::Number(python_ns, 0),
                Value::Number(factor, 1),
                Value::Text(format!("{TARGET}x {verdict}")),
            )
        };
        report.rows.push(vec![
            Value::Number(producers as f64, 0),
            Value::Number(consumers as f64, 0),
            Value::Text(if maxsize == 0 {
                "unbounded".to_owned()
            } else {
                maxsize.to_string()
            }),
            python_cell,
            Value::Number(custody_ns, 1),
            factor,
            verdict,
        ]);
    }
    if missing {
        report
            .notes
            .push("python3 not found: the Python rows were skipped".to_owned());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custody_side_loses_nothing() {
        for (producers, consumers, maxsize) in SHAPES {
            assert!(custody(producers, consumers, 1_001, maxsize) > Duration::ZERO);
        }
    }

    #[test]
    fn python_side_runs_or_is_missing() {
        match python(2, 2, 101, 10) {
            Ok(Some(elapsed)) => assert!(elapsed > Duration::ZERO),
            Ok(None) => {} // no python3 on this machine
            Err(message) => panic!("{message}"),
        }
    }
}
