//! Shutdown: graceful (two phases, reverse spawn order) or immediate, and the
//! report of what was left unhandled.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, TryLockError};

use super::{Inner, Runtime};
use crate::current;
use crate::future::Shutdown;
use crate::reply::{self, Reply};

impl Inner {
    /// Shuts down (at once if `now`). From one of this runtime's own manager
    /// threads it cannot wait (the shutdown joins that very thread): it starts
    /// the shutdown on a thread of its own and returns an in-progress report.
    pub(super) fn shutdown(self: &Arc<Self>, now: bool) -> ShutdownReport {
        if current::is_manager_of(self.id) {
            self.start_shutdown(now)
        } else {
            self.shutdown_and_wait(now)
        }
    }

    /// Refuses sends from outside (or aborts every manager, if `now`); the
    /// first, non-blocking step of every shutdown.
    fn begin_shutdown(&self, now: bool) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let controls: Vec<_> = self
            .registry()
            .iter()
            .map(|e| Arc::clone(&e.control))
            .collect();
        for control in &controls {
            if now {
                control.abort();
            } else {
                // Daemons too: they keep serving this runtime's managers
                // until those have drained, then they are aborted.
                control.close_to_outside();
            }
        }
    }

    /// The shutdown asked for from a manager thread: begun here, driven to
    /// completion by a thread of its own.
    fn start_shutdown(self: &Arc<Self>, now: bool) -> ShutdownReport {
        self.begin_shutdown(now);
        match self.shutdown_lock.try_lock() {
            Ok(done) => {
                if let Some(report) = done.as_ref() {
                    return report.clone();
                }
            }
            Err(TryLockError::Poisoned(done)) => {
                if let Some(report) = done.get_ref().as_ref() {
                    return report.clone();
                }
            }
            Err(TryLockError::WouldBlock) => {} // a shutdown is under way
        }
        if !self.driver_started.swap(true, Ordering::SeqCst) {
            let inner = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("custody-shutdown".to_owned())
                .spawn(move || {
                    inner.shutdown_and_wait(now);
                });
            if let Err(e) = spawned {
                // `wait` (or dropping the runtime) drives it instead.
                tracing::error!(error = %e, "could not start the shutdown thread");
                self.driver_started.store(false, Ordering::SeqCst);
            }
        }
        ShutdownReport::in_progress()
    }

    fn shutdown_and_wait(&self, now: bool) -> ShutdownReport {
        self.begin_shutdown(now);
        let mut done = self
            .shutdown_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(report) = done.as_ref() {
            return report.clone();
        }
        // Take the threads out under the lock, join them outside it, so that
        // `stats` and a concurrent `shutdown_now` still see every manager.
        let stopping: Vec<_> = self
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
        // Every non-daemon manager has drained: now the daemons stop, at once
        // and without being waited for.
        let daemons: Vec<_> = self
            .registry()
            .iter()
            .filter(|e| e.daemon)
            .map(|e| Arc::clone(&e.control))
            .collect();
        for daemon in daemons {
            daemon.abort();
        }
        let report = ShutdownReport {
            managers: self
                .registry()
                .iter()
                .map(|e| StopRecord {
                    name: e.name.clone(),
                    daemon: e.daemon,
                    unhandled: e.control.unhandled(),
                })
                .collect(),
            complete: true,
        };
        *done = Some(report.clone());
        self.shut_down.notify_all();
        tracing::debug!(unhandled = report.total_unhandled(), "runtime shut down");
        report
    }
}

/// What one manager left behind when the runtime shut down.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let _store = rt.own("store", ())?;
/// let _clock = rt.manager("clock").daemon(true).own(())?;
/// let report = rt.shutdown();
/// let records: Vec<_> = report.managers.iter().map(|m| (m.name.as_str(), m.daemon)).collect();
/// assert_eq!(records, [("store", false), ("clock", true)]); // in spawn order
/// assert_eq!(report.managers[0].unhandled, 0); // a graceful shutdown drains
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// A report is either *complete* (every non-daemon manager has stopped and
/// its thread was joined; the counts are final) or *in progress*: what a
/// shutdown asked for from inside one of the runtime's own managers returns,
/// since that shutdown cannot finish until the calling handler returns. An
/// in-progress report lists no managers; [`Runtime::wait`] on another thread
/// returns the complete one.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let counter = rt.own("counter", 0u32)?;
/// counter.cast(|n| *n += 1)?;
/// let report = rt.shutdown();
/// assert!(report.is_complete());
/// assert_eq!(report.total_unhandled(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// One record per manager, in spawn order (empty while in progress).
    pub managers: Vec<StopRecord>,
    /// Whether the shutdown has completed (see the type's docs).
    pub complete: bool,
}

impl ShutdownReport {
    pub(crate) fn in_progress() -> ShutdownReport {
        ShutdownReport {
            managers: Vec::new(),
            complete: false,
        }
    }

