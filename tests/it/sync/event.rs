//! Behaviour of `Event`, checked against Python's `threading.Event`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::bounded as within;
use custody::sync::Event;

const LIMIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(100);
const SHORT: Duration = Duration::from_millis(50);

#[test]
fn new_event_is_clear() {
    assert!(!Event::new().is_set());
    assert!(!Event::default().is_set());
}

#[test]
fn set_and_clear_toggle_the_flag() {
    let event = Event::new();
    event.set();
    assert!(event.is_set());
    event.set();
    assert!(event.is_set());
    event.clear();
    assert!(!event.is_set());
    event.clear();
    assert!(!event.is_set());
}

#[test]
fn wait_returns_at_once_when_set() {
    within(|| {
        let event = Event::new();
        event.set();
        event.wait();
        assert!(event.wait_timeout(Duration::ZERO));
        assert!(event.wait_timeout(LIMIT));
    });
}

#[test]
fn wait_timeout_waits_at_least_the_timeout_then_returns_false() {
    let event = Event::new();
    let start = Instant::now();
    assert!(!event.wait_timeout(SHORT));
    assert!(
        start.elapsed() >= SHORT,
        "gave up after {:?}",
        start.elapsed()
    );
    assert!(!event.wait_timeout(Duration::ZERO));
}

#[test]
fn wait_timeout_returns_true_when_set_during_the_wait() {
    within(|| {
        let event = Event::new();
        thread::scope(|s| {
            let waiter = s.spawn(|| event.wait_timeout(LIMIT));
            thread::sleep(SETTLE);
            event.set();
            assert!(waiter.join().unwrap());
        });
    });
}

#[test]
fn wait_blocks_until_set() {
    within(|| {
        let event = Event::new();
        let released = AtomicUsize::new(0);
        thread::scope(|s| {
            s.spawn(|| {
                event.wait();
                released.fetch_add(1, Ordering::SeqCst);
            });
            thread::sleep(SETTLE);
            assert_eq!(
                released.load(Ordering::SeqCst),
                0,
                "wait returned before set"
            );
            event.set();
        });
        assert_eq!(released.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn set_releases_every_waiter() {
    within(|| {
        let event = Event::new();
        let released = AtomicUsize::new(0);
        thread::scope(|s| {
            for i in 0..10 {
                let (event, released) = (&event, &released);
                s.spawn(move || {
                    if i % 2 == 0 {
                        event.wait();
                    } else {
                        assert!(event.wait_timeout(LIMIT));
                    }
                    released.fetch_add(1, Ordering::SeqCst);
                });
            }
            thread::sleep(SETTLE);
            event.set();
        });
        assert_eq!(released.load(Ordering::SeqCst), 10);
    });
}

/// Python's `Event` releases every thread waiting at the time of `set`,
/// even if the flag is cleared again before they get to run.
#[test]
fn set_then_immediate_clear_still_releases_every_waiter() {
    within(|| {
        let event = Event::new();
        let started = Barrier::new(9);
        thread::scope(|s| {
            let waiters: Vec<_> = (0..8)
                .map(|i| {
                    let (event, started) = (&event, &started);
                    s.spawn(move || {
                        started.wait();
                        if i % 2 == 0 {
                            event.wait();
                            true
                        } else {
                            // A bounded wait, so that a waiter that missed
                            // the `set` fails the test instead of hanging.
                            event.wait_timeout(LIMIT)
                        }
                    })
                })
                .collect();
            started.wait();
            // Give every waiter time to block.
            thread::sleep(SETTLE * 2);
            event.set();
            event.clear();
            assert!(!event.is_set());
            for waiter in waiters {
                assert!(waiter.join().unwrap(), "a waiter missed the set");
            }
        });
    });
}

#[test]
fn wait_blocks_again_after_clear() {
    let event = Event::new();
    event.set();
    event.clear();
    let start = Instant::now();
    assert!(!event.wait_timeout(SHORT));
    assert!(start.elapsed() >= SHORT);
}

#[test]
fn event_is_shareable_through_arc() {
    within(|| {
        let event = Arc::new(Event::new());
        let waiter = {
            let event = Arc::clone(&event);
            thread::spawn(move || event.wait())
        };
        event.set();
        waiter.join().unwrap();
    });
}

#[test]
fn event_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Event>();
}

#[test]
fn debug_shows_the_flag() {
    let event = Event::new();
    assert_eq!(format!("{event:?}"), "Event { is_set: false }");
    event.set();
    assert_eq!(format!("{event:?}"), "Event { is_set: true }");
}
