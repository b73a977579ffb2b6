//! Observability: counters readable as `Runtime::stats()` and printable.

use custody::{Backend, ManagerState};

use crate::support::{Msg, Probe, blocked_probe, quiet_panics, runtime, within};

backend_tests!(
    stats_count_handled_panicked_and_queued,
    stats_print_as_a_table
);

fn stats_count_handled_panicked_and_queued(backend: Backend) {
    quiet_panics();
    within("stats", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "counted", probe);
        h.tell(Msg::Add(1)).unwrap();
        h.tell(Msg::Panic("probe: counted")).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        let during = rt.stats();
        let m = during.get("counted").unwrap();
        assert_eq!(m.queued, 3);
        assert_eq!(m.unfinished, 4);
        assert_eq!(m.state, ManagerState::Running);
        assert_eq!(m.backend, backend);
        latch.open();
        h.join().unwrap();
        let after = rt.stats();
        let m = after.get("counted").unwrap();
        assert_eq!(
            (m.handled, m.panicked, m.queued, m.unfinished),
            (4, 1, 0, 0)
        );
        rt.shutdown();
        assert_eq!(
            rt.stats().get("counted").unwrap().state,
            ManagerState::Stopped
        );
    });
}

fn stats_print_as_a_table(backend: Backend) {
    within("stats table", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("printer", probe).unwrap();
        rt.spawn_daemon("beat", Probe::new().0).unwrap();
        for _ in 0..7 {
            h.tell(Msg::Add(1)).unwrap();
        }
        h.join().unwrap();
        let table = rt.stats().to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("manager"));
        assert!(lines[1].starts_with("printer"));
        assert!(lines[1].contains(backend.name()));
        assert!(lines[1].split_whitespace().any(|w| w == "7"));
        assert!(lines[2].starts_with("beat (daemon)"));
    });
}
