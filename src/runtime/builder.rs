//! `RuntimeBuilder`: a runtime's configuration.

use std::time::Duration;

use super::Runtime;
use crate::error::BuildError;
use crate::fuzz;
use crate::mailbox::{Backend, Capacity};
use crate::observe;

/// The smallest stack a manager thread may ask for: enough to unwind a
/// handler's panic with a backtrace printed (`RUST_BACKTRACE=1` needs about
/// 32 KiB here; 16 KiB overflowed and aborted the process), twice over.
const MIN_STACK: usize = 64 * 1024;

/// The default for [`RuntimeBuilder::max_batch`]: a manager settles its
/// batch (runs `idle`, wakes joiners) after at most this many messages.
///
/// # Examples
///
/// ```
/// use custody::{DEFAULT_MAX_BATCH, Runtime};
///
/// assert_eq!(DEFAULT_MAX_BATCH, 1024);
/// // Smaller batches: joiners are woken sooner under a steady stream.
/// let rt = Runtime::builder().max_batch(DEFAULT_MAX_BATCH / 16).build()?;
/// let n = rt.own("n", 0u32)?;
/// n.cast(|n| *n += 1)?;
/// assert_eq!(n.call(|n| *n)?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_MAX_BATCH: usize = 1024;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(super) backend: Backend,
    pub(super) capacity: Capacity,
    pub(super) thread_prefix: String,
    pub(super) stack_size: Option<usize>,
    pub(super) max_batch: usize,
    pub(super) fuzz: Option<(u64, Duration)>,
    /// Stall threshold, growth window, tracing, metrics.
    pub(crate) observe: observe::Settings,
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
pub struct RuntimeBuilder {
    pub(crate) config: Config,
    /// Set by `fuzz_max_pause`, before or after `fuzz`.
    fuzz_max_pause: Option<Duration>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            config: Config {
                backend: Backend::Crossbeam,
                capacity: Capacity::Unbounded,
                thread_prefix: String::new(),
                stack_size: None,
                max_batch: DEFAULT_MAX_BATCH,
                fuzz: None,
                observe: observe::Settings::default(),
            },
            fuzz_max_pause: None,
        }
    }
}

impl RuntimeBuilder {
    /// The mailbox backend of managers spawned without their own choice
    /// (default [`Backend::Crossbeam`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Backend, Runtime};
    ///
    /// let rt = Runtime::builder().backend(Backend::Flume).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// assert_eq!(n.handle().backend(), Backend::Flume);
    /// let own_choice = rt.manager("c").backend(Backend::Crossbeam).own(0u32)?;
    /// assert_eq!(own_choice.handle().backend(), Backend::Crossbeam);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// The mailbox capacity of managers spawned without their own choice
    /// (default [`Capacity::Unbounded`]). Checked by
    /// [`build`](RuntimeBuilder::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{BuildError, Capacity, CapacityError, Runtime};
    ///
    /// let rt = Runtime::builder().capacity(Capacity::bounded(128)?).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// assert_eq!(n.handle().capacity(), Capacity::Bounded(128));
    /// let zero = Runtime::builder().capacity(Capacity::Bounded(0)).build();
    /// assert!(matches!(zero, Err(BuildError::Capacity(CapacityError::Zero))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// A prefix for manager thread names (the thread is named prefix + name;
    /// default: no prefix). Checked by [`build`](RuntimeBuilder::build).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{BuildError, Runtime};
    ///
    /// let rt = Runtime::builder().thread_name_prefix("db-").build()?;
    /// let pool = rt.own("pool", ())?;
    /// let name = pool.call(|_| std::thread::current().name().map(str::to_owned))?;
    /// assert_eq!(name.as_deref(), Some("db-pool"));
    /// let nul = Runtime::builder().thread_name_prefix("a\0b").build();
    /// assert!(matches!(nul, Err(BuildError::ThreadName(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_prefix = prefix.into();
        self
    }

    /// The stack size of manager threads, in bytes (default: the standard
    /// library's). Checked by [`build`](RuntimeBuilder::build): at least
    /// 64 KiB (a smaller stack could not unwind a panic with a backtrace).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{BuildError, Runtime};
    ///
    /// let rt = Runtime::builder().stack_size(512 * 1024).build()?;
    /// let deep = rt.own("deep", [0u8; 4096])?;
    /// assert_eq!(deep.call(|buf| buf.len())?, 4096);
    /// let tiny = Runtime::builder().stack_size(1024).build();
    /// assert!(matches!(tiny, Err(BuildError::StackSize(1024))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// The most messages a manager handles before it settles the batch (and
    /// wakes joiners) even if more are queued. 0 is taken as 1. Default
    /// [`DEFAULT_MAX_BATCH`]; [`ManagerBuilder::max_batch`](crate::ManagerBuilder::max_batch)
    /// sets it for one manager.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::builder().max_batch(0).build()?; // taken as 1
    /// let n = rt.own("n", 0u32)?;
    /// for _ in 0..3 {
    ///     n.cast(|n| *n += 1)?;
    /// }
    /// n.join()?;
    /// assert_eq!(n.call(|n| *n)?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n.max(1);
        self
    }

    /// Fuzz mode: seeded random short pauses at each send and before each
    /// handled message (see [`fuzz`](crate::fuzz)). The seed is printed when
    /// the runtime is built, so a failing run can be replayed. Turns on
    /// [`fuzz::point`](crate::fuzz::point) for the whole process.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{Runtime, fuzz};
    ///
    /// let seed = fuzz::seed_from_env(); // CUSTODY_FUZZ_SEED, or the clock
    /// let rt = Runtime::builder().fuzz(seed).build()?;
    /// assert_eq!(rt.fuzz_seed(), Some(seed));
    /// let n = rt.own("n", 0u32)?;
    /// n.cast(|n| *n += 1)?; // may pause here, and before the manager handles it
    /// assert_eq!(n.call(|n| *n)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fuzz(mut self, seed: u64) -> Self {
        let max = self.fuzz_max_pause.unwrap_or(fuzz::DEFAULT_MAX_PAUSE);
        self.config.fuzz = Some((seed, max));
        self
    }

    /// The longest fuzz pause (default [`fuzz::DEFAULT_MAX_PAUSE`](crate::fuzz::DEFAULT_MAX_PAUSE)).
    /// Only matters with [`fuzz`](RuntimeBuilder::fuzz), called before or
    /// after it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// // Either order: the pause bound is kept.
    /// let rt = Runtime::builder()
    ///     .fuzz_max_pause(Duration::from_micros(50))
    ///     .fuzz(7)
    ///     .build()?;
    /// assert_eq!(rt.fuzz_max_pause(), Some(Duration::from_micros(50)));
    /// # Ok::<(), custody::BuildError>(())
    /// ```
    pub fn fuzz_max_pause(mut self, max: Duration) -> Self {
        self.fuzz_max_pause = Some(max);
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
    /// [`BuildError::StackSize`] for a stack under 64 KiB.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::{BuildError, Capacity, Runtime};
    ///
    /// let rt = Runtime::builder().capacity(Capacity::bounded(64)?).build()?;
    /// assert_eq!(rt.capacity(), Capacity::Bounded(64));
    /// let err = Runtime::builder().stack_size(0).build().unwrap_err();
    /// assert!(matches!(err, BuildError::StackSize(0)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        Ok(Runtime::from_config(config))
    }
}
