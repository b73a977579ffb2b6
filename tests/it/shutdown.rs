//! Promise 6: graceful shutdown (explicit or on drop) refuses new sends,
//! drains, runs `stopped`, joins; daemons are not waited for.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use custody::{Backend, Context, Handle, Manager, SpawnError};

use crate::support::{Latch, Msg, Probe, blocked_probe, runtime, within};

backend_tests!(
    shutdown_drains_every_mailbox_and_runs_stopped,
    sends_from_outside_are_refused_once_shutdown_starts,
    dropping_the_runtime_shuts_down_gracefully,
    a_daemon_manager_is_not_waited_for,
    a_manager_can_still_tell_an_earlier_one_while_it_drains,
    shutdown_twice_returns_the_same_report,
    spawn_after_shutdown_is_refused,
    shutdown_now_cuts_a_graceful_shutdown_short,
    shutdown_now_from_a_handler_stops_everything_and_reports_truly,
    wait_from_a_handler_returns_at_once_in_progress,
);

/// A runtime reachable from inside its own managers.
type SelfRef = Arc<std::sync::OnceLock<Arc<custody::Runtime>>>;

fn shutdown_now_from_a_handler_stops_everything_and_reports_truly(backend: Backend) {
    within("shutdown_now from a handler", move || {
        let rt = Arc::new(runtime(backend));
        let me: SelfRef = Arc::default();
        me.set(Arc::clone(&rt)).ok();
        let (probe, log) = Probe::new();
        let (worker, latch) = blocked_probe(&rt, "worker", probe);
        for _ in 0..100 {
            worker.tell(Msg::Add(1)).unwrap();
        }
        let stopper = rt.own("stopper", Arc::clone(&me)).unwrap();
        let inside = stopper.call(|me| me.get().unwrap().shutdown_now()).unwrap();
        assert!(!inside.is_complete());
        assert_eq!(inside.to_string(), "shutdown in progress\n");
        latch.open();
        let report = rt.wait();
        assert!(report.is_complete());
        // The worker finished the message in hand and discarded the 100 adds.
        let record = report.managers.iter().find(|m| m.name == "worker").unwrap();
        assert_eq!(record.unhandled, 100, "{report}");
        assert_eq!(log.lock().unwrap().total, 0);
        assert!(worker.has_exited() && stopper.handle().has_exited());
        assert_eq!(rt.shutdown(), report, "a later shutdown reports the same");
    });
}

fn wait_from_a_handler_returns_at_once_in_progress(backend: Backend) {
    within("wait from a handler", move || {
        let rt = Arc::new(runtime(backend));
        let me: SelfRef = Arc::default();
        me.set(Arc::clone(&rt)).ok();
        let owner = rt.own("waiter", Arc::clone(&me)).unwrap();
        // Nobody shuts down: a wait from a plain thread would block; from a
        // manager it cannot ever complete, so it returns at once.
        let waited = owner.call(|me| me.get().unwrap().wait()).unwrap();
        assert!(!waited.is_complete());
        let report = rt.shutdown();
        assert!(report.is_complete());
        assert_eq!(report.total_unhandled(), 0);
    });
}

fn shutdown_drains_every_mailbox_and_runs_stopped(backend: Backend) {
    within("shutdown drains", move || {
        let rt = runtime(backend);
        let (probe, log) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "drain", probe);
        for _ in 0..1000 {
            h.tell(Msg::Add(1)).unwrap();
        }
        let report = thread::scope(|s| {
            let shut = s.spawn(|| rt.shutdown());
            thread::sleep(Duration::from_millis(10));
            latch.open();
            shut.join().unwrap()
        });
        assert_eq!(report.total_unhandled(), 0);
        assert!(h.has_exited());
        assert_eq!(h.stats().handled, 1001);
        let log = log.lock().unwrap();
        assert_eq!(log.events.last().map(String::as_str), Some("stopped"));
    });
}

fn sends_from_outside_are_refused_once_shutdown_starts(backend: Backend) {
    within("refused during shutdown", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "closing", probe);
        h.tell(Msg::Add(1)).unwrap();
        thread::scope(|s| {
            let shut = s.spawn(|| rt.shutdown());
            // Wait until the shutdown has closed the gate to outsiders.
            let mut refused = None;
            for _ in 0..10_000 {
                match h.tell(Msg::Add(1000)) {
                    Ok(()) => thread::sleep(Duration::from_micros(100)),
                    Err(e) => {
                        refused = Some(e.into_inner());
                        break;
                    }
                }
            }
            assert!(matches!(refused, Some(Msg::Add(1000))));
            latch.open();
            shut.join().unwrap();
        });
        assert!(h.tell(Msg::Add(1)).is_err());
    });
}

