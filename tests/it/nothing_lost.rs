//! Promise 2: nothing accepted is lost; a refused message comes back.

use std::time::Duration;

use custody::{Backend, Capacity, SendTimeoutError, TrySendError};

use crate::support::{Msg, Probe, block, blocked_probe, runtime, within};

backend_tests!(
    every_accepted_tell_is_handled,
    a_tell_after_stop_hands_the_message_back,
    try_tell_on_a_full_mailbox_hands_the_message_back,
    tell_timeout_on_a_full_mailbox_hands_the_message_back_and_it_is_never_handled,
    tell_blocks_while_full_then_goes_through,
    messages_queued_before_a_graceful_stop_are_handled,
    shutdown_now_counts_what_it_discards,
);

fn every_accepted_tell_is_handled(backend: Backend) {
    within("accepted tells", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("sum", probe).unwrap();
        let mut expected = 0;
        for n in 1..=1000 {
            h.tell(Msg::Add(n)).unwrap();
            expected += n;
        }
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), expected);
    });
}

fn a_tell_after_stop_hands_the_message_back(backend: Backend) {
    within("tell after stop", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("stopped", probe).unwrap();
        h.stop();
        let err = h.tell(Msg::Add(7)).unwrap_err();
        assert!(matches!(err.into_inner(), Msg::Add(7)));
        match h.try_tell(Msg::Add(8)) {
            Err(TrySendError::Stopped(Msg::Add(8))) => {}
            other => panic!("expected Stopped(Add(8)), got {other:?}"),
        }
        match h.tell_timeout(Msg::Add(9), Duration::from_millis(10)) {
            Err(SendTimeoutError::Stopped(Msg::Add(9))) => {}
            other => panic!("expected Stopped(Add(9)), got {other:?}"),
        }
    });
}

fn try_tell_on_a_full_mailbox_hands_the_message_back(backend: Backend) {
    within("try_tell full", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt
            .manager("full")
            .capacity(Capacity::bounded(2).unwrap())
            .spawn(probe)
            .unwrap();
        let latch = block(&h);
        h.try_tell(Msg::Add(1)).unwrap();
        h.try_tell(Msg::Add(2)).unwrap();
        match h.try_tell(Msg::Add(4)) {
            Err(TrySendError::Full(Msg::Add(4))) => {}
            other => panic!("expected Full(Add(4)), got {other:?}"),
        }
        latch.open();
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 3);
    });
}

fn tell_timeout_on_a_full_mailbox_hands_the_message_back_and_it_is_never_handled(backend: Backend) {
    within("tell_timeout full", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt
            .manager("full")
            .capacity(Capacity::bounded(1).unwrap())
            .spawn(probe)
            .unwrap();
        let latch = block(&h);
        h.tell(Msg::Add(1)).unwrap();
        let started = std::time::Instant::now();
        match h.tell_timeout(Msg::Add(100), Duration::from_millis(50)) {
            Err(SendTimeoutError::Timeout(Msg::Add(100))) => {}
            other => panic!("expected Timeout(Add(100)), got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            h.unfinished(),
            2,
            "the refused message must not stay counted"
        );
        latch.open();
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 1);
    });
}

fn tell_blocks_while_full_then_goes_through(backend: Backend) {
    within("tell blocks", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt
            .manager("full")
            .capacity(Capacity::bounded(1).unwrap())
            .spawn(probe)
            .unwrap();
        let latch = block(&h);
        h.tell(Msg::Add(1)).unwrap();
        let sender = {
            let h = h.clone();
            std::thread::spawn(move || h.tell(Msg::Add(2)).is_ok())
        };
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !sender.is_finished(),
            "tell returned while the mailbox was full"
        );
        latch.open();
        assert!(sender.join().unwrap());
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 3);
    });
}

fn messages_queued_before_a_graceful_stop_are_handled(backend: Backend) {
    within("graceful stop drains", move || {
        let rt = runtime(backend);
        let (probe, log) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "drain", probe);
        for _ in 0..100 {
            h.tell(Msg::Add(1)).unwrap();
        }
        h.stop();
        assert!(h.tell(Msg::Add(1000)).is_err());
        latch.open();
        h.join().unwrap();
        rt.shutdown();
        assert!(h.has_exited());
        let log = log.lock().unwrap();
        assert_eq!(log.events.last().map(String::as_str), Some("stopped"));
        assert_eq!(rt.stats().get("drain").unwrap().handled, 101);
    });
}

fn shutdown_now_counts_what_it_discards(backend: Backend) {
    within("shutdown_now", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "busy", probe);
        for _ in 0..25 {
            h.tell(Msg::Add(1)).unwrap();
        }
        let report = std::thread::scope(|s| {
            let now = s.spawn(|| rt.shutdown_now());
            std::thread::sleep(Duration::from_millis(20));
            latch.open();
            now.join().unwrap()
        });
        assert_eq!(report.total_unhandled(), 25);
        assert_eq!(report.managers[0].name, "busy");
        assert_eq!(report.managers[0].unhandled, 25);
        assert!(h.has_exited());
    });
}
