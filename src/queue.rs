//! [`JoinableQueue`], a port of Python's `queue.Queue` (3.13, including
//! `shutdown`).
//!
//! | Python                              | Rust                                        |
//! | ----------------------------------- | ------------------------------------------- |
//! | `Queue(maxsize)`                    | [`JoinableQueue::new`]                      |
//! | `put(item)`                         | [`JoinableQueue::put`]                      |
//! | `put(item, timeout=t)`              | [`JoinableQueue::put_timeout`]              |
//! | `put_nowait(item)`                  | [`JoinableQueue::put_nowait`]               |
//! | `get()`                             | [`JoinableQueue::get`]                      |
//! | `get(timeout=t)`                    | [`JoinableQueue::get_timeout`]              |
//! | `get_nowait()`                      | [`JoinableQueue::get_nowait`]               |
//! | `task_done()`                       | [`JoinableQueue::task_done`]                |
//! | `join()`                            | [`JoinableQueue::join`]                     |
//! | `qsize()`, `empty()`, `full()`      | [`qsize`](JoinableQueue::qsize), [`empty`](JoinableQueue::empty), [`full`](JoinableQueue::full) |
//! | `maxsize`, `unfinished_tasks`       | [`maxsize`](JoinableQueue::maxsize), [`unfinished_tasks`](JoinableQueue::unfinished_tasks) |
//! | `shutdown(immediate)`, `is_shutdown`| [`shutdown`](JoinableQueue::shutdown), [`is_shutdown`](JoinableQueue::is_shutdown) |
//! | `queue.Full`                        | [`PutError::Full`]                          |
//! | `queue.Empty`                       | [`GetError::Empty`]                         |
//! | `queue.ShutDown`                    | [`PutError::ShutDown`], [`GetError::ShutDown`] |
//! | `ValueError` from `task_done()`     | [`TaskDoneError`]                           |
//!
//! Added for Rust: [`JoinableQueue::join_timeout`], and guarded gets
//! ([`get_guarded`](JoinableQueue::get_guarded) and friends) returning a
//! [`Task`] that calls `task_done` when dropped.
//!
//! # Examples
//!
//! ```
//! use std::thread;
//! use custody::queue::JoinableQueue;
//!
//! let queue = JoinableQueue::new(0);
//! thread::scope(|s| {
//!     s.spawn(|| {
//!         // Python: while True: item = q.get(); ...; q.task_done()
//!         while let Ok(task) = queue.get_guarded() {
//!             println!("working on {}", *task);
//!         } // each task is marked done when `task` is dropped
//!     });
//!     for item in 0..30 {
//!         queue.put(item).unwrap();
//!     }
//!     queue.join(); // all work completed
//!     queue.shutdown(false); // lets the worker's loop end
//! });
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::sync::{lock, wait_until};
use crate::util::{Backoff, deadline_after};

/// Returned by the `put` methods of [`JoinableQueue`]; gives the item
/// back.
///
/// When the queue is both full and shut down, the error is `ShutDown`.
/// Use [`into_inner`](PutError::into_inner) to recover the item in either
/// case.
///
/// # Examples
///
/// ```
/// use custody::queue::{JoinableQueue, PutError};
///
/// let queue = JoinableQueue::new(1);
/// queue.put_nowait("a").unwrap();
/// let err = queue.put_nowait("b").unwrap_err();
/// assert!(matches!(err, PutError::Full("b")));
/// queue.shutdown(false);
/// assert_eq!(queue.put_nowait("c").unwrap_err().into_inner(), "c");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum PutError<T> {
    /// The queue was full (Python's `queue.Full`): from
    /// [`put_nowait`](JoinableQueue::put_nowait) at once, from
    /// [`put_timeout`](JoinableQueue::put_timeout) after the timeout.
    #[error("queue is full")]
    Full(T),
    /// The queue is shut down (Python's `queue.ShutDown`).
    #[error("queue is shut down")]
    ShutDown(T),
}

