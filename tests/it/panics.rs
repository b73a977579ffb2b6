//! Promise 5: a panic in a handler is caught, traced, counted; the manager,
//! the other managers and the caller carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use custody::{Backend, Context, Manager};

use crate::support::{Msg, Probe, quiet_panics, runtime, within};

backend_tests!(
    a_panicking_handler_is_counted_and_the_manager_carries_on,
    other_managers_are_unaffected_by_a_panic,
    panicking_hooks_are_caught,
);

fn a_panicking_handler_is_counted_and_the_manager_carries_on(backend: Backend) {
    quiet_panics();
    within("panic counted", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("p", probe).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        h.tell(Msg::Panic("probe: first")).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        h.tell(Msg::Panic("probe: second")).unwrap();
        h.tell(Msg::Add(1)).unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 3);
        h.join().unwrap();
        let stats = h.stats();
        assert_eq!(stats.panicked, 2);
        assert_eq!(stats.handled, 6);
    });
}

fn other_managers_are_unaffected_by_a_panic(backend: Backend) {
    quiet_panics();
    within("others unaffected", move || {
        let rt = runtime(backend);
        let (bad, _) = Probe::new();
        let (good, _) = Probe::new();
        let bad = rt.spawn("bad", bad).unwrap();
        let good = rt.spawn("good", good).unwrap();
        let noisy = {
            let bad = bad.clone();
            thread::spawn(move || {
                for _ in 0..200 {
                    bad.tell(Msg::Panic("probe: again")).unwrap();
                }
            })
        };
        for _ in 0..200 {
            good.tell(Msg::Add(1)).unwrap();
        }
        noisy.join().unwrap();
        assert_eq!(good.ask(Msg::Get).unwrap(), 200);
        bad.join().unwrap();
        assert_eq!(rt.stats().get("bad").unwrap().panicked, 200);
        assert_eq!(rt.stats().get("good").unwrap().panicked, 0);
    });
}

struct HookPanics {
    handled: u32,
    idles: Arc<AtomicU64>,
}

impl Manager for HookPanics {
    type Msg = custody::Reply<u32>;

    fn started(&mut self, _ctx: &mut Context<'_, Self::Msg>) {
        panic!("probe: in started");
    }

    fn handle(&mut self, reply: Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
        self.handled += 1;
        reply.send(self.handled);
    }

    fn idle(&mut self, _ctx: &mut Context<'_, Self::Msg>) {
        self.idles.fetch_add(1, Ordering::SeqCst);
        panic!("probe: in idle");
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Self::Msg>) {
        panic!("probe: in stopped");
    }
}

fn panicking_hooks_are_caught(backend: Backend) {
    quiet_panics();
    within("hook panics", move || {
        let rt = runtime(backend);
        let idles = Arc::new(AtomicU64::new(0));
        let h = rt
            .spawn(
                "hooks",
                HookPanics {
                    handled: 0,
                    idles: Arc::clone(&idles),
                },
            )
            .unwrap();
        assert_eq!(h.ask(|r| r).unwrap(), 1);
        assert_eq!(h.ask(|r| r).unwrap(), 2);
        h.join().unwrap();
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 0);
        assert!(h.has_exited());
        // started, every idle, and stopped all panicked; the manager went on.
        let idles = idles.load(Ordering::SeqCst);
        assert!(idles >= 1);
        assert_eq!(h.stats().panicked, 2 + idles, "{:?}", h.stats());
        assert_eq!(h.stats().handled, 2);
    });
}
