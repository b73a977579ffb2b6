//! `Runtime`: spawns managers on their own threads and shuts them down.
//!
//! Graceful shutdown runs in two phases. First every non-daemon mailbox is
//! closed to outsiders: sends from threads that are not this runtime's
//! managers are refused. Then managers are stopped one at a time in reverse
//! spawn order, each drained and joined before the next is closed, so a
//! manager that talks to one spawned before it (a counter telling a printer)
//! can still do so while it drains. Daemon managers are told to stop at once
//! and are not waited for.

mod builder;
mod control;
mod registry;
mod shutdown;
mod signals;
mod spawn;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use builder::Config;
pub use builder::{DEFAULT_MAX_BATCH, RuntimeBuilder};
use registry::Registry;
pub use shutdown::{ShutdownReport, StopRecord};
pub use signals::HandledSignals;
pub use spawn::ManagerBuilder;
use spawn::SpawnOptions;

use crate::error::SpawnError;
use crate::handle::Handle;
use crate::mailbox::{Backend, Capacity};
use crate::manager::Manager;
use crate::owner::Owner;
use crate::schedule;
use crate::stats::Stats;
use crate::supervision::PanicPolicy;
pub(crate) use control::Control;

/// Ids for runtimes, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Entry {
    name: String,
    daemon: bool,
    control: Arc<dyn Control>,
    thread: Option<JoinHandle<()>>,
}

pub(crate) struct Inner {
    id: u64,
    config: Config,
    registry: Mutex<Registry>,
    shutting_down: AtomicBool,
    /// Held for the whole of a shutdown; holds its report once done.
    shutdown_lock: Mutex<Option<ShutdownReport>>,
    /// A thread has been started to drive a shutdown asked for from a manager.
    driver_started: AtomicBool,
    /// Signalled when a shutdown has completed.
    shut_down: Condvar,
    /// The timer manager, once spawned.
    timers: Mutex<Option<Handle<schedule::Entry>>>,
    /// The watch thread (stalls, growing mailboxes, metrics) has started.
    watch_started: AtomicBool,
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn default_options(&self, name: String) -> SpawnOptions {
        SpawnOptions {
            name,
            backend: self.config.backend,
            capacity: self.config.capacity,
            daemon: false,
            max_batch: self.config.max_batch,
            policy: PanicPolicy::Resume,
            outside: None,
            observe: Default::default(),
        }
    }

