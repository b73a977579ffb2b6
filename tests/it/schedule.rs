//! Scheduled messages: `tell_after`, `tell_every`, their guards, the report
//! when a scheduled message cannot be delivered, cancellation that frees the
//! message at once, and panics in user code on the timer thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use custody::{
    Backend, Context, Handle, Manager, ManagerState, Runtime, ScheduleError, ScheduleStatus,
    Scheduled,
};

use crate::support::{LIMIT, Latch, Msg, Probe, quiet_panics, runtime, within};

backend_tests!(
    tell_after_delivers_once_after_the_delay,
    a_cancelled_schedule_never_delivers,
    dropping_the_guard_cancels_and_detach_keeps_it,
    tell_every_delivers_until_cancelled,
    a_schedule_whose_target_stopped_is_refused,
    scheduling_for_a_stopped_manager_hands_the_message_back,
    a_zero_period_is_refused,
    pending_schedules_are_abandoned_at_shutdown,
    a_cancelled_message_is_dropped_at_once_not_at_its_due_time,
    a_panicking_factory_ends_its_schedule_as_panicked,
    panics_in_the_drop_of_scheduled_values_are_caught_and_counted,
    other_schedules_keep_being_delivered_after_user_code_panics,
    pending_messages_whose_drop_panics_are_abandoned_at_shutdown,
    an_immediate_shutdown_abandons_entries_still_queued_for_the_timers,
);

const HOUR: Duration = Duration::from_secs(3600);

fn wait_for(guard: &Scheduled, status: ScheduleStatus) {
    for _ in 0..20_000 {
        if guard.status() == status {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("still {:?}, expected {status:?}", guard.status());
}

fn tell_after_delivers_once_after_the_delay(backend: Backend) {
    within("tell_after", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let started = Instant::now();
        let guard = h
            .tell_after(Duration::from_millis(30), Msg::Add(7))
            .unwrap();
        assert_eq!(guard.status(), ScheduleStatus::Pending);
        wait_for(&guard, ScheduleStatus::Delivered);
        assert!(started.elapsed() >= Duration::from_millis(30));
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 7);
        assert_eq!(guard.delivered(), 1);
    });
}

fn a_cancelled_schedule_never_delivers(backend: Backend) {
    within("cancel", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let cancelled = h
            .tell_after(Duration::from_millis(20), Msg::Add(100))
            .unwrap();
        let marker = h
            .tell_after(Duration::from_millis(60), Msg::Add(1))
            .unwrap();
        cancelled.cancel();
        wait_for(&marker, ScheduleStatus::Delivered);
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 1);
        assert_eq!(cancelled.status(), ScheduleStatus::Cancelled);
        // Cancelling after the fact is a no-op.
        marker.cancel();
        assert_eq!(marker.status(), ScheduleStatus::Delivered);
    });
}

fn dropping_the_guard_cancels_and_detach_keeps_it(backend: Backend) {
    within("drop and detach", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        drop(
            h.tell_after(Duration::from_millis(10), Msg::Add(100))
                .unwrap(),
        );
        h.tell_after(Duration::from_millis(10), Msg::Add(5))
            .unwrap()
            .detach();
        let marker = h
            .tell_after(Duration::from_millis(50), Msg::Add(1))
            .unwrap();
        wait_for(&marker, ScheduleStatus::Delivered);
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 6);
    });
}

fn tell_every_delivers_until_cancelled(backend: Backend) {
    within("tell_every", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let every = h
            .tell_every(Duration::from_millis(2), || Msg::Add(1))
            .unwrap();
        while every.delivered() < 5 {
            thread::sleep(Duration::from_millis(1));
        }
        every.cancel();
        let delivered = every.delivered();
        // Let any tick already in flight land, then check nothing more comes.
        thread::sleep(Duration::from_millis(30));
        h.join().unwrap();
        let total = h.ask(Msg::Get).unwrap();
        assert!(total >= 5);
        assert_eq!(total, every.delivered());
        assert!(every.delivered() <= delivered + 1);
        assert_eq!(every.status(), ScheduleStatus::Cancelled);
    });
}

