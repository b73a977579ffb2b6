//! Scheduled messages: `tell_after`, `tell_every`, their guards, and the
//! report when a scheduled message cannot be delivered.

use std::thread;
use std::time::{Duration, Instant};

use custody::{Backend, ScheduleError, ScheduleStatus, Scheduled};

use crate::support::{Msg, Probe, runtime, within};

backend_tests!(
    tell_after_delivers_once_after_the_delay,
    a_cancelled_schedule_never_delivers,
    dropping_the_guard_cancels_and_detach_keeps_it,
    tell_every_delivers_until_cancelled,
    a_schedule_whose_target_stopped_is_refused,
    scheduling_for_a_stopped_manager_hands_the_message_back,
    a_zero_period_is_refused,
    pending_schedules_are_abandoned_at_shutdown,
);

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
