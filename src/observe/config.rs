//! The observation settings of a runtime and of one manager, and the
//! builder methods that set them.

use std::time::Duration;

use crate::runtime::{ManagerBuilder, RuntimeBuilder};

/// The default stall threshold and growth window.
const DEFAULT_THRESHOLD: Duration = Duration::from_secs(10);

/// A runtime's settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) stall_after: Duration,
    pub(crate) growth_window: Duration,
    pub(crate) trace: bool,
    /// Export through the `metrics` facade (with the feature only).
    pub(crate) metrics: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stall_after: DEFAULT_THRESHOLD,
            growth_window: DEFAULT_THRESHOLD,
            trace: false,
            metrics: true,
        }
    }
}

/// One manager's own choices; `None` takes the runtime's.
#[derive(Clone, Debug, Default)]
pub(crate) struct ManagerSettings {
    pub(crate) stall_after: Option<Duration>,
    pub(crate) growth_window: Option<Duration>,
    pub(crate) trace: Option<bool>,
}

impl RuntimeBuilder {
    /// How long a manager may stay inside one message before it is reported
    /// stalled (default 10 s; zero is taken as 1 ms): a `warn` event, once,
    /// and [`ManagerStats::stalled`](crate::ManagerStats::stalled) until the
    /// message returns. [`ManagerBuilder::stall_after`] sets it for one
    /// manager. See [`observe`](crate::observe).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::builder().stall_after(Duration::from_millis(500)).build()?;
    /// let n = rt.own("n", ())?;
    /// n.call(|_| std::thread::sleep(Duration::from_millis(1)))?;
    /// assert_eq!(rt.stats().get("n").unwrap().stalled, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stall_after(mut self, threshold: Duration) -> Self {
        self.config.observe.stall_after = threshold.max(Duration::from_millis(1));
        self
    }

    /// The window over which a growing mailbox is reported (default 10 s;
    /// zero is taken as 1 ms): its depth grew over a whole window while
    /// more messages arrived than were handled. See
    /// [`ManagerStats::growing`](crate::ManagerStats::growing);
    /// [`ManagerBuilder::growth_window`] sets it for one manager.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::builder().growth_window(Duration::from_secs(30)).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// n.cast(|n| *n += 1)?;
    /// n.join()?;
    /// assert_eq!(rt.stats().get("n").unwrap().growing, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn growth_window(mut self, window: Duration) -> Self {
        self.config.observe.growth_window = window.max(Duration::from_millis(1));
        self
    }

    /// Traces that follow each message (default off): `tell` and `ask`
    /// capture the caller's current span, and the manager handles the
    /// message inside a `message` span that follows from it and records the
    /// wait and the service time. It costs a boxed envelope and a clock read
    /// per send. [`ManagerBuilder::trace_messages`] sets it for one manager.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::builder().trace_messages(true).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// let span = tracing::info_span!("request", id = 7);
    /// span.in_scope(|| n.cast(|n| *n += 1))?; // handled in a span following `request`
    /// assert_eq!(n.call(|n| *n)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trace_messages(mut self, on: bool) -> Self {
        self.config.observe.trace = on;
        self
    }

    /// Whether this runtime's managers are exported through the `metrics`
    /// facade (default `true`; feature `metrics`). See
    /// [`observe`](crate::observe) for the series.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// // A runtime kept out of the program's metrics.
    /// let rt = Runtime::builder().metrics(false).build()?;
    /// let n = rt.own("n", 0u32)?;
    /// n.cast(|n| *n += 1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.observe.metrics = on;
        self
    }
}

impl ManagerBuilder<'_> {
    /// This manager's stall threshold (default: the runtime's
    /// [`stall_after`](RuntimeBuilder::stall_after); zero is taken as 1 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// // A database call may take a minute; anything else is stuck after 10 s.
    /// let db = rt.manager("db").stall_after(Duration::from_secs(60)).own(())?;
    /// db.call(|_| ())?;
    /// assert_eq!(rt.stats().get("db").unwrap().stalled, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stall_after(mut self, threshold: Duration) -> Self {
        self.options.observe.stall_after = Some(threshold.max(Duration::from_millis(1)));
        self
    }

    /// This manager's growth window (default: the runtime's
    /// [`growth_window`](RuntimeBuilder::growth_window); zero is taken as
    /// 1 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// // A batch importer's queue may grow for a minute before it catches up.
    /// let importer = rt.manager("importer").growth_window(Duration::from_secs(60)).own(())?;
    /// importer.call(|_| ())?;
    /// assert_eq!(rt.stats().get("importer").unwrap().growing, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn growth_window(mut self, window: Duration) -> Self {
        self.options.observe.growth_window = Some(window.max(Duration::from_millis(1)));
        self
    }

    /// Traces that follow each message sent to this manager (default: the
    /// runtime's [`trace_messages`](RuntimeBuilder::trace_messages)).
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let traced = rt.manager("traced").trace_messages(true).own(0u32)?;
    /// traced.cast(|n| *n += 1)?;
    /// assert_eq!(traced.call(|n| *n)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trace_messages(mut self, on: bool) -> Self {
        self.options.observe.trace = Some(on);
        self
    }
}
