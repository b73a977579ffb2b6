//! Promise 1: one resource, one thread.

use std::cell::Cell;
use std::thread;

use custody::Backend;

use crate::support::{Msg, Probe, runtime, within};

backend_tests!(
    every_hook_and_message_runs_on_one_thread,
    owner_runs_every_closure_on_one_thread,
    a_resource_that_is_not_sync_can_be_owned,
    manager_threads_are_named_after_the_manager,
);

fn every_hook_and_message_runs_on_one_thread(backend: Backend) {
    within("one thread", move || {
        let rt = runtime(backend);
        let (probe, log) = Probe::new();
        let h = rt.spawn("probe", probe).unwrap();
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                thread::spawn(move || {
                    for _ in 0..200 {
                        h.tell(Msg::Add(1)).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(h.ask(Msg::Get).unwrap(), 800);
        rt.shutdown();
        let log = log.lock().unwrap();
        assert!(log.threads.len() > 800);
        let first = log.threads[0];
        assert_ne!(first, thread::current().id());
        assert!(
            log.threads.iter().all(|t| *t == first),
            "a message or hook ran off the manager's thread"
        );
        assert_eq!(log.events.first().map(String::as_str), Some("started"));
        assert_eq!(log.events.last().map(String::as_str), Some("stopped"));
    });
}

fn owner_runs_every_closure_on_one_thread(backend: Backend) {
    within("owner thread", move || {
        let rt = runtime(backend);
        let owner = rt.own("ids", Vec::new()).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let owner = owner.clone();
                thread::spawn(move || {
                    for _ in 0..50 {
                        owner.cast(|v| v.push(thread::current().id())).unwrap();
                        owner.call(|v| v.push(thread::current().id())).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let ids = owner.call(|v| v.clone()).unwrap();
        assert_eq!(ids.len(), 400);
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert_ne!(ids[0], thread::current().id());
    });
}

fn a_resource_that_is_not_sync_can_be_owned(backend: Backend) {
    within("not sync", move || {
        let rt = runtime(backend);
        // Cell is Send but not Sync: sharing it needs an owner thread.
        let cell = rt.own("cell", Cell::new(0u32)).unwrap();
        for _ in 0..10 {
            cell.cast(|c| c.set(c.get() + 1)).unwrap();
        }
        assert_eq!(cell.call(|c| c.get()).unwrap(), 10);
    });
}

fn manager_threads_are_named_after_the_manager(backend: Backend) {
    within("thread names", move || {
        let rt = custody::Runtime::builder()
            .backend(backend)
            .thread_name_prefix("cust-")
            .build()
            .unwrap();
        let owner = rt.own("db", ()).unwrap();
        let name = owner
            .call(|_| thread::current().name().map(str::to_owned))
            .unwrap();
        assert_eq!(name.as_deref(), Some("cust-db"));
    });
}
