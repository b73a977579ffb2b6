//! Seeing inside a running runtime: sampled service and wait times, stalled
//! managers and growing mailboxes, traces that follow a message from its
//! caller, series for the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`), and a live view in the terminal ([`top`]).
//!
//! # What each manager keeps
//!
//! Every manager keeps a histogram of its *service time* (how long `handle`
//! took), sampled: one message in 16 is timed (two clock reads), the rest
//! cost one store of a sequence number.
//! [`ManagerStats::service`](crate::ManagerStats::service) gives its p50,
//! p99 and max. With the feature `metrics` (or message tracing on), a
//! histogram of the *mailbox wait* (from the send to the start of `handle`)
//! is kept too ([`ManagerStats::wait`](crate::ManagerStats::wait)).
//!
//! # How the wait is measured without a timestamp per message
//!
//! The envelope stays the message plus at most a word: no time travels with
//! a message. Instead, one send in 64 on each sending thread (a counter in a
//! thread-local, so no shared cache line moves) takes a *ticket*: if no
//! other sample of that manager is in flight, it notes the time in the
//! manager's sample slot, and the ticket: the number of messages the manager
//! has started plus the depth of the mailbox just after the send, which is
//! the sequence number the manager will give this message. The manager,
//! which numbers the messages it starts anyway (for the stall watch below),
//! compares each number with the ticket (one load of a line only sampled
//! sends write) and, when it reaches it, records the time since the note
//! and frees the slot. The ticket is exact when nothing else is sent or
//! taken between the send and its depth read; otherwise it lands on a
//! message that many places away, and the sample is off by their service
//! times.
//! A manager is sampled at most once per round trip of its queue, so a
//! deep queue yields fewer samples (each one still true). A ticket that can
//! no longer be reached (it counted deliveries of an outside queue that
//! were dropped unhandled) is freed by the watch thread below, rather than
//! waiting for a later message to be measured from the old note.
//!
//! # Stalled managers and growing mailboxes
//!
//! A manager stuck in a handler cannot report itself, so each runtime runs
//! a watch thread (`custody-watch`, started with the first manager, gone
//! once the runtime is dropped or shut down). A few times per threshold (at
//! most every 250 ms) it reads, for each manager, the number of the message
//! in hand and the number handled. A manager still inside the same message
//! a whole threshold after the watch first saw it there is *stalled*
//! ([`RuntimeBuilder::stall_after`](crate::RuntimeBuilder::stall_after),
//! [`ManagerBuilder::stall_after`](crate::ManagerBuilder::stall_after),
//! default 10 s): a `warn` event is traced once, and
//! [`ManagerStats::stalled`](crate::ManagerStats::stalled) shows it until
//! the message returns. The time shown is a lower bound: the message
//! started before the watch saw it. Only messages are watched: a hook
//! (`idle`, `started`, ...) that never returns is not reported.
//!
//! A mailbox is *growing* when, over a whole window
//! ([`RuntimeBuilder::growth_window`](crate::RuntimeBuilder::growth_window),
//! [`ManagerBuilder::growth_window`](crate::ManagerBuilder::growth_window),
//! default 10 s), its depth never came back down to where the window began,
//! rose over each half of the window (a depth that rose once and then stayed
//! flat is not growing), and more messages arrived than were handled. It is
//! reported once per episode (a `warn` event) and shows in
//! [`ManagerStats::growing`](crate::ManagerStats::growing) until the depth
//! comes back down to where the episode began.
//!
//! # Traces that follow a message
//!
//! With [`RuntimeBuilder::trace_messages`](crate::RuntimeBuilder::trace_messages)
//! (or per manager), `tell` and `ask` capture the caller's current span and
//! the time, and the manager handles that message inside a `message` span
//! (target `custody::message`, fields `manager`, `wait_us`, `service_us`)
//! that *follows from* the caller's span. The capture travels in a boxed
//! envelope of its own, used only by managers with tracing on: without it
//! the envelope is unchanged and the send path checks one flag.
//!
//! # The `metrics` facade
//!
//! With the feature `metrics`, each manager is exported to whatever
//! recorder the program installs, labelled `manager="<name>"`:
//!
//! | series | kind |
//! | --- | --- |
//! | `custody_mailbox_depth` | gauge |
//! | `custody_messages_handled_total` | counter |
//! | `custody_panics_total` | counter |
//! | `custody_restarts_total` | counter |
//! | `custody_messages_refused_total` | counter |
//! | `custody_stalled` | gauge (1 while stalled) |
//! | `custody_mailbox_growing` | gauge (1 while growing) |
//! | `custody_service_seconds` | histogram (sampled) |
//! | `custody_mailbox_wait_seconds` | histogram (sampled) |
//!
//! and, for a manager served from a broker queue (feature `amqp`),
//! `custody_queue_delivered_total`, `custody_queue_redelivered_total`,
//! `custody_queue_acked_total` and `custody_queue_dead_lettered_total`.
//!
//! Nothing is pushed by the senders or the manager thread: on every round
//! (at most 250 ms apart) the watch thread reads the counters the runtime
//! keeps anyway and sets them (`Counter::absolute`, `Gauge::set`), and
//! forwards what the runtime's own histograms gained since its last round
//! (each value as the middle of its bucket, so within 12.5%), looking every
//! series up through the facade each time. Nothing caches a handle, so a
//! recorder installed after the runtime started receives every series, the
//! counters with their counts since the start (the histograms from the
//! round after the install).
//! [`RuntimeBuilder::metrics`](crate::RuntimeBuilder::metrics) turns the
//! export off for one runtime.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use custody::Runtime;
//!
//! let rt = Runtime::builder()
//!     .stall_after(Duration::from_secs(30))
//!     .growth_window(Duration::from_secs(60))
//!     .build()?;
//! let n = rt.own("n", 0u64)?;
//! for _ in 0..100 {
//!     n.cast(|n| *n += 1)?;
//! }
//! n.join()?;
//! let stats = rt.stats();
//! let n = stats.get("n").unwrap();
//! assert!(n.service.is_some()); // sampled: some of the 100 were timed
//! assert_eq!(n.stalled, None);
//! assert_eq!(n.growing, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
#[cfg(feature = "metrics")]
mod export;
mod histogram;
mod top;
pub(crate) mod trace;
pub(crate) mod watch;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use histogram::Percentiles;
pub use top::{Ended, TopOptions, top, top_to};

