//! Seeing inside a running runtime: sampled service times, stalled managers,
//! growing mailboxes, refused sends, and the live view.

use std::thread;
use std::time::Duration;

use custody::observe::{self, TopOptions};
use custody::{Backend, Capacity, ManagerState, Runtime, TrySendError};

use crate::support::{Msg, Probe, blocked_probe, within};

backend_tests!(
    service_time_percentiles_are_kept_for_a_sample,
    a_stalled_manager_is_reported_after_its_threshold_and_cleared_after,
    a_manager_stall_threshold_overrides_the_runtime_one,
    a_growing_mailbox_is_reported_and_the_episode_ends_when_it_drains,
    a_steady_mailbox_is_not_reported_growing,
    a_manager_growth_window_overrides_the_runtime_one,
    refused_sends_are_counted,
    the_stats_table_shows_a_stall,
    the_live_view_draws_every_manager_with_its_alerts,
);

/// Polls `rt.stats()` for the named manager until `found` gives a value;
/// the enclosing `within` fails the test if it never does.
fn wait_for<T>(
    rt: &Runtime,
    name: &str,
    mut found: impl FnMut(&custody::ManagerStats) -> Option<T>,
) -> T {
    loop {
        if let Some(v) = rt.stats().get(name).and_then(&mut found) {
            return v;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn service_time_percentiles_are_kept_for_a_sample(backend: Backend) {
    within("service time", move || {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let slow = rt.own("slow", ()).unwrap();
        assert_eq!(slow.handle().stats().service, None);
        for _ in 0..64 {
            slow.call(|_| thread::sleep(Duration::from_millis(1)))
                .unwrap();
        }
        // A call is answered from inside its handler, before the loop
        // records the handled message: join waits for that.
        slow.join().unwrap();
        let service = slow
            .handle()
            .stats()
            .service
            .expect("a sample of 64 messages");
        // One message in 16 is timed.
        assert_eq!(service.samples, 4, "{service:?}");
        // Every handler slept at least 1 ms (the bucket's middle is within 1/8).
        assert!(service.p50 >= Duration::from_micros(875), "{service:?}");
        assert!(service.p50 <= service.p99 && service.p99 <= service.max);
    });
}

fn a_stalled_manager_is_reported_after_its_threshold_and_cleared_after(backend: Backend) {
    within("stalled", move || {
        let threshold = Duration::from_millis(30);
        let rt = Runtime::builder()
            .backend(backend)
            .stall_after(threshold)
            .build()
            .unwrap();
        let (probe, _) = Probe::new();
        let h = rt.spawn("quick", probe).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        h.join().unwrap();
        let (probe, _) = Probe::new();
        let (stuck, latch) = blocked_probe(&rt, "stuck", probe);
        let stalled = wait_for(&rt, "stuck", |m| m.stalled);
        assert!(stalled.running_for >= threshold, "{stalled:?}");
        assert_eq!(stalled.message, 1, "the first message it started");
        // An idle manager is never stalled.
        assert_eq!(rt.stats().get("quick").unwrap().stalled, None);
        latch.open();
        stuck.join().unwrap();
        assert_eq!(rt.stats().get("stuck").unwrap().stalled, None);
    });
}

fn a_manager_stall_threshold_overrides_the_runtime_one(backend: Backend) {
    within("stall threshold per manager", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .stall_after(Duration::from_secs(3600))
            .build()
            .unwrap();
        let (go_patient, wait_patient) = std::sync::mpsc::channel::<()>();
        let patient = rt.own("patient", ()).unwrap();
        patient
            .cast(move |_| {
                let _ = wait_patient.recv();
            })
            .unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let eager = rt
            .manager("eager")
            .stall_after(Duration::from_millis(20))
            .own(())
            .unwrap();
        eager
            .cast(move |_| {
                let _ = wait.recv();
            })
            .unwrap();
        let stalled = wait_for(&rt, "eager", |m| m.stalled);
        assert!(stalled.running_for >= Duration::from_millis(20));
        // Blocked as long, but under the runtime's hour.
        assert_eq!(rt.stats().get("patient").unwrap().stalled, None);
        go.send(()).unwrap();
        go_patient.send(()).unwrap();
        eager.join().unwrap();
        patient.join().unwrap();
    });
}

fn a_growing_mailbox_is_reported_and_the_episode_ends_when_it_drains(backend: Backend) {
    within("growing", move || {
        let window = Duration::from_millis(40);
        let rt = Runtime::builder()
            .backend(backend)
            .growth_window(window)
            .build()
            .unwrap();
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "backlog", probe);
        let growing = wait_for(&rt, "backlog", |m| {
            h.tell(Msg::Add(1)).unwrap(); // arrivals, and nothing handled
            thread::sleep(Duration::from_millis(1));
            m.growing
        });
        assert!(growing.growing_for >= window, "{growing:?}");
        assert!(growing.to > growing.from, "{growing:?}");
        assert!(growing.arrived > growing.handled, "{growing:?}");
        assert_eq!(growing.handled, 0, "the manager is blocked");
        latch.open();
        h.join().unwrap();
        // Drained: back down to where the episode began, so it is over.
        assert_eq!(rt.stats().get("backlog").unwrap().growing, None);
        assert_eq!(h.stats().growing, None);
    });
}

fn a_steady_mailbox_is_not_reported_growing(backend: Backend) {
    within("steady", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .growth_window(Duration::from_millis(20))
            .build()
            .unwrap();
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "steady", probe);
        for _ in 0..5 {
            h.tell(Msg::Add(1)).unwrap();
        }
        // A flat depth over many windows: blocked, but not growing.
        thread::sleep(Duration::from_millis(200));
        let m = rt.stats().get("steady").cloned().unwrap();
        assert_eq!(m.queued, 5);
        assert_eq!(m.growing, None);
        latch.open();
        h.join().unwrap();
    });
}

