//! Supervision: the Resume, Restart and Stop panic policies, and `recover`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use custody::{AskError, Backend, Context, JoinError, Manager, PanicPolicy, Reply, SpawnError};

use crate::support::{Latch, quiet_panics, runtime, within};

enum Msg {
    Add(u64),
    Get(Reply<u64>),
    Panic,
    PanicAsked(Reply<u64>),
    /// Signals that the manager reached it, then blocks until the latch opens.
    Block(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>),
}

/// Records its lifecycle in a shared log; instance numbers tell restarts apart.
struct Tracked {
    instance: u64,
    total: u64,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tracked {
    fn note(&self, what: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{what} {}", self.instance));
    }
}

impl Manager for Tracked {
    type Msg = Msg;

    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Add(n) => self.total += n,
            Msg::Get(reply) => reply.send(self.total),
            Msg::Panic => panic!("probe: told to panic"),
            Msg::PanicAsked(_reply) => panic!("probe: asked to panic"),
            Msg::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    fn started(&mut self, _ctx: &mut Context<'_, Msg>) {
        self.note("started");
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Msg>) {
        self.note("stopped");
    }

    fn recover(&mut self, panic: &str, _ctx: &mut Context<'_, Msg>) {
        self.note(&format!("recover({panic})"));
    }
}

/// Blocks the manager; returns once it is inside the blocking message.
fn block(h: &custody::Handle<Msg>) -> Latch {
    let (latch, wait) = Latch::new();
    let (reached, is_reached) = std::sync::mpsc::channel();
    h.tell(Msg::Block(reached, wait)).unwrap();
    is_reached
        .recv_timeout(crate::support::LIMIT)
        .expect("manager reached the blocking message");
    latch
}

fn factory(log: &Arc<Mutex<Vec<String>>>) -> impl FnMut() -> Tracked + Send + 'static {
    let log = Arc::clone(log);
    let mut instance = 0;
    move || {
        instance += 1;
        Tracked {
            instance,
            total: 0,
            log: Arc::clone(&log),
        }
    }
}

backend_tests!(
    resume_keeps_the_state_and_runs_recover_first,
    restart_replaces_the_instance_from_the_factory,
    restart_stops_for_good_past_its_intensity,
    stop_discards_the_queue_and_answers_every_asker,
    a_panicking_factory_stops_the_manager,
    restart_without_a_factory_is_refused,
    ten_thousand_panicking_asks_are_all_answered,
);

fn resume_keeps_the_state_and_runs_recover_first(backend: Backend) {
    quiet_panics();
    within("resume", move || {
        let rt = runtime(backend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = rt.manager("r").spawn_with(factory(&log)).unwrap();
        h.tell(Msg::Add(5)).unwrap();
        h.tell(Msg::Panic).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 6);
        rt.shutdown();
        assert_eq!(
            *log.lock().unwrap(),
            vec!["started 1", "recover(probe: told to panic) 1", "stopped 1"]
        );
    });
}

fn restart_replaces_the_instance_from_the_factory(backend: Backend) {
    quiet_panics();
    within("restart", move || {
        let rt = runtime(backend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = rt
            .manager("r")
            .on_panic(PanicPolicy::Restart {
                max_restarts: 5,
                within: Duration::from_secs(60),
            })
            .spawn_with(factory(&log))
            .unwrap();
        h.tell(Msg::Add(5)).unwrap();
        let err = h.ask(Msg::PanicAsked).unwrap_err();
        assert!(
            matches!(err, AskError::Panicked { ref message, .. } if message == "probe: asked to panic")
        );
        h.tell(Msg::Add(1)).unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 1, "the state was not fresh");
        h.join().unwrap();
        assert_eq!(h.stats().restarts, 1);
        rt.shutdown();
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "started 1",
                "recover(probe: asked to panic) 1",
                "stopped 1",
                "started 2",
                "stopped 2"
            ]
        );
    });
}

