//! Seed program: `single_thread.py`, run twice as the tutorial does: first
//! with an ordinary thread, then with `daemon=True`.
//!
//! Lesson: the program waits for a non-daemon thread before it exits, and
//! does not wait for a daemon one. Here the thread is a manager: `x.start()`
//! is spawning it and telling it to run, and the runtime's shutdown is
//! Python's exit. Shutdown drains every ordinary manager (so its "finishing"
//! line appears after "Main : all done"); a daemon manager is not waited for,
//! and the process exits while it still sleeps, so its "finishing" line never
//! appears.
//!
//! Run: `cargo run --example single_thread`
//! Exits 0 only if the ordinary manager finished before shutdown returned and
//! the daemon one had not.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use custody::{Context, Manager, Runtime};
use tracing::{Level, info};

/// The seed's `time.sleep(2)`, shortened.
const SLEEP: Duration = Duration::from_millis(300);

/// `thread_function` as a manager: each message is a thread name to run as.
struct ThreadFunction {
    /// Told once "starting" is logged, so that main knows the work began.
    started: mpsc::Sender<()>,
    /// Set once "finishing" is logged.
    finished: Arc<AtomicBool>,
}

impl Manager for ThreadFunction {
    type Msg = u32;

    fn handle(&mut self, name: u32, _ctx: &mut Context<'_, u32>) {
        info!("Thread {name}: starting");
        let _ = self.started.send(());
        thread::sleep(SLEEP);
        info!("Thread {name}: finishing");
        self.finished.store(true, Ordering::SeqCst);
    }
}

/// What one run saw.
struct Outcome {
    /// Whether "finishing" had been logged when shutdown returned.
    finished_before_exit: bool,
    /// How long shutdown took.
    shutdown_took: Duration,
}

/// The seed's `__main__`, with the thread as a manager.
fn run(daemon: bool) -> Outcome {
    let rt = Runtime::new();
    let (started, has_started) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let thread_function = ThreadFunction {
        started,
        finished: Arc::clone(&finished),
    };

    info!("Main : before creating thread");
    let x = if daemon {
        rt.spawn_daemon("thread-1", thread_function)
    } else {
        rt.spawn("thread-1", thread_function)
    }
    .expect("spawn the manager");
    info!("Main : before running thread");
    x.tell(1).expect("the manager is running");
    // The seed's thread logs "starting" at once; wait for that here so the
    // daemon is surely in the middle of its work when the program ends.
    has_started.recv().expect("the manager started its work");
    info!("Main : wait for the thread to finish");
    // x.join()   (Handle::join would wait here, for either kind.)
    info!("Main : all done");

    // The end of the program: what Python's threading._shutdown does.
    let begin = Instant::now();
    let report = rt.shutdown();
    let shutdown_took = begin.elapsed();
    let finished_before_exit = finished.load(Ordering::SeqCst);
    if daemon {
        info!(
            "(shutdown returned after {shutdown_took:.1?} without waiting for the daemon; {} message(s) discarded)",
            report.total_unhandled()
        );
    } else {
        info!("(shutdown returned after {shutdown_took:.1?}, once thread-1 had finished)");
    }
    Outcome {
        finished_before_exit,
        shutdown_took,
    }
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);

    println!("--- an ordinary (non-daemon) manager: the exit waits for it ---");
    let ordinary = run(false);
    println!();
    println!("--- a daemon manager: the exit does not wait; no \"finishing\" line ---");
    let daemon = run(true);

    let mut failures = Vec::new();
    if !ordinary.finished_before_exit {
        failures.push("the ordinary manager had not finished when shutdown returned".to_owned());
    }
    if daemon.finished_before_exit {
        failures.push("the daemon manager finished before shutdown returned".to_owned());
    }
    if daemon.shutdown_took >= SLEEP {
        failures.push(format!(
            "shutdown took {:?}: it seems to have waited for the daemon",
            daemon.shutdown_took
        ));
    }
    // Returning ends the process, daemon thread and all, mid-sleep.
    common::verdict(failures)
}
