//! Small helpers shared across the crate: deadlines from timeouts, a spin
//! then yield backoff, and cache-line padding.
//!
//! Two other busy-waits stay where they are, on purpose: the reply slot's
//! poll (`reply.rs`: time-bounded, yielding every fourth look, and
//! model-checked through `sync_shim`) and the manager loop's microsecond
//! `linger` (`mailbox/mod.rs`), whose costs are measured on their own.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

/// `now + timeout`, or no deadline (`None`, wait forever) when that
/// overflows: a huge timeout waits forever rather than panicking.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// `now + delay`, saturating far in the future for huge delays.
pub(crate) fn instant_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

/// Brief spinning before a blocking put or get goes to sleep.
///
/// A producer and a consumer on different cores usually hand over within
/// microseconds, far less than a sleep and wake-up on a condition
/// variable costs; and a thread that has not registered as a waiter
/// spares the other side a notification.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// Steps that busy-wait (`2^step` spin hints each).
    const SPIN_STEPS: u32 = 6;
    /// Steps after which the thread sleeps on the condition variable;
    /// those past `SPIN_STEPS` yield the processor instead of spinning.
    const MAX_STEPS: u32 = 10;

    pub(crate) fn new() -> Self {
        Self { step: 0 }
    }

    /// Whether to snooze once more rather than sleep: not past the step
    /// limit, nor past the deadline.
    pub(crate) fn should_spin(&self, deadline: Option<Instant>) -> bool {
        self.step < Self::MAX_STEPS && deadline.is_none_or(|deadline| Instant::now() < deadline)
    }

    pub(crate) fn snooze(&mut self) {
        if self.step < Self::SPIN_STEPS {
            for _ in 0..1_u32 << self.step {
                std::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
        }
        self.step += 1;
    }
}

/// Keeps a hot atomic on a cache line of its own (128 bytes covers the
/// adjacent-line prefetch of x86 and the line size of Apple silicon).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Writes to standard error, ignoring a failed write (a closed pipe, a full
/// disk): `eprintln!` would panic, and the library's notices (the fuzz
/// seed, the signal thread's messages) must not.
pub(crate) fn to_stderr(args: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}
