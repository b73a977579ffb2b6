//! The primitives under the gate, the reply slot and the list of waiting
//! tasks: `std`'s, or loom's when the crate is built with
//! `RUSTFLAGS="--cfg loom"` (see `src/loom_models.rs`).
//!
//! `src/mailbox/gate.rs`, `src/reply.rs` and `src/wakers.rs` take their
//! atomics, locks, thread parking and clock from here, so that the loom models check the production
//! code itself, not a copy of it. Everything else in the crate keeps using
//! `std` directly. `Arc` is not in the list: the reply slot's `Arc` is shared
//! with `handle.rs` and `owner.rs` and coerced to `Arc<dyn Unanswered>`,
//! which loom's `Arc` cannot do; it only counts owners, and carries no
//! message between threads.
//!
//! Loom has no clock, so under loom time is logical, and per thread:
//!
//! - time passes only when a thread looks at its clock ([`time::now`] moves it
//!   on by `time::LOOK`) or makes a timed wait;
//! - a timed wait ([`thread::park_timeout`], [`time::wait_timeout`]) is a wait
//!   whose timeout fires at once: the thread's clock moves on by the whole
//!   timeout, the thread yields (so the others may run first, without using
//!   up the model's preemption bound), and the wait returns. A condvar wait
//!   releases its lock meanwhile and takes it again.
//!
//! Modelling a timed wait as a plain (untimed) wait would make a model hang
//! wherever the production code relies on the timeout, and loom would report
//! a deadlock that cannot happen. Firing at once never blocks, explores the
//! timeout path against every interleaving of the other threads, and leaves
//! the "woken before the deadline" path to the untimed waits (`deadline:
//! None`), which are real loom waits: there a lost wake-up leaves a thread
//! blocked forever, which loom reports. The two paths run the same wake-up
//! code, so together they cover it.
//!
//! The reply slot's spin ("poll for 20 µs") becomes a bounded number of looks
//! under loom: each look at the clock costs `time::LOOK`, so after its first
//! poll and `yield_now` the spin ends after `SPIN_FOR / LOOK` looks (four,
//! the fourth with its `yield_now`), with
//! one poll per look (`SPINS_PER_LOOK`): loom lets every load of a spin read
//! any value not yet superseded for that thread, so each poll doubles the
//! executions to explore. Its `std::hint::spin_loop` stays `std`'s,
//! invisible to loom, as it is to the scheduler (a pause, not a yield); loom's
//! own `spin_loop` yields, which would hand the core to the answering thread
//! at every poll, so that the asker would never reach its park before the
//! answer. Its explicit `yield_now`s (after the first poll, and every fourth
//! look) are loom's.

#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence,
    };
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence,
    };
}

pub(crate) mod thread {
    use std::time::Duration;

    #[cfg(loom)]
    pub(crate) use loom::thread::{Thread, current, panicking, park, yield_now};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{Thread, current, panicking, park, yield_now};

    /// `std::thread::park_timeout`; under loom, a timeout that fires at once.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn park_timeout(dur: Duration) {
        std::thread::park_timeout(dur);
    }

    /// `std::thread::park_timeout`; under loom, a timeout that fires at once.
    #[cfg(loom)]
    pub(crate) fn park_timeout(dur: Duration) {
        super::time::advance(dur);
        loom::thread::yield_now();
    }
}

pub(crate) mod time {
    use std::sync::LockResult;
    use std::time::{Duration, Instant};

    use super::{Condvar, Mutex, MutexGuard};

    /// `Instant::now()`; under loom, the thread's logical clock, which this
    /// look moves on by `LOOK`.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn now() -> Instant {
        Instant::now()
    }

    /// How far one look at the clock moves a thread's logical clock (loom).
    #[cfg(loom)]
    pub(crate) const LOOK: Duration = Duration::from_micros(5);

    #[cfg(loom)]
    loom::thread_local! {
        /// Logical time this thread has spent, reset for every execution.
        static SPENT: std::cell::Cell<Duration> = std::cell::Cell::new(Duration::ZERO);
    }

    /// The origin of every logical clock: a constant within the process, so
    /// each execution of a model sees the same instants.
    #[cfg(loom)]
    fn origin() -> Instant {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    /// `Instant::now()`; under loom, the thread's logical clock, which this
    /// look moves on by `LOOK`.
    #[cfg(loom)]
    pub(crate) fn now() -> Instant {
        let spent = SPENT.with(|s| s.replace(s.get() + LOOK));
        origin() + spent
    }

    /// Moves this thread's logical clock on by `dur` (loom).
    #[cfg(loom)]
    pub(crate) fn advance(dur: Duration) {
        SPENT.with(|s| s.set(s.get() + dur));
    }

    /// `condvar.wait_timeout(guard, dur)`, with the mutex `guard` locks.
    /// Under loom the timeout fires at once: the lock is released, the thread
    /// yields, and the lock is taken again.
    #[cfg(not(loom))]
    #[inline]
    pub(crate) fn wait_timeout<'a, T>(
        condvar: &Condvar,
        _mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> LockResult<(MutexGuard<'a, T>, ())> {
        match condvar.wait_timeout(guard, dur) {
            Ok((guard, _)) => Ok((guard, ())),
            Err(poisoned) => Err(std::sync::PoisonError::new((poisoned.into_inner().0, ()))),
        }
    }

    /// `condvar.wait_timeout(guard, dur)`, with the mutex `guard` locks.
    /// Under loom the timeout fires at once: the lock is released, the thread
    /// yields, and the lock is taken again.
    #[cfg(loom)]
    pub(crate) fn wait_timeout<'a, T>(
        _condvar: &Condvar,
        mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> LockResult<(MutexGuard<'a, T>, ())> {
        drop(guard);
        advance(dur);
        loom::thread::yield_now();
        match mutex.lock() {
            Ok(guard) => Ok((guard, ())),
            Err(poisoned) => Err(std::sync::PoisonError::new((poisoned.into_inner(), ()))),
        }
    }
}