fn a_schedule_whose_target_stopped_is_refused(backend: Backend) {
    within("refused", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let guard = h
            .tell_after(Duration::from_millis(20), Msg::Add(1))
            .unwrap();
        h.stop();
        wait_for(&guard, ScheduleStatus::Refused);
        assert_eq!(guard.delivered(), 0);
    });
}

fn scheduling_for_a_stopped_manager_hands_the_message_back(backend: Backend) {
    within("schedule on stopped", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        h.stop();
        match h.tell_after(Duration::from_millis(1), Msg::Add(9)) {
            Err(ScheduleError::Stopped(Msg::Add(9))) => {}
            other => panic!("expected Stopped(Add(9)), got {other:?}"),
        }
        let err = h
            .tell_every(Duration::from_millis(1), || Msg::Add(1))
            .unwrap_err();
        assert!(matches!(err, ScheduleError::Stopped(_)));
        assert_eq!(
            err.to_string(),
            "scheduling a message for a stopped manager"
        );
    });
}

fn a_zero_period_is_refused(backend: Backend) {
    within("zero period", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let err = h.tell_every(Duration::ZERO, || Msg::Add(1)).unwrap_err();
        assert!(matches!(err, ScheduleError::ZeroPeriod(_)));
        let mut make = err.into_inner();
        assert!(matches!(make(), Msg::Add(1)));
    });
}

fn pending_schedules_are_abandoned_at_shutdown(backend: Backend) {
    within("abandoned", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let later = h
            .tell_after(Duration::from_secs(3600), Msg::Add(1))
            .unwrap();
        rt.shutdown();
        assert_eq!(later.status(), ScheduleStatus::Abandoned);
        assert!(matches!(
            h.tell_after(Duration::from_millis(1), Msg::Add(1)),
            Err(ScheduleError::Stopped(_))
        ));
    });
}

/// A scheduled message that reports its drop on a channel, and whose `Drop`
/// panics while it is armed (a handled one is disarmed).
struct Tracked {
    label: &'static str,
    dropped: Option<mpsc::Sender<&'static str>>,
    armed: bool,
}

impl Tracked {
    fn signalling(label: &'static str, dropped: &mpsc::Sender<&'static str>) -> Tracked {
        Tracked {
            label,
            dropped: Some(dropped.clone()),
            armed: false,
        }
    }

    fn armed(label: &'static str) -> Tracked {
        Tracked {
            label,
            dropped: None,
            armed: true,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(dropped) = &self.dropped {
            let _ = dropped.send(self.label);
        }
        // Not while unwinding already: a second panic would abort the binary.
        if self.armed && !thread::panicking() {
            panic!("probe: the drop of {} panicked", self.label);
        }
    }
}

/// Handles `Tracked` messages by disarming them.
struct Sink;

impl Manager for Sink {
    type Msg = Tracked;