pub(crate) use config::{ManagerSettings, Settings};
use histogram::Histogram;
pub(crate) use trace::Trace;

use crate::util::Padded;

/// A message for a manager that traces messages: boxed with the caller's
/// span and the time (out of line: the untraced send path stays small).
#[cold]
#[inline(never)]
pub(crate) fn traced<M>(msg: M) -> crate::mailbox::Envelope<M> {
    crate::mailbox::Envelope::Traced(Box::new((msg, Trace::here())))
}

/// One message in this many has its service time measured.
const SERVICE_SAMPLE: u64 = 16;

/// A manager whose current message has run longer than its threshold.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use custody::Runtime;
///
/// let rt = Runtime::builder().stall_after(Duration::from_millis(20)).build()?;
/// let stuck = rt.own("stuck", ())?;
/// let (go, wait) = mpsc::channel::<()>();
/// stuck.cast(move |_| {
///     wait.recv().ok();
/// })?;
/// let stalled = loop {
///     if let Some(stalled) = rt.stats().get("stuck").and_then(|m| m.stalled) {
///         break stalled;
///     }
///     std::thread::sleep(Duration::from_millis(5));
/// };
/// assert!(stalled.running_for >= Duration::from_millis(20));
/// assert_eq!(stalled.message, 1); // the first message it handled
/// go.send(())?;
/// stuck.join()?;
/// assert_eq!(rt.stats().get("stuck").unwrap().stalled, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Stalled {
    /// How long the message has been running, at least (measured from when
    /// the watch first saw it running).
    pub running_for: Duration,
    /// Which message: the count of messages the manager had started,
    /// this one included.
    pub message: u64,
}

/// A mailbox whose depth grew over a whole window while arrivals outpaced
/// handling.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use custody::Runtime;
///
/// let rt = Runtime::builder().growth_window(Duration::from_millis(50)).build()?;
/// let slow = rt.own("slow", ())?;
/// let (go, wait) = mpsc::channel::<()>();
/// slow.cast(move |_| {
///     wait.recv().ok();
/// })?;
/// let growing = loop {
///     slow.cast(|_| {})?; // one more message, none handled
///     if let Some(growing) = rt.stats().get("slow").and_then(|m| m.growing) {
///         break growing;
///     }
///     std::thread::sleep(Duration::from_millis(5));
/// };
/// assert!(growing.to > growing.from);
/// assert!(growing.arrived > growing.handled);
/// go.send(())?;
/// slow.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Growing {
    /// Since when the depth has been growing (at least one window).
    pub growing_for: Duration,
    /// The depth when the episode began.
    pub from: usize,
    /// The depth now.
    pub to: usize,
    /// Messages that arrived over the first window of the episode.
    pub arrived: u64,
    /// Messages handled over that window.
    pub handled: u64,
}

