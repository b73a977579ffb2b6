//! Shutdown: graceful (two phases, reverse spawn order) or immediate, and the
//! report of what was left unhandled.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::{Inner, Runtime};

impl Inner {
    pub(super) fn shutdown(&self, now: bool) -> ShutdownReport {
        let inner = self;
        inner.shutting_down.store(true, Ordering::SeqCst);
        let controls: Vec<_> = inner
            .registry()
            .iter()
            .map(|e| (Arc::clone(&e.control), e.daemon))
            .collect();
        if now {
            for (control, _) in &controls {
                control.abort();
            }
        } else {
            for (control, daemon) in &controls {
                if *daemon {
                    control.abort();
                } else {
                    control.close_to_outside();
                }
            }
        }
        let mut done = inner
            .shutdown_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(report) = done.as_ref() {
            return report.clone();
        }
        // Take the threads out under the lock, join them outside it, so that
        // `stats` and a concurrent `shutdown_now` still see every manager.
        let stopping: Vec<_> = inner
            .registry()
            .iter_mut()
            .filter(|e| !e.daemon)
            .map(|e| (Arc::clone(&e.control), e.thread.take()))
            .collect();
        for (control, thread) in stopping.into_iter().rev() {
            control.close();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        let report = ShutdownReport {
            managers: inner
                .registry()
                .iter()
                .map(|e| StopRecord {
                    name: e.name.clone(),
                    daemon: e.daemon,
                    unhandled: e.control.unhandled(),
                })
                .collect(),
        };
        *done = Some(report.clone());
        self.shut_down.notify_all();
        tracing::debug!(unhandled = report.total_unhandled(), "runtime shut down");
        report
    }
}

/// What one manager left behind when the runtime shut down.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopRecord {
    /// The manager's name.
    pub name: String,
    /// Whether it was a daemon (not waited for: its count may still grow).
    pub daemon: bool,
    /// Messages accepted and discarded unhandled.
    pub unhandled: u64,
}

/// The outcome of [`Runtime::shutdown`] or [`Runtime::shutdown_now`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// One record per manager, in spawn order.
    pub managers: Vec<StopRecord>,
}

impl ShutdownReport {
    /// Messages discarded unhandled, over all managers.
    pub fn total_unhandled(&self) -> u64 {
        self.managers.iter().map(|m| m.unhandled).sum()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.managers {
            let kind = if m.daemon { " (daemon)" } else { "" };
            writeln!(f, "{}{}: {} unhandled", m.name, kind, m.unhandled)?;
        }
        Ok(())
    }
}

impl Inner {
    /// Blocks until a shutdown has completed; returns its report.
    fn wait(&self) -> ShutdownReport {
        let mut done = self
            .shutdown_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(report) = done.as_ref() {
                return report.clone();
            }
            done = self
                .shut_down
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Runtime {
    /// Blocks the calling thread until the runtime has shut down (by
    /// [`shutdown`](Runtime::shutdown) from another thread, or by a signal after
    /// [`shutdown_on_signals`](Runtime::shutdown_on_signals)); returns the report.
    pub fn wait(&self) -> ShutdownReport {
        self.inner.wait()
    }
}