    /// Every manager's control and whether it is a daemon, for the watch
    /// thread.
    pub(crate) fn controls(&self) -> Vec<(Arc<dyn Control>, bool)> {
        self.registry()
            .iter()
            .map(|e| (Arc::clone(&e.control), e.daemon))
            .collect()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The runtime's timer manager, spawned on first use.
    pub(crate) fn timers(self: &Arc<Self>) -> Result<Handle<schedule::Entry>, SpawnError> {
        let mut timers = self.timers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = timers.as_ref().filter(|h| !h.is_stopped()) {
            return Ok(handle.clone());
        }
        let mut options = self.default_options(schedule::TIMERS.to_owned());
        options.capacity = Capacity::Unbounded;
        let handle = self.register(options, schedule::Timers::default(), None)?;
        *timers = Some(handle.clone());
        Ok(handle)
    }
}

/// Owns manager threads: spawns them, reports on them, and shuts them down
/// (gracefully on drop).
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let counter = rt.own("counter", 0u64)?;
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let counter = counter.clone();
///         std::thread::spawn(move || counter.cast(|n| *n += 1).unwrap())
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// counter.join()?;
/// assert_eq!(counter.call(|n| *n)?, 4);
/// let report = rt.shutdown();
/// assert_eq!(report.total_unhandled(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Dropping
///
/// Dropping a `Runtime` calls [`shutdown`](Runtime::shutdown). On a thread
/// that is not one of the runtime's managers, the drop blocks until that
/// graceful shutdown has completed:
///
/// 1. Later spawns fail with [`SpawnError::ShutDown`], and sends from
///    threads that are not this runtime's managers are refused (the message
///    comes back in the error). Managers can still send to each other.
/// 2. The non-daemon managers are stopped one at a time, last spawned first.
///    Each is closed (from then on it refuses every send), handles every
///    message it had already accepted, runs its `stopped` hook and is
///    dropped, and its thread is joined before the next manager is closed.
///    A manager still open accepts messages from those draining before it,
///    and handles them too. The drop therefore blocks for as long as those
///    handlers and hooks take: one that never returns (waiting on a lock or
///    channel that nothing will release) makes the drop never return.
/// 3. Daemon managers, which kept serving the others meanwhile, are then
///    told to stop at once: each finishes the message in hand and discards
///    (and counts) what is queued. They are not waited for: their threads may
///    still be running when the drop returns.
///
/// Scheduled messages not yet due are not waited for. If a shutdown has
/// already completed ([`shutdown`](Runtime::shutdown),
/// [`shutdown_now`](Runtime::shutdown_now), a signal), the drop returns at
/// once; if one is under way on another thread, the drop waits for it.
/// Dropped on one of its own manager threads (a manager held the last
/// `Arc<Runtime>`), the drop cannot join that thread: it starts the shutdown
/// on a thread of its own and returns at once. [`Handle`]s do not keep the
/// runtime alive: once it is shut down, their sends are refused.
///
/// In async code, a drop that waits would block an executor's worker thread
/// for as long as the managers drain: `rt.shutdown_async().await` first
/// ([`shutdown_async`](Runtime::shutdown_async)), and the drop that follows
/// has nothing left to wait for.
///
/// ```
/// use std::sync::mpsc;
/// use custody::Runtime;
///
/// let (done, handled) = mpsc::channel();
/// let rt = Runtime::new();
/// let log = rt.own("log", done)?;
/// for i in 0..3 {
///     log.cast(move |done| done.send(i).unwrap())?;
/// }
/// drop(rt); // blocks until `log` has handled all three, and stopped
/// assert_eq!(handled.try_iter().collect::<Vec<_>>(), [0, 1, 2]);
/// assert!(log.cast(|done| done.send(3).unwrap()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Runtime {
    inner: Arc<Inner>,
    /// Whether dropping this value shuts the runtime down: true for the
    /// runtime a user built, false for one borrowed back from a
    /// [`WeakRuntime`] by the crate's own threads.
    owning: bool,
}

/// A reference to a runtime that neither keeps it alive nor shuts it down:
/// for the crate's own threads that spawn managers later (a sharded kind's
/// member).
#[derive(Clone)]
#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
pub(crate) struct WeakRuntime(Weak<Inner>);

