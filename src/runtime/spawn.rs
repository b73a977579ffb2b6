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
use crate::owner::{Owned, Owner};
use crate::stats::Counters;
use crate::supervision::PanicPolicy;
use crate::util::Padded;

/// Options for one manager; made by [`Runtime::manager`].
#[derive(Debug)]
#[must_use = "a ManagerBuilder does nothing until `spawn` or `own`"]
pub struct ManagerBuilder<'rt> {
    pub(super) runtime: &'rt Runtime,
    pub(super) options: SpawnOptions,
}

/// Everything about a manager but the manager itself.
#[derive(Debug)]
pub(super) struct SpawnOptions {
    pub(super) name: String,
    pub(super) backend: Backend,
    pub(super) capacity: Capacity,
    pub(super) daemon: bool,
    pub(super) max_batch: usize,
    pub(super) policy: PanicPolicy,
    /// For a manager served from an outside queue: the queue's settler,
    /// part of the mailbox from the start.
    pub(super) outside: Option<Outside>,
}

/// An outside queue's settler, on its way into a mailbox.
pub(super) struct Outside(Box<dyn SettleOutside>);

impl fmt::Debug for Outside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Outside(..)")
    }
}

impl ManagerBuilder<'_> {
    /// This manager's mailbox backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.options.backend = backend;
        self
    }

    /// This manager's mailbox capacity.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.options.capacity = capacity;
        self
    }

    /// Whether shutdown skips waiting for this manager.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.options.daemon = daemon;
        self
    }

    /// The most messages handled before the batch is settled; 0 is taken as 1.
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
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.options.policy = policy;
        self
    }

    /// Spawns the manager.
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`], plus [`SpawnError::Capacity`] for a capacity
    /// built by hand as `Capacity::Bounded(0)` or above the maximum.
    pub fn spawn<Mg: Manager>(self, manager: Mg) -> Result<Handle<Mg::Msg>, SpawnError> {
        if matches!(self.options.policy, PanicPolicy::Restart { .. }) {
            return Err(SpawnError::NoFactory(self.options.name));
        }
        self.runtime.inner.register(self.options, manager, None)
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
        self.runtime
            .inner
            .register(self.options, first, Some(Box::new(factory)))
    }

    /// Hands `resource` to a new owner thread.
    ///
    /// # Errors
    ///
    /// As [`ManagerBuilder::spawn`].
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
        if let Some(i) = registry.iter().position(|e| e.name == name) {
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
        Ok(handle)
    }
}