impl<T> PutError<T> {
    /// Returns the item that could not be put.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::queue::PutError;
    ///
    /// assert_eq!(PutError::Full(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(item) | Self::ShutDown(item) => item,
        }
    }

    /// Returns `true` for [`PutError::Full`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(custody::queue::PutError::Full(()).is_full());
    /// ```
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Returns `true` for [`PutError::ShutDown`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(custody::queue::PutError::ShutDown(()).is_shut_down());
    /// ```
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        matches!(self, Self::ShutDown(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::ShutDown(_) => f.write_str("ShutDown(..)"),
        }
    }
}

/// Returned by the `get` methods of [`JoinableQueue`].
///
/// # Examples
///
/// ```
/// use custody::queue::{GetError, JoinableQueue};
///
/// let queue = JoinableQueue::<u8>::new(0);
/// assert_eq!(queue.get_nowait(), Err(GetError::Empty));
/// queue.shutdown(false);
/// assert_eq!(queue.get_nowait(), Err(GetError::ShutDown));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum GetError {
    /// The queue was empty (Python's `queue.Empty`): from
    /// [`get_nowait`](JoinableQueue::get_nowait) at once, from
    /// [`get_timeout`](JoinableQueue::get_timeout) after the timeout.
    #[error("queue is empty")]
    Empty,
    /// The queue is shut down and has no items left (Python's
    /// `queue.ShutDown`).
    #[error("queue is shut down")]
    ShutDown,
}

/// Returned by [`JoinableQueue::task_done`] when called more times than
/// items were put (Python raises `ValueError`). The counter is left at
/// zero.
///
/// # Examples
///
/// ```
/// use custody::queue::{JoinableQueue, TaskDoneError};
///
/// let queue = JoinableQueue::<()>::new(0);
/// assert_eq!(queue.task_done(), Err(TaskDoneError));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("task_done called more times than items were put")]
pub struct TaskDoneError;

/// Returned by [`JoinableQueue::join_timeout`] when unfinished tasks
/// remain after the timeout.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::queue::{JoinTimeoutError, JoinableQueue};
///
/// let queue = JoinableQueue::new(0);
/// queue.put(1).unwrap();
/// assert_eq!(queue.join_timeout(Duration::from_millis(5)), Err(JoinTimeoutError));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("timed out waiting for all tasks to be done")]
pub struct JoinTimeoutError;

/// How long an operation may block.
#[derive(Debug, Clone, Copy)]
enum Block {
    /// Fail at once (`*_nowait`).
    No,
    /// Block until the deadline; `None` means forever.
    Until(Option<Instant>),
}

struct State<T> {
    items: VecDeque<T>,
    unfinished_tasks: usize,
    shutdown: bool,
    /// Threads blocked in a get, a put and a join. Notifications are
    /// skipped when nobody waits.
    getters: usize,
    putters: usize,
    joiners: usize,
}

/// A FIFO queue with task tracking and shutdown, with the semantics of
/// Python 3.13's `queue.Queue`.
///
/// * [`put`](JoinableQueue::put) blocks while the queue holds `maxsize`
///   items (`maxsize == 0` means unbounded, as in Python);
///   [`get`](JoinableQueue::get) blocks while it is empty.
/// * Every put raises the count of unfinished tasks;
///   [`task_done`](JoinableQueue::task_done) lowers it, and
///   [`join`](JoinableQueue::join) blocks until it is zero. The guarded
///   gets ([`get_guarded`](JoinableQueue::get_guarded) and friends) return
///   a [`Task`] that calls `task_done` exactly once, when dropped.
/// * [`shutdown(false)`](JoinableQueue::shutdown) makes puts fail and lets
///   gets drain the remaining items before failing;
///   [`shutdown(true)`](JoinableQueue::shutdown) also discards the
///   remaining items. Blocked threads are woken.
///
/// Timeouts are turned into a deadline once, so spurious wake-ups never
/// extend the total wait. A timed-out get takes nothing: an item put
/// after it gave up stays in the queue.
///
/// `JoinableQueue<T>` is `Send + Sync` when `T: Send`. It is not `Clone`:
/// share one queue between threads by reference (scoped threads) or
/// through an [`Arc`](std::sync::Arc).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::thread;
/// use custody::queue::JoinableQueue;
///
/// let queue = Arc::new(JoinableQueue::new(4));
/// let consumer = {
///     let queue = Arc::clone(&queue);
///     thread::spawn(move || {
///         let mut sum = 0;
///         while let Ok(n) = queue.get() {
///             sum += n;
///             queue.task_done().unwrap();
///         }
///         sum
///     })
/// };
/// for n in 1..=100 {
///     queue.put(n).unwrap();
/// }
/// queue.join();
/// queue.shutdown(false);
/// assert_eq!(consumer.join().unwrap(), 5050);
/// ```
pub struct JoinableQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item is added, and on shutdown.
    not_empty: Condvar,
    /// Signalled when an item is removed, and on shutdown.
    not_full: Condvar,
    /// Signalled when `unfinished_tasks` drops to zero.
    all_tasks_done: Condvar,
    maxsize: usize,
    /// Copies of `items.len()` and `shutdown`, written under the lock and
    /// read without it by spinning threads. Only hints: every decision is
    /// taken again under the lock.
    len_hint: AtomicUsize,
    shutdown_hint: AtomicBool,
}

