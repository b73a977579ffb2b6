//! Seed: the tutorial's `Timer` section (the `ping` that runs until killed).
//!
//! Lesson: a `Timer` runs a function once, on its own thread, after a delay,
//! unless it is cancelled first. The seed starts `ping`, which never ends on
//! Linux, and a timer that kills it after five seconds; `finally:
//! my_timer.cancel()` makes sure the timer does nothing once the process is
//! over. Here a `sleep 30` child plays `ping` and is killed after a short
//! delay; then a quick child finishes on its own and the cancelled timer never
//! fires.
//!
//! Run: `cargo run --example timer`
//! Exits 0 only if the timer killed the long child, and the cancelled timer
//! never ran.

mod common;

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use custody::sync::Timer;
use tracing::{Level, info};

/// Kills a process by pid, as the seed's `lambda process: process.kill()`.
fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);

    // 1. The timer fires: the endless child is killed.
    let mut endless = match Command::new("sleep").arg("30").spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start `sleep`: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = endless.id();
    info!("started `sleep 30` (pid {pid}); a timer will kill it in 300 ms");
    let killer = Timer::start(Duration::from_millis(300), move || kill(pid));
    let status = endless.wait().expect("wait for the child");
    killer.cancel(); // the seed's `finally:`; a no-op once it has fired
    let killed = !status.success() && killer.has_fired();
    info!("child ended: {status}; timer fired: {}", killer.has_fired());

    // 2. The child ends first: the cancelled timer never runs.
    let ran = Arc::new(AtomicBool::new(false));
    let mut quick = Command::new("sleep")
        .arg("0.1")
        .spawn()
        .expect("start `sleep 0.1`");
    let quick_pid = quick.id();
    let flag = Arc::clone(&ran);
    let spare = Timer::start(Duration::from_secs(5), move || {
        flag.store(true, Ordering::SeqCst);
        kill(quick_pid);
    });
    let quick_status = quick.wait().expect("wait for the child");
    let cancelled = spare.cancel();
    let _ = spare.join();
    info!("quick child ended: {quick_status}; timer cancelled before firing: {cancelled}");

    if killed && quick_status.success() && cancelled && !ran.load(Ordering::SeqCst) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "check failed: killed {killed}, quick child {quick_status}, cancelled {cancelled}, ran {}",
            ran.load(Ordering::SeqCst)
        );
        ExitCode::FAILURE
    }
}
