//! Behaviour of `Barrier`, checked against Python's `threading.Barrier`.

use std::collections::BTreeSet;
use std::error::Error;
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::bounded as within;
use custody::sync::{Barrier, BarrierBuilder, BarrierError, BrokenBarrierError};

const LIMIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(100);
const SHORT: Duration = Duration::from_millis(50);

/// Waits (bounded) until `n` threads are waiting at `barrier`.
fn until_waiting(barrier: &Barrier, n: usize) {
    let deadline = Instant::now() + LIMIT;
    while barrier.n_waiting() != n {
        assert!(
            Instant::now() < deadline,
            "{n} threads never got to wait (n_waiting = {})",
            barrier.n_waiting()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn zero_parties_is_an_error() {
    assert_eq!(Barrier::new(0).unwrap_err(), BarrierError::ZeroParties);
    assert_eq!(
        Barrier::builder(0).action(|| {}).build().unwrap_err(),
        BarrierError::ZeroParties
    );
}

#[test]
fn single_party_barrier_trips_at_once() {
    within(|| {
        let barrier = Barrier::new(1).unwrap();
        for _ in 0..3 {
            assert_eq!(barrier.wait(), Ok(0));
        }
        assert_eq!(barrier.parties(), 1);
    });
}

#[test]
fn wait_returns_distinct_indices_on_every_trip() {
    const PARTIES: usize = 5;
    const TRIPS: usize = 20;
    let per_trip = within(|| {
        let barrier = Barrier::new(PARTIES).unwrap();
        let per_trip = Mutex::new(vec![Vec::new(); TRIPS]);
        thread::scope(|s| {
            for _ in 0..PARTIES {
                s.spawn(|| {
                    for trip in 0..TRIPS {
                        let index = barrier.wait().unwrap();
                        per_trip.lock().unwrap()[trip].push(index);
                    }
                });
            }
        });
        per_trip.into_inner().unwrap()
    });
    for (trip, indices) in per_trip.into_iter().enumerate() {
        let set: BTreeSet<usize> = indices.iter().copied().collect();
        assert_eq!(
            set,
            (0..PARTIES).collect::<BTreeSet<_>>(),
            "trip {trip}: {indices:?}"
        );
    }
}

#[test]
fn wait_blocks_until_all_parties_arrive() {
    within(|| {
        let barrier = Barrier::new(3).unwrap();
        let passed = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    barrier.wait().unwrap();
                    passed.fetch_add(1, Ordering::SeqCst);
                });
            }
            until_waiting(&barrier, 2);
            thread::sleep(SETTLE);
            assert_eq!(
                passed.load(Ordering::SeqCst),
                0,
                "released before the last party"
            );
            assert_eq!(barrier.n_waiting(), 2);
            barrier.wait().unwrap();
        });
        assert_eq!(passed.load(Ordering::SeqCst), 2);
        assert_eq!(barrier.n_waiting(), 0);
        assert!(!barrier.is_broken());
    });
}

#[test]
fn action_runs_once_per_trip_before_anyone_is_released() {
    const PARTIES: usize = 4;
    const TRIPS: usize = 10;
    within(|| {
        let trips = Arc::new(AtomicUsize::new(0));
        let barrier = {
            let trips = Arc::clone(&trips);
            Barrier::builder(PARTIES)
                .action(move || {
                    trips.fetch_add(1, Ordering::SeqCst);
                })
                .build()
                .unwrap()
        };
        thread::scope(|s| {
            for _ in 0..PARTIES {
                s.spawn(|| {
                    for trip in 0..TRIPS {
                        barrier.wait().unwrap();
                        // The action of this trip has already run.
                        assert!(trips.load(Ordering::SeqCst) > trip);
                    }
                });
            }
        });
        assert_eq!(trips.load(Ordering::SeqCst), TRIPS);
    });
}

#[test]
fn action_may_keep_state() {
    within(|| {
        let (tx, rx) = mpsc::channel();
        let mut count = 0;
        let barrier = Barrier::builder(2)
            .action(move || {
                count += 1;
                tx.send(count).unwrap();
            })
            .build()
            .unwrap();
        thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    barrier.wait().unwrap();
                }
            });
            for _ in 0..3 {
                barrier.wait().unwrap();
            }
        });
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2, 3]);
    });
}

#[test]
fn panicking_action_breaks_the_barrier_for_everyone() {
    within(|| {
        let barrier = Barrier::builder(3)
            .action(|| panic!("action failed on purpose"))
            .build()
            .unwrap();
        thread::scope(|s| {
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| barrier.wait())).collect();
            for waiter in waiters {
                assert_eq!(waiter.join().unwrap(), Err(BrokenBarrierError));
            }
        });
        assert!(barrier.is_broken());
        assert_eq!(barrier.wait(), Err(BrokenBarrierError));
    });
}

#[test]
fn timeout_breaks_the_barrier_for_everyone() {
    within(|| {
        let barrier = Barrier::new(3).unwrap();
        thread::scope(|s| {
            let patient = s.spawn(|| barrier.wait());
            until_waiting(&barrier, 1);
            let start = Instant::now();
            assert_eq!(barrier.wait_timeout(SHORT), Err(BrokenBarrierError));
            assert!(
                start.elapsed() >= SHORT,
                "gave up after {:?}",
                start.elapsed()
            );
            assert_eq!(patient.join().unwrap(), Err(BrokenBarrierError));
        });
        assert!(barrier.is_broken());
        assert_eq!(barrier.n_waiting(), 0);
        // Broken until reset: later waiters fail at once.
        assert_eq!(barrier.wait(), Err(BrokenBarrierError));
        assert_eq!(barrier.wait_timeout(LIMIT), Err(BrokenBarrierError));
    });
}

