//! [`Semaphore`] and [`BoundedSemaphore`], ports of Python's
//! `threading.Semaphore` and `threading.BoundedSemaphore`.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{lock, wait_until};
use crate::util::deadline_after;

/// Returned by [`BoundedSemaphore::release`] and
/// [`BoundedSemaphore::release_n`] when the release would raise the value
/// above the initial value (Python raises `ValueError`). The semaphore is
/// left unchanged.
///
/// # Examples
///
/// ```
/// use custody::sync::{BoundedSemaphore, ReleaseError};
///
/// let sem = BoundedSemaphore::new(1);
/// assert_eq!(sem.release(), Err(ReleaseError));
/// assert_eq!(sem.value(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("semaphore released too many times")]
pub struct ReleaseError;

#[derive(Debug)]
struct State {
    value: usize,
    /// Threads blocked in `acquire`, so `release` can skip notifying.
    waiters: usize,
}

/// The shared machinery of both semaphore kinds.
struct Inner {
    state: Mutex<State>,
    condvar: Condvar,
    /// `Some(initial value)` for a bounded semaphore.
    bound: Option<usize>,
}

impl Inner {
    fn new(value: usize, bound: Option<usize>) -> Self {
        Self {
            state: Mutex::new(State { value, waiters: 0 }),
            condvar: Condvar::new(),
            bound,
        }
    }

    fn value(&self) -> usize {
        lock(&self.state).value
    }

    fn try_acquire(&self) -> bool {
        let mut state = lock(&self.state);
        if state.value > 0 {
            state.value -= 1;
            true
        } else {
            false
        }
    }

    /// Decrements the value, blocking while it is zero, until `deadline`
    /// (`None`: forever). Returns `false` on timeout.
    fn acquire_until(&self, deadline: Option<Instant>) -> bool {
        let mut state = lock(&self.state);
        while state.value == 0 {
            state.waiters += 1;
            let waited = wait_until(&self.condvar, state, deadline);
            let expired = waited.is_err();
            let (Ok(guard) | Err(guard)) = waited;
            state = guard;
            state.waiters -= 1;
            if expired {
                return false;
            }
        }
        state.value -= 1;
        true
    }

    /// Adds `n` to the value and wakes up to `n` waiters.
    fn release_n(&self, n: usize) -> Result<(), ReleaseError> {
        if n == 0 {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let value = match (state.value.checked_add(n), self.bound) {
            (Some(value), Some(bound)) if value > bound => return Err(ReleaseError),
            (Some(value), _) => value,
            (None, Some(_)) => return Err(ReleaseError),
            (None, None) => panic!("semaphore value overflowed usize"),
        };
        state.value = value;
        let wake = n.min(state.waiters);
        drop(state);
        for _ in 0..wake {
            self.condvar.notify_one();
        }
        Ok(())
    }
}

impl Inner {
    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        let mut d = f.debug_struct(name);
        d.field("value", &state.value);
        if let Some(bound) = self.bound {
            d.field("initial_value", &bound);
        }
        d.field("waiters", &state.waiters).finish()
    }
}

/// A counting semaphore, like Python's `threading.Semaphore`.
///
/// The semaphore holds a value: [`acquire`](Semaphore::acquire) blocks
/// while it is zero and then decrements it, [`release`](Semaphore::release)
/// increments it and wakes one waiter. Releasing more often than acquiring
/// is allowed and simply raises the value (use [`BoundedSemaphore`] to
/// catch that as a bug). Like Python's, the semaphore is not fair: a woken
/// waiter may find the value taken by a thread that did not wait.
///
/// Prefer [`acquire_guard`](Semaphore::acquire_guard), which returns a
/// [`SemaphoreGuard`] that releases on drop, over pairing `acquire` and
/// `release` by hand.
///
/// `Semaphore` is `Send + Sync`; share it by reference or through an
/// [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::thread;
/// use custody::sync::Semaphore;
///
/// // At most two threads in the critical section at once.
/// let sem = Semaphore::new(2);
/// let inside = AtomicUsize::new(0);
/// thread::scope(|s| {
///     for _ in 0..8 {
///         s.spawn(|| {
///             let _permit = sem.acquire_guard();
///             assert!(inside.fetch_add(1, Ordering::SeqCst) < 2);
///             inside.fetch_sub(1, Ordering::SeqCst);
///         });
///     }
/// });
/// assert_eq!(sem.value(), 2);
/// ```
pub struct Semaphore {
    inner: Inner,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug("Semaphore", f)
    }
}

impl Semaphore {
    /// Creates a semaphore with the given initial value.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(3);
    /// assert_eq!(sem.value(), 3);
    /// ```
    #[must_use]
    pub fn new(value: usize) -> Self {
        Self {
            inner: Inner::new(value, None),
        }
    }

