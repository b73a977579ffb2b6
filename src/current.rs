//! Which manager, if any, the current thread is running.
//!
//! The manager loop records its identity here for the life of its thread. Two
//! checks read it: an `ask` addressed to the asking thread's own manager fails
//! with `Deadlock` at once, and a gate closed to outsiders (the first phase of
//! a runtime shutdown) still admits sends from the runtime's own managers.

use std::cell::Cell;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    runtime_id: u64,
    manager_id: u64,
}

thread_local! {
    static CURRENT: Cell<Option<Identity>> = const { Cell::new(None) };
}

/// Marks this thread as the home of one manager until the guard drops.
pub(crate) fn enter(runtime_id: u64, manager_id: u64) -> CurrentGuard {
    CURRENT.with(|c| {
        c.set(Some(Identity {
            runtime_id,
            manager_id,
        }))
    });
    CurrentGuard(())
}

/// Clears the thread's manager identity on drop.
pub(crate) struct CurrentGuard(());

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// The id of the manager running on this thread, if any.
pub(crate) fn manager_id() -> Option<u64> {
    CURRENT.with(|c| c.get().map(|id| id.manager_id))
}

/// Whether this thread runs a manager of the given runtime.
pub(crate) fn is_manager_of(runtime_id: u64) -> bool {
    CURRENT.with(|c| c.get().is_some_and(|id| id.runtime_id == runtime_id))
}
