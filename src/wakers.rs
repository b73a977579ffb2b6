//! `Wakers`: the tasks waiting on one condition, for the awaitable calls.
//!
//! A blocking caller sleeps on a condvar or parks its thread; a future
//! registers its task's `Waker` here instead and returns `Pending`. The list
//! is first in, first out, and each entry has a key, so that a future can
//! replace its waker when polled again, take itself out when dropped, and
//! learn whether it had already been woken (popped) meanwhile: a future
//! dropped after being woken, without using what it was woken for, passes the
//! wake-up on to the next in line, so that no waiter is left asleep.
//!
//! The protocol that keeps wake-ups from being lost is the caller's, always
//! the same shape: the waiter registers, then a `SeqCst` fence, then checks
//! its condition again; the waker makes the condition true, then a `SeqCst`
//! fence, then reads [`Wakers::is_empty`]. One of the two sees the other.

use std::collections::VecDeque;
use std::sync::PoisonError;
use std::task::Waker;

use crate::sync_shim::Mutex;
use crate::sync_shim::atomic::{AtomicUsize, Ordering::SeqCst, fence};

/// A waiter's place in a [`Wakers`] list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key(u64);

pub(crate) struct Wakers {
    /// Entries in the list, readable without the lock.
    len: AtomicUsize,
    inner: Mutex<Inner>,
}

struct Inner {
    next_key: u64,
    queue: VecDeque<(Key, Waker)>,
}

impl Default for Wakers {
    fn default() -> Wakers {
        Wakers::new()
    }
}

impl Wakers {
    pub(crate) fn new() -> Wakers {
        Wakers {
            len: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                next_key: 1,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Whether nobody waits (a hint: read it after a `SeqCst` fence).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(SeqCst) == 0
    }

    /// Puts `waker` in the list under `key`: replaces the waker if `key` is
    /// still listed, adds it at the back if `key` is `None`, and at the front
    /// if `key` was popped (woken) and the waiter must wait again: it keeps its
    /// turn. Returns the key to use next time.
    pub(crate) fn register(&self, key: Option<Key>, waker: &Waker) -> Key {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = key {
            if let Some(entry) = inner.queue.iter_mut().find(|(k, _)| *k == key) {
                if !entry.1.will_wake(waker) {
                    entry.1 = waker.clone();
                }
                return key;
            }
            inner.queue.push_front((key, waker.clone()));
            self.len.fetch_add(1, SeqCst);
            return key;
        }
        let key = Key(inner.next_key);
        inner.next_key += 1;
        inner.queue.push_back((key, waker.clone()));
        self.len.fetch_add(1, SeqCst);
        key
    }

    /// The waiter's half of the protocol: [`register`](Wakers::register),
    /// then a `SeqCst` fence. The caller checks its condition after this,
    /// and waits only if it is still false.
    pub(crate) fn register_then_fence(&self, key: Option<Key>, waker: &Waker) -> Key {
        let key = self.register(key, waker);
        fence(SeqCst);
        key
    }

    /// The waker's half, after the condition was made true: a `SeqCst`
    /// fence, then wake the first in line if anyone is listed.
    #[inline]
    pub(crate) fn fence_then_wake_one(&self) {
        fence(SeqCst);
        if !self.is_empty() {
            self.wake_one();
        }
    }

    /// Takes `key` out of the list. Returns `false` if it was no longer
    /// listed: it has been woken.
    pub(crate) fn remove(&self, key: Key) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.queue.iter().position(|(k, _)| *k == key) {
            Some(at) => {
                inner.queue.remove(at);
                self.len.fetch_sub(1, SeqCst);
                true
            }
            None => false,
        }
    }

    /// A waiter gives up: it leaves the list, and if it had already been
    /// woken (it is no longer listed) the wake-up it will not use goes to
    /// the next in line.
    pub(crate) fn leave_passing_on(&self, key: Key) {
        if !self.remove(key) {
            self.wake_one();
        }
    }

    /// Wakes the first in line, if any. Returns whether one was woken.
    pub(crate) fn wake_one(&self) -> bool {
        let first = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let first = inner.queue.pop_front();
            if first.is_some() {
                self.len.fetch_sub(1, SeqCst);
            }
            first
        };
        // Woken outside the lock: a waker may run the task at once.
        match first {
            Some((_, waker)) => {
                wake(waker);
                true
            }
            None => false,
        }
    }

    /// Wakes everyone in the list.
    pub(crate) fn wake_all(&self) {
        let all = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            self.len.store(0, SeqCst);
            std::mem::take(&mut inner.queue)
        };
        for (_, waker) in all {
            wake(waker);
        }
    }
}

/// Wakes a task. A waker is the executor's code, run here on whatever
/// thread makes the condition true (often a manager thread, between two
/// messages): a panic in it is caught and traced, so that it cannot end that
/// thread; the task it should have woken is then the executor's problem.
pub(crate) fn wake(waker: Waker) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake())).is_err() {
        tracing::error!("a task's waker panicked; the panic was caught");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::Wakers;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&count), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn wakers_are_woken_first_in_first_out() {
        let list = Wakers::new();
        let (a, wa) = counting();
        let (b, wb) = counting();
        list.register(None, &wa);
        list.register(None, &wb);
        assert!(list.wake_one());
        assert_eq!((woken(&a), woken(&b)), (1, 0));
        assert!(list.wake_one());
        assert_eq!((woken(&a), woken(&b)), (1, 1));
        assert!(!list.wake_one());
        assert!(list.is_empty());
    }

    #[test]
    fn a_woken_waiter_that_waits_again_keeps_its_turn() {
        let list = Wakers::new();
        let (a, wa) = counting();
        let (b, wb) = counting();
        let ka = list.register(None, &wa);
        list.register(None, &wb);
        list.wake_one(); // a
        assert!(!list.remove(ka), "a was woken, so it is no longer listed");
        list.register(Some(ka), &wa); // a lost the race and waits again
        list.wake_one();
        assert_eq!((woken(&a), woken(&b)), (2, 0), "a is still first");
    }

    #[test]
    fn registering_again_replaces_the_waker_without_a_second_entry() {
        let list = Wakers::new();
        let (a, wa) = counting();
        let (b, wb) = counting();
        let key = list.register(None, &wa);
        assert_eq!(list.register(Some(key), &wb), key);
        list.wake_all();
        assert_eq!((woken(&a), woken(&b)), (0, 1));
        assert!(list.is_empty());
    }

    struct Panics;
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a waker that panics");
        }
    }

    #[test]
    fn a_panicking_waker_is_caught_and_the_next_is_still_woken() {
        let list = Wakers::new();
        let (b, wb) = counting();
        list.register(None, &Waker::from(Arc::new(Panics)));
        list.register(None, &wb);
        list.wake_all();
        assert_eq!(woken(&b), 1);
        list.register(None, &Waker::from(Arc::new(Panics)));
        assert!(list.wake_one(), "it was woken, and its panic caught");
    }

    #[test]
    fn a_removed_waiter_is_not_woken() {
        let list = Wakers::new();
        let (a, wa) = counting();
        let key = list.register(None, &wa);
        assert!(list.remove(key));
        assert!(list.is_empty());
        assert!(!list.wake_one());
        assert_eq!(woken(&a), 0);
    }
}
