//! The watch thread: one per runtime, started with its first manager. A few
//! times per threshold it looks at every manager: is it still inside the
//! message it was in last time (stalled)? has its mailbox been growing for
//! a whole window? With the feature `metrics` it also sets the counters and
//! gauges of each manager. It holds only a weak reference to the runtime,
//! and ends once the runtime is dropped, or shut down with every manager
//! exited.

use std::sync::Weak;
use std::thread;
use std::time::{Duration, Instant};

use super::{Observed, Settings, Window};
use crate::runtime::Inner;
use crate::stats::{ManagerState, ManagerStats};

/// The watch looks at least this often...
const LONGEST_TICK: Duration = Duration::from_millis(250);
/// ... and at most this often.
const SHORTEST_TICK: Duration = Duration::from_millis(5);

/// Starts the watch thread of a runtime.
pub(crate) fn start(runtime: Weak<Inner>, settings: Settings) {
    let started = thread::Builder::new()
        .name("custody-watch".to_owned())
        .spawn(move || run(&runtime, &settings));
    if let Err(error) = started {
        tracing::warn!(%error, "no watch thread: stalls and growing mailboxes go unreported");
    }
}

fn run(runtime: &Weak<Inner>, settings: &Settings) {
    loop {
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        let managers = inner.controls();
        let shutting_down = inner.is_shutting_down();
        drop(inner);
        let done = shutting_down && managers.iter().all(|(c, _)| c.has_exited());
        let now = Instant::now();
        let mut shortest = settings.growth_window;
        for (control, daemon) in &managers {
            let observed = control.observed();
            // Read before the stats: see `expire_ticket`.
            #[cfg(feature = "metrics")]
            let ticket = observed.pending_ticket();
            let stats = control.stats(*daemon);
            #[cfg(feature = "metrics")]
            observed.expire_ticket(ticket, &stats);
            shortest = shortest
                .min(observed.stall_after)
                .min(observed.growth_window);
            observed.watch_stall(&stats, now);
            observed.watch_growth(&stats, now);
            #[cfg(feature = "metrics")]
            if settings.metrics {
                super::export::manager(observed, &stats);
            }
        }
        if done {
            return;
        }
        drop(managers);
        thread::sleep((shortest / 4).clamp(SHORTEST_TICK, LONGEST_TICK));
    }
}

impl Observed {
    /// Notes which message is in hand; reports one in hand since a whole
    /// threshold.
    fn watch_stall(&self, stats: &ManagerStats, now: Instant) {
        // `handled` was read (in `stats`) before `started`: a message that
        // ended in between looks in hand for one more round, never longer.
        let started = self.started();
        let busy = started > stats.handled && stats.state != ManagerState::Stopped;
        let mut alerts = self.alerts();
        match alerts.busy {
            Some((message, since)) if busy && message == started => {
                let running_for = now.saturating_duration_since(since);
                if !alerts.stalled && running_for >= self.stall_after {
                    alerts.stalled = true;
                    tracing::warn!(
                        manager = %self.label,
                        message_number = message,
                        running_for_ms = millis(running_for),
                        threshold_ms = millis(self.stall_after),
                        "manager stalled: its current message has run past the threshold"
                    );
                }
            }
            previous => {
                if alerts.stalled {
                    let (message, since) = previous.unwrap_or((0, now));
                    tracing::info!(
                        manager = %self.label,
                        message_number = message,
                        ran_ms = millis(now.saturating_duration_since(since)),
                        "stalled manager moved on"
                    );
                }
                alerts.stalled = false;
                alerts.busy = busy.then_some((started, now));
            }
        }
    }

    /// Tracks the growth window; reports a mailbox that grew over each
    /// half of a whole window while arrivals outpaced handling, once per
    /// episode.
    fn watch_growth(&self, stats: &ManagerStats, now: Instant) {
        let window = self.growth_window;
        let depth = stats.queued;
        let handled = stats.handled;
        let mut alerts = self.alerts();
        let fresh = Window {
            since: now,
            from: depth,
            handled,
            middle: None,
        };
        let growing = alerts.growing.is_some();
        let Some(w) = alerts.window.as_mut() else {
            alerts.window = Some(fresh);
            return;
        };
        if depth <= w.from || stats.state == ManagerState::Stopped {
            // Back down to where the window began: a new one starts here.
            alerts.window = Some(fresh);
            if alerts.growing.take().is_some() {
                tracing::info!(manager = %self.label, depth, "mailbox no longer growing");
            }
            return;
        }
        if growing {
            return;
        }
        let elapsed = now.saturating_duration_since(w.since);
        if elapsed < window / 2 {
            return;
        }
        let Some(middle) = w.middle else {
            w.middle = Some(depth);
            return;
        };
        if elapsed < window {
            return;
        }
        let (since, from, handled_then) = (w.since, w.from, w.handled);
        let handled_over = handled.saturating_sub(handled_then);
        // What arrived = what was handled + how much deeper the queue got.
        let arrived = handled_over + (depth - from) as u64;
        if depth <= middle || arrived <= handled_over {
            // Rose, then stayed flat: not growing. Look again from here.
            alerts.window = Some(fresh);
            return;
        }
        alerts.growing = Some((since, from, arrived, handled_over));
        tracing::warn!(
            manager = %self.label,
            from,
            to = depth,
            arrived,
            handled = handled_over,
            window_ms = millis(elapsed),
            "mailbox growing: arrivals outpaced handling over a whole window"
        );
    }
}

#[cfg(feature = "metrics")]
impl Observed {
    /// The wait ticket in flight, if any.
    pub(super) fn pending_ticket(&self) -> Option<u64> {
        let ticket = self
            .sample
            .ticket
            .load(std::sync::atomic::Ordering::Acquire);
        (ticket != super::NO_TICKET).then_some(ticket)
    }

    /// Frees the sample slot when its ticket can no longer be reached: every
    /// message the ticket counted was, when `stats` was read (after the
    /// ticket), either started or still queued, unless it was dropped
    /// unhandled (a stale delivery of an outside queue) or was not a message
    /// (a wake-up). A ticket beyond what was started and queued (plus one
    /// message carried between batches) would otherwise be reached only by
    /// a later message, whose wait would then be measured from the old note.
    fn expire_ticket(&self, ticket: Option<u64>, stats: &ManagerStats) {
        let Some(ticket) = ticket else {
            return;
        };
        if ticket <= self.started() + stats.queued as u64 + 1 {
            return;
        }
        if let Ok(mut at) = self.sample.at.try_lock()
            && self
                .sample
                .ticket
                .load(std::sync::atomic::Ordering::Acquire)
                == ticket
        {
            *at = None;
            self.sample
                .ticket
                .store(super::NO_TICKET, std::sync::atomic::Ordering::Release);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
