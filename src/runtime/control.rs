//! `Control`: the runtime's type-erased view of one manager, through which
//! it stops, aborts and reports on managers of every message type.

use crate::handle::Shared;
use crate::observe::Observed;
use crate::stats::{ManagerState, ManagerStats};

/// The runtime's type-erased view of one manager.
pub(crate) trait Control: Send + Sync {
    fn close(&self);
    fn close_to_outside(&self);
    fn abort(&self);
    fn has_exited(&self) -> bool;
    fn unhandled(&self) -> u64;
    fn stats(&self, daemon: bool) -> ManagerStats;
    fn observed(&self) -> &Observed;
}

impl<M: Send + 'static> Shared<M> {
    pub(crate) fn stats(&self, daemon: bool) -> ManagerStats {
        let state = if self.mailbox.gate.has_exited() {
            ManagerState::Stopped
        } else if self.is_aborted() {
            ManagerState::Aborting
        } else if self.mailbox.gate.is_closed() {
            ManagerState::Stopping
        } else {
            ManagerState::Running
        };
        let handled = self.counters.handled();
        let queued = self.mailbox.len();
        ManagerStats {
            name: self.name.clone(),
            backend: self.backend,
            daemon,
            state,
            handled,
            panicked: self.counters.panicked(),
            restarts: self.counters.restarts(),
            queued,
            unfinished: self.mailbox.gate.unfinished(),
            unhandled: self.mailbox.gate.dropped(),
            outside: self.mailbox.outside().map(|o| o.stats()),
            refused: self.observed.refused_count(),
            service: self.observed.service(),
            wait: self.observed.wait(),
            stalled: self.observed.stalled(handled),
            growing: self.observed.growing(queued),
        }
    }
}

impl<M: Send + 'static> Control for Shared<M> {
    fn close(&self) {
        self.stop();
    }

    fn close_to_outside(&self) {
        self.mailbox.gate.close_to_outside();
    }

    fn abort(&self) {
        Shared::abort(self);
    }

    fn has_exited(&self) -> bool {
        self.mailbox.gate.has_exited()
    }

    fn unhandled(&self) -> u64 {
        self.mailbox.gate.dropped()
    }

    fn stats(&self, daemon: bool) -> ManagerStats {
        Shared::stats(self, daemon)
    }

    fn observed(&self) -> &Observed {
        &self.observed
    }
}
