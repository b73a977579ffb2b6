//! Behaviour of `Semaphore` and `BoundedSemaphore`, checked against
//! Python's `threading.Semaphore` and `threading.BoundedSemaphore`.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::bounded as within;
use custody::sync::{BoundedSemaphore, ReleaseError, Semaphore, SemaphoreGuard};

const LIMIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(100);
const SHORT: Duration = Duration::from_millis(50);

#[test]
fn acquire_decrements_and_release_increments() {
    let sem = Semaphore::new(2);
    assert_eq!(sem.value(), 2);
    sem.acquire();
    assert_eq!(sem.value(), 1);
    sem.release();
    sem.release();
    // An unbounded semaphore may go above its initial value.
    assert_eq!(sem.value(), 3);
}

#[test]
fn default_semaphore_has_value_one() {
    assert_eq!(Semaphore::default().value(), 1);
}

#[test]
fn try_acquire_fails_at_zero_without_blocking() {
    let sem = Semaphore::new(1);
    assert!(sem.try_acquire());
    assert!(!sem.try_acquire());
    assert_eq!(sem.value(), 0);
}

#[test]
fn acquire_blocks_until_release() {
    within(|| {
        let sem = Semaphore::new(0);
        let acquired = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                sem.acquire();
                acquired.store(true, Ordering::SeqCst);
            });
            thread::sleep(SETTLE);
            assert!(!acquired.load(Ordering::SeqCst), "acquired at zero");
            sem.release();
        });
        assert!(acquired.load(Ordering::SeqCst));
        assert_eq!(sem.value(), 0);
    });
}

#[test]
fn acquire_timeout_waits_at_least_the_timeout_then_fails() {
    let sem = Semaphore::new(0);
    let start = Instant::now();
    assert!(!sem.acquire_timeout(SHORT));
    assert!(
        start.elapsed() >= SHORT,
        "gave up after {:?}",
        start.elapsed()
    );
    assert_eq!(sem.value(), 0);
    assert!(!sem.acquire_timeout(Duration::ZERO));
}

#[test]
fn acquire_timeout_succeeds_when_released_during_the_wait() {
    within(|| {
        let sem = Semaphore::new(0);
        thread::scope(|s| {
            let waiter = s.spawn(|| sem.acquire_timeout(LIMIT));
            thread::sleep(SETTLE);
            sem.release();
            assert!(waiter.join().unwrap());
        });
        assert_eq!(sem.value(), 0);
    });
}

#[test]
fn timed_out_acquire_takes_nothing() {
    within(|| {
        let sem = Semaphore::new(0);
        thread::scope(|s| {
            let waiter = s.spawn(|| sem.acquire_timeout(SHORT));
            assert!(!waiter.join().unwrap());
        });
        sem.release();
        thread::sleep(SETTLE);
        assert_eq!(sem.value(), 1);
    });
}

/// `release_n(n)` lets exactly `n` blocked threads through; the others
/// keep waiting.
#[test]
fn release_n_wakes_exactly_n_waiters() {
    within(|| {
        let sem = Semaphore::new(0);
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            for i in 0..5 {
                let (sem, tx) = (&sem, tx.clone());
                s.spawn(move || {
                    sem.acquire();
                    tx.send(i).unwrap();
                });
            }
            drop(tx);
            thread::sleep(SETTLE);
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
            sem.release_n(3);
            for _ in 0..3 {
                rx.recv_timeout(LIMIT)
                    .expect("a released waiter did not wake");
            }
            thread::sleep(SETTLE);
            assert_eq!(
                rx.try_recv(),
                Err(TryRecvError::Empty),
                "more than n waiters got through"
            );
            assert_eq!(sem.value(), 0);
            sem.release_n(2);
        });
        assert_eq!(rx.iter().count(), 2);
        assert_eq!(sem.value(), 0);
    });
}

#[test]
fn release_n_zero_does_nothing() {
    let sem = Semaphore::new(1);
    sem.release_n(0);
    assert_eq!(sem.value(), 1);
    let bounded = BoundedSemaphore::new(1);
    assert_eq!(bounded.release_n(0), Ok(()));
    assert_eq!(bounded.value(), 1);
}

#[test]
fn guard_releases_on_drop() {
    let sem = Semaphore::new(1);
    {
        let _permit = sem.acquire_guard();
        assert_eq!(sem.value(), 0);
        assert!(sem.try_acquire_guard().is_none());
    }
    assert_eq!(sem.value(), 1);
    let permit = sem.try_acquire_guard().expect("value is 1");
    assert!(sem.acquire_guard_timeout(SHORT).is_none());
    drop(permit);
    let permit = sem.acquire_guard_timeout(SHORT).expect("value is 1");
    drop(permit);
    assert_eq!(sem.value(), 1);
}

