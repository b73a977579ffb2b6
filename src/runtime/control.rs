//! `Control`: the runtime's type-erased view of one manager, through which
//! it stops, aborts and reports on managers of every message type.

use crate::handle::Shared;
use crate::stats::{ManagerState, ManagerStats};

/// The runtime's type-erased view of one manager.
pub(crate) trait Control: Send + Sync {
    fn close(&self);
    fn close_to_outside(&self);
    fn abort(&self);
    fn has_exited(&self) -> bool;
    fn unhandled(&self) -> u64;
    fn stats(&self, daemon: bool) -> ManagerStats;
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
        ManagerStats {
            name: self.name.clone(),
            backend: self.backend,
            daemon,
            state,
            handled: self.counters.handled(),
            panicked: self.counters.panicked(),
            restarts: self.counters.restarts(),
            queued: self.mailbox.len(),
            unfinished: self.mailbox.gate.unfinished(),
            unhandled: self.mailbox.gate.dropped(),
            outside: self.mailbox.outside().map(|o| o.stats()),
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
}
