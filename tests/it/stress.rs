//! Stress: many producers, 10^5+ messages, a graceful stop in the middle.
//! Every `Ok` send is handled and every refused one is handed back, exactly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use custody::{AskError, Backend, Capacity};

use crate::support::{Msg, Probe, runtime, within};

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 30_000;

backend_tests!(
    graceful_stop_mid_stream_unbounded,
    graceful_stop_mid_stream_bounded,
    asks_racing_a_stop_all_end,
    mixed_tell_ask_join_from_many_threads,
    mixed_traffic_with_panics_restarts_and_a_random_stop,
);

fn graceful_stop_mid_stream(backend: Backend, capacity: Capacity) {
    within("stop mid stream", move || {
        let rt = runtime(backend);
        let (probe, log) = Probe::new();
        let h = rt.manager("sink").capacity(capacity).spawn(probe).unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let accepted_count = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let h = h.clone();
                let accepted = Arc::clone(&accepted);
                let accepted_count = Arc::clone(&accepted_count);
                let refused = Arc::clone(&refused);
                thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        // Producer 0 stops the manager halfway through its own
                        // stream, while the others are still sending.
                        if p == 0 && i == PER_PRODUCER / 2 {
                            h.stop();
                        }
                        // Distinct values make the sums a multiset check.
                        let value = p * PER_PRODUCER + i + 1;
                        let sent = match i % 3 {
                            0 => h.tell(Msg::Add(value)).map_err(|e| e.into_inner()),
                            1 => h.try_tell(Msg::Add(value)).map_err(|e| e.into_inner()),
                            _ => h
                                .tell_timeout(Msg::Add(value), std::time::Duration::from_millis(1))
                                .map_err(|e| e.into_inner()),
                        };
                        match sent {
                            Ok(()) => {
                                accepted.fetch_add(value, Ordering::Relaxed);
                                accepted_count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(Msg::Add(back)) => {
                                assert_eq!(back, value, "a different message came back");
                                refused.fetch_add(value, Ordering::Relaxed);
                            }
                            Err(_) => panic!("a different kind of message came back"),
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        h.join().unwrap();
        rt.shutdown();
        let all: u64 = (1..=PRODUCERS * PER_PRODUCER).sum();
        let accepted = accepted.load(Ordering::Relaxed);
        let refused = refused.load(Ordering::Relaxed);
        assert_eq!(
            accepted + refused,
            all,
            "a message was neither accepted nor handed back"
        );
        let stats = h.stats();
        assert_eq!(stats.handled, accepted_count.load(Ordering::Relaxed));
        assert_eq!(stats.unfinished, 0);
        assert!(refused > 0, "sends after the stop were accepted");
        assert_eq!(
            log.lock().unwrap().total,
            accepted,
            "handled values differ from accepted ones"
        );
    });
}

fn graceful_stop_mid_stream_unbounded(backend: Backend) {
    graceful_stop_mid_stream(backend, Capacity::Unbounded);
}

fn graceful_stop_mid_stream_bounded(backend: Backend) {
    graceful_stop_mid_stream(backend, Capacity::bounded(64).unwrap());
}

fn asks_racing_a_stop_all_end(backend: Backend) {
    within("asks racing stop", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("asked", probe).unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let h = h.clone();
                let answered = Arc::clone(&answered);
                thread::spawn(move || {
                    for _ in 0..2_000 {
                        match h.ask(Msg::Get) {
                            Ok(_) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(AskError::Stopped { .. }) => return,
                            Err(other) => panic!("unexpected ask error {other}"),
                        }
                    }
                })
            })
            .collect();
        while answered.load(Ordering::Relaxed) < 2_000 {
            thread::yield_now();
        }
        h.stop();
        for a in askers {
            a.join().unwrap();
        }
        h.join().unwrap();
        assert_eq!(h.stats().handled, answered.load(Ordering::Relaxed));
    });
}

