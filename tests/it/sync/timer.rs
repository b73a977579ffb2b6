//! Behaviour of `Timer`, checked against Python's `threading.Timer`.

use std::error::Error;
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::bounded as within;
use custody::sync::{Timer, TimerJoinError};

const LIMIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(100);
const SHORT: Duration = Duration::from_millis(50);
/// A delay the tests never wait out.
const FOREVER: Duration = Duration::from_secs(3600);

fn flag() -> (Arc<AtomicBool>, impl FnOnce() + Send + 'static) {
    let flag = Arc::new(AtomicBool::new(false));
    let setter = {
        let flag = Arc::clone(&flag);
        move || flag.store(true, Ordering::SeqCst)
    };
    (flag, setter)
}

#[test]
fn fires_once_after_at_least_the_delay() {
    within(|| {
        let fired_at = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let timer = {
            let fired_at = Arc::clone(&fired_at);
            Timer::start(SHORT, move || fired_at.lock().unwrap().push(Instant::now()))
        };
        timer.join().unwrap();
        let fired_at = fired_at.lock().unwrap();
        assert_eq!(fired_at.len(), 1);
        assert!(
            fired_at[0] - start >= SHORT,
            "fired after {:?}",
            fired_at[0] - start
        );
        assert!(timer.has_fired());
        assert!(timer.is_finished());
        assert!(!timer.is_cancelled());
        assert_eq!(timer.delay(), SHORT);
    });
}

#[test]
fn runs_on_its_own_thread() {
    within(|| {
        let (tx, rx) = mpsc::channel();
        let timer = Timer::start(Duration::ZERO, move || {
            tx.send(thread::current().id()).unwrap();
        });
        let id = rx.recv_timeout(LIMIT).unwrap();
        assert_ne!(id, thread::current().id());
        timer.join().unwrap();
    });
}

#[test]
fn cancel_before_firing_means_it_never_runs() {
    within(|| {
        let (ran, set) = flag();
        let timer = Timer::start(SHORT, set);
        assert!(timer.cancel());
        timer.join().unwrap();
        // Well past the delay: still not run.
        thread::sleep(SHORT + SETTLE);
        assert!(!ran.load(Ordering::SeqCst));
        assert!(timer.is_cancelled());
        assert!(timer.is_finished());
        assert!(!timer.has_fired());
    });
}

#[test]
fn cancel_wakes_the_timer_thread_promptly() {
    within(|| {
        let (ran, set) = flag();
        let timer = Timer::start(FOREVER, set);
        thread::sleep(SHORT);
        assert!(!timer.is_finished());
        assert!(timer.cancel());
        // Returns once the thread has exited; a timer that slept through
        // its delay would hit the test's time limit instead.
        timer.join().unwrap();
        assert!(!ran.load(Ordering::SeqCst));
    });
}

#[test]
fn cancel_after_firing_is_a_no_op() {
    within(|| {
        let runs = Arc::new(AtomicUsize::new(0));
        let timer = {
            let runs = Arc::clone(&runs);
            Timer::start(Duration::ZERO, move || {
                runs.fetch_add(1, Ordering::SeqCst);
            })
        };
        timer.join().unwrap();
        assert!(!timer.cancel());
        assert!(!timer.is_cancelled());
        assert!(timer.has_fired());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        timer.join().unwrap();
    });
}

#[test]
fn cancel_while_running_does_not_stop_the_function() {
    within(|| {
        let (started_tx, started_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (ran, set) = flag();
        let timer = Timer::start(Duration::ZERO, move || {
            started_tx.send(()).unwrap();
            go_rx.recv_timeout(LIMIT).unwrap();
            set();
        });
        started_rx.recv_timeout(LIMIT).unwrap();
        assert!(timer.has_fired());
        assert!(!timer.is_finished());
        assert!(!timer.cancel());
        go_tx.send(()).unwrap();
        timer.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));
    });
}

#[test]
fn cancel_twice_is_fine() {
    let timer = Timer::start(FOREVER, || {});
    assert!(timer.cancel());
    assert!(!timer.cancel());
    assert!(timer.is_cancelled());
}

#[test]
fn join_may_be_called_many_times_from_many_threads() {
    within(|| {
        let timer = Timer::start(SHORT, || {});
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| timer.join().unwrap());
            }
        });
        timer.join().unwrap();
        assert!(timer.is_finished());
    });
}

#[test]
fn join_reports_a_panicking_function() {
    within(|| {
        let timer = Timer::start(Duration::ZERO, || panic!("timer function fails on purpose"));
        assert_eq!(timer.join(), Err(TimerJoinError::CallbackPanicked));
        assert_eq!(timer.join(), Err(TimerJoinError::CallbackPanicked));
        assert!(timer.is_finished());
        assert!(timer.has_fired());
    });
}

#[test]
fn join_from_the_function_itself_is_an_error() {
    within(|| {
        let (timer_tx, timer_rx) = mpsc::channel::<Arc<Timer>>();
        let (result_tx, result_rx) = mpsc::channel();
        let timer = Arc::new(Timer::start(Duration::ZERO, move || {
            let me = timer_rx.recv_timeout(LIMIT).unwrap();
            result_tx.send(me.join()).unwrap();
        }));
        timer_tx.send(Arc::clone(&timer)).unwrap();
        assert_eq!(
            result_rx.recv_timeout(LIMIT).unwrap(),
            Err(TimerJoinError::FromCallback)
        );
        timer.join().unwrap();
    });
}

#[test]
fn dropping_the_timer_does_not_cancel_it() {
    within(|| {
        let (tx, rx) = mpsc::channel();
        drop(Timer::start(SHORT, move || tx.send(()).unwrap()));
        assert_eq!(rx.recv_timeout(LIMIT), Ok(()));
    });
}

#[test]
fn timer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Timer>();
}

#[test]
fn join_error_is_a_std_error_that_crosses_threads() {
    fn assert_error<E: Error + Send + Sync + 'static>() {}
    assert_error::<TimerJoinError>();
    for err in [
        TimerJoinError::CallbackPanicked,
        TimerJoinError::FromCallback,
    ] {
        let message = err.to_string();
        assert_eq!(message, message.to_lowercase());
        assert!(!message.ends_with('.'));
    }
}

#[test]
fn debug_shows_the_state() {
    let timer = Timer::start(FOREVER, || {});
    assert!(format!("{timer:?}").contains("Pending"));
    timer.cancel();
    assert!(format!("{timer:?}").contains("Cancelled"));
}
