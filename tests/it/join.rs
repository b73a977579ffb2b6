//! Promise 3: `join` returns exactly when every accepted message is handled,
//! and never hangs on a stopped or panicked manager.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use custody::{Backend, JoinError};

use crate::support::{Msg, Probe, blocked_probe, quiet_panics, runtime, within};

backend_tests!(
    join_on_an_idle_manager_returns_at_once,
    join_waits_for_every_accepted_message,
    join_timeout_reports_what_is_unfinished,
    many_joiners_are_all_released,
    join_completes_when_handlers_panic,
    join_on_a_gracefully_stopped_manager_is_ok,
    join_after_an_immediate_stop_with_messages_left_is_an_error,
    join_does_not_return_while_a_message_is_being_handled,
    idle_runs_before_join_returns_even_with_a_batch_limit,
);

/// Counts the messages it has seen and the ones `idle` has "committed".
struct Committer {
    seen: u64,
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl custody::Manager for Committer {
    type Msg = ();
    fn handle(&mut self, _msg: (), _ctx: &mut custody::Context<'_, ()>) {
        self.seen += 1;
    }
    fn idle(&mut self, _ctx: &mut custody::Context<'_, ()>) {
        self.committed.store(self.seen, Ordering::SeqCst);
    }
}

fn idle_runs_before_join_returns_even_with_a_batch_limit(backend: Backend) {
    within("idle with max_batch", move || {
        let rt = runtime(backend);
        let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = rt
            .manager("committer")
            .max_batch(1)
            .spawn(Committer {
                seen: 0,
                committed: Arc::clone(&committed),
            })
            .unwrap();
        for round in 1..=20u64 {
            h.tell(()).unwrap();
            h.join().unwrap();
            assert_eq!(committed.load(Ordering::SeqCst), round);
        }
    });
}

fn join_on_an_idle_manager_returns_at_once(backend: Backend) {
    within("idle join", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("idle", probe).unwrap();
        h.join().unwrap();
        h.join_timeout(Duration::ZERO).unwrap();
    });
}

fn join_waits_for_every_accepted_message(backend: Backend) {
    within("join waits", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("sum", probe).unwrap();
        for _ in 0..10 {
            h.tell(Msg::Sleep(Duration::from_millis(2))).unwrap();
            h.tell(Msg::Add(1)).unwrap();
        }
        h.join().unwrap();
        assert_eq!(h.unfinished(), 0);
        assert_eq!(rt.stats().get("sum").unwrap().handled, 20);
    });
}

fn join_timeout_reports_what_is_unfinished(backend: Backend) {
    within("join timeout", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "stuck", probe);
        h.tell(Msg::Add(1)).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        let started = std::time::Instant::now();
        match h.join_timeout(Duration::from_millis(40)) {
            Err(JoinError::Timeout {
                manager,
                unfinished,
            }) => {
                assert_eq!(manager, "stuck");
                assert_eq!(unfinished, 3);
            }
            other => panic!("expected a join timeout, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(40));
        latch.open();
        h.join().unwrap();
    });
}

fn many_joiners_are_all_released(backend: Backend) {
    within("many joiners", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "j", probe);
        for _ in 0..100 {
            h.tell(Msg::Add(1)).unwrap();
        }
        let joiners: Vec<_> = (0..8)
            .map(|_| {
                let h = h.clone();
                thread::spawn(move || {
                    h.join().unwrap();
                    h.unfinished()
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20));
        latch.open();
        for j in joiners {
            assert_eq!(j.join().unwrap(), 0);
        }
    });
}

fn join_completes_when_handlers_panic(backend: Backend) {
    quiet_panics();
    within("join after panics", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("panicky", probe).unwrap();
        for _ in 0..50 {
            h.tell(Msg::Panic("probe: boom")).unwrap();
            h.tell(Msg::Add(1)).unwrap();
        }
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 50);
    });
}

fn join_on_a_gracefully_stopped_manager_is_ok(backend: Backend) {
    within("join stopped", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("s", probe).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        h.stop();
        h.join().unwrap();
        rt.shutdown();
        assert!(h.has_exited());
        h.join().unwrap();
    });
}

fn join_after_an_immediate_stop_with_messages_left_is_an_error(backend: Backend) {
    within("join after shutdown_now", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "cut", probe);
        for _ in 0..5 {
            h.tell(Msg::Add(1)).unwrap();
        }
        let joiner = {
            let h = h.clone();
            thread::spawn(move || h.join())
        };
        thread::scope(|s| {
            let now = s.spawn(|| rt.shutdown_now());
            thread::sleep(Duration::from_millis(10));
            latch.open();
            now.join().unwrap();
        });
        match joiner.join().unwrap() {
            Err(JoinError::Stopped { manager, unhandled }) => {
                assert_eq!(manager, "cut");
                assert_eq!(unhandled, 5);
            }
            other => panic!("expected JoinError::Stopped, got {other:?}"),
        }
        assert!(matches!(
            h.join(),
            Err(JoinError::Stopped { unhandled: 5, .. })
        ));
    });
}

fn join_does_not_return_while_a_message_is_being_handled(backend: Backend) {
    within("join not early", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "slow", probe);
        let returned = Arc::new(AtomicBool::new(false));
        let joiner = {
            let h = h.clone();
            let returned = Arc::clone(&returned);
            thread::spawn(move || {
                h.join().unwrap();
                returned.store(true, Ordering::SeqCst);
            })
        };
        thread::sleep(Duration::from_millis(50));
        assert!(
            !returned.load(Ordering::SeqCst),
            "join returned while a message was unhandled"
        );
        latch.open();
        joiner.join().unwrap();
        assert!(returned.load(Ordering::SeqCst));
    });
}
