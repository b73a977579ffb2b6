//! Fuzz mode keeps every promise while it shakes the timing.

use std::thread;

use custody::{Backend, Runtime, fuzz};

use crate::support::{Msg, Probe, within};

backend_tests!(a_fuzzing_runtime_loses_nothing);

fn a_fuzzing_runtime_loses_nothing(backend: Backend) {
    within("fuzz", move || {
        let rt = Runtime::builder()
            .backend(backend)
            .fuzz(7)
            .fuzz_max_pause(std::time::Duration::from_micros(50))
            .build()
            .unwrap();
        assert_eq!(fuzz::seed(), Some(7));
        let (probe, _) = Probe::new();
        let h = rt.spawn("fuzzed", probe).unwrap();
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                thread::spawn(move || {
                    for _ in 0..250 {
                        h.tell(Msg::Add(1)).unwrap();
                        fuzz::point();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 1000);
    });
}