    fn handle(&mut self, mut msg: Tracked, _ctx: &mut Context<'_, Tracked>) {
        msg.armed = false;
    }
}

fn timers_panicked(rt: &Runtime) -> u64 {
    rt.stats().get("custody.timers").map_or(0, |m| m.panicked)
}

/// Messages the timer manager has handled (new entries and cancels).
fn timers_handled(rt: &Runtime) -> u64 {
    rt.stats().get("custody.timers").map_or(0, |m| m.handled)
}

fn wait_for_timers_panicked(rt: &Runtime, n: u64) {
    while timers_panicked(rt) < n {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(timers_panicked(rt), n);
}

/// Blocks the timer manager's thread inside a `tell_every` factory until the
/// latch opens; returns once it is blocked, so later entries queue up.
fn hold_timers(target: &Handle<Msg>) -> (Scheduled, Latch) {
    let (latch, wait) = Latch::new();
    let (reached_tx, reached_rx) = mpsc::channel();
    let mut first = Some((reached_tx, wait));
    let guard = target
        .tell_every(Duration::from_millis(1), move || {
            if let Some((reached, wait)) = first.take() {
                let _ = reached.send(());
                let _ = wait.recv_timeout(LIMIT);
            }
            Msg::Add(0)
        })
        .unwrap();
    reached_rx
        .recv_timeout(LIMIT)
        .expect("the timer thread reached the blocking factory");
    (guard, latch)
}

fn a_cancelled_message_is_dropped_at_once_not_at_its_due_time(backend: Backend) {
    within("cancel frees the message", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let probe = rt.spawn("probe", probe).unwrap();
        let sink = rt.spawn("sink", Sink).unwrap();
        let (dropped, drops) = mpsc::channel();
        // Each wait below ends only when the timer manager drops the value;
        // a bug that keeps it until its due time fails after 60 s.

        // Cancelled once the timer manager holds the entry.
        let held = sink
            .tell_after(HOUR, Tracked::signalling("held", &dropped))
            .unwrap();
        while timers_handled(&rt) < 1 {
            thread::sleep(Duration::from_millis(1));
        }
        held.cancel();
        assert_eq!(drops.recv().unwrap(), "held");
        assert_eq!(held.status(), ScheduleStatus::Cancelled);

        // Cancelled while the entry is still queued for the timer manager.
        let (holding, latch) = hold_timers(&probe);
        drop(
            sink.tell_after(HOUR, Tracked::signalling("queued", &dropped))
                .unwrap(),
        );
        latch.open();
        assert_eq!(drops.recv().unwrap(), "queued");
        holding.cancel();

        // A periodic schedule's factory (and what it holds) goes the same way.
        let held_by_factory = Tracked::signalling("factory", &dropped);
        let every = sink
            .tell_every(HOUR, move || {
                let _ = &held_by_factory;
                Tracked::armed("never made")
            })
            .unwrap();
        drop(every);
        assert_eq!(drops.recv().unwrap(), "factory");
        assert_eq!(timers_panicked(&rt), 0);
    });
}

fn a_panicking_factory_ends_its_schedule_as_panicked(backend: Backend) {
    within("panicking factory", move || {
        quiet_panics();
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let every = h
            .tell_every(Duration::from_millis(2), move || {
                if counted.fetch_add(1, Ordering::SeqCst) == 2 {
                    panic!("probe: the factory broke");
                }
                Msg::Add(1)
            })
            .unwrap();
        wait_for(&every, ScheduleStatus::Panicked);
        assert_eq!(every.delivered(), 2);
        assert_eq!(
            every.panic_message().as_deref(),
            Some("probe: the factory broke")
        );
        assert_eq!(timers_panicked(&rt), 1);
        // The schedule ended: ten periods later the factory was not called
        // again (the marker is fired by the same timer thread, in time order).
        let marker = h
            .tell_after(Duration::from_millis(20), Msg::Add(100))
            .unwrap();
        wait_for(&marker, ScheduleStatus::Delivered);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 102);
        assert_eq!(every.status(), ScheduleStatus::Panicked);
    });
}

