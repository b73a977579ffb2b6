//! Seed program: `queue_threading.py` (the tutorial's "More Careful Threading
//! with Queues").
//!
//! Lesson: every shared resource is owned by exactly one thread. The counter
//! belongs to a counter manager, the terminal to a printer manager; ten worker
//! threads only send messages, and `join` on each mailbox (Python's
//! `queue.join()`) says when the work handed over is done. No lock anywhere,
//! and the output comes out in order on every run.
//!
//! Run: `cargo run --example counter_printer`
//! Exits 0 only if the printer printed exactly the expected lines, in order.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;

use custody::{Context, Handle, Manager, Reply, Runtime};

/// A print job: lines printed together, never interleaved with another job.
enum PrinterMsg {
    Job(Vec<String>),
    /// Everything printed so far, for the check at the end.
    Printed(Reply<Vec<String>>),
}

/// "I have EXCLUSIVE rights to call print."
struct PrintManager {
    printed: Vec<String>,
}

impl Manager for PrintManager {
    type Msg = PrinterMsg;

    fn handle(&mut self, msg: PrinterMsg, _ctx: &mut Context<'_, PrinterMsg>) {
        match msg {
            PrinterMsg::Job(lines) => {
                let mut out = io::stdout().lock();
                for line in lines {
                    let _ = writeln!(out, "{line}");
                    self.printed.push(line);
                }
            }
            PrinterMsg::Printed(reply) => reply.send(self.printed.clone()),
        }
    }
}

/// "I have EXCLUSIVE rights to update the counter variable."
struct CounterManager {
    counter: u64,
    printer: Handle<PrinterMsg>,
}

impl Manager for CounterManager {
    type Msg = u64;

    fn handle(&mut self, increment: u64, _ctx: &mut Context<'_, u64>) {
        self.counter += increment;
        let job = vec![
            format!("The count is {}", self.counter),
            "---------------".to_owned(),
        ];
        if self.printer.tell(PrinterMsg::Job(job)).is_err() {
            eprintln!("the printer stopped before the counter");
        }
    }
}

fn main() -> ExitCode {
    let rt = Runtime::new();
    let printer = rt
        .spawn(
            "printer",
            PrintManager {
                printed: Vec::new(),
            },
        )
        .expect("spawn the printer");
    let counter = rt
        .spawn(
            "counter",
            CounterManager {
                counter: 0,
                printer: printer.clone(),
            },
        )
        .expect("spawn the counter");

    printer
        .tell(PrinterMsg::Job(vec!["Starting up".to_owned()]))
        .expect("printer running");

    // "My job is to increment the counter and print the current count."
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let counter = counter.clone();
            thread::spawn(move || counter.tell(1).expect("counter running"))
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }

    // Blocks until every increment has been handled (and so every count job
    // has reached the printer's queue).
    counter.join().expect("counter joined");
    printer
        .tell(PrinterMsg::Job(vec!["Finishing up".to_owned()]))
        .expect("printer running");
    printer.join().expect("printer joined");

    let printed = printer.ask(PrinterMsg::Printed).expect("printer answers");
    rt.shutdown();

    let mut expected = vec!["Starting up".to_owned()];
    for n in 1..=10 {
        expected.push(format!("The count is {n}"));
        expected.push("---------------".to_owned());
    }
    expected.push("Finishing up".to_owned());
    if printed == expected {
        ExitCode::SUCCESS
    } else {
        eprintln!("check failed: the printer printed {printed:?}");
        ExitCode::FAILURE
    }
}