#[test]
fn semaphore_limits_concurrency() {
    within(|| {
        let sem = Semaphore::new(3);
        let inside = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let _permit = sem.acquire_guard();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(sem.value(), 3);
    });
}

#[test]
fn bounded_release_above_initial_value_is_an_error_and_changes_nothing() {
    let sem = BoundedSemaphore::new(2);
    assert_eq!(sem.initial_value(), 2);
    assert_eq!(sem.release(), Err(ReleaseError));
    assert_eq!(sem.value(), 2);
    sem.acquire();
    assert_eq!(sem.release(), Ok(()));
    assert_eq!(sem.release(), Err(ReleaseError));
    assert_eq!(sem.value(), 2);
}

#[test]
fn bounded_release_n_that_would_exceed_is_refused_entirely() {
    let sem = BoundedSemaphore::new(3);
    sem.acquire();
    sem.acquire();
    assert_eq!(sem.value(), 1);
    assert_eq!(sem.release_n(3), Err(ReleaseError));
    assert_eq!(sem.value(), 1, "a refused release_n changed the value");
    assert_eq!(sem.release_n(usize::MAX), Err(ReleaseError));
    assert_eq!(sem.value(), 1);
    assert_eq!(sem.release_n(2), Ok(()));
    assert_eq!(sem.value(), 3);
}

#[test]
fn bounded_refused_release_wakes_nobody() {
    within(|| {
        let sem = BoundedSemaphore::new(0);
        thread::scope(|s| {
            let waiter = s.spawn(|| sem.acquire_timeout(SETTLE * 2));
            thread::sleep(SETTLE);
            assert_eq!(sem.release(), Err(ReleaseError));
            assert!(
                !waiter.join().unwrap(),
                "a refused release let a waiter through"
            );
        });
        assert_eq!(sem.value(), 0);
    });
}

#[test]
fn bounded_acquire_variants_behave_like_unbounded_ones() {
    within(|| {
        let sem = BoundedSemaphore::new(1);
        assert!(sem.try_acquire());
        assert!(!sem.try_acquire());
        let start = Instant::now();
        assert!(!sem.acquire_timeout(SHORT));
        assert!(start.elapsed() >= SHORT);
        thread::scope(|s| {
            let waiter = s.spawn(|| {
                sem.acquire();
                sem.release()
            });
            thread::sleep(SETTLE);
            sem.release().unwrap();
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
        assert_eq!(sem.value(), 1);
    });
}

#[test]
fn bounded_guard_releases_on_drop() {
    let sem = BoundedSemaphore::new(2);
    let a = sem.acquire_guard();
    let b = sem.try_acquire_guard().expect("value is 1");
    assert!(sem.acquire_guard_timeout(SHORT).is_none());
    assert_eq!(sem.value(), 0);
    drop(a);
    drop(b);
    assert_eq!(sem.value(), 2);
}

#[test]
fn bounded_guard_never_exceeds_the_bound() {
    let sem = BoundedSemaphore::new(1);
    let permit = sem.acquire_guard();
    // Given back by hand as well: the guard's own release is refused.
    sem.release().unwrap();
    drop(permit);
    assert_eq!(sem.value(), 1);
}

#[test]
#[should_panic(expected = "overflow")]
fn unbounded_release_past_usize_max_panics() {
    let sem = Semaphore::new(usize::MAX);
    sem.release();
}

#[test]
fn semaphores_and_guards_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Semaphore>();
    assert_send_sync::<BoundedSemaphore>();
    assert_send_sync::<SemaphoreGuard<'static>>();
}

#[test]
fn release_error_is_a_std_error_that_crosses_threads() {
    fn assert_error<E: Error + Send + Sync + 'static>() {}
    assert_error::<ReleaseError>();
    assert_eq!(
        ReleaseError.to_string(),
        "semaphore released too many times"
    );
}

#[test]
fn debug_shows_the_value() {
    let sem = Semaphore::new(2);
    assert!(format!("{sem:?}").contains("value: 2"));
    let bounded = BoundedSemaphore::new(4);
    let debug = format!("{bounded:?}");
    assert!(debug.starts_with("BoundedSemaphore"), "{debug}");
    assert!(debug.contains("initial_value: 4"), "{debug}");
}