fn mixed_tell_ask_join_from_many_threads(backend: Backend) {
    within("mixed", move || {
        let rt = runtime(backend);
        let (probe, _) = Probe::new();
        let h = rt.spawn("mixed", probe).unwrap();
        let workers: Vec<_> = (0..6u64)
            .map(|w| {
                let h = h.clone();
                thread::spawn(move || {
                    let mut mine = 0;
                    for i in 0..5_000u64 {
                        h.tell(Msg::Add(1)).unwrap();
                        mine += 1;
                        match (w + i) % 500 {
                            0 => {
                                let seen = h.ask(Msg::Get).unwrap();
                                assert!(
                                    seen >= mine,
                                    "ask saw {seen}, this thread alone sent {mine}"
                                );
                            }
                            250 => h.join().unwrap(),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        h.join().unwrap();
        assert_eq!(h.ask(Msg::Get).unwrap(), 30_000);
    });
}

/// A manager that panics on request, restarted from a factory each time.
struct Fragile {
    total: u64,
}

enum FragileMsg {
    Add(u64),
    Get(custody::Reply<u64>),
    Panic,
    PanicAsked(custody::Reply<u64>),
}

impl custody::Manager for Fragile {
    type Msg = FragileMsg;
    fn handle(&mut self, msg: FragileMsg, _ctx: &mut custody::Context<'_, FragileMsg>) {
        match msg {
            FragileMsg::Add(n) => self.total += n,
            FragileMsg::Get(reply) => reply.send(self.total),
            FragileMsg::Panic => panic!("probe: fragile"),
            FragileMsg::PanicAsked(_reply) => panic!("probe: fragile, asked"),
        }
    }
}

/// A small seeded generator, so a failing interleaving can be rerun.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn mixed_traffic_with_panics_restarts_and_a_random_stop(backend: Backend) {
    crate::support::quiet_panics();
    within("panics, restarts, stop", move || {
        let rt = runtime(backend);
        let h = rt
            .manager("fragile")
            .on_panic(custody::PanicPolicy::Restart {
                max_restarts: u32::MAX,
                within: std::time::Duration::from_secs(1),
            })
            .spawn_with(|| Fragile { total: 0 })
            .unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let h = h.clone();
                let accepted = Arc::clone(&accepted);
                let refused = Arc::clone(&refused);
                thread::spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (p + 1);
                    let stop_at = if p == 0 {
                        2_000 + xorshift(&mut rng) % 2_000
                    } else {
                        u64::MAX
                    };
                    for i in 0..5_000u64 {
                        if i == stop_at {
                            h.stop();
                        }
                        let ok = match xorshift(&mut rng) % 10 {
                            0 => h.tell(FragileMsg::Panic).is_ok(),
                            1 => match h.ask(FragileMsg::PanicAsked) {
                                Err(AskError::Panicked { .. }) => true,
                                Err(AskError::Stopped { .. }) => false,
                                other => panic!("a panicking ask ended with {other:?}"),
                            },
                            2 => match h.ask(FragileMsg::Get) {
                                Ok(_) => true,
                                Err(AskError::Stopped { .. }) => false,
                                Err(other) => panic!("an ask ended with {other}"),
                            },
                            3 if i % 97 == 0 => {
                                h.join().unwrap();
                                continue;
                            }
                            _ => h.tell(FragileMsg::Add(1)).is_ok(),
                        };
                        if ok {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        h.join().unwrap();
        rt.shutdown();
        let stats = h.stats();
        let accepted = accepted.load(Ordering::Relaxed);
        assert_eq!(stats.handled, accepted, "sent = handled + handed back");
        assert!(
            refused.load(Ordering::Relaxed) > 0,
            "the stop refused nothing"
        );
        assert_eq!(stats.unhandled, 0);
        assert!(stats.restarts > 0 && stats.restarts == stats.panicked);
    });
}
