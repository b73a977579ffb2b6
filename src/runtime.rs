//! `Runtime`: spawns managers on their own threads and shuts them down.
//!
//! Graceful shutdown runs in two phases. First every non-daemon mailbox is
//! closed to outsiders: sends from threads that are not this runtime's
//! managers are refused. Then managers are stopped one at a time in reverse
//! spawn order, each drained and joined before the next is closed, so a
//! manager that talks to one spawned before it (a counter telling a printer)
//! can still do so while it drains. Daemon managers are told to stop at once
//! and are not waited for.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::deadlock::WaitNode;
use crate::error::{BuildError, SpawnError};
use crate::fuzz;
use crate::handle::{Control, Handle, Shared};
use crate::mailbox::{self, Backend, Capacity, Gate, Padded};
use crate::manager::Manager;
use crate::manager_thread::{self, Factory, Spec};
use crate::owner::{Owned, Owner};
use crate::stats::{Counters, Stats};
use crate::supervision::PanicPolicy;

/// Ids for runtimes and managers, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The smallest stack a manager thread may ask for.
const MIN_STACK: usize = 16 * 1024;

/// The default for [`Builder::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 1024;

#[derive(Clone, Debug)]
struct Config {
    backend: Backend,
    capacity: Capacity,
    thread_prefix: String,
    stack_size: Option<usize>,
    max_batch: usize,
    fuzz: Option<(u64, Duration)>,
}

/// Configures a [`Runtime`].
///
/// # Examples
///
/// ```
/// use custody::{Backend, Capacity, Runtime};
///
/// let rt = Runtime::builder()
///     .backend(Backend::Flume)
///     .capacity(Capacity::bounded(1024)?)
///     .thread_name_prefix("app-")
///     .stack_size(256 * 1024)
///     .build()?;
/// let n = rt.own("n", 1u8)?;
/// assert_eq!(n.call(|n| std::thread::current().name().map(str::to_owned))?.as_deref(), Some("app-n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            config: Config {
                backend: Backend::Crossbeam,
                capacity: Capacity::Unbounded,
                thread_prefix: String::new(),
                stack_size: None,
                max_batch: DEFAULT_MAX_BATCH,
                fuzz: None,
            },
        }
    }
}

impl Builder {
    /// The mailbox backend of managers spawned without their own choice.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// The mailbox capacity of managers spawned without their own choice.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// A prefix for manager thread names (the thread is named prefix + name).
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_prefix = prefix.into();
        self
    }

    /// The stack size of manager threads, in bytes.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// The most messages a manager handles before it settles the batch (and
    /// wakes joiners) even if more are queued. 0 is taken as 1.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n.max(1);
        self
    }

    /// Fuzz mode: seeded random short pauses at each send and before each
    /// handled message (see [`fuzz`](crate::fuzz)). The seed is printed when
    /// the runtime is built, so a failing run can be replayed. Turns on
    /// [`fuzz::point`](crate::fuzz::point) for the whole process.
    pub fn fuzz(mut self, seed: u64) -> Self {
        let max = self.config.fuzz.map_or(fuzz::DEFAULT_MAX_PAUSE, |f| f.1);
        self.config.fuzz = Some((seed, max));
        self
    }

    /// The longest fuzz pause (default [`fuzz::DEFAULT_MAX_PAUSE`](crate::fuzz::DEFAULT_MAX_PAUSE)).
    /// Only matters with [`fuzz`](Builder::fuzz).
    pub fn fuzz_max_pause(mut self, max: Duration) -> Self {
        if let Some(f) = self.config.fuzz.as_mut() {
            f.1 = max;
        }
        self
    }

    /// Builds the runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError::Capacity`] for a zero or oversized capacity,
    /// [`BuildError::ThreadName`] for a prefix with a NUL byte,
    /// [`BuildError::StackSize`] for a stack under 16 KiB.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let mut config = self.config;
        config.capacity = config.capacity.validate()?;
        if config.thread_prefix.contains('\0') {
            return Err(BuildError::ThreadName(config.thread_prefix));
        }
        if let Some(bytes) = config.stack_size.filter(|&b| b < MIN_STACK) {
            return Err(BuildError::StackSize(bytes));
        }
        if let Some((seed, max_pause)) = config.fuzz {
            fuzz::enable(seed, max_pause);
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                id: next_id(),
                config,
                registry: Mutex::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                shutdown_lock: Mutex::new(None),
            }),
        })
    }
}