fn dropping_the_runtime_shuts_down_gracefully(backend: Backend) {
    within("drop", move || {
        let (probe, log) = Probe::new();
        let h = {
            let rt = runtime(backend);
            let h = rt.spawn("dropped", probe).unwrap();
            for _ in 0..500 {
                h.tell(Msg::Add(2)).unwrap();
            }
            h
        };
        assert!(h.has_exited());
        assert_eq!(h.stats().handled, 500);
        assert!(h.tell(Msg::Add(1)).is_err());
        assert_eq!(
            log.lock().unwrap().events.last().map(String::as_str),
            Some("stopped")
        );
    });
}

fn a_daemon_manager_is_not_waited_for(backend: Backend) {
    within("daemon", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let daemon = rt.spawn_daemon("heartbeat", probe).unwrap();
        let (latch, wait) = Latch::new();
        daemon.tell(Msg::Block(wait)).unwrap();
        for _ in 0..10 {
            daemon.tell(Msg::Add(1)).unwrap();
        }
        let (normal, _) = Probe::new();
        let normal = rt.spawn("normal", normal).unwrap();
        normal.tell(Msg::Add(1)).unwrap();
        // Shutdown returns while the daemon is still blocked in its handler.
        let report = rt.shutdown();
        assert!(normal.has_exited());
        assert!(!daemon.has_exited());
        assert!(daemon.is_stopped());
        assert!(
            report
                .managers
                .iter()
                .any(|m| m.name == "heartbeat" && m.daemon)
        );
        latch.open();
        for _ in 0..1000 {
            if daemon.has_exited() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        assert!(daemon.has_exited());
    });
}

/// Tells every number it gets to the printer it was given.
struct Relay {
    printer: Handle<Msg>,
}

impl Manager for Relay {
    type Msg = u64;
    fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
        self.printer
            .tell(Msg::Add(n))
            .unwrap_or_else(|_| panic!("printer refused a relayed message"));
    }
}

fn a_manager_can_still_tell_an_earlier_one_while_it_drains(backend: Backend) {
    within("relay while draining", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let printer = rt.spawn("printer", probe).unwrap();
        let relay = rt
            .spawn(
                "relay",
                Relay {
                    printer: printer.clone(),
                },
            )
            .unwrap();
        for _ in 0..2000 {
            relay.tell(1).unwrap();
        }
        rt.shutdown();
        assert_eq!(relay.stats().panicked, 0);
        assert_eq!(printer.stats().handled, 2000);
    });
}

fn shutdown_twice_returns_the_same_report(backend: Backend) {
    within("shutdown twice", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        rt.spawn("a", probe).unwrap();
        let first = rt.shutdown();
        let second = rt.shutdown();
        assert_eq!(first, second);
        assert_eq!(first.managers.len(), 1);
    });
}

fn spawn_after_shutdown_is_refused(backend: Backend) {
    within("spawn after shutdown", move || {
        let rt = runtime(backend);
        rt.shutdown();
        let (probe, _) = Probe::new();
        assert!(matches!(rt.spawn("late", probe), Err(SpawnError::ShutDown)));
    });
}

fn shutdown_now_cuts_a_graceful_shutdown_short(backend: Backend) {
    within("now during graceful", move || {
        let rt = Arc::new(runtime(backend));
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "slow", probe);
        for _ in 0..10 {
            h.tell(Msg::Sleep(Duration::from_millis(200))).unwrap();
        }
        let reports = Arc::new(Mutex::new(Vec::new()));
        thread::scope(|s| {
            let graceful = s.spawn(|| rt.shutdown());
            thread::sleep(Duration::from_millis(20));
            let now = s.spawn(|| rt.shutdown_now());
            thread::sleep(Duration::from_millis(20));
            latch.open();
            reports.lock().unwrap().push(graceful.join().unwrap());
            reports.lock().unwrap().push(now.join().unwrap());
        });
        let reports = reports.lock().unwrap();
        assert_eq!(reports[0].total_unhandled(), 10);
        assert_eq!(reports[0], reports[1]);
    });
}
