//! Deadlock detection at call time: the wait-for graph of managers.
//!
//! Each manager has a [`WaitNode`] whose `edge` holds the id of the manager it
//! is blocked asking (0: none). Before a manager thread blocks in an `ask`, it
//! stores the edge "me -> target", then reads the target's edge. Almost always
//! the target is not itself waiting, and the check ends there: one store and
//! one load, plus one store to clear the edge when the ask returns. Only when
//! the target is waiting does the walk go on, through a global registry from
//! ids to nodes; reaching the asker means the wait would never end, and the ask
//! fails with the cycle.
//!
//! Both the store and the loads are `SeqCst`, so of two managers closing a
//! cycle at the same moment at least one sees the other's edge (both may: then
//! both fail, and neither hangs). Asks from threads that are not managers skip
//! all of this: they cannot be asked back, so they cannot be part of a cycle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// Walks longer than this give up (a cycle among other managers, not
/// involving the asker, would otherwise be walked forever).
const MAX_WALK: usize = 256;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A node as the registry sees it: its name and its edge.
type Registered = (Arc<str>, Arc<AtomicU64>);

fn registry() -> &'static RwLock<HashMap<u64, Registered>> {
    static REGISTRY: OnceLock<RwLock<HashMap<u64, Registered>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(HashMap::new()))
}

/// One manager in the wait-for graph.
pub(crate) struct WaitNode {
    id: u64,
    name: Arc<str>,
    edge: Arc<AtomicU64>,
}

impl WaitNode {
    pub(crate) fn new(name: &str) -> WaitNode {
        let node = WaitNode {
            id: NEXT_ID.fetch_add(1, SeqCst),
            name: Arc::from(name),
            edge: Arc::new(AtomicU64::new(0)),
        };
        registry()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.id, (Arc::clone(&node.name), Arc::clone(&node.edge)));
        node
    }

    /// Records that this manager is about to wait on `target`.
    ///
    /// # Errors
    ///
    /// The names around the cycle, this manager first and last, if waiting
    /// would close one; the edge is then not left behind.
    #[inline]
    pub(crate) fn begin_wait(&self, target: &WaitNode) -> Result<(), Vec<String>> {
        if self.id == target.id {
            return Err(vec![self.name.to_string(), self.name.to_string()]);
        }
        self.edge.store(target.id, SeqCst);
        match target.edge.load(SeqCst) {
            0 => Ok(()),
            next => self.walk(target, next),
        }
    }

    /// The wait has ended.
    #[inline]
    pub(crate) fn end_wait(&self) {
        self.edge.store(0, SeqCst);
    }

    #[cold]
    fn walk(&self, target: &WaitNode, mut next: u64) -> Result<(), Vec<String>> {
        let mut path = vec![self.name.to_string(), target.name.to_string()];
        let registry = registry().read().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..MAX_WALK {
            if next == self.id {
                path.push(self.name.to_string());
                self.end_wait();
                return Err(path);
            }
            let Some((name, edge)) = registry.get(&next) else {
                return Ok(());
            };
            path.push(name.to_string());
            next = edge.load(SeqCst);
            if next == 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl Drop for WaitNode {
    fn drop(&mut self) {
        registry()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_on_an_idle_manager_passes_and_a_cycle_is_caught() {
        let a = WaitNode::new("a");
        let b = WaitNode::new("b");
        assert!(a.begin_wait(&b).is_ok());
        assert_eq!(
            b.begin_wait(&a),
            Err(vec!["b".to_owned(), "a".to_owned(), "b".to_owned()])
        );
        // The failed wait left no edge behind: a can finish and wait again.
        a.end_wait();
        assert!(b.begin_wait(&a).is_ok());
        b.end_wait();
        assert_eq!(a.begin_wait(&a), Err(vec!["a".to_owned(), "a".to_owned()]));
    }

    /// Measures the check on its own (run with
    /// `cargo test --release --lib deadlock -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_the_check() {
        let a = WaitNode::new("a");
        let b = WaitNode::new("b");
        let n = 10_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(a.begin_wait(std::hint::black_box(&b))).ok();
            a.end_wait();
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!("begin_wait + end_wait on an idle target: {per:.1} ns");
    }
}