    /// Returns the current value (Python's private `_value`). Only a
    /// snapshot: other threads may change it at any time.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(1);
    /// sem.acquire();
    /// assert_eq!(sem.value(), 0);
    /// ```
    #[must_use]
    pub fn value(&self) -> usize {
        self.inner.value()
    }

    /// Blocks until the value is positive, then decrements it (Python's
    /// `acquire()`).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(1);
    /// sem.acquire();
    /// sem.release();
    /// ```
    pub fn acquire(&self) {
        self.inner.acquire_until(None);
    }

    /// Decrements the value if it is positive, without blocking (Python's
    /// `acquire(blocking=False)`). Returns whether it did.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(1);
    /// assert!(sem.try_acquire());
    /// assert!(!sem.try_acquire());
    /// ```
    #[must_use = "if it returns true, the caller must release the semaphore"]
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Like [`acquire`](Semaphore::acquire), but gives up after `timeout`
    /// (Python's `acquire(timeout=...)`). Returns whether the value was
    /// decremented.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sem = custody::sync::Semaphore::new(0);
    /// assert!(!sem.acquire_timeout(Duration::from_millis(5)));
    /// ```
    #[must_use = "if it returns true, the caller must release the semaphore"]
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_until(deadline_after(timeout))
    }

    /// Increments the value by one and wakes one waiting thread.
    ///
    /// # Panics
    ///
    /// Panics if the value would overflow `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(0);
    /// sem.release();
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn release(&self) {
        self.release_n(1);
    }

    /// Increments the value by `n` and wakes up to `n` waiting threads
    /// (Python's `release(n)`). Unlike Python, `n == 0` is accepted and
    /// does nothing.
    ///
    /// # Panics
    ///
    /// Panics if the value would overflow `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(0);
    /// sem.release_n(3);
    /// assert_eq!(sem.value(), 3);
    /// ```
    pub fn release_n(&self, n: usize) {
        // An unbounded semaphore never refuses a release.
        let _ = self.inner.release_n(n);
    }

    /// Acquires the semaphore (blocking) and returns a guard that releases
    /// it when dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(1);
    /// {
    ///     let _permit = sem.acquire_guard();
    ///     assert_eq!(sem.value(), 0);
    /// }
    /// assert_eq!(sem.value(), 1);
    /// ```
    #[doc(alias = "access")]
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn acquire_guard(&self) -> SemaphoreGuard<'_> {
        self.inner.acquire_until(None);
        SemaphoreGuard { inner: &self.inner }
    }

    /// Like [`try_acquire`](Semaphore::try_acquire), returning a guard
    /// that releases on drop.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::Semaphore::new(1);
    /// let permit = sem.try_acquire_guard();
    /// assert!(permit.is_some());
    /// assert!(sem.try_acquire_guard().is_none());
    /// ```
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn try_acquire_guard(&self) -> Option<SemaphoreGuard<'_>> {
        self.inner
            .try_acquire()
            .then(|| SemaphoreGuard { inner: &self.inner })
    }

    /// Like [`acquire_timeout`](Semaphore::acquire_timeout), returning a
    /// guard that releases on drop.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sem = custody::sync::Semaphore::new(1);
    /// let permit = sem.acquire_guard_timeout(Duration::from_millis(5));
    /// assert!(permit.is_some());
    /// assert!(sem.acquire_guard_timeout(Duration::from_millis(5)).is_none());
    /// ```
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn acquire_guard_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.inner
            .acquire_until(deadline_after(timeout))
            .then(|| SemaphoreGuard { inner: &self.inner })
    }
}

impl Default for Semaphore {
    /// A semaphore with value 1, Python's default.
    fn default() -> Self {
        Self::new(1)
    }
}

/// A semaphore that refuses to be released above its initial value, like
/// Python's `threading.BoundedSemaphore`.
///
/// Releasing more often than acquiring is usually a bug; here it returns a
/// [`ReleaseError`] and leaves the value unchanged (Python raises
/// `ValueError`).
///
/// `BoundedSemaphore` is `Send + Sync`; share it by reference or through
/// an [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use custody::sync::{BoundedSemaphore, ReleaseError};
///
/// let pool = BoundedSemaphore::new(2);
/// let a = pool.acquire_guard();
/// let b = pool.acquire_guard();
/// assert!(pool.try_acquire_guard().is_none());
/// drop((a, b));
/// assert_eq!(pool.value(), 2);
/// assert_eq!(pool.release(), Err(ReleaseError));
/// ```
pub struct BoundedSemaphore {
    inner: Inner,
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.debug("BoundedSemaphore", f)
    }
}

impl BoundedSemaphore {
    /// Creates a bounded semaphore whose initial value is also its
    /// maximum.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(3);
    /// assert_eq!(sem.initial_value(), 3);
    /// ```
    #[must_use]
    pub fn new(value: usize) -> Self {
        Self {
            inner: Inner::new(value, Some(value)),
        }
    }

