//! Shutdown on signals: a real SIGTERM or SIGINT starts a graceful shutdown,
//! a second one of either kind stops at once, a SIGINT ignored at start stays
//! ignored, a dropped runtime leaves SIGTERM to end the process, and
//! installing the handlers twice is a typed error.
//!
//! Signal handlers are process-wide and `shutdown_on_signals` installs them
//! once per process, so each scenario runs in a child process of its own:
//! this test binary started again with `--exact` and the test's name, with
//! `CUSTODY_SIGNALS_CHILD` set to that name. The child runs the scenario and
//! sends itself the signals; the parent checks how it ended and what it
//! printed on stderr.

#![cfg(unix)]

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use custody::{Backend, ManagerState, SignalError};

#[allow(dead_code)]
#[path = "it/support.rs"]
mod support;

use support::{Msg, Probe, blocked_probe, runtime, within};

/// Expands each listed `fn name(backend: Backend, test: &str)` into one
/// `#[test]` per backend, handing it its own full test name.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod crossbeam {
            $(
                #[test]
                fn $name() {
                    super::$name(
                        custody::Backend::Crossbeam,
                        concat!("crossbeam::", stringify!($name)),
                    )
                }
            )*
        }
        mod flume {
            $(
                #[test]
                fn $name() {
                    super::$name(custody::Backend::Flume, concat!("flume::", stringify!($name)))
                }
            )*
        }
    };
}

backend_tests!(
    sigterm_drains_gracefully,
    sigint_then_sigint_stops_at_once,
    sigint_then_sigterm_stops_at_once,
    sigterm_then_sigint_stops_at_once,
    ignored_sigint_stays_ignored_and_sigterm_drains,
);

/// Names the test a child process was started to run.
const CHILD: &str = "CUSTODY_SIGNALS_CHILD";

/// How a child process starts.
enum Start {
    /// SIGINT at its default disposition, whatever the test runner's.
    SigintDefault,
    /// As `sh -c 'prog &'` starts `prog`: SIGINT (and SIGQUIT) ignored.
    InTheBackgroundOfAScript,
}

/// How a child process ends.
#[derive(PartialEq)]
enum Ends {
    /// Its test passes.
    Passing,
    /// Killed by SIGTERM (the default action).
    BySigterm,
}