#[cfg_attr(not(feature = "amqp"), allow(dead_code))]
impl WeakRuntime {
    /// The runtime, while it exists; dropping what this returns does not
    /// shut it down.
    pub(crate) fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime {
            inner,
            owning: false,
        })
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("backend", &self.inner.config.backend)
            .field("capacity", &self.inner.config.capacity)
            .field("managers", &self.inner.registry().len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    fn from_config(config: Config) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                config,
                registry: Mutex::new(Registry::default()),
                shutting_down: AtomicBool::new(false),
                shutdown_lock: Mutex::new(None),
                driver_started: AtomicBool::new(false),
                shut_down: Condvar::new(),
                timers: Mutex::new(None),
                watch_started: AtomicBool::new(false),
            }),
            owning: true,
        }
    }

    /// A reference that neither keeps this runtime alive nor shuts it down.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// A runtime with the defaults: crossbeam-channel, unbounded mailboxes,
    /// batches of up to [`DEFAULT_MAX_BATCH`], no fuzz mode. The same as
    /// `Runtime::builder().build()`, which cannot fail with the defaults.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Backend, Capacity, Runtime};
    ///
    /// let rt = Runtime::new();
    /// assert_eq!(rt.backend(), Backend::Crossbeam);
    /// assert_eq!(rt.capacity(), Capacity::Unbounded);
    /// assert_eq!(rt.fuzz_seed(), None);
    /// ```
    pub fn new() -> Runtime {
        RuntimeBuilder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts configuring a runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::builder().capacity(Capacity::bounded(16)?).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// assert_eq!(n.handle().capacity(), Capacity::Bounded(16));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The default backend of this runtime: that of managers spawned without
    /// their own choice ([`ManagerBuilder::backend`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Backend, Runtime};
    ///
    /// let rt = Runtime::builder().backend(Backend::Flume).build()?;
    /// assert_eq!(rt.backend(), Backend::Flume);
    /// let n = rt.own("n", 0u32)?;
    /// assert_eq!(n.handle().backend(), Backend::Flume);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend(&self) -> Backend {
        self.inner.config.backend
    }

    /// The default capacity of this runtime: that of managers spawned without
    /// their own choice ([`ManagerBuilder::capacity`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::builder().capacity(Capacity::bounded(8)?).build()?;
    /// assert_eq!(rt.capacity(), Capacity::Bounded(8));
    /// let roomy = rt.manager("roomy").capacity(Capacity::Unbounded).own(())?;
    /// assert_eq!(roomy.handle().capacity(), Capacity::Unbounded);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> Capacity {
        self.inner.config.capacity
    }

    /// The seed of fuzz mode, if the runtime was built with
    /// [`RuntimeBuilder::fuzz`].
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// assert_eq!(Runtime::new().fuzz_seed(), None);
    /// let fuzzed = Runtime::builder().fuzz(42).build()?;
    /// assert_eq!(fuzzed.fuzz_seed(), Some(42)); // print it to replay a failing run
    /// # Ok::<(), custody::BuildError>(())
    /// ```
    pub fn fuzz_seed(&self) -> Option<u64> {
        self.inner.config.fuzz.map(|(seed, _)| seed)
    }

    /// The longest fuzz pause, in fuzz mode
    /// ([`RuntimeBuilder::fuzz_max_pause`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Runtime, fuzz};
    ///
    /// assert_eq!(Runtime::new().fuzz_max_pause(), None);
    /// let fuzzed = Runtime::builder().fuzz(7).build()?;
    /// assert_eq!(fuzzed.fuzz_max_pause(), Some(fuzz::DEFAULT_MAX_PAUSE));
    /// # Ok::<(), custody::BuildError>(())
    /// ```
    pub fn fuzz_max_pause(&self) -> Option<Duration> {
        self.inner.config.fuzz.map(|(_, max)| max)
    }

    /// Spawns `manager` on its own thread with the runtime's defaults.
    ///
    /// # Errors
    ///
    /// [`SpawnError::DuplicateName`] if a running manager has that name,
    /// [`SpawnError::InvalidName`], [`SpawnError::ShutDown`] after
    /// [`shutdown`](Runtime::shutdown), [`SpawnError::Thread`] if the OS
    /// refuses the thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Context, Manager, Reply, Runtime, SpawnError};
    ///
    /// struct Upper;
    /// impl Manager for Upper {
    ///     type Msg = (String, Reply<String>);
    ///     fn handle(&mut self, (s, reply): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
    ///         reply.send(s.to_uppercase());
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let upper = rt.spawn("upper", Upper)?;
    /// assert_eq!(upper.ask(|reply| ("hi".to_owned(), reply))?, "HI");
    /// assert!(matches!(rt.spawn("", Upper), Err(SpawnError::InvalidName(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<Mg: Manager>(
        &self,
        name: impl Into<String>,
        manager: Mg,
    ) -> Result<Handle<Mg::Msg>, SpawnError> {
        self.manager(name).spawn(manager)
    }

    /// Spawns a daemon manager: it keeps serving the other managers while they
    /// drain during a graceful shutdown, and is then stopped at once, its
    /// queued messages discarded (and counted) without waiting, as Python does
    /// not wait for daemon threads.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Runtime::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::{Counter, CounterMsg};
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let hits = rt.spawn_daemon("hits", Counter::new())?;
    /// hits.tell(CounterMsg::Add(1))?;
    /// assert!(rt.stats().managers[0].daemon);
    /// let report = rt.shutdown(); // does not wait for `hits`
    /// assert!(report.managers[0].daemon);
    /// assert!(hits.is_stopped());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_daemon<Mg: Manager>(
        &self,
        name: impl Into<String>,
        manager: Mg,
    ) -> Result<Handle<Mg::Msg>, SpawnError> {
        self.manager(name).daemon(true).spawn(manager)
    }

    /// Hands `resource` to its own thread; the returned [`Owner`] runs
    /// closures on it.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Runtime::spawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let ages = rt.own("ages", HashMap::new())?;
    /// ages.cast(|m| {
    ///     m.insert("ada", 36);
    /// })?;
    /// assert_eq!(ages.call(|m| m.get("ada").copied())?, Some(36));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn own<R: Send + 'static>(
        &self,
        name: impl Into<String>,
        resource: R,
    ) -> Result<Owner<R>, SpawnError> {
        self.manager(name).own(resource)
    }

    /// Configures one manager before spawning it.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Backend, Capacity, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let owner = rt
    ///     .manager("bounded")
    ///     .backend(Backend::Flume)
    ///     .capacity(Capacity::bounded(8)?)
    ///     .own(String::new())?;
    /// assert_eq!(owner.handle().capacity(), Capacity::Bounded(8));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn manager(&self, name: impl Into<String>) -> ManagerBuilder<'_> {
        ManagerBuilder {
            runtime: self,
            options: self.inner.default_options(name.into()),
        }
    }

    /// A snapshot of every manager's counters, in spawn order.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{ManagerState, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let a = rt.own("a", 0u32)?;
    /// let b = rt.own("b", 0u32)?;
    /// a.cast(|n| *n += 1)?;
    /// a.join()?;
    /// b.stop();
    /// let stats = rt.stats();
    /// let names: Vec<_> = stats.managers.iter().map(|m| m.name.as_str()).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// assert_eq!(stats.get("a").unwrap().handled, 1);
    /// assert_eq!(stats.get("a").unwrap().state, ManagerState::Running);
    /// assert_ne!(stats.get("b").unwrap().state, ManagerState::Running);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        Stats {
            managers: self
                .inner
                .registry()
                .iter()
                .map(|e| e.control.stats(e.daemon))
                .collect(),
        }
    }

    /// Shuts down gracefully and waits: new sends from outside are refused,
    /// every non-daemon manager drains its mailbox (in reverse spawn order),
    /// runs `stopped`, and its thread is joined; then daemon managers, which
    /// kept serving the others meanwhile, are stopped at once and not waited
    /// for. Idempotent: a later call returns the same report. `Drop` calls it.
    ///
    /// Called from inside one of this runtime's own managers (a handler or a
    /// hook), it cannot wait, since the shutdown joins that very thread: it
    /// starts the shutdown on a thread of its own and returns at once with a
    /// report that is not [complete](ShutdownReport::is_complete). The
    /// shutdown completes once the calling handler returns (the caller's own
    /// mailbox is drained like any other); [`wait`](Runtime::wait) on another
    /// thread returns the complete report.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    /// use std::sync::{Arc, OnceLock};
    ///
    /// let rt = Arc::new(Runtime::new());
    /// let me = Arc::new(OnceLock::<Arc<Runtime>>::new());
    /// me.set(Arc::clone(&rt)).unwrap();
    /// let stopper = rt.own("stopper", me)?;
    /// // A handler asks for the shutdown: it starts, and the handler goes on.
    /// let from_inside = stopper.call(|me| me.get().unwrap().shutdown())?;
    /// assert!(!from_inside.is_complete());
    /// let report = rt.wait();
    /// assert!(report.is_complete());
    /// assert_eq!(report.total_unhandled(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) -> ShutdownReport {
        self.inner.shutdown(false)
    }

    /// Stops every manager at once: each finishes the message in hand, and
    /// discards (and counts) what is queued; asks waiting on discarded messages
    /// fail with [`AskError::Stopped`](crate::AskError::Stopped). Safe to call
    /// while a graceful shutdown is in progress: it cuts it short. From inside
    /// one of the runtime's managers it returns at once, as
    /// [`shutdown`](Runtime::shutdown) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{AskError, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let jobs = rt.own("jobs", 0u32)?;
    /// let me = jobs.handle().clone();
    /// // Keeps the manager busy until the immediate stop below.
    /// jobs.cast(move |_| while !me.is_stopped() { std::thread::yield_now() })?;
    /// jobs.cast(|n| *n += 1)?;
    /// let report = rt.shutdown_now();
    /// assert!(report.is_complete());
    /// assert_eq!(report.total_unhandled(), 1); // the queued job was discarded
    /// assert!(matches!(jobs.call(|n| *n), Err(AskError::Stopped { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_now(&self) -> ShutdownReport {
        self.inner.shutdown(true)
    }
}

/// Dropping a `Runtime` shuts it down gracefully: it blocks until every
/// non-daemon manager has drained and stopped (see [`Runtime::shutdown`],
/// and [Dropping](Runtime#dropping) for exactly what it waits for).
/// Dropped on one of its own manager threads, it starts the shutdown and
/// returns at once instead.
impl Drop for Runtime {
    fn drop(&mut self) {
        if self.owning {
            self.shutdown();
        }
    }
}
