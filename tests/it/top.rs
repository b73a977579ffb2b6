//! The live view as a person sees it: `examples/top.rs` run under tmux, its
//! screen read with `capture-pane`. Fails (never skips) without tmux.

use std::collections::HashSet;
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

use crate::support::{example, within};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("this test needs tmux (apt-get install tmux)")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        assert!(out.status.success(), "capture-pane: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// A manager's row on the screen, split into its columns.
fn row<'s>(screen: &'s str, name: &str) -> Option<Vec<&'s str>> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().collect())
}

#[test]
fn the_live_view_under_tmux_shows_every_manager_and_ends_on_q() {
    let top = example("top");
    within("top under tmux", move || {
        let tmux = Tmux {
            socket: format!("custody-top-test-{}", std::process::id()),
        };
        // The pane stays after the example ends, to read its last line.
        let command = format!("{} --seconds 50; echo EXIT=$?; sleep 60", top.display());
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            &command,
        ]);
        assert!(started.status.success(), "new-session: {started:?}");
        let mut seen = HashSet::new();
        let wanted = [
            "header",
            "every manager running",
            "rates",
            "percentiles",
            "orders handled",
            "flaky panics and restarts",
            "bounded depth",
            "mailer growing",
            "db stalled",
        ];
        let mut last = String::new();
        let mut tries = 0;
        while wanted.iter().any(|w| !seen.contains(*w)) {
            tries += 1;
            assert!(
                tries < 5000,
                "not seen: {:?} in\n{last}",
                wanted
                    .iter()
                    .filter(|w| !seen.contains(**w))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(10));
            let screen = tmux.screen();
            let names = ["orders", "db", "flaky", "mailer", "bounded"];
            let rows: Vec<Vec<&str>> = names.iter().filter_map(|n| row(&screen, n)).collect();
            if rows.len() < names.len() {
                last = screen;
                continue;
            }
            if screen.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.starts_with(&[
                    "MANAGER", "STATE", "DEPTH", "RATE/s", "P50", "P99", "HANDLED", "PANICS",
                    "RESTARTS", "ALERTS",
                ])
            }) {
                seen.insert("header");
            }
            // Columns: name state depth rate p50 p99 handled panics restarts alerts...
            if rows.iter().all(|r| r[1] == "running") {
                seen.insert("every manager running");
            }
            if rows.iter().all(|r| r[3].parse::<f64>().is_ok()) {
                seen.insert("rates");
            }
            let orders = &rows[0];
            let is_duration = |s: &str| {
                s.ends_with("ns") || s.ends_with("us") || s.ends_with("ms") || s.ends_with('s')
            };
            if is_duration(orders[4])
                && is_duration(orders[5])
                && orders[4].chars().next().is_some_and(|c| c.is_ascii_digit())
            {
                seen.insert("percentiles");
            }
            if orders[6].parse::<u64>().is_ok_and(|n| n > 0)
                && orders[3].parse::<f64>().is_ok_and(|r| r > 0.0)
            {
                seen.insert("orders handled");
            }
            let flaky = &rows[2];
            if flaky[7].parse::<u64>().is_ok_and(|n| n > 0)
                && flaky[8].parse::<u64>().is_ok_and(|n| n > 0)
            {
                seen.insert("flaky panics and restarts");
            }
            if rows[4][2].parse::<u64>().is_ok_and(|d| d > 0) {
                seen.insert("bounded depth");
            }
            if rows[3].contains(&"GROWING") {
                seen.insert("mailer growing");
            }
            if rows[1].contains(&"STALLED") {
                seen.insert("db stalled");
            }
            last = screen;
        }
        let sent = tmux.run(&["send-keys", "-t", "top", "q"]);
        assert!(sent.status.success(), "send-keys: {sent:?}");
        let mut tries = 0;
        loop {
            let screen = tmux.screen();
            if screen.contains("top ended: q pressed") && screen.contains("EXIT=0") {
                break;
            }
            tries += 1;
            assert!(tries < 5000, "did not end on q:\n{screen}");
            thread::sleep(Duration::from_millis(10));
        }
    });
}
