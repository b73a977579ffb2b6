//! A live view of a running runtime in the terminal: a demo workload (see
//! `demo/mod.rs`) and `custody::observe::top` drawing its managers, for
//! `--seconds N` (default 3) or until `q`.
//!
//! ```text
//! cargo run --example top -- --seconds 60
//! ```
//!
//! Any program can call the view on its own runtime, on a thread of its
//! own while the work goes on:
//!
//! ```text
//! let options = TopOptions::new().quit_on_q(true);
//! std::thread::scope(|s| {
//!     s.spawn(|| custody::observe::top(&rt, &options));
//!     // ... the program's work ...
//! });
//! ```

mod demo;

use std::io::IsTerminal;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use custody::observe::{self, Ended, TopOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("top: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = demo::seconds_arg(3.0)?;
    demo::quiet_flaky_panics();
    let mut demo = demo::start()?;
    let options = TopOptions::new()
        .refresh(Duration::from_millis(200))
        .duration(Some(seconds))
        .quit_on_q(true);
    // In a terminal, `q` should not wait for Enter: no line mode, no echo.
    let raw = std::io::stdin()
        .is_terminal()
        .then(RawMode::enter)
        .flatten();
    let ended = observe::top(&demo.rt, &options);
    drop(raw);
    let ended = ended?;
    demo.stop_producers();
    demo.rt.shutdown_now();
    println!(
        "top ended: {}",
        match ended {
            Ended::Quit => "q pressed",
            Ended::Duration => "time is up",
            _ => "every manager stopped",
        }
    );
    Ok(())
}

/// The terminal without line mode and echo (with `stty`), restored on drop.
struct RawMode(String);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let saved = Command::new("stty")
            .arg("-g")
            .stdin(Stdio::inherit())
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let saved = String::from_utf8(saved.stdout).ok()?.trim().to_owned();
        let set = Command::new("stty")
            .args(["-icanon", "-echo", "min", "1"])
            .stdin(Stdio::inherit())
            .status()
            .ok()?;
        set.success().then_some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = Command::new("stty")
            .arg(&self.0)
            .stdin(Stdio::inherit())
            .status();
    }
}
