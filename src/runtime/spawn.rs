//! `ManagerBuilder` and registration: how a manager gets its thread.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Entry, Inner, Runtime};
use crate::deadlock::WaitNode;
use crate::error::SpawnError;
use crate::handle::{Handle, Shared};
use crate::mailbox::{Backend, Capacity, Mailbox, SettleOutside};
use crate::manager::Manager;
use crate::manager_thread::{self, Factory, Spec};
use crate::observe::{self, ManagerSettings, Observed};
use crate::owner::{Owned, Owner};
use crate::stats::Counters;
use crate::supervision::PanicPolicy;
use crate::util::Padded;

/// Options for one manager; made by [`Runtime::manager`].
///
/// Each option starts from the runtime's default; [`spawn`](ManagerBuilder::spawn)
/// or [`own`](ManagerBuilder::own) (or their `_with` forms) starts the thread.
///
/// # Examples
///
/// ```
/// use custody::{Backend, Capacity, PanicPolicy, Runtime};
///
/// let rt = Runtime::new();
/// let log = rt
///     .manager("log")
///     .backend(Backend::Flume)
///     .capacity(Capacity::bounded(64)?)
///     .on_panic(PanicPolicy::Resume)
///     .own(Vec::<String>::new())?;
/// log.cast(|lines| lines.push("hello".to_owned()))?;
/// assert_eq!(log.call(|lines| lines.len())?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "a ManagerBuilder does nothing until `spawn` or `own`"]
pub struct ManagerBuilder<'rt> {
    pub(super) runtime: &'rt Runtime,
    pub(crate) options: SpawnOptions,
}

/// Everything about a manager but the manager itself.
#[derive(Debug)]
pub(crate) struct SpawnOptions {
    pub(super) name: String,
    pub(super) backend: Backend,
    pub(super) capacity: Capacity,
    pub(super) daemon: bool,
    pub(super) max_batch: usize,
    pub(super) policy: PanicPolicy,
    /// For a manager served from an outside queue: the queue's settler,
    /// part of the mailbox from the start.
    pub(super) outside: Option<Outside>,
    /// Stall threshold and message tracing, if not the runtime's.
    pub(crate) observe: ManagerSettings,
}

/// An outside queue's settler, on its way into a mailbox.
pub(super) struct Outside(Box<dyn SettleOutside>);

impl fmt::Debug for Outside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Outside(..)")
    }
}