/// What the watch thread found about one manager.
#[derive(Default)]
struct Alerts {
    /// The message the watch saw in hand, and when it first saw it.
    busy: Option<(u64, Instant)>,
    /// `busy` has lasted past the threshold and was reported.
    stalled: bool,
    /// The current growth window.
    window: Option<Window>,
    /// The growth episode reported, while it lasts.
    growing: Option<(Instant, usize, u64, u64)>,
}

/// A growth window: its start, the depth and handled count then, and the
/// depth seen at its middle.
struct Window {
    since: Instant,
    from: usize,
    handled: u64,
    middle: Option<usize>,
}

/// The sample slot of the mailbox wait (see the module docs).
#[cfg(feature = "metrics")]
struct WaitSample {
    /// The sequence number of the sampled message; `u64::MAX` when none.
    ticket: AtomicU64,
    /// When it was sent.
    at: Mutex<Option<Instant>>,
}

#[cfg(feature = "metrics")]
const NO_TICKET: u64 = u64::MAX;

#[cfg(feature = "metrics")]
std::thread_local! {
    /// Sends from this thread, to pick one in [`WAIT_SAMPLE`].
    static SENDS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One send in this many (per sending thread) may sample the wait.
#[cfg(feature = "metrics")]
const WAIT_SAMPLE: u32 = 64;

/// Counts a send from this thread: `true` for one in [`WAIT_SAMPLE`].
/// Out of line, so that the send path stays small enough to inline.
#[cfg(feature = "metrics")]
#[inline(never)]
fn count_send() -> bool {
    SENDS.with(|n| {
        let sends = n.get().wrapping_add(1);
        n.set(sends);
        sends.is_multiple_of(WAIT_SAMPLE)
    })
}

/// A manager's two histograms.
#[derive(Default)]
struct Times {
    service: Histogram,
    wait: Histogram,
}

/// What one manager keeps for observers: part of its shared state.
pub(crate) struct Observed {
    /// Read by every send: set at spawn, never written.
    pub(crate) trace: bool,
    #[cfg(feature = "metrics")]
    metrics: bool,
    stall_after: Duration,
    growth_window: Duration,
    /// The manager's name, as a label and span field.
    label: Arc<str>,
    /// The number of messages the manager has started; written by the
    /// manager thread before each `handle`.
    started: Padded<AtomicU64>,
    #[cfg(feature = "metrics")]
    sample: Padded<WaitSample>,
    /// Service and wait histograms, written by the manager thread.
    times: Padded<Times>,
    /// Sends refused (stopped, full, timed out, deadlock).
    refused: AtomicU64,
    alerts: Mutex<Alerts>,
    /// The histogram counts already forwarded to the facade (watch thread).
    #[cfg(feature = "metrics")]
    exported: Mutex<(Vec<u64>, Vec<u64>)>,
}

impl Observed {
    pub(crate) fn new(name: &str, runtime: &Settings, manager: &ManagerSettings) -> Observed {
        #[cfg(not(feature = "metrics"))]
        let _ = runtime.metrics;
        Observed {
            trace: manager.trace.unwrap_or(runtime.trace),
            #[cfg(feature = "metrics")]
            metrics: runtime.metrics,
            stall_after: manager.stall_after.unwrap_or(runtime.stall_after),
            growth_window: manager.growth_window.unwrap_or(runtime.growth_window),
            label: Arc::from(name),
            started: Padded(AtomicU64::new(0)),
            #[cfg(feature = "metrics")]
            sample: Padded(WaitSample {
                ticket: AtomicU64::new(NO_TICKET),
                at: Mutex::new(None),
            }),
            times: Padded(Times::default()),
            refused: AtomicU64::new(0),
            alerts: Mutex::new(Alerts::default()),
            #[cfg(feature = "metrics")]
            exported: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    fn alerts(&self) -> std::sync::MutexGuard<'_, Alerts> {
        self.alerts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a send was accepted: one send in 64 per thread may sample the
    /// wait. `depth` reads the mailbox depth.
    #[inline(always)]
    pub(crate) fn sent(&self, depth: impl FnOnce() -> usize) {
        #[cfg(feature = "metrics")]
        if self.metrics && count_send() {
            self.take_ticket(depth);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = depth;
    }

    #[cfg(feature = "metrics")]
    #[cold]
    #[inline(never)]
    fn take_ticket(&self, depth: impl FnOnce() -> usize) {
        let sample = &self.sample;
        if sample.ticket.load(Relaxed) != NO_TICKET {
            return; // one in flight already
        }
        let Ok(mut at) = sample.at.try_lock() else {
            return;
        };
        if sample.ticket.load(Relaxed) != NO_TICKET {
            return;
        }
        // The number started first, then the depth: a message taken in
        // between makes the ticket early, never late.
        let started = self.started.load(Relaxed);
        let ahead = depth().max(1) as u64;
        *at = Some(Instant::now());
        sample
            .ticket
            .store(started + ahead, std::sync::atomic::Ordering::Release);
    }

    /// A send was refused.
    #[cold]
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// The manager thread is about to handle a message: numbers it, and
    /// decides whether to time it (the start time, if so). A traced
    /// message's span is entered here, and exited by [`end`](Self::end).
    #[inline]
    pub(crate) fn begin(&self) -> Option<Instant> {
        let n = self.started.load(Relaxed) + 1;
        self.started.store(n, Relaxed);
        #[cfg(feature = "metrics")]
        if self
            .sample
            .ticket
            .load(std::sync::atomic::Ordering::Acquire)
            <= n
        {
            self.wait_sampled();
        }
        if self.trace {
            return self.begin_traced(n);
        }
        if n.is_multiple_of(SERVICE_SAMPLE) {
            return Some(Instant::now());
        }
        None
    }

    #[cfg(feature = "metrics")]
    #[cold]
    #[inline(never)]
    fn wait_sampled(&self) {
        let sample = &self.sample;
        let sent = sample
            .at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        sample
            .ticket
            .store(NO_TICKET, std::sync::atomic::Ordering::Release);
        if let Some(sent) = sent {
            self.record_wait(sent.elapsed());
        }
    }

    fn record_wait(&self, wait: Duration) {
        self.times.wait.record(wait);
    }

    #[cold]
    #[inline(never)]
    fn begin_traced(&self, n: u64) -> Option<Instant> {
        let now = Instant::now();
        match trace::take() {
            Some(trace) => {
                let wait = now.saturating_duration_since(trace.sent);
                self.record_wait(wait);
                trace::enter(trace::handling(&self.label, &trace, wait));
                Some(now)
            }
            None => n.is_multiple_of(SERVICE_SAMPLE).then_some(now),
        }
    }

    /// The manager thread has handled the message [`begin`](Self::begin)
    /// started at `at` (if timed).
    #[inline]
    pub(crate) fn end(&self, at: Option<Instant>) {
        if let Some(at) = at {
            self.timed(at);
        }
    }

    #[cold]
    #[inline(never)]
    fn timed(&self, at: Instant) {
        let service = at.elapsed();
        self.times.service.record(service);
        if self.trace {
            trace::exit(service);
        }
    }

    /// The number of messages the manager has started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Relaxed)
    }

    pub(crate) fn service(&self) -> Option<Percentiles> {
        self.times.service.percentiles()
    }

    pub(crate) fn wait(&self) -> Option<Percentiles> {
        self.times.wait.percentiles()
    }

    pub(crate) fn refused_count(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// The stall the watch reported, if the message is still in hand.
    pub(crate) fn stalled(&self, handled: u64) -> Option<Stalled> {
        let alerts = self.alerts();
        match alerts.busy {
            Some((message, since)) if alerts.stalled && handled < message => Some(Stalled {
                running_for: since.elapsed(),
                message,
            }),
            _ => None,
        }
    }

    /// The growth episode the watch reported, while it lasts: not once the
    /// depth is back down to where it began (the watch ends the episode at
    /// its next round).
    pub(crate) fn growing(&self, depth: usize) -> Option<Growing> {
        self.alerts()
            .growing
            .filter(|&(_, from, _, _)| depth > from)
            .map(|(since, from, arrived, handled)| Growing {
                growing_for: since.elapsed(),
                from,
                to: depth,
                arrived,
                handled,
            })
    }
}
