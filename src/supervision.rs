//! What a manager does when its handler panics.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A manager's policy when `handle` panics, set with
/// [`ManagerBuilder::on_panic`](crate::ManagerBuilder::on_panic).
///
/// Whatever the policy, the panic is caught, traced and counted, the
/// manager's [`recover`](crate::Manager::recover) hook runs, the asker of the
/// panicking message gets [`AskError::Panicked`](crate::AskError::Panicked),
/// and `join` never hangs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::{PanicPolicy, Runtime};
///
/// let rt = Runtime::new();
/// let flaky = rt
///     .manager("flaky")
///     .on_panic(PanicPolicy::Restart { max_restarts: 3, within: Duration::from_secs(10) })
///     .own_with(|| Vec::<u32>::new())?;
/// flaky.cast(|v| v.push(1))?;
/// assert!(flaky.call(|_| -> () { panic!("lost the state") }).is_err());
/// // Restarted from the factory: the state is fresh.
/// assert_eq!(flaky.call(|v| v.len())?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PanicPolicy {
    /// Keep the state and carry on with the next message (the default).
    #[default]
    Resume,
    /// Run `stopped` on the broken instance, build a fresh one from the
    /// factory given at spawn, run its `started`, and carry on. After more than
    /// `max_restarts` restarts within `within`, stop for good (as an Erlang
    /// supervisor's intensity limit).
    Restart {
        /// Restarts allowed in the window.
        max_restarts: u32,
        /// The sliding window.
        within: Duration,
    },
    /// Stop for good: refuse new messages, discard the queued ones (asks get
    /// `Stopped`, tells are counted in the stop report), run `stopped`.
    Stop,
}

/// The sliding window of recent restarts.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a restart if the intensity allows one more; `false` means the
    /// limit is reached and the manager must stop.
    pub(crate) fn allow(&mut self, max_restarts: u32, within: Duration, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.saturating_duration_since(oldest) > within {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= max_restarts as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_allows_max_restarts_then_refuses_until_old_ones_expire() {
        let mut w = RestartWindow::default();
        let t0 = Instant::now();
        let within = Duration::from_secs(10);
        assert!(w.allow(2, within, t0));
        assert!(w.allow(2, within, t0 + Duration::from_secs(1)));
        assert!(!w.allow(2, within, t0 + Duration::from_secs(2)));
        assert!(w.allow(2, within, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn zero_restarts_never_allows_one() {
        let mut w = RestartWindow::default();
        assert!(!w.allow(0, Duration::from_secs(1), Instant::now()));
    }
}
