//! [`Event`], a port of Python's `threading.Event`.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::{lock, wait, wait_until};
use crate::util::deadline_after;

#[derive(Debug, Default)]
struct State {
    flag: bool,
    /// Incremented by every `set` that changes the flag, so a waiter can
    /// tell that it was released even if the flag was cleared again
    /// before it woke up.
    generation: u64,
}

/// A boolean flag that threads can wait on, like Python's
/// `threading.Event`.
///
/// The flag starts cleared. [`set`](Event::set) sets it and releases every
/// waiting thread; [`clear`](Event::clear) resets it so that later calls to
/// [`wait`](Event::wait) block again. A `set` immediately followed by a
/// `clear` still releases every thread that was waiting at the time of
/// the `set`, as in Python.
///
/// `Event` is `Send + Sync`; share it by reference or through an
/// [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use std::thread;
/// use std::time::Duration;
/// use custody::sync::Event;
///
/// let event = Event::new();
/// assert!(!event.wait_timeout(Duration::from_millis(1)));
/// thread::scope(|s| {
///     s.spawn(|| event.wait());
///     event.set();
/// });
/// assert!(event.is_set());
/// event.clear();
/// assert!(!event.is_set());
/// ```
#[derive(Default)]
pub struct Event {
    state: Mutex<State>,
    condvar: Condvar,
}

impl Event {
    /// Creates an event whose flag is cleared.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = custody::sync::Event::new();
    /// assert!(!event.is_set());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns `true` if the flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = custody::sync::Event::new();
    /// event.set();
    /// assert!(event.is_set());
    /// ```
    #[must_use]
    pub fn is_set(&self) -> bool {
        lock(&self.state).flag
    }

    /// Sets the flag and wakes every thread waiting for it. Threads that
    /// call [`wait`](Event::wait) while the flag is set do not block.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = custody::sync::Event::new();
    /// event.set();
    /// event.wait(); // returns at once
    /// ```
    pub fn set(&self) {
        let mut state = lock(&self.state);
        if !state.flag {
            state.flag = true;
            state.generation = state.generation.wrapping_add(1);
            drop(state);
            self.condvar.notify_all();
        }
    }

    /// Clears the flag, so that later calls to [`wait`](Event::wait)
    /// block until [`set`](Event::set) is called again.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = custody::sync::Event::new();
    /// event.set();
    /// event.clear();
    /// assert!(!event.is_set());
    /// ```
    pub fn clear(&self) {
        lock(&self.state).flag = false;
    }

    /// Blocks until the flag is set. Returns at once if it is already set.
    ///
    /// # Examples
    ///
    /// ```
    /// let event = custody::sync::Event::new();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| event.set());
    ///     event.wait();
    /// });
    /// ```
    pub fn wait(&self) {
        let mut state = lock(&self.state);
        let generation = state.generation;
        while !state.flag && state.generation == generation {
            state = wait(&self.condvar, state);
        }
    }

    /// Blocks until the flag is set or `timeout` has elapsed.
    ///
    /// Returns `true` if the flag was set (at entry or by a
    /// [`set`](Event::set) during the wait, even if it was cleared again
    /// since) and `false` on timeout, like Python's `Event.wait(timeout)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let event = custody::sync::Event::new();
    /// assert!(!event.wait_timeout(Duration::from_millis(5)));
    /// event.set();
    /// assert!(event.wait_timeout(Duration::from_millis(5)));
    /// ```
    #[must_use = "the result tells whether the event was set or the wait timed out"]
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = deadline_after(timeout);
        let mut state = lock(&self.state);
        let generation = state.generation;
        loop {
            if state.flag || state.generation != generation {
                return true;
            }
            match wait_until(&self.condvar, state, deadline) {
                Ok(guard) => state = guard,
                Err(_) => return false,
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}