fn panics_in_the_drop_of_scheduled_values_are_caught_and_counted(backend: Backend) {
    within("panicking drops", move || {
        quiet_panics();
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let probe = rt.spawn("probe", probe).unwrap();
        let sink = rt.spawn("sink", Sink).unwrap();
        let (held, latch) = hold_timers(&probe);
        // Both come due while the timer thread is held, and are refused once
        // it is free: the refused messages are dropped on the timer thread.
        let refused_once = sink
            .tell_after(
                Duration::from_millis(1),
                Tracked::armed("refused tell_after"),
            )
            .unwrap();
        let refused_every = sink
            .tell_every(Duration::from_millis(1), || {
                Tracked::armed("refused tell_every")
            })
            .unwrap();
        // Cancelled: the message, and the factory with what it holds.
        let cancelled_once = sink
            .tell_after(HOUR, Tracked::armed("cancelled tell_after"))
            .unwrap();
        let held_by_factory = Tracked::armed("cancelled tell_every's factory");
        let cancelled_every = sink
            .tell_every(HOUR, move || {
                let _ = &held_by_factory;
                Tracked {
                    label: "never made",
                    dropped: None,
                    armed: false,
                }
            })
            .unwrap();
        sink.stop();
        cancelled_once.cancel();
        cancelled_every.cancel();
        latch.open();
        wait_for(&refused_once, ScheduleStatus::Refused);
        wait_for(&refused_every, ScheduleStatus::Refused);
        wait_for_timers_panicked(&rt, 4);
        assert_eq!(cancelled_once.status(), ScheduleStatus::Cancelled);
        assert_eq!(cancelled_every.status(), ScheduleStatus::Cancelled);
        held.cancel();
        let timers = rt.stats();
        let timers = timers.get("custody.timers").unwrap();
        assert_eq!(timers.state, ManagerState::Running);
    });
}

fn other_schedules_keep_being_delivered_after_user_code_panics(backend: Backend) {
    within("others carry on", move || {
        quiet_panics();
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("target", probe).unwrap();
        let sink = rt.spawn("sink", Sink).unwrap();
        let steady = h
            .tell_every(Duration::from_millis(2), || Msg::Add(1))
            .unwrap();
        let broken = h
            .tell_every(Duration::from_millis(1), || -> Msg {
                panic!("probe: the factory broke")
            })
            .unwrap();
        drop(sink.tell_after(HOUR, Tracked::armed("cancelled")).unwrap());
        wait_for(&broken, ScheduleStatus::Panicked);
        wait_for_timers_panicked(&rt, 2);
        // The schedule that was running goes on, and new ones are served.
        let before = steady.delivered();
        while steady.delivered() < before + 3 {
            thread::sleep(Duration::from_millis(1));
        }
        let later = h
            .tell_after(Duration::from_millis(5), Msg::Add(100))
            .unwrap();
        wait_for(&later, ScheduleStatus::Delivered);
        steady.cancel();
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), steady.delivered() + 100);
        assert_eq!(steady.status(), ScheduleStatus::Cancelled);
    });
}

fn pending_messages_whose_drop_panics_are_abandoned_at_shutdown(backend: Backend) {
    within("panicking drops at shutdown", move || {
        quiet_panics();
        let rt = runtime(backend);
        let sink = rt.spawn("sink", Sink).unwrap();
        let first = sink.tell_after(HOUR, Tracked::armed("first")).unwrap();
        let second = sink.tell_after(HOUR, Tracked::armed("second")).unwrap();
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 0);
        assert_eq!(first.status(), ScheduleStatus::Abandoned);
        assert_eq!(second.status(), ScheduleStatus::Abandoned);
        assert_eq!(timers_panicked(&rt), 2);
    });
}

fn an_immediate_shutdown_abandons_entries_still_queued_for_the_timers(backend: Backend) {
    within("shutdown_now with queued entries", move || {
        quiet_panics();
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let probe = rt.spawn("probe", probe).unwrap();
        let sink = rt.spawn("sink", Sink).unwrap();
        let (_held, latch) = hold_timers(&probe);
        // Queued in the timer manager's mailbox behind the blocked factory.
        let queued: Vec<Scheduled> = ["one", "two", "three"]
            .into_iter()
            .map(|label| sink.tell_after(HOUR, Tracked::armed(label)).unwrap())
            .collect();
        thread::scope(|s| {
            s.spawn(|| {
                // Free the timer thread once the immediate stop has begun, so
                // it finds its mailbox to discard.
                while rt.stats().get("custody.timers").map(|m| m.state)
                    == Some(ManagerState::Running)
                {
                    thread::sleep(Duration::from_millis(1));
                }
                latch.open();
            });
            rt.shutdown_now();
        });
        for guard in &queued {
            assert_eq!(guard.status(), ScheduleStatus::Abandoned);
        }
        assert_eq!(timers_panicked(&rt), 3);
    });
}
