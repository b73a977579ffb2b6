//! Deadlock detection at call time: the wait-for graph of managers.
//!
//! Each manager has a [`WaitNode`] naming the manager it is blocked asking, if
//! any. Before a manager thread blocks in an `ask`, it records the edge
//! "me -> target", then walks the edges from the target. Reaching itself means
//! the wait would never end: it removes its edge and fails with the cycle.
//!
//! The edge is written before the walk, under per-node mutexes, so of two
//! managers closing a cycle at the same moment at least one sees the other's
//! edge (both may: then both fail, and neither hangs). Asks from threads that
//! are not managers skip all of this: they cannot be asked back, so they can
//! never be part of a cycle. The cost on a manager's ask is a few uncontended
//! lock operations: one to set the edge, one per step of the walk (usually
//! one), one to clear it.

use std::sync::{Arc, Mutex, PoisonError};

/// Walks longer than this give up (a cycle among other managers, not
/// involving the asker, would otherwise be walked forever).
const MAX_WALK: usize = 256;

/// One manager in the wait-for graph.
pub(crate) struct WaitNode {
    name: String,
    waiting_on: Mutex<Option<Arc<WaitNode>>>,
}

impl WaitNode {
    pub(crate) fn new(name: String) -> Arc<WaitNode> {
        Arc::new(WaitNode {
            name,
            waiting_on: Mutex::new(None),
        })
    }

    fn set(&self, target: Option<Arc<WaitNode>>) {
        *self
            .waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = target;
    }

    fn next(&self) -> Option<Arc<WaitNode>> {
        self.waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Clears the asker's edge when its wait ends.
pub(crate) struct WaitEdge<'a> {
    node: &'a WaitNode,
}

impl Drop for WaitEdge<'_> {
    fn drop(&mut self) {
        self.node.set(None);
    }
}

/// Records that `me` is about to wait on `target`.
///
/// # Errors
///
/// The names around the cycle, `me` first and last, if waiting would close one.
pub(crate) fn begin_wait<'a>(
    me: &'a Arc<WaitNode>,
    target: &Arc<WaitNode>,
) -> Result<WaitEdge<'a>, Vec<String>> {
    if Arc::ptr_eq(me, target) {
        return Err(vec![me.name.clone(), me.name.clone()]);
    }
    me.set(Some(Arc::clone(target)));
    let edge = WaitEdge { node: me };
    let mut path = vec![me.name.clone(), target.name.clone()];
    let mut at = Arc::clone(target);
    for _ in 0..MAX_WALK {
        let Some(next) = at.next() else {
            return Ok(edge);
        };
        path.push(next.name.clone());
        if Arc::ptr_eq(&next, me) {
            drop(edge);
            return Err(path);
        }
        at = next;
    }
    Ok(edge)
}