struct Entry {
    name: String,
    daemon: bool,
    control: Arc<dyn Control>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    id: u64,
    config: Config,
    registry: Mutex<Vec<Entry>>,
    shutting_down: AtomicBool,
    /// Held for the whole of a shutdown; holds its report once done.
    shutdown_lock: Mutex<Option<ShutdownReport>>,
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
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
pub struct Runtime {
    inner: Arc<Inner>,
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
    /// A runtime with the defaults: crossbeam-channel, unbounded mailboxes.
    pub fn new() -> Runtime {
        Builder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// Starts configuring a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The default backend of this runtime.
    pub fn backend(&self) -> Backend {
        self.inner.config.backend
    }

    /// The default capacity of this runtime.
    pub fn capacity(&self) -> Capacity {
        self.inner.config.capacity
    }

    /// Spawns `manager` on its own thread with the runtime's defaults.
    ///
    /// # Errors
    ///
    /// [`SpawnError::DuplicateName`] if a running manager has that name,
    /// [`SpawnError::InvalidName`], [`SpawnError::ShutDown`] after
    /// [`shutdown`](Runtime::shutdown), [`SpawnError::Thread`] if the OS
    /// refuses the thread.
    pub fn spawn<Mg: Manager>(
        &self,
        name: impl Into<String>,
        manager: Mg,
    ) -> Result<Handle<Mg::Msg>, SpawnError> {
        self.manager(name).spawn(manager)
    }

    /// Spawns a daemon manager: shutdown does not wait for it (its queued
    /// messages are discarded), as Python does not wait for daemon threads.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Runtime::spawn).
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
            name: name.into(),
            backend: self.inner.config.backend,
            capacity: self.inner.config.capacity,
            daemon: false,
            max_batch: self.inner.config.max_batch,
            policy: PanicPolicy::Resume,
        }
    }

    /// A snapshot of every manager's counters, in spawn order.
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
    /// runs `stopped`, and its thread is joined. Daemon managers are stopped at
    /// once and not waited for. Idempotent; `Drop` calls it.
    pub fn shutdown(&self) -> ShutdownReport {
        self.shutdown_with(false)
    }

    /// Stops every manager at once: each finishes the message in hand, and
    /// discards (and counts) what is queued; asks waiting on discarded messages
    /// fail with [`AskError::Stopped`](crate::AskError::Stopped). Safe to call
    /// while a graceful shutdown is in progress: it cuts it short.
    pub fn shutdown_now(&self) -> ShutdownReport {
        self.shutdown_with(true)
    }

    fn shutdown_with(&self, now: bool) -> ShutdownReport {
        let inner = &*self.inner;
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
        tracing::debug!(unhandled = report.total_unhandled(), "runtime shut down");
        report
    }

