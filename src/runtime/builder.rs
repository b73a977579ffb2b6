//! `RuntimeBuilder`: a runtime's configuration.

use std::time::Duration;

use super::Runtime;
use crate::error::BuildError;
use crate::fuzz;
use crate::mailbox::{Backend, Capacity};

/// The smallest stack a manager thread may ask for.
const MIN_STACK: usize = 16 * 1024;

/// The default for [`RuntimeBuilder::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 1024;

#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) backend: Backend,
    pub(super) capacity: Capacity,
    pub(super) thread_prefix: String,
    pub(super) stack_size: Option<usize>,
    pub(super) max_batch: usize,
    pub(super) fuzz: Option<(u64, Duration)>,
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
    config: Config,
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
            },
            fuzz_max_pause: None,
        }
    }
}

impl RuntimeBuilder {
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
        Ok(Runtime::from_config(config))
    }
}
