//! Ctrl-C: a real SIGINT starts a graceful shutdown, a second one stops at
//! once; installing a second handler is a typed error.
//!
//! One test in its own binary: a process has room for one Ctrl-C handler.

use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use custody::{Context, CtrlcError, Manager, ManagerState, Runtime};

enum Msg {
    Add,
    Block(mpsc::Sender<()>, mpsc::Receiver<()>),
}

struct Sink(u64);

impl Manager for Sink {
    type Msg = Msg;
    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Add => self.0 += 1,
            Msg::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
        }
    }
}

fn sigint_self() {
    let status = Command::new("kill")
        .args(["-INT", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Polls `check` for up to 30 s.
fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..30_000 {
        if check() {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("{what}: not within 30 s");
}

#[test]
fn first_sigint_drains_second_stops_at_once() {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let rt = Runtime::new();
        let sink = rt.spawn("sink", Sink(0)).unwrap();
        rt.shutdown_on_ctrlc().expect("first handler");
        assert!(matches!(
            rt.shutdown_on_ctrlc(),
            Err(CtrlcError::AlreadyInstalled)
        ));

        let (reached_tx, reached_rx) = mpsc::channel();
        let (open, wait) = mpsc::channel();
        sink.tell(Msg::Block(reached_tx, wait)).unwrap();
        reached_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        for _ in 0..50 {
            sink.tell(Msg::Add).unwrap();
        }

        // First Ctrl-C: a graceful shutdown starts; sends from outside are refused.
        sigint_self();
        let accepted_meanwhile = std::cell::Cell::new(0);
        eventually("graceful shutdown refuses sends", || {
            match sink.tell(Msg::Add) {
                Ok(()) => {
                    accepted_meanwhile.set(accepted_meanwhile.get() + 1);
                    false
                }
                Err(_) => true,
            }
        });
        assert_ne!(sink.stats().state, ManagerState::Aborting);

        // Second Ctrl-C: stop at once.
        sigint_self();
        eventually("immediate stop", || {
            sink.stats().state == ManagerState::Aborting
        });
        open.send(()).unwrap();
        let report = rt.wait();
        assert_eq!(report.total_unhandled(), 50 + accepted_meanwhile.get());
        assert_eq!(sink.stats().state, ManagerState::Stopped);
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the Ctrl-C scenario finished in time");
}