/// In the child started for `test`, runs `child`; anywhere else, starts that
/// child, waits for it, asserts that it ended as `ends` says, and hands its
/// stderr to `parent`.
fn scenario(
    test: &'static str,
    start: Start,
    ends: Ends,
    child: impl FnOnce() + Send + 'static,
    parent: impl FnOnce(&str),
) {
    if std::env::var(CHILD).as_deref() == Ok(test) {
        within(test, child);
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = match start {
        // GNU env resets SIGINT, in case the tests themselves run with it
        // ignored (started in the background of a script).
        Start::SigintDefault => {
            let mut command = Command::new("env");
            command.arg("--default-signal=INT").arg(exe);
            command
        }
        Start::InTheBackgroundOfAScript => {
            let mut command = Command::new("sh");
            command.args(["-c", r#""$0" "$@" & wait $!"#]).arg(exe);
            command
        }
    };
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test);
    let output: Output = within(test, move || command.output().expect("start the child"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ended_as_expected = match ends {
        // And really ran the scenario (not zero tests).
        Ends::Passing => output.status.success() && stdout.contains("1 passed"),
        Ends::BySigterm => output.status.signal() == Some(SIGTERM),
    };
    assert!(
        ended_as_expected,
        "{test} in a child process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    parent(&stderr);
}

/// Sends `signal` (`"INT"`, `"TERM"`) to this process.
fn signal_self(signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal}: {status}");
}

/// Whether this process ignores SIGINT, from `/proc/self/status`.
fn sigint_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .expect("a SigIgn line");
    let mask = u64::from_str_radix(mask.trim(), 16).expect("a hexadecimal mask");
    mask & (1 << (2 - 1)) != 0
}

/// Polls `check` for up to 30 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..30_000 {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("{what}: not within 30 s");
}

/// Sends `Add(1)`s until one is refused; returns how many were accepted.
fn tell_until_refused(sink: &custody::Handle<Msg>) -> u64 {
    let accepted = Cell::new(0);
    eventually("the graceful shutdown refuses sends", || {
        match sink.tell(Msg::Add(1)) {
            Ok(()) => {
                accepted.set(accepted.get() + 1);
                false
            }
            Err(_) => true,
        }
    });
    accepted.get()
}

const QUEUED: u64 = 50;

/// SIGTERM's number.
const SIGTERM: i32 = 15;

fn sigterm_drains_gracefully(backend: Backend, test: &'static str) {
    scenario(
        test,
        Start::SigintDefault,
        Ends::Passing,
        move || {
            let rt = runtime(backend);
            let (probe, log) = Probe::new();
            let (sink, latch) = blocked_probe(&rt, "sink", probe);
            let handled = rt.shutdown_on_signals().expect("install the handlers");
            assert!(handled.interrupt && handled.terminate, "{handled:?}");
            assert!(matches!(
                rt.shutdown_on_signals(),
                Err(SignalError::AlreadyInstalled)
            ));
            for _ in 0..QUEUED {
                sink.tell(Msg::Add(1)).unwrap();
            }

            signal_self("TERM");
            let accepted_meanwhile = tell_until_refused(&sink);
            assert_ne!(sink.stats().state, ManagerState::Aborting);
            latch.open();
            let report = rt.wait();

            assert_eq!(report.total_unhandled(), 0, "{report}");
            let log = log.lock().unwrap();
            assert_eq!(log.total, QUEUED + accepted_meanwhile);
            assert_eq!(log.events.last().map(String::as_str), Some("stopped"));
        },
        |stderr| {
            assert!(
                stderr.contains("custody: SIGTERM received: shutting down gracefully"),
                "{stderr}"
            );
            assert!(!stderr.contains("stopped at once"), "{stderr}");
        },
    );
}

/// The first signal drains, the second stops at once and prints the report.
fn second_signal_stops_at_once(
    backend: Backend,
    test: &'static str,
    first: &'static str,
    second: &'static str,
) {
    scenario(
        test,
        Start::SigintDefault,
        Ends::Passing,
        move || {
            let rt = runtime(backend);
            let (probe, log) = Probe::new();
            let (sink, latch) = blocked_probe(&rt, "sink", probe);
            let handled = rt.shutdown_on_signals().expect("install the handlers");
            assert!(handled.interrupt && handled.terminate, "{handled:?}");
            for _ in 0..QUEUED {
                sink.tell(Msg::Add(1)).unwrap();
            }

            signal_self(first);
            let accepted_meanwhile = tell_until_refused(&sink);
            assert_ne!(sink.stats().state, ManagerState::Aborting);

            signal_self(second);
            eventually("the immediate stop", || {
                sink.stats().state == ManagerState::Aborting
            });
            latch.open();
            let report = rt.wait();

            assert_eq!(
                report.total_unhandled(),
                QUEUED + accepted_meanwhile,
                "{report}"
            );
            assert_eq!(sink.stats().state, ManagerState::Stopped);
            assert_eq!(log.lock().unwrap().total, 0);
        },
        |stderr| {
            assert!(
                stderr.contains(&format!(
                    "custody: SIG{first} received: shutting down gracefully"
                )),
                "{stderr}"
            );
            assert!(
                stderr.contains(&format!(
                    "custody: SIG{second} received, the second signal: stopping at once"
                )),
                "{stderr}"
            );
        },
    );
}

fn sigint_then_sigint_stops_at_once(backend: Backend, test: &'static str) {
    second_signal_stops_at_once(backend, test, "INT", "INT");
}

fn sigint_then_sigterm_stops_at_once(backend: Backend, test: &'static str) {
    second_signal_stops_at_once(backend, test, "INT", "TERM");
}

fn sigterm_then_sigint_stops_at_once(backend: Backend, test: &'static str) {
    second_signal_stops_at_once(backend, test, "TERM", "INT");
}

fn ignored_sigint_stays_ignored_and_sigterm_drains(backend: Backend, test: &'static str) {
    scenario(
        test,
        Start::InTheBackgroundOfAScript,
        Ends::Passing,
        move || {
            assert!(
                sigint_ignored(),
                "the shell started this child with SIGINT ignored"
            );
            let rt = runtime(backend);
            let (probe, log) = Probe::new();
            let (sink, latch) = blocked_probe(&rt, "sink", probe);
            let handled = rt
                .shutdown_on_signals()
                .expect("install the handlers with SIGINT ignored");
            assert!(!handled.interrupt && handled.terminate, "{handled:?}");
            assert!(sigint_ignored(), "SIGINT is still ignored");
            for _ in 0..QUEUED {
                sink.tell(Msg::Add(1)).unwrap();
            }

            // Ignored: neither ends the process nor counts as a first signal,
            // so the SIGTERM after it drains instead of stopping at once.
            signal_self("INT");
            signal_self("TERM");
            let accepted_meanwhile = tell_until_refused(&sink);
            latch.open();
            let report = rt.wait();

            assert_eq!(report.total_unhandled(), 0, "{report}");
            let log = log.lock().unwrap();
            assert_eq!(log.total, QUEUED + accepted_meanwhile);
            assert_eq!(log.events.last().map(String::as_str), Some("stopped"));
        },
        |stderr| {
            assert!(
                stderr.contains("custody: SIGTERM received: shutting down gracefully"),
                "{stderr}"
            );
            assert!(!stderr.contains("SIGINT"), "{stderr}");
        },
    );
}

#[test]
fn sigterm_after_the_runtime_is_dropped_ends_the_process() {
    scenario(
        "sigterm_after_the_runtime_is_dropped_ends_the_process",
        Start::SigintDefault,
        Ends::BySigterm,
        || {
            let rt = runtime(Backend::Crossbeam);
            let handled = rt.shutdown_on_signals().expect("install the handlers");
            assert!(handled.terminate);
            drop(rt);
            eprintln!("runtime dropped; sending SIGTERM");
            signal_self("TERM");
            eventually("SIGTERM ends the process", || false);
        },
        |stderr| {
            assert!(
                stderr.contains("runtime dropped; sending SIGTERM"),
                "{stderr}"
            );
            assert!(!stderr.contains("custody: SIGTERM received"), "{stderr}");
        },
    );
}