    /// Returns the initial value, which is also the maximum.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(3);
    /// sem.acquire();
    /// assert_eq!(sem.initial_value(), 3);
    /// ```
    #[must_use]
    pub fn initial_value(&self) -> usize {
        self.inner.bound.unwrap_or_default()
    }

    /// Returns the current value. Only a snapshot: other threads may
    /// change it at any time.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(2);
    /// sem.acquire();
    /// assert_eq!(sem.value(), 1);
    /// ```
    #[must_use]
    pub fn value(&self) -> usize {
        self.inner.value()
    }

    /// Blocks until the value is positive, then decrements it.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// sem.acquire();
    /// sem.release().unwrap();
    /// ```
    pub fn acquire(&self) {
        self.inner.acquire_until(None);
    }

    /// Decrements the value if it is positive, without blocking. Returns
    /// whether it did.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// assert!(sem.try_acquire());
    /// assert!(!sem.try_acquire());
    /// ```
    #[must_use = "if it returns true, the caller must release the semaphore"]
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// Like [`acquire`](BoundedSemaphore::acquire), but gives up after
    /// `timeout`. Returns whether the value was decremented.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sem = custody::sync::BoundedSemaphore::new(0);
    /// assert!(!sem.acquire_timeout(Duration::from_millis(5)));
    /// ```
    #[must_use = "if it returns true, the caller must release the semaphore"]
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_until(deadline_after(timeout))
    }

    /// Increments the value by one and wakes one waiting thread.
    ///
    /// # Errors
    ///
    /// Returns [`ReleaseError`], changing nothing, if the value is already
    /// at its initial value.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// sem.acquire();
    /// assert!(sem.release().is_ok());
    /// assert!(sem.release().is_err());
    /// ```
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.inner.release_n(1)
    }

    /// Increments the value by `n` and wakes up to `n` waiting threads.
    /// `n == 0` is accepted and does nothing.
    ///
    /// # Errors
    ///
    /// Returns [`ReleaseError`] if the value would exceed the initial
    /// value; the release is then refused entirely (the value does not
    /// move and nobody is woken).
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(3);
    /// sem.acquire();
    /// sem.acquire();
    /// assert!(sem.release_n(3).is_err());
    /// assert_eq!(sem.value(), 1);
    /// assert!(sem.release_n(2).is_ok());
    /// ```
    pub fn release_n(&self, n: usize) -> Result<(), ReleaseError> {
        self.inner.release_n(n)
    }

    /// Acquires the semaphore (blocking) and returns a guard that releases
    /// it when dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// {
    ///     let _permit = sem.acquire_guard();
    ///     assert_eq!(sem.value(), 0);
    /// }
    /// assert_eq!(sem.value(), 1);
    /// ```
    #[doc(alias = "access")]
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn acquire_guard(&self) -> SemaphoreGuard<'_> {
        self.inner.acquire_until(None);
        SemaphoreGuard { inner: &self.inner }
    }

    /// Like [`try_acquire`](BoundedSemaphore::try_acquire), returning a
    /// guard that releases on drop.
    ///
    /// # Examples
    ///
    /// ```
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// let permit = sem.try_acquire_guard();
    /// assert!(permit.is_some());
    /// assert!(sem.try_acquire_guard().is_none());
    /// ```
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn try_acquire_guard(&self) -> Option<SemaphoreGuard<'_>> {
        self.inner
            .try_acquire()
            .then(|| SemaphoreGuard { inner: &self.inner })
    }

    /// Like [`acquire_timeout`](BoundedSemaphore::acquire_timeout),
    /// returning a guard that releases on drop.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let sem = custody::sync::BoundedSemaphore::new(1);
    /// let permit = sem.acquire_guard_timeout(Duration::from_millis(5));
    /// assert!(permit.is_some());
    /// assert!(sem.acquire_guard_timeout(Duration::from_millis(5)).is_none());
    /// ```
    #[must_use = "dropping the guard releases the semaphore at once"]
    pub fn acquire_guard_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        self.inner
            .acquire_until(deadline_after(timeout))
            .then(|| SemaphoreGuard { inner: &self.inner })
    }
}

/// A permit of a [`Semaphore`] or [`BoundedSemaphore`], released when the
/// guard is dropped.
///
/// If the permit was already given back by hand (an extra
/// [`BoundedSemaphore::release`]), the release on drop is refused silently
/// instead of exceeding the bound.
///
/// # Examples
///
/// ```
/// let sem = custody::sync::Semaphore::new(1);
/// let permit = sem.acquire_guard();
/// assert_eq!(sem.value(), 0);
/// drop(permit);
/// assert_eq!(sem.value(), 1);
/// ```
#[must_use = "dropping the guard releases the semaphore at once"]
pub struct SemaphoreGuard<'a> {
    inner: &'a Inner,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // A bounded semaphore refuses the release only if the permit was
        // already returned by hand; there is nothing else to do then.
        let _ = self.inner.release_n(1);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").finish_non_exhaustive()
    }
}