fn a_manager_growth_window_overrides_the_runtime_one(backend: Backend) {
    within("growth window per manager", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .growth_window(Duration::from_secs(3600))
            .build()
            .unwrap();
        let (probe, _) = Probe::new();
        let (patient, patient_latch) = blocked_probe(&rt, "patient", probe);
        let (probe, _) = Probe::new();
        let eager = rt
            .manager("eager")
            .growth_window(Duration::from_millis(30))
            .spawn(probe)
            .unwrap();
        let eager_latch = crate::support::block(&eager);
        let growing = wait_for(&rt, "eager", |m| {
            eager.tell(Msg::Add(1)).unwrap();
            patient.tell(Msg::Add(1)).unwrap();
            thread::sleep(Duration::from_millis(1));
            m.growing
        });
        assert!(growing.growing_for >= Duration::from_millis(30));
        // Grown as much, but within the runtime's hour.
        assert_eq!(rt.stats().get("patient").unwrap().growing, None);
        eager_latch.open();
        patient_latch.open();
        eager.join().unwrap();
        patient.join().unwrap();
    });
}

fn refused_sends_are_counted(backend: Backend) {
    within("refused", move || {
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let (probe, _) = Probe::new();
        let full = rt
            .manager("full")
            .capacity(Capacity::bounded(1).unwrap())
            .spawn(probe)
            .unwrap();
        assert_eq!(rt.stats().get("full").unwrap().refused, 0);
        // Fill the bounded one behind a blocked handler, then overflow it.
        let (entered, is_in) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel();
        full.tell(Msg::BlockAndSignal(entered, wait)).unwrap();
        is_in.recv().unwrap();
        full.tell(Msg::Add(1)).unwrap();
        assert!(matches!(
            full.try_tell(Msg::Add(1)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(rt.stats().get("full").unwrap().refused, 1);
        go.send(()).unwrap();
        full.join().unwrap();
        full.stop();
        assert!(full.tell(Msg::Add(1)).is_err());
        assert_eq!(rt.stats().get("full").unwrap().refused, 2);
    });
}

fn the_stats_table_shows_a_stall(backend: Backend) {
    within("stall in the table", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .stall_after(Duration::from_millis(10))
            .build()
            .unwrap();
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "stuck", probe);
        wait_for(&rt, "stuck", |m| m.stalled);
        let table = rt.stats().to_string();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("stuck: stalled on message 1 for")),
            "{table}"
        );
        latch.open();
        h.join().unwrap();
    });
}

fn the_live_view_draws_every_manager_with_its_alerts(backend: Backend) {
    within("live view", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .stall_after(Duration::from_millis(10))
            .build()
            .unwrap();
        let busy = rt.own("busy-counter", 0u64).unwrap();
        for _ in 0..32 {
            busy.call(|n| *n += 1).unwrap();
        }
        busy.join().unwrap();
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "stuck", probe);
        wait_for(&rt, "stuck", |m| m.stalled);
        let mut screen = Vec::new();
        let options = TopOptions::new()
            .refresh(Duration::from_millis(10))
            .duration(Some(Duration::from_millis(30)));
        observe::top_to(&rt, &options, &mut screen).unwrap();
        let screen = String::from_utf8(screen).unwrap();
        // The last frame, after the last clear.
        let frame = screen.rsplit("\x1b[2J").next().unwrap();
        let row = |name: &str| {
            frame
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row for {name}: {frame}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let counter = row("busy-counter");
        assert_eq!(counter[1], "running");
        assert_eq!(counter[6], "32", "handled: {counter:?}");
        assert!(counter[4].ends_with('s'), "p50: {counter:?}");
        let stuck = row("stuck");
        assert_eq!(stuck[1], "running");
        assert!(stuck.iter().any(|w| w == "STALLED"), "{stuck:?}");
        latch.open();
        h.join().unwrap();
        rt.shutdown();
        assert_eq!(
            rt.stats().get("stuck").unwrap().state,
            ManagerState::Stopped
        );
    });
}