#[test]
fn default_timeout_applies_to_wait() {
    within(|| {
        let barrier = Barrier::builder(2).timeout(SHORT).build().unwrap();
        assert_eq!(barrier.timeout(), Some(SHORT));
        let start = Instant::now();
        assert_eq!(barrier.wait(), Err(BrokenBarrierError));
        assert!(
            start.elapsed() >= SHORT,
            "gave up after {:?}",
            start.elapsed()
        );
        assert!(barrier.is_broken());
    });
}

#[test]
fn explicit_timeout_overrides_default_timeout() {
    within(|| {
        let barrier = Barrier::builder(2).timeout(SHORT).build().unwrap();
        thread::scope(|s| {
            let waiter = s.spawn(|| barrier.wait_timeout(LIMIT));
            // Longer than the default timeout: the explicit one holds.
            thread::sleep(SHORT * 3);
            assert!(!barrier.is_broken());
            until_waiting(&barrier, 1);
            let mine = barrier.wait_timeout(LIMIT).unwrap();
            let theirs = waiter.join().unwrap().unwrap();
            assert_eq!(BTreeSet::from([mine, theirs]), BTreeSet::from([0, 1]));
        });
    });
}

#[test]
fn abort_breaks_the_barrier_and_wakes_waiters() {
    within(|| {
        let barrier = Barrier::new(4).unwrap();
        thread::scope(|s| {
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| barrier.wait())).collect();
            until_waiting(&barrier, 3);
            barrier.abort();
            for waiter in waiters {
                assert_eq!(waiter.join().unwrap(), Err(BrokenBarrierError));
            }
        });
        assert!(barrier.is_broken());
        assert_eq!(barrier.n_waiting(), 0);
        assert_eq!(barrier.wait(), Err(BrokenBarrierError));
    });
}

#[test]
fn reset_wakes_waiters_with_broken_error_and_restores_the_barrier() {
    within(|| {
        let barrier = Barrier::new(3).unwrap();
        thread::scope(|s| {
            let waiters: Vec<_> = (0..2).map(|_| s.spawn(|| barrier.wait())).collect();
            until_waiting(&barrier, 2);
            barrier.reset();
            for waiter in waiters {
                assert_eq!(waiter.join().unwrap(), Err(BrokenBarrierError));
            }
        });
        assert!(!barrier.is_broken());
        // A full trip works again.
        thread::scope(|s| {
            let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| barrier.wait())).collect();
            let indices: BTreeSet<usize> = waiters
                .into_iter()
                .map(|w| w.join().unwrap().unwrap())
                .collect();
            assert_eq!(indices, BTreeSet::from([0, 1, 2]));
        });
    });
}

#[test]
fn reset_repairs_a_broken_barrier() {
    within(|| {
        let barrier = Barrier::new(2).unwrap();
        barrier.abort();
        assert!(barrier.is_broken());
        barrier.reset();
        assert!(!barrier.is_broken());
        thread::scope(|s| {
            let other = s.spawn(|| barrier.wait());
            let mine = barrier.wait().unwrap();
            let theirs = other.join().unwrap().unwrap();
            assert_eq!(mine + theirs, 1);
        });
    });
}

#[test]
fn reset_repairs_a_barrier_broken_by_a_panicking_action() {
    within(|| {
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = {
            let calls = Arc::clone(&calls);
            Barrier::builder(1)
                .action(move || {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("first action fails on purpose");
                    }
                })
                .build()
                .unwrap()
        };
        assert_eq!(barrier.wait(), Err(BrokenBarrierError));
        barrier.reset();
        assert_eq!(barrier.wait(), Ok(0));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn n_waiting_counts_threads_at_the_barrier() {
    within(|| {
        let barrier = Barrier::new(3).unwrap();
        assert_eq!(barrier.n_waiting(), 0);
        thread::scope(|s| {
            s.spawn(|| barrier.wait().unwrap());
            until_waiting(&barrier, 1);
            s.spawn(|| barrier.wait().unwrap());
            until_waiting(&barrier, 2);
            barrier.wait().unwrap();
        });
        assert_eq!(barrier.n_waiting(), 0);
    });
}

#[test]
fn barrier_is_shareable_through_arc() {
    within(|| {
        let barrier = Arc::new(Barrier::new(2).unwrap());
        let other = {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || barrier.wait())
        };
        let mine = barrier.wait().unwrap();
        assert_eq!(mine + other.join().unwrap().unwrap(), 1);
    });
}

#[test]
fn barrier_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Barrier>();
    assert_send::<BarrierBuilder>();
}

#[test]
fn errors_are_std_errors_that_cross_threads() {
    fn assert_error<E: Error + Send + Sync + 'static>() {}
    assert_error::<BarrierError>();
    assert_error::<BrokenBarrierError>();
    assert_eq!(BrokenBarrierError.to_string(), "barrier is broken");
    assert_eq!(
        BarrierError::ZeroParties.to_string(),
        "a barrier needs at least one party"
    );
}

#[test]
fn debug_does_not_need_a_debug_action() {
    let builder = Barrier::builder(2).action(|| {});
    assert!(format!("{builder:?}").contains("has_action: true"));
    let barrier = builder.build().unwrap();
    assert!(format!("{barrier:?}").contains("parties: 2"));
}
