//! Threading objects with the semantics of Python's `threading` module.
//!
//! | Python                        | Rust                                   |
//! | ----------------------------- | -------------------------------------- |
//! | `threading.Event`             | [`Event`]                              |
//! | `threading.Semaphore`         | [`Semaphore`]                          |
//! | `threading.BoundedSemaphore`  | [`BoundedSemaphore`]                   |
//! | `threading.Barrier`           | [`Barrier`]                            |
//! | `threading.BrokenBarrierError`| [`BrokenBarrierError`]                 |
//! | `threading.Timer`             | [`Timer`]                              |
//!
//! Methods that take a `timeout` in Python come in two flavours here: a
//! blocking one without a timeout (`wait`, `acquire`) and a `*_timeout`
//! variant taking a [`Duration`](std::time::Duration). Timeouts are turned
//! into a deadline once, so spurious wake-ups never extend the total wait.
//!
//! All types are `Send + Sync` and are meant to be shared by reference
//! (scoped threads) or through an [`Arc`](std::sync::Arc).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::thread;
//! use custody::sync::Event;
//!
//! let ready = Arc::new(Event::new());
//! let waiter = {
//!     let ready = Arc::clone(&ready);
//!     thread::spawn(move || ready.wait())
//! };
//! ready.set();
//! waiter.join().unwrap();
//! ```

mod barrier;
mod event;
mod semaphore;
mod timer;

pub use barrier::{Barrier, BarrierBuilder, BarrierError, BrokenBarrierError};
pub use event::Event;
pub use semaphore::{BoundedSemaphore, ReleaseError, Semaphore, SemaphoreGuard};
pub use timer::{Timer, TimerJoinError};

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Locks `mutex`, ignoring poisoning.
///
/// No user code runs while the crate's internal mutexes are held, so a
/// poisoned lock can only mean a panic in between two consistent states;
/// the protected data is still valid.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks on `condvar` until notified (or spuriously woken).
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Blocks on `condvar` until notified, spuriously woken or `deadline`
/// passes (`None`: no deadline).
///
/// Returns `Err(guard)` without blocking if the deadline has already
/// passed; the caller re-checks its condition after `Ok(guard)`.
pub(crate) fn wait_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> Result<MutexGuard<'a, T>, MutexGuard<'a, T>> {
    match deadline {
        None => Ok(wait(condvar, guard)),
        Some(deadline) => {
            let now = Instant::now();
            if now >= deadline {
                return Err(guard);
            }
            let (guard, _) = condvar
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner);
            Ok(guard)
        }
    }
}
