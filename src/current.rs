//! Which manager, if any, the current thread is running.
//!
//! The manager loop records its identity here for the life of its thread. Two
//! checks read it: an `ask` from a manager records its wait in the wait-for
//! graph (and fails with `Deadlock` if that closes a cycle), and a gate closed
//! to outsiders (the first phase of a runtime shutdown) still admits sends
//! from the runtime's own managers.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::deadlock::WaitNode;

thread_local! {
    static RUNTIME: Cell<Option<u64>> = const { Cell::new(None) };
    static NODE: RefCell<Option<Arc<WaitNode>>> = const { RefCell::new(None) };
}

/// Marks this thread as the home of one manager until the guard drops.
pub(crate) fn enter(runtime_id: u64, node: &Arc<WaitNode>) -> CurrentGuard {
    RUNTIME.with(|c| c.set(Some(runtime_id)));
    NODE.with(|n| *n.borrow_mut() = Some(Arc::clone(node)));
    CurrentGuard(())
}

/// Clears the thread's manager identity on drop.
pub(crate) struct CurrentGuard(());

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        RUNTIME.with(|c| c.set(None));
        NODE.with(|n| n.borrow_mut().take());
    }
}

/// Runs `f` with the wait-for node of the manager on this thread, if any.
#[inline]
pub(crate) fn with_node<T>(f: impl FnOnce(Option<&Arc<WaitNode>>) -> T) -> T {
    NODE.with(|n| f(n.borrow().as_ref()))
}

/// Whether this thread runs a manager of the given runtime.
pub(crate) fn is_manager_of(runtime_id: u64) -> bool {
    RUNTIME.with(|c| c.get() == Some(runtime_id))
}

/// Whether this thread runs any manager (of any runtime).
pub(crate) fn is_manager() -> bool {
    RUNTIME.with(|c| c.get().is_some())
}