    fn register<Mg: Manager>(
        &self,
        options: &ManagerBuilder<'_>,
        manager: Mg,
        factory: Option<Factory<Mg>>,
    ) -> Result<Handle<Mg::Msg>, SpawnError> {
        let inner = &*self.inner;
        let name = options.name.clone();
        if name.is_empty() || name.contains('\0') {
            return Err(SpawnError::InvalidName(name));
        }
        let capacity = options.capacity.validate()?;
        let mut registry = inner.registry();
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SpawnError::ShutDown);
        }
        if let Some(i) = registry.iter().position(|e| e.name == name) {
            if !registry[i].control.has_exited() {
                return Err(SpawnError::DuplicateName(name));
            }
            let old = registry.remove(i);
            if let Some(thread) = old.thread {
                let _ = thread.join();
            }
        }
        let (tx, rx) = mailbox::channel(options.backend, capacity);
        let shared = Arc::new(Shared {
            tx,
            gate: Gate::new(inner.id),
            counters: Padded(Counters::default()),
            abort: AtomicBool::new(false),
            fuzz: inner.config.fuzz.is_some(),
            waits: WaitNode::new(name.clone()),
            name: name.clone(),
            backend: options.backend,
            capacity,
        });
        let handle = Handle {
            shared: Arc::clone(&shared),
        };
        let thread_handle = handle.clone();
        let spec = Spec {
            manager,
            factory,
            policy: options.policy,
            runtime_id: inner.id,
            max_batch: options.max_batch as u64,
            fuzz: inner.config.fuzz.is_some(),
        };
        let mut builder =
            std::thread::Builder::new().name(format!("{}{}", inner.config.thread_prefix, name));
        if let Some(bytes) = inner.config.stack_size {
            builder = builder.stack_size(bytes);
        }
        let thread = builder
            .spawn(move || manager_thread::run(spec, rx, thread_handle))
            .map_err(|source| SpawnError::Thread {
                name: name.clone(),
                source,
            })?;
        registry.push(Entry {
            name,
            daemon: options.daemon,
            control: shared,
            thread: Some(thread),
        });
        Ok(handle)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Options for one manager; made by [`Runtime::manager`].
#[derive(Debug)]
#[must_use = "a ManagerBuilder does nothing until `spawn` or `own`"]
pub struct ManagerBuilder<'rt> {
    runtime: &'rt Runtime,
    name: String,
    backend: Backend,
    capacity: Capacity,
    daemon: bool,
    max_batch: usize,
    policy: PanicPolicy,
}

impl ManagerBuilder<'_> {
    /// This manager's mailbox backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// This manager's mailbox capacity.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// Whether shutdown skips waiting for this manager.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// The most messages handled before the batch is settled; 0 is taken as 1.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// What to do when `handle` panics (default [`PanicPolicy::Resume`]).
    /// `Restart` needs [`spawn_with`](ManagerBuilder::spawn_with) or
    /// [`own_with`](ManagerBuilder::own_with).
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Spawns the manager.
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`], plus [`SpawnError::Capacity`] for a capacity
    /// built by hand as `Capacity::Bounded(0)` or above the maximum.
    pub fn spawn<Mg: Manager>(self, manager: Mg) -> Result<Handle<Mg::Msg>, SpawnError> {
        if matches!(self.policy, PanicPolicy::Restart { .. }) {
            return Err(SpawnError::NoFactory(self.name));
        }
        self.runtime.register(&self, manager, None)
    }

    /// Spawns a manager built by `factory`, which is called again for a fresh
    /// instance whenever [`PanicPolicy::Restart`] restarts it.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`].
    pub fn spawn_with<Mg, F>(self, mut factory: F) -> Result<Handle<Mg::Msg>, SpawnError>
    where
        Mg: Manager,
        F: FnMut() -> Mg + Send + 'static,
    {
        let first = factory();
        self.runtime.register(&self, first, Some(Box::new(factory)))
    }

    /// Hands `resource` to a new owner thread.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`].
    pub fn own<R: Send + 'static>(self, resource: R) -> Result<Owner<R>, SpawnError> {
        if matches!(self.policy, PanicPolicy::Restart { .. }) {
            return Err(SpawnError::NoFactory(self.name));
        }
        self.runtime
            .register(&self, Owned(resource), None)
            .map(Owner::new)
    }

    /// Hands a resource built by `factory` to a new owner thread; under
    /// [`PanicPolicy::Restart`] a panicking closure replaces it with a fresh one.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`].
    pub fn own_with<R, F>(self, mut factory: F) -> Result<Owner<R>, SpawnError>
    where
        R: Send + 'static,
        F: FnMut() -> R + Send + 'static,
    {
        let first = Owned(factory());
        self.runtime
            .register(&self, first, Some(Box::new(move || Owned(factory()))))
            .map(Owner::new)
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