impl<T> JoinableQueue<T> {
    /// Creates a queue holding at most `maxsize` items; `0` means
    /// unbounded (as in Python, and unlike a zero-capacity channel).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::queue::JoinableQueue;
    ///
    /// let bounded = JoinableQueue::<u32>::new(10);
    /// assert_eq!(bounded.maxsize(), 10);
    /// let unbounded = JoinableQueue::<u32>::new(0);
    /// unbounded.put_nowait(1).unwrap(); // never full
    /// ```
    #[must_use]
    pub fn new(maxsize: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                unfinished_tasks: 0,
                shutdown: false,
                getters: 0,
                putters: 0,
                joiners: 0,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            all_tasks_done: Condvar::new(),
            maxsize,
            len_hint: AtomicUsize::new(0),
            shutdown_hint: AtomicBool::new(false),
        }
    }

    /// Returns the capacity given to [`new`](JoinableQueue::new) (`0`:
    /// unbounded).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(custody::queue::JoinableQueue::<()>::new(3).maxsize(), 3);
    /// ```
    #[must_use]
    pub fn maxsize(&self) -> usize {
        self.maxsize
    }

    /// Returns the number of items in the queue. Only a snapshot: other
    /// threads may change it at any time.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put('a').unwrap();
    /// assert_eq!(queue.qsize(), 1);
    /// ```
    #[doc(alias = "len")]
    #[must_use]
    pub fn qsize(&self) -> usize {
        self.lock().items.len()
    }

    /// Returns `true` if the queue holds no items (a snapshot).
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::<u8>::new(0);
    /// assert!(queue.empty());
    /// ```
    #[doc(alias = "is_empty")]
    #[must_use]
    pub fn empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Returns `true` if the queue is bounded and holds `maxsize` items (a
    /// snapshot). An unbounded queue is never full.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(1);
    /// queue.put(()).unwrap();
    /// assert!(queue.full());
    /// ```
    #[doc(alias = "is_full")]
    #[must_use]
    pub fn full(&self) -> bool {
        self.is_full(&self.lock())
    }

    /// Returns the number of items put and not yet marked done with
    /// [`task_done`](JoinableQueue::task_done).
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// queue.get().unwrap();
    /// assert_eq!(queue.unfinished_tasks(), 1);
    /// queue.task_done().unwrap();
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// ```
    #[must_use]
    pub fn unfinished_tasks(&self) -> usize {
        self.lock().unfinished_tasks
    }

    /// Returns `true` once [`shutdown`](JoinableQueue::shutdown) has been
    /// called.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::<()>::new(0);
    /// queue.shutdown(false);
    /// assert!(queue.is_shutdown());
    /// ```
    #[doc(alias = "is_closed")]
    #[must_use]
    pub fn is_shutdown(&self) -> bool {
        self.lock().shutdown
    }

    /// Puts `item` at the back of the queue, blocking while the queue is
    /// full.
    ///
    /// # Errors
    ///
    /// Returns [`PutError::ShutDown`] with the item if the queue is shut
    /// down, before or while this call waits; never `Full`.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put("job").unwrap();
    /// assert_eq!(queue.get(), Ok("job"));
    /// ```
    #[doc(alias = "push")]
    #[doc(alias = "send")]
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_inner(item, Block::Until(None))
    }

    /// Like [`put`](JoinableQueue::put), but waits at most `timeout` for
    /// room.
    ///
    /// # Errors
    ///
    /// Returns [`PutError::Full`] with the item if the queue is still full
    /// after `timeout`, and [`PutError::ShutDown`] with the item if the
    /// queue is shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::queue::PutError;
    ///
    /// let queue = custody::queue::JoinableQueue::new(1);
    /// queue.put(1).unwrap();
    /// let err = queue.put_timeout(2, Duration::from_millis(5)).unwrap_err();
    /// assert!(matches!(err, PutError::Full(2)));
    /// ```
    #[doc(alias = "send_timeout")]
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_inner(item, Block::Until(deadline_after(timeout)))
    }

    /// Puts `item` only if there is room right now.
    ///
    /// # Errors
    ///
    /// Returns [`PutError::Full`] with the item if the queue is full, and
    /// [`PutError::ShutDown`] with the item if it is shut down (even if it
    /// is also full).
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(1);
    /// assert!(queue.put_nowait(1).is_ok());
    /// assert!(queue.put_nowait(2).unwrap_err().is_full());
    /// ```
    #[doc(alias = "try_push")]
    #[doc(alias = "try_send")]
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.put_inner(item, Block::No)
    }

    /// Removes and returns the item at the front of the queue, blocking
    /// while it is empty.
    ///
    /// After [`shutdown(false)`](JoinableQueue::shutdown), the remaining
    /// items are still returned, in order.
    ///
    /// # Errors
    ///
    /// Returns [`GetError::ShutDown`] if the queue is shut down and empty,
    /// before or while this call waits; never `Empty`.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// queue.put(2).unwrap();
    /// assert_eq!(queue.get(), Ok(1));
    /// assert_eq!(queue.get(), Ok(2));
    /// ```
    #[doc(alias = "pop")]
    #[doc(alias = "recv")]
    pub fn get(&self) -> Result<T, GetError> {
        self.get_inner(Block::Until(None))
    }

    /// Like [`get`](JoinableQueue::get), but waits at most `timeout` for
    /// an item.
    ///
    /// # Errors
    ///
    /// Returns [`GetError::Empty`] if no item arrived within `timeout`
    /// (Python raises `queue.Empty`), and [`GetError::ShutDown`] if the
    /// queue is shut down and empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::queue::GetError;
    ///
    /// let queue = custody::queue::JoinableQueue::<u8>::new(0);
    /// assert_eq!(queue.get_timeout(Duration::from_millis(5)), Err(GetError::Empty));
    /// ```
    #[doc(alias = "recv_timeout")]
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_inner(Block::Until(deadline_after(timeout)))
    }

    /// Removes and returns the front item only if there is one right now.
    ///
    /// # Errors
    ///
    /// Returns [`GetError::Empty`] if the queue is empty, and
    /// [`GetError::ShutDown`] if it is shut down and empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::queue::GetError;
    ///
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// assert_eq!(queue.get_nowait(), Err(GetError::Empty));
    /// queue.put(5).unwrap();
    /// assert_eq!(queue.get_nowait(), Ok(5));
    /// ```
    #[doc(alias = "try_pop")]
    #[doc(alias = "try_recv")]
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.get_inner(Block::No)
    }

    /// Like [`get`](JoinableQueue::get), but returns the item in a
    /// [`Task`] guard that calls [`task_done`](JoinableQueue::task_done)
    /// when dropped, so it can neither be forgotten nor called twice.
    ///
    /// # Errors
    ///
    /// As [`get`](JoinableQueue::get): [`GetError::ShutDown`] if the queue
    /// is shut down and empty.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(String::from("job")).unwrap();
    /// {
    ///     let task = queue.get_guarded().unwrap();
    ///     assert_eq!(task.len(), 3);
    ///     assert_eq!(queue.unfinished_tasks(), 1);
    /// }
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// queue.join(); // returns at once
    /// ```
    pub fn get_guarded(&self) -> Result<Task<'_, T>, GetError> {
        self.get().map(|item| Task::new(self, item))
    }

    /// Like [`get_timeout`](JoinableQueue::get_timeout), returning a
    /// [`Task`] guard (see [`get_guarded`](JoinableQueue::get_guarded)).
    ///
    /// # Errors
    ///
    /// As [`get_timeout`](JoinableQueue::get_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// let task = queue.get_guarded_timeout(Duration::from_millis(5)).unwrap();
    /// assert_eq!(*task, 1);
    /// task.done();
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// ```
    pub fn get_guarded_timeout(&self, timeout: Duration) -> Result<Task<'_, T>, GetError> {
        self.get_timeout(timeout).map(|item| Task::new(self, item))
    }

    /// Like [`get_nowait`](JoinableQueue::get_nowait), returning a
    /// [`Task`] guard (see [`get_guarded`](JoinableQueue::get_guarded)).
    ///
    /// # Errors
    ///
    /// As [`get_nowait`](JoinableQueue::get_nowait).
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// assert!(queue.get_guarded_nowait().is_err());
    /// queue.put(vec![1, 2]).unwrap();
    /// let mut task = queue.get_guarded_nowait().unwrap();
    /// task.push(3);
    /// assert_eq!(task.into_inner(), [1, 2, 3]);
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// ```
    pub fn get_guarded_nowait(&self) -> Result<Task<'_, T>, GetError> {
        self.get_nowait().map(|item| Task::new(self, item))
    }

    /// Marks one task as done: lowers the count of unfinished tasks and,
    /// when it reaches zero, releases every thread blocked in
    /// [`join`](JoinableQueue::join).
    ///
    /// Call it once per item taken with a plain get, after processing the
    /// item. Items taken with the guarded gets are marked done by their
    /// [`Task`] guard instead.
    ///
    /// # Errors
    ///
    /// Returns [`TaskDoneError`], leaving the count at zero, if there are
    /// no unfinished tasks.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// let _ = queue.get().unwrap();
    /// assert!(queue.task_done().is_ok());
    /// assert!(queue.task_done().is_err());
    /// ```
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let mut state = self.lock();
        if state.unfinished_tasks == 0 {
            return Err(TaskDoneError);
        }
        state.unfinished_tasks -= 1;
        let wake = state.unfinished_tasks == 0 && state.joiners > 0;
        drop(state);
        if wake {
            self.all_tasks_done.notify_all();
        }
        Ok(())
    }

    /// Blocks until every item ever put has been marked done (the count
    /// of unfinished tasks is zero). Returns at once if it already is.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         let _task = queue.get_guarded().unwrap();
    ///     });
    ///     queue.join();
    /// });
    /// ```
    pub fn join(&self) {
        // Without a deadline this cannot time out.
        let _ = self.join_until(None);
    }

    /// Like [`join`](JoinableQueue::join), but waits at most `timeout`
    /// (Python's `join` has no timeout).
    ///
    /// # Errors
    ///
    /// Returns [`JoinTimeoutError`] if unfinished tasks remain after
    /// `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// assert!(queue.join_timeout(Duration::from_millis(5)).is_ok());
    /// queue.put(1).unwrap();
    /// assert!(queue.join_timeout(Duration::from_millis(5)).is_err());
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        self.join_until(deadline_after(timeout))
    }

    /// Shuts the queue down, like Python 3.13's `Queue.shutdown`.
    ///
    /// From then on, puts fail with [`PutError::ShutDown`] (blocked
    /// putters are woken and get their item back), and gets fail with
    /// [`GetError::ShutDown`] once the queue is empty (blocked getters are
    /// woken).
    ///
    /// With `immediate == false`, gets still return the remaining items in
    /// order. With `immediate == true`, the remaining items are discarded
    /// (dropped) and the count of unfinished tasks is lowered by their
    /// number (not below zero), so that [`join`](JoinableQueue::join)
    /// returns once the items already taken are marked done.
    ///
    /// Shutdown is one-way. Calling it again is allowed in either mode;
    /// `shutdown(true)` after `shutdown(false)` discards what is left.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::queue::{GetError, PutError};
    ///
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// queue.put(2).unwrap();
    /// queue.shutdown(false);
    /// assert!(matches!(queue.put(3), Err(PutError::ShutDown(3))));
    /// assert_eq!(queue.get(), Ok(1));
    /// queue.shutdown(true); // discards 2
    /// assert_eq!(queue.get(), Err(GetError::ShutDown));
    /// assert_eq!(queue.unfinished_tasks(), 1); // item 1 was taken, not done
    /// ```
    #[doc(alias = "close")]
    pub fn shutdown(&self, immediate: bool) {
        let mut state = self.lock();
        state.shutdown = true;
        self.shutdown_hint.store(true, Ordering::Relaxed);
        let discarded = if immediate {
            let discarded = std::mem::take(&mut state.items);
            self.len_hint.store(0, Ordering::Relaxed);
            state.unfinished_tasks = state.unfinished_tasks.saturating_sub(discarded.len());
            discarded
        } else {
            VecDeque::new()
        };
        let wake_getters = state.getters > 0;
        let wake_putters = state.putters > 0;
        let wake_joiners = state.joiners > 0 && state.unfinished_tasks == 0;
        drop(state);
        if wake_getters {
            self.not_empty.notify_all();
        }
        if wake_putters {
            self.not_full.notify_all();
        }
        if wake_joiners {
            self.all_tasks_done.notify_all();
        }
        // The items' destructors run without the lock held.
        drop(discarded);
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        lock(&self.state)
    }

    fn is_full(&self, state: &State<T>) -> bool {
        self.maxsize > 0 && state.items.len() >= self.maxsize
    }

    /// Whether a put might succeed now, judged without the lock.
    fn may_put(&self) -> bool {
        self.shutdown_hint.load(Ordering::Relaxed)
            || self.maxsize == 0
            || self.len_hint.load(Ordering::Relaxed) < self.maxsize
    }

    /// Whether a get might succeed now, judged without the lock.
    fn may_get(&self) -> bool {
        self.shutdown_hint.load(Ordering::Relaxed) || self.len_hint.load(Ordering::Relaxed) > 0
    }

    fn put_inner(&self, item: T, block: Block) -> Result<(), PutError<T>> {
        let mut backoff = Backoff::new();
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return Err(PutError::ShutDown(item));
            }
            if !self.is_full(&state) {
                break;
            }
            let Block::Until(deadline) = block else {
                return Err(PutError::Full(item));
            };
            if backoff.should_spin(deadline) {
                drop(state);
                while !self.may_put() && backoff.should_spin(deadline) {
                    backoff.snooze();
                }
                state = self.lock();
                continue;
            }
            state.putters += 1;
            let waited = wait_until(&self.not_full, state, deadline);
            let expired = waited.is_err();
            let (Ok(guard) | Err(guard)) = waited;
            state = guard;
            state.putters -= 1;
            if expired {
                return Err(PutError::Full(item));
            }
        }
        state.items.push_back(item);
        self.len_hint.store(state.items.len(), Ordering::Relaxed);
        state.unfinished_tasks += 1;
        let wake = state.getters > 0;
        drop(state);
        if wake {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    fn get_inner(&self, block: Block) -> Result<T, GetError> {
        let mut backoff = Backoff::new();
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                self.len_hint.store(state.items.len(), Ordering::Relaxed);
                let wake = state.putters > 0;
                drop(state);
                if wake {
                    self.not_full.notify_one();
                }
                return Ok(item);
            }
            if state.shutdown {
                return Err(GetError::ShutDown);
            }
            let Block::Until(deadline) = block else {
                return Err(GetError::Empty);
            };
            if backoff.should_spin(deadline) {
                drop(state);
                while !self.may_get() && backoff.should_spin(deadline) {
                    backoff.snooze();
                }
                state = self.lock();
                continue;
            }
            state.getters += 1;
            let waited = wait_until(&self.not_empty, state, deadline);
            let expired = waited.is_err();
            let (Ok(guard) | Err(guard)) = waited;
            state = guard;
            state.getters -= 1;
            if expired {
                return Err(GetError::Empty);
            }
        }
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), JoinTimeoutError> {
        let mut state = self.lock();
        while state.unfinished_tasks > 0 {
            state.joiners += 1;
            let waited = wait_until(&self.all_tasks_done, state, deadline);
            let expired = waited.is_err();
            let (Ok(guard) | Err(guard)) = waited;
            state = guard;
            state.joiners -= 1;
            if expired {
                return Err(JoinTimeoutError);
            }
        }
        Ok(())
    }
}