    /// Whether the shutdown has completed; `false` for the report of a
    /// shutdown asked for from inside one of the runtime's managers.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let _n = rt.own("n", 0u32)?;
    /// let report = rt.shutdown(); // from outside the runtime: waits
    /// assert!(report.is_complete());
    /// assert_eq!(rt.shutdown(), report); // a later call returns the same report
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// The report of a shutdown asked for from a manager is in progress; see
    /// [`Runtime::shutdown`] for an example.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Messages discarded unhandled, over all managers: by an immediate stop
    /// ([`Runtime::shutdown_now`], [`PanicPolicy::Stop`](crate::PanicPolicy::Stop)),
    /// or by a daemon stopped at the end of a graceful shutdown.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let jobs = rt.own("jobs", ())?;
    /// let me = jobs.handle().clone();
    /// // Keeps the manager busy until the immediate stop below.
    /// jobs.cast(move |_| while !me.is_stopped() { std::thread::yield_now() })?;
    /// jobs.cast(|_| {})?;
    /// jobs.cast(|_| {})?;
    /// let report = rt.shutdown_now();
    /// assert_eq!(report.total_unhandled(), 2); // the two queued jobs
    /// assert_eq!(report.managers[0].unhandled, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn total_unhandled(&self) -> u64 {
        self.managers.iter().map(|m| m.unhandled).sum()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.complete {
            return writeln!(f, "shutdown in progress");
        }
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
        if current::is_manager_of(self.id) {
            // The shutdown joins this very thread: it cannot complete while
            // this waits.
            return ShutdownReport::in_progress();
        }
        let mut done = self
            .shutdown_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(report) = done.as_ref() {
                return report.clone();
            }
            if self.shutting_down.load(Ordering::SeqCst)
                && !self.driver_started.load(Ordering::SeqCst)
            {
                // Asked for from a manager whose driver thread could not
                // start: drive it from here.
                drop(done);
                return self.shutdown_and_wait(false);
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
    /// [`shutdown`](Runtime::shutdown) from another thread or from a manager,
    /// or on a signal after [`shutdown_on_signals`](Runtime::shutdown_on_signals));
    /// returns the complete report.
    ///
    /// Called from one of this runtime's own managers it returns at once with
    /// an in-progress report: the shutdown joins that manager's thread, so it
    /// cannot complete while the manager waits.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use custody::Runtime;
    ///
    /// let rt = Arc::new(Runtime::new());
    /// let n = rt.own("n", 0u32)?;
    /// n.cast(|n| *n += 1)?;
    /// let other = Arc::clone(&rt);
    /// let stopper = std::thread::spawn(move || other.shutdown());
    /// let report = rt.wait(); // returns once that shutdown has completed
    /// assert!(report.is_complete());
    /// assert_eq!(report, stopper.join().unwrap());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) -> ShutdownReport {
        self.inner.wait()
    }
}

impl Runtime {
    /// The awaitable [`shutdown`](Runtime::shutdown): a graceful shutdown that
    /// never blocks the thread polling it. The shutdown is driven by a thread
    /// of its own (`custody-shutdown`), started here; the future resolves
    /// with its report. Use it in async code, where `shutdown` (and dropping
    /// the runtime, which calls it) would block an executor's worker while
    /// the managers drain; once it has resolved, dropping the runtime returns
    /// at once.
    ///
    /// Dropping the future does not stop the shutdown: [`wait`](Runtime::wait)
    /// still returns its report. Called from one of this runtime's own
    /// managers, it starts the shutdown and resolves at once with a report
    /// that is not complete, as [`shutdown`](Runtime::shutdown) does there.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::new().spawn(&rt, "counter")?;
    /// counter.add(1)?;
    /// let report = futures_lite::future::block_on(rt.shutdown_async());
    /// assert!(report.is_complete());
    /// assert_eq!(report.total_unhandled(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_async(&self) -> Shutdown {
        let (reply, waiter) = reply::pair::<ShutdownReport>();
        let shutdown = Shutdown {
            waiter: waiter.erase(),
            done: false,
        };
        if current::is_manager_of(self.inner.id) {
            reply.send(self.inner.shutdown(false));
            return shutdown;
        }
        let inner = Arc::clone(&self.inner);
        let (tx, rx) = std::sync::mpsc::channel::<Reply<ShutdownReport>>();
        let spawned = std::thread::Builder::new()
            .name("custody-shutdown".to_owned())
            .spawn(move || {
                if let Ok(reply) = rx.recv() {
                    reply.send(inner.shutdown(false));
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(reply);
            }
            Err(e) => {
                // No thread to drive it: drive it here (this blocks, but ends).
                tracing::error!(error = %e, "could not start the shutdown thread");
                reply.send(self.inner.shutdown(false));
            }
        }
        shutdown
    }
}
