//! Promise 4: an ask always ends: a reply, Timeout, Stopped, Panicked,
//! Deadlock or NoReply, never a hang.

use std::thread;
use std::time::Duration;

use custody::{AskError, Backend};

use crate::support::{Msg, Probe, blocked_probe, quiet_panics, runtime, within};

backend_tests!(
    ask_gets_the_answer,
    ask_from_many_threads_gets_every_answer,
    ask_timeout_on_a_busy_manager_times_out,
    ask_after_stop_is_stopped,
    ask_discarded_by_an_immediate_stop_is_stopped,
    ask_whose_handler_panics_gets_the_panic_message,
    ask_whose_reply_is_dropped_gets_no_reply,
    a_manager_asking_itself_gets_deadlock_at_once,
    owner_call_that_panics_leaves_the_owner_usable,
    a_huge_timeout_waits_like_no_timeout,
    owner_calls_discarded_or_refused_end_with_stopped,
);

fn owner_calls_discarded_or_refused_end_with_stopped(backend: Backend) {
    within("owner call discarded", move || {
        let rt = runtime(backend);
        let owner = rt.own("o", 0u32).unwrap();
        let (busy, is_busy) = std::sync::mpsc::channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        owner
            .cast(move |_| {
                busy.send(()).unwrap();
                let _ = wait.recv_timeout(Duration::from_secs(30));
            })
            .unwrap();
        is_busy.recv().unwrap();
        let queued = {
            let owner = owner.clone();
            thread::spawn(move || owner.call(|n| *n))
        };
        while owner.handle().is_empty() {
            thread::yield_now();
        }
        thread::scope(|s| {
            let now = s.spawn(|| rt.shutdown_now());
            thread::sleep(Duration::from_millis(10));
            go.send(()).unwrap();
            assert_eq!(now.join().unwrap().total_unhandled(), 1);
        });
        assert!(matches!(
            queued.join().unwrap(),
            Err(AskError::Stopped { .. })
        ));
        assert!(matches!(owner.call(|n| *n), Err(AskError::Stopped { .. })));
        let refused = owner.cast(|n| *n += 1).unwrap_err();
        assert_eq!(format!("{:?}", refused.into_inner()), "Job::Cast(..)");
    });
}

fn ask_gets_the_answer(backend: Backend) {
    within("ask", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("a", probe).unwrap();
        h.tell(Msg::Add(41)).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 42);
    });
}

fn ask_from_many_threads_gets_every_answer(backend: Backend) {
    within("many askers", move || {
        let rt = runtime(backend);
        let owner = rt.own("n", 0u64).unwrap();
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let owner = owner.clone();
                thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..500 {
                        let now = owner
                            .call(|n| {
                                *n += 1;
                                *n
                            })
                            .unwrap();
                        assert!(now > last, "answers went backwards");
                        last = now;
                    }
                })
            })
            .collect();
        for a in askers {
            a.join().unwrap();
        }
        assert_eq!(owner.call(|n| *n).unwrap(), 4000);
    });
}

fn ask_timeout_on_a_busy_manager_times_out(backend: Backend) {
    within("ask timeout", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "busy", probe);
        let started = std::time::Instant::now();
        let err = h
            .ask_timeout(Msg::Get, Duration::from_millis(30))
            .unwrap_err();
        assert_eq!(
            err,
            AskError::Timeout {
                manager: "busy".into()
            }
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        latch.open();
        // The timed-out request is still handled; its answer is dropped.
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 0);
    });
}

fn ask_after_stop_is_stopped(backend: Backend) {
    within("ask after stop", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("gone", probe).unwrap();
        h.stop();
        assert_eq!(
            h.ask(Msg::Get).unwrap_err(),
            AskError::Stopped {
                manager: "gone".into()
            }
        );
        rt.shutdown();
        assert!(matches!(h.ask(Msg::Get), Err(AskError::Stopped { .. })));
    });
}

fn ask_discarded_by_an_immediate_stop_is_stopped(backend: Backend) {
    within("ask discarded", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let (h, latch) = blocked_probe(&rt, "cut", probe);
        let asker = {
            let h = h.clone();
            thread::spawn(move || h.ask(Msg::Get))
        };
        while h.is_empty() {
            thread::yield_now();
        }
        thread::scope(|s| {
            let now = s.spawn(|| rt.shutdown_now());
            thread::sleep(Duration::from_millis(10));
            latch.open();
            assert_eq!(now.join().unwrap().total_unhandled(), 1);
        });
        assert!(matches!(
            asker.join().unwrap(),
            Err(AskError::Stopped { .. })
        ));
    });
}

fn ask_whose_handler_panics_gets_the_panic_message(backend: Backend) {
    quiet_panics();
    within("ask panicked", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("p", probe).unwrap();
        let err = h
            .ask(|reply| Msg::PanicAsked(reply, "probe: no answer for you"))
            .unwrap_err();
        assert_eq!(
            err,
            AskError::Panicked {
                manager: "p".into(),
                message: "probe: no answer for you".into()
            }
        );
        // The manager carries on.
        h.tell(Msg::Add(5)).unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 5);
    });
}

fn ask_whose_reply_is_dropped_gets_no_reply(backend: Backend) {
    within("no reply", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("forgetful", probe).unwrap();
        assert_eq!(
            h.ask(Msg::DropReply).unwrap_err(),
            AskError::NoReply {
                manager: "forgetful".into()
            }
        );
    });
}

fn a_manager_asking_itself_gets_deadlock_at_once(backend: Backend) {
    within("self ask", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("narcissus", probe).unwrap();
        let inner = h.ask(Msg::AskSelf).unwrap();
        match inner {
            Err(AskError::Deadlock { cycle }) => {
                assert_eq!(cycle, vec!["narcissus".to_owned(), "narcissus".to_owned()]);
            }
            other => panic!("expected Deadlock, got {other:?}"),
        }
        let owner = rt.own("o", ()).unwrap();
        let again = owner.clone();
        let nested = owner.call(move |_| again.call(|_| 1)).unwrap();
        assert!(matches!(nested, Err(AskError::Deadlock { .. })));
    });
}

fn owner_call_that_panics_leaves_the_owner_usable(backend: Backend) {
    quiet_panics();
    within("owner panic", move || {
        let rt = runtime(backend);
        let owner = rt.own("v", vec![1, 2, 3]).unwrap();
        let err = owner
            .call::<(), _>(|v| {
                v.push(4);
                panic!("probe: after the push")
            })
            .unwrap_err();
        assert!(
            matches!(err, AskError::Panicked { ref message, .. } if message == "probe: after the push")
        );
        assert_eq!(owner.call(|v| v.len()).unwrap(), 4);
    });
}

fn a_huge_timeout_waits_like_no_timeout(backend: Backend) {
    within("huge timeout", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("h", probe).unwrap();
        h.tell(Msg::Add(2)).unwrap();
        assert_eq!(h.ask_timeout(Msg::Get, Duration::MAX).unwrap(), 2);
        h.join_timeout(Duration::MAX).unwrap();
        h.tell_timeout(Msg::Add(1), Duration::MAX).unwrap();
        let zero = h.ask_timeout(Msg::Get, Duration::ZERO);
        assert!(
            matches!(zero, Ok(3) | Err(AskError::Timeout { .. })),
            "a zero timeout answers or times out, got {zero:?}"
        );
    });
}