impl ManagerBuilder<'_> {
    /// This manager's mailbox backend (default: the runtime's
    /// [`backend`](Runtime::backend)).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Backend, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let owner = rt.manager("flume").backend(Backend::Flume).own(0u8)?;
    /// assert_eq!(owner.handle().backend(), Backend::Flume);
    /// assert_eq!(rt.backend(), Backend::Crossbeam); // the runtime's default is unchanged
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.options.backend = backend;
        self
    }

    /// This manager's mailbox capacity (default: the runtime's
    /// [`capacity`](Runtime::capacity)). A capacity built by hand is checked
    /// when the manager is spawned.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, CapacityError, Runtime, SpawnError};
    ///
    /// let rt = Runtime::new();
    /// let small = rt.manager("small").capacity(Capacity::bounded(4)?).own(())?;
    /// assert_eq!(small.handle().capacity(), Capacity::Bounded(4));
    /// let zero = rt.manager("zero").capacity(Capacity::Bounded(0)).own(());
    /// assert!(matches!(zero, Err(SpawnError::Capacity(CapacityError::Zero))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.options.capacity = capacity;
        self
    }

    /// Whether shutdown skips waiting for this manager (default `false`).
    ///
    /// A daemon keeps serving the runtime's other managers while they drain
    /// during a graceful shutdown; then it is stopped at once, its queued
    /// messages discarded (and counted), and its thread is not joined. See
    /// [`Runtime::spawn_daemon`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let clock = rt.manager("clock").daemon(true).own(0u64)?;
    /// let user = rt.own("user", clock)?;
    /// let (answer, answered) = mpsc::channel();
    /// // Accepted before the shutdown, handled while `user` drains.
    /// user.cast(move |clock| answer.send(clock.call(|t| *t + 1)).unwrap())?;
    /// let report = rt.shutdown();
    /// assert_eq!(answered.recv()??, 1); // the daemon still answered
    /// assert!(report.managers[0].daemon && !report.managers[1].daemon);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.options.daemon = daemon;
        self
    }

    /// The most messages handled before the batch is settled (and joiners
    /// woken) even if more are queued; 0 is taken as 1. Default: the
    /// runtime's [`max_batch`](crate::RuntimeBuilder::max_batch).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// // Settle after every message rather than after up to 1024.
    /// let n = rt.manager("n").max_batch(1).own(0u32)?;
    /// for _ in 0..3 {
    ///     n.cast(|n| *n += 1)?;
    /// }
    /// n.join()?;
    /// assert_eq!(n.call(|n| *n)?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_batch(mut self, n: usize) -> Self {
        self.options.max_batch = n.max(1);
        self
    }

    /// Serves this manager from an outside queue (the broker mailbox):
    /// `settler` learns which deliveries the manager has handled, and is
    /// asked whether each may still be handled.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))] // the broker mailbox uses it
    pub(crate) fn outside(mut self, settler: Box<dyn SettleOutside>) -> Self {
        self.options.outside = Some(Outside(settler));
        self
    }

    /// What to do when `handle` panics (default [`PanicPolicy::Resume`]).
    /// `Restart` needs [`spawn_with`](ManagerBuilder::spawn_with) or
    /// [`own_with`](ManagerBuilder::own_with).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{AskError, PanicPolicy, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let fragile = rt.manager("fragile").on_panic(PanicPolicy::Stop).own(0u32)?;
    /// let failed = fragile.call(|_| -> u32 { panic!("broken") });
    /// assert!(matches!(failed, Err(AskError::Panicked { .. })));
    /// fragile.join()?;
    /// assert!(fragile.handle().is_stopped()); // stopped for good
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.options.policy = policy;
        self
    }

    /// Spawns the manager.
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`], plus [`SpawnError::Capacity`] for a capacity
    /// built by hand as `Capacity::Bounded(0)` or above the maximum, and
    /// [`SpawnError::NoFactory`] under [`PanicPolicy::Restart`].
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Context, Manager, Runtime, SpawnError};
    ///
    /// struct Sink;
    /// impl Manager for Sink {
    ///     type Msg = u32;
    ///     fn handle(&mut self, _n: u32, _ctx: &mut Context<'_, u32>) {}
    /// }
    ///
    /// let rt = Runtime::new();
    /// let sink = rt.manager("sink").spawn(Sink)?;
    /// sink.tell(1)?;
    /// let again = rt.manager("sink").spawn(Sink);
    /// assert!(matches!(again, Err(SpawnError::DuplicateName(name)) if name == "sink"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn<Mg: Manager>(self, manager: Mg) -> Result<Handle<Mg::Msg>, SpawnError> {
        if matches!(self.options.policy, PanicPolicy::Restart { .. }) {
            return Err(SpawnError::NoFactory(self.options.name));
        }
        self.runtime.inner.register(self.options, manager, None)
    }

    /// Spawns a manager built by `factory`, which is called again for a fresh
    /// instance whenever [`PanicPolicy::Restart`] restarts it.
    ///
    /// The first call to `factory` happens here, on the calling thread; the
    /// later ones on the manager's thread (a panic there is caught, and the
    /// manager stops for good).
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`], but without [`SpawnError::NoFactory`].
    ///
    /// # Panics
    ///
    /// If `factory` panics on its first call: that call is made on the
    /// calling thread, before any thread is spawned, and its panic is not
    /// caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    /// use std::time::Duration;
    /// use custody::{Context, Manager, PanicPolicy, Runtime};
    ///
    /// struct Fragile;
    /// impl Manager for Fragile {
    ///     type Msg = ();
    ///     fn handle(&mut self, _msg: (), _ctx: &mut Context<'_, ()>) {
    ///         panic!("broken");
    ///     }
    /// }
    ///
    /// let rt = Runtime::new();
    /// let built = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&built);
    /// let fragile = rt
    ///     .manager("fragile")
    ///     .on_panic(PanicPolicy::Restart { max_restarts: 3, within: Duration::from_secs(60) })
    ///     .spawn_with(move || {
    ///         counted.fetch_add(1, SeqCst);
    ///         Fragile
    ///     })?;
    /// assert_eq!(built.load(SeqCst), 1); // the first instance, built by this call
    /// fragile.tell(())?;
    /// fragile.join()?;
    /// assert_eq!(built.load(SeqCst), 2); // a fresh one after the panic
    /// assert_eq!(fragile.stats().restarts, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_with<Mg, F>(self, mut factory: F) -> Result<Handle<Mg::Msg>, SpawnError>
    where
        Mg: Manager,
        F: FnMut() -> Mg + Send + 'static,
    {
        let first = factory();
        self.runtime
            .inner
            .register(self.options, first, Some(Box::new(factory)))
    }

    /// Hands `resource` to a new owner thread.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`] (including [`SpawnError::NoFactory`]
    /// under [`PanicPolicy::Restart`]: use [`own_with`](ManagerBuilder::own_with)).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Capacity, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let names = rt.manager("names").capacity(Capacity::bounded(16)?).own(Vec::new())?;
    /// names.cast(|v| v.push("ada"))?;
    /// names.cast(|v| v.push("grace"))?;
    /// assert_eq!(names.call(|v| v.join(", "))?, "ada, grace");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn own<R: Send + 'static>(self, resource: R) -> Result<Owner<R>, SpawnError> {
        if matches!(self.options.policy, PanicPolicy::Restart { .. }) {
            return Err(SpawnError::NoFactory(self.options.name));
        }
        self.runtime
            .inner
            .register(self.options, Owned(resource), None)
            .map(Owner::new)
    }

    /// Hands a resource built by `factory` to a new owner thread; under
    /// [`PanicPolicy::Restart`] a panicking closure replaces it with a fresh one.
    ///
    /// The first call to `factory` happens here, on the calling thread; the
    /// later ones on the owner's thread.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`], but without [`SpawnError::NoFactory`].
    ///
    /// # Panics
    ///
    /// If `factory` panics on its first call: that call is made on the
    /// calling thread, before any thread is spawned, and its panic is not
    /// caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::{PanicPolicy, Runtime};
    ///
    /// let rt = Runtime::new();
    /// let cache = rt
    ///     .manager("cache")
    ///     .on_panic(PanicPolicy::Restart { max_restarts: 1, within: Duration::from_secs(60) })
    ///     .own_with(|| vec![0u8; 4])?;
    /// cache.cast(|v| v.clear())?;
    /// assert!(cache.call(|_| -> () { panic!("corrupt") }).is_err());
    /// assert_eq!(cache.call(|v| v.len())?, 4); // rebuilt by the factory
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn own_with<R, F>(self, mut factory: F) -> Result<Owner<R>, SpawnError>
    where
        R: Send + 'static,
        F: FnMut() -> R + Send + 'static,
    {
        let first = Owned(factory());
        self.runtime
            .inner
            .register(
                self.options,
                first,
                Some(Box::new(move || Owned(factory()))),
            )
            .map(Owner::new)
    }
}