impl<T> Default for JoinableQueue<T> {
    /// An unbounded queue, like `JoinableQueue::new(0)`.
    fn default() -> Self {
        Self::new(0)
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("JoinableQueue")
            .field("maxsize", &self.maxsize)
            .field("qsize", &state.items.len())
            .field("unfinished_tasks", &state.unfinished_tasks)
            .field("is_shutdown", &state.shutdown)
            .finish_non_exhaustive()
    }
}

/// An item taken from a [`JoinableQueue`] by a guarded get; marks the
/// task done ([`JoinableQueue::task_done`]) exactly once, when dropped.
///
/// Gives access to the item through [`Deref`] and [`DerefMut`]. The item
/// is dropped before the task is marked done, so a thread blocked in
/// [`join`](JoinableQueue::join) sees the work fully finished.
///
/// Do not also call `task_done` by hand for a guarded item: that would
/// count it twice. If the count is already zero when the guard marks its
/// task done (because of such an extra call), the guard does nothing.
/// Leaking the guard (e.g. with [`std::mem::forget`]) leaves the task
/// unfinished forever.
///
/// # Examples
///
/// ```
/// let queue = custody::queue::JoinableQueue::new(0);
/// queue.put(10).unwrap();
/// let mut task = queue.get_guarded().unwrap();
/// *task += 1;
/// assert_eq!(*task, 11);
/// drop(task);
/// assert_eq!(queue.unfinished_tasks(), 0);
/// ```
#[must_use = "dropping the task marks it done at once"]
pub struct Task<'a, T> {
    // Declared first so that it is dropped before `guard` marks the task done.
    item: T,
    guard: DoneOnDrop<'a, T>,
}

