//! Counters each manager keeps, and the snapshot tables built from them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::mailbox::Backend;
use crate::observe::{Growing, Percentiles, Stalled};

/// Counters written only by the manager thread, read by anyone.
///
/// With a single writer, a plain load and store is enough (no locked
/// read-modify-write on the hot path). Readers see recent values; after a
/// `join` the counts cover every message the join waited for.
#[derive(Default)]
pub(crate) struct Counters {
    handled: AtomicU64,
    panicked: AtomicU64,
    restarts: AtomicU64,
}

impl Counters {
    /// Adds one handled message. Only the manager thread calls this.
    #[inline]
    pub(crate) fn add_handled(&self) {
        self.handled.store(self.handled.load(Relaxed) + 1, Relaxed);
    }

    /// Adds one caught panic. Only the manager thread calls this.
    pub(crate) fn add_panic(&self) {
        self.panicked
            .store(self.panicked.load(Relaxed) + 1, Relaxed);
    }

    /// Adds one restart. Only the manager thread calls this.
    pub(crate) fn add_restart(&self) {
        self.restarts
            .store(self.restarts.load(Relaxed) + 1, Relaxed);
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }

    pub(crate) fn handled(&self) -> u64 {
        self.handled.load(Relaxed)
    }

    pub(crate) fn panicked(&self) -> u64 {
        self.panicked.load(Relaxed)
    }
}

/// Where a manager is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ManagerState {
    /// Accepting and handling messages.
    Running,
    /// Refusing new messages, draining the accepted ones.
    Stopping,
    /// Stopping at once: finishing the message in hand, then discarding
    /// (and counting) what is queued.
    Aborting,
    /// Its thread has finished.
    Stopped,
}

impl fmt::Display for ManagerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManagerState::Running => "running",
            ManagerState::Stopping => "stopping",
            ManagerState::Aborting => "aborting",
            ManagerState::Stopped => "stopped",
        })
    }
}

/// The counters of a manager served from an outside queue (the broker
/// mailbox of the `amqp` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutsideStats {
    /// Deliveries received from the queue.
    pub delivered: u64,
    /// Of those, deliveries the broker marked as redelivered (after a crash
    /// or a requeue).
    pub redelivered: u64,
    /// Deliveries acknowledged after their batch was handled and `idle` ran.
    pub acked: u64,
    /// Deliveries moved to the dead-letter queue (undecodable, or poison).
    pub dead_lettered: u64,
    /// Deliveries dropped unhandled because the channel they came on was
    /// lost before the manager reached them: the queue delivers them again.
    pub stale: u64,
}

/// A snapshot of one manager's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerStats {
    /// The manager's name.
    pub name: String,
    /// Its mailbox backend.
    pub backend: Backend,
    /// Whether it was spawned as a daemon.
    pub daemon: bool,
    /// Where it is in its life.
    pub state: ManagerState,
    /// Messages handled (including those whose handler panicked).
    pub handled: u64,
    /// Handler (and hook) panics caught.
    pub panicked: u64,
    /// Restarts under [`PanicPolicy::Restart`](crate::PanicPolicy::Restart).
    pub restarts: u64,
    /// Messages waiting in the mailbox.
    pub queued: usize,
    /// Messages accepted and not yet handled.
    pub unfinished: u64,
    /// Messages accepted and then discarded by an immediate stop.
    pub unhandled: u64,
    /// For a manager served from an outside queue, that queue's counters.
    pub outside: Option<OutsideStats>,
    /// Sends refused: stopped, full, timed out, or a deadlock.
    pub refused: u64,
    /// Service time (in `handle`) of a sample of the messages: one in 16,
    /// and every traced one. `None` before the first sample.
    pub service: Option<Percentiles>,
    /// Mailbox wait (from the send to the start of `handle`) of a sample of
    /// the messages: with the feature `metrics`, or for traced messages;
    /// see [`observe`](crate::observe).
    pub wait: Option<Percentiles>,
    /// Set while the message in hand has run past the stall threshold.
    pub stalled: Option<Stalled>,
    /// Set while the mailbox is in a growth episode.
    pub growing: Option<Growing>,
}

/// A snapshot of every manager of a runtime; `Display` prints it as a table.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let n = rt.own("n", 0u64)?;
/// n.call(|n| *n += 1)?;
/// n.join()?; // the answer comes from inside the handler, before it is counted
/// let stats = rt.stats();
/// assert_eq!(stats.get("n").map(|m| m.handled), Some(1));
/// println!("{stats}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per manager, in spawn order.
    pub managers: Vec<ManagerStats>,
}

impl Stats {
    /// The entry of the manager with this name.
    pub fn get(&self, name: &str) -> Option<&ManagerStats> {
        self.managers.iter().find(|m| m.name == name)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .managers
            .iter()
            .map(|m| {
                if m.daemon {
                    format!("{} (daemon)", m.name)
                } else {
                    m.name.clone()
                }
            })
            .collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(7);
        writeln!(
            f,
            "{:<width$}  {:<9}  {:<8}  {:>10}  {:>8}  {:>7}  {:>10}  {:>9}",
            "manager",
            "backend",
            "state",
            "handled",
            "panicked",
            "queued",
            "unfinished",
            "unhandled"
        )?;
        for (m, name) in self.managers.iter().zip(names) {
            writeln!(
                f,
                "{:<width$}  {:<9}  {:<8}  {:>10}  {:>8}  {:>7}  {:>10}  {:>9}",
                name,
                m.backend.name(),
                m.state.to_string(),
                m.handled,
                m.panicked,
                m.queued,
                m.unfinished,
                m.unhandled
            )?;
        }
        for (m, name) in self
            .managers
            .iter()
            .zip(self.managers.iter().map(|m| &m.name))
        {
            if let Some(s) = m.stalled {
                writeln!(
                    f,
                    "{name}: stalled on message {} for {:?}",
                    s.message, s.running_for
                )?;
            }
            if let Some(g) = m.growing {
                writeln!(
                    f,
                    "{name}: mailbox growing from {} to {} for {:?}",
                    g.from, g.to, g.growing_for
                )?;
            }
            if let Some(o) = m.outside {
                writeln!(
                    f,
                    "{name} (queue): delivered {}, redelivered {}, acked {}, dead-lettered {}, stale {}",
                    o.delivered, o.redelivered, o.acked, o.dead_lettered, o.stale
                )?;
            }
        }
        Ok(())
    }
}