impl Inner {
    pub(super) fn register<Mg: Manager>(
        self: &Arc<Self>,
        mut options: SpawnOptions,
        manager: Mg,
        factory: Option<Factory<Mg>>,
    ) -> Result<Handle<Mg::Msg>, SpawnError> {
        let inner = &**self;
        let name = options.name.clone();
        if name.is_empty() || name.contains('\0') {
            return Err(SpawnError::InvalidName(name));
        }
        let capacity = options.capacity.validate()?;
        let mut registry = inner.registry();
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SpawnError::ShutDown);
        }
        if let Some(i) = registry.position(&name) {
            if !registry[i].control.has_exited() {
                return Err(SpawnError::DuplicateName(name));
            }
            let old = registry.remove(i);
            if let Some(thread) = old.thread {
                let _ = thread.join();
            }
        }
        let outside = options.outside.take().map(|Outside(settler)| settler);
        let (mailbox, inbox) = Mailbox::open(options.backend, capacity, inner.id, outside);
        let shared = Arc::new(Shared {
            mailbox,
            runtime: Arc::downgrade(self),
            counters: Padded(Counters::default()),
            fuzz: inner.config.fuzz.is_some(),
            waits: Arc::new(WaitNode::new(&name)),
            name: name.clone(),
            backend: options.backend,
            capacity,
            observed: Observed::new(&name, &inner.config.observe, &options.observe),
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
            .spawn(move || manager_thread::run(spec, inbox, thread_handle))
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
        if !inner.watch_started.swap(true, Ordering::Relaxed) {
            observe::watch::start(Arc::downgrade(self), inner.config.observe.clone());
        }
        Ok(handle)
    }
}