/// Calls `task_done` on drop.
struct DoneOnDrop<'a, T> {
    queue: &'a JoinableQueue<T>,
}

impl<T> Drop for DoneOnDrop<'_, T> {
    fn drop(&mut self) {
        // Fails only if `task_done` was also called by hand for this
        // item; the count is then already where it should be.
        let _ = self.queue.task_done();
    }
}

impl<'a, T> Task<'a, T> {
    fn new(queue: &'a JoinableQueue<T>, item: T) -> Self {
        Self {
            item,
            guard: DoneOnDrop { queue },
        }
    }

    /// Drops the item and marks the task done now. Equivalent to dropping
    /// the guard, but reads better at the end of the work.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put("work").unwrap();
    /// let task = queue.get_guarded().unwrap();
    /// task.done();
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// ```
    pub fn done(self) {
        drop(self);
    }

    /// Marks the task done now and returns the item, for when the item
    /// outlives the work on it.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(String::from("result")).unwrap();
    /// let item: String = queue.get_guarded().unwrap().into_inner();
    /// assert_eq!(item, "result");
    /// assert_eq!(queue.unfinished_tasks(), 0);
    /// ```
    pub fn into_inner(self) -> T {
        let Self { item, guard } = self;
        drop(guard);
        item
    }

    /// Returns the queue the item was taken from.
    ///
    /// # Examples
    ///
    /// ```
    /// let queue = custody::queue::JoinableQueue::new(0);
    /// queue.put(1).unwrap();
    /// let task = queue.get_guarded().unwrap();
    /// assert!(std::ptr::eq(task.queue(), &queue));
    /// ```
    #[must_use]
    pub fn queue(&self) -> &'a JoinableQueue<T> {
        self.guard.queue
    }
}

impl<T> Deref for Task<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T> DerefMut for Task<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.item
    }
}

impl<T: fmt::Debug> fmt::Debug for Task<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Task").field(&self.item).finish()
    }
}