fn restart_stops_for_good_past_its_intensity(backend: Backend) {
    quiet_panics();
    within("intensity", move || {
        let rt = runtime(backend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = rt
            .manager("r")
            .on_panic(PanicPolicy::Restart {
                max_restarts: 2,
                within: Duration::from_secs(60),
            })
            .spawn_with(factory(&log))
            .unwrap();
        let latch = block(&h);
        for _ in 0..3 {
            h.tell(Msg::Panic).unwrap();
        }
        for _ in 0..4 {
            h.tell(Msg::Add(1)).unwrap();
        }
        let asker = {
            let h = h.clone();
            thread::spawn(move || h.ask(Msg::Get))
        };
        while h.len() < 8 {
            thread::yield_now();
        }
        latch.open();
        assert!(matches!(
            asker.join().unwrap(),
            Err(AskError::Stopped { .. })
        ));
        assert!(matches!(
            h.join(),
            Err(JoinError::Stopped { unhandled: 5, .. })
        ));
        assert_eq!(h.stats().restarts, 2);
        assert_eq!(h.stats().panicked, 3);
        assert!(h.is_stopped());
        assert!(h.tell(Msg::Add(1)).is_err());
    });
}

fn stop_discards_the_queue_and_answers_every_asker(backend: Backend) {
    quiet_panics();
    within("stop policy", move || {
        let rt = runtime(backend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = rt
            .manager("s")
            .on_panic(PanicPolicy::Stop)
            .spawn_with(factory(&log))
            .unwrap();
        let latch = block(&h);
        let panicker = {
            let h = h.clone();
            thread::spawn(move || h.ask(Msg::PanicAsked))
        };
        while h.is_empty() {
            thread::yield_now();
        }
        let queued_asker = {
            let h = h.clone();
            thread::spawn(move || h.ask(Msg::Get))
        };
        while h.len() < 2 {
            thread::yield_now();
        }
        h.tell(Msg::Add(1)).unwrap();
        latch.open();
        assert!(matches!(
            panicker.join().unwrap(),
            Err(AskError::Panicked { .. })
        ));
        assert!(matches!(
            queued_asker.join().unwrap(),
            Err(AskError::Stopped { .. })
        ));
        assert!(matches!(
            h.join(),
            Err(JoinError::Stopped { unhandled: 2, .. })
        ));
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 2);
        assert_eq!(
            *log.lock().unwrap(),
            vec!["started 1", "recover(probe: asked to panic) 1", "stopped 1"]
        );
    });
}

fn a_panicking_factory_stops_the_manager(backend: Backend) {
    quiet_panics();
    within("factory panics", move || {
        let rt = runtime(backend);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let owner = rt
            .manager("o")
            .on_panic(PanicPolicy::Restart {
                max_restarts: 10,
                within: Duration::from_secs(60),
            })
            .own_with(move || {
                if counted.fetch_add(1, Ordering::SeqCst) > 0 {
                    panic!("probe: factory failed");
                }
                0u32
            })
            .unwrap();
        assert!(owner.call(|_| -> u32 { panic!("probe: first") }).is_err());
        owner.join().ok();
        assert!(matches!(owner.call(|n| *n), Err(AskError::Stopped { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(owner.handle().is_stopped());
    });
}

fn restart_without_a_factory_is_refused(backend: Backend) {
    within("no factory", move || {
        let rt = runtime(backend);
        let policy = PanicPolicy::Restart {
            max_restarts: 1,
            within: Duration::from_secs(1),
        };
        let err = rt.manager("x").on_panic(policy).own(0u8).unwrap_err();
        assert!(matches!(err, SpawnError::NoFactory(ref n) if n == "x"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut make = factory(&log);
        let err = rt.manager("y").on_panic(policy).spawn(make()).unwrap_err();
        assert!(matches!(err, SpawnError::NoFactory(_)));
    });
}

fn ten_thousand_panicking_asks_are_all_answered(backend: Backend) {
    quiet_panics();
    within("10^4 panics", move || {
        let rt = runtime(backend);
        let log = Arc::new(Mutex::new(Vec::new()));
        let h = rt
            .manager("p")
            .on_panic(PanicPolicy::Restart {
                max_restarts: u32::MAX,
                within: Duration::from_secs(1),
            })
            .spawn_with(factory(&log))
            .unwrap();
        let askers: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                thread::spawn(move || {
                    (0..2_500)
                        .filter(|_| {
                            matches!(h.ask(Msg::PanicAsked), Err(AskError::Panicked { .. }))
                        })
                        .count()
                })
            })
            .collect();
        let answered: usize = askers.into_iter().map(|a| a.join().unwrap()).sum();
        assert_eq!(answered, 10_000);
        h.join().unwrap();
        assert_eq!(h.stats().panicked, 10_000);
        assert_eq!(h.stats().restarts, 10_000);
    });
}
