//! Deadlock detection at call time: the wait-for graph of managers.
//!
//! Each manager has a [`WaitNode`] whose `edge` says what it is blocked on:
//! 0 for nothing, otherwise a *token* that packs the id of the manager it
//! waits for with a sequence number unique to this one wait. A manager waits
//! on another when it asks it (until the reply slot is completed: answered,
//! dropped, or given up), when it is blocked telling into its full bounded
//! mailbox, and when it joins it.
//!
//! Before a manager thread blocks, it stores its token, then reads the
//! target's edge. Almost always the target is not itself waiting, and the
//! check ends there: one store and one load, plus one compare-and-swap to
//! clear the edge when the wait ends. Only when the target is waiting does
//! the walk go on, through a global registry from ids to nodes; reaching the
//! asker means the wait would never end, and the call fails with the cycle.
//!
//! **A cycle only when one exists.** An edge ends when the wait ends, not when
//! the waiting thread next runs: a reply slot clears its asker's edge as it is
//! completed ([`WaitLink`]), so "X asked Y, Y answered and then asked X" is not
//! a cycle. And a walk reads edges one at a time, so it could join an edge
//! that has just ended to one that has just begun; before reporting a cycle
//! the walk reads every edge of it again (a double collect). Tokens are never
//! reused by the same node within 2^24 waits, so an edge read twice with the
//! same token was held the whole time in between, and all of them at the
//! moment of the last first read: the cycle existed at that moment. If any
//! edge changed, the walk starts over (a bounded number of times).
//!
//! All loads and stores are `SeqCst`, so of two managers closing a cycle at
//! the same moment at least one sees the other's edge (both may: then both
//! fail, and neither hangs). Threads that are not managers skip all of this:
//! they cannot be asked back, so they cannot be part of a cycle.
//!
//! What it cannot see: a [`Reply`](crate::Reply) moved by hand (inside another
//! message, or to a plain thread) keeps pointing at the manager that received
//! it; [`Reply::forward`](crate::Reply::forward) moves the edge with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

/// Walks longer than this give up (a cycle among other managers, not
/// involving the asker, would otherwise be walked forever).
const MAX_WALK: usize = 256;
/// How many times a walk starts over when edges changed under it.
const MAX_RETRIES: usize = 16;

/// A token's low bits: the id of the manager waited for.
const ID_BITS: u32 = 40;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
/// A token's high bits: the wait's sequence number (wraps after 2^24).
const SEQ_MASK: u64 = (1 << (64 - ID_BITS)) - 1;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A node as the registry sees it: its name and its edge.
type Registered = (Arc<str>, Arc<AtomicU64>);

fn registry() -> &'static RwLock<HashMap<u64, Registered>> {
    static REGISTRY: OnceLock<RwLock<HashMap<u64, Registered>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(HashMap::new()))
}

/// The names around a cycle, the waiter first and last.
pub(crate) type Cycle = Vec<String>;

/// One manager in the wait-for graph.
pub(crate) struct WaitNode {
    id: u64,
    name: Arc<str>,
    edge: Arc<AtomicU64>,
    /// The next wait's sequence number.
    seq: AtomicU64,
}

/// One wait recorded in a node's edge; ends it when passed to `end_wait`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use = "a recorded wait must be ended"]
pub(crate) struct Token(u64);

impl WaitNode {
    pub(crate) fn new(name: &str) -> WaitNode {
        let node = WaitNode {
            id: NEXT_ID.fetch_add(1, SeqCst) & ID_MASK,
            name: Arc::from(name),
            edge: Arc::new(AtomicU64::new(0)),
            seq: AtomicU64::new(0),
        };
        registry()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.id, (Arc::clone(&node.name), Arc::clone(&node.edge)));
        node
    }

    fn token_for(&self, target: &WaitNode) -> Token {
        let seq = self.seq.fetch_add(1, SeqCst) & SEQ_MASK;
        Token((seq << ID_BITS) | target.id)
    }

    /// The cycle of a node waiting on itself.
    fn self_cycle(&self) -> Cycle {
        vec![self.name.to_string(), self.name.to_string()]
    }

    /// Records that this manager is about to wait on `target`.
    ///
    /// # Errors
    ///
    /// The names around the cycle, this manager first and last, if waiting
    /// would close one; the edge is then not left behind.
    #[inline]
    pub(crate) fn begin_wait(&self, target: &WaitNode) -> Result<Token, Cycle> {
        if self.id == target.id {
            return Err(self.self_cycle());
        }
        let token = self.token_for(target);
        self.edge.store(token.0, SeqCst);
        match target.edge.load(SeqCst) {
            0 => Ok(token),
            next => self
                .check(target, next, token)
                .inspect_err(|_| self.end_wait(token)),
        }
    }

    /// The wait recorded as `token` has ended. Does nothing if the edge has
    /// since been ended or moved (by the reply slot, or a forward).
    #[inline]
    pub(crate) fn end_wait(&self, token: Token) {
        let _ = self.edge.compare_exchange(token.0, 0, SeqCst, SeqCst);
    }

    /// Moves the wait recorded as `from` to `target` (a forwarded reply).
    ///
    /// # Errors
    ///
    /// `Ok(None)` if that wait has already ended; the cycle if waiting on
    /// `target` would close one (the edge is then restored to `from`).
    fn move_wait(&self, from: Token, target: &WaitNode) -> Result<Option<Token>, Cycle> {
        if self.id == target.id {
            return Err(self.self_cycle());
        }
        let to = self.token_for(target);
        if self
            .edge
            .compare_exchange(from.0, to.0, SeqCst, SeqCst)
            .is_err()
        {
            return Ok(None);
        }
        let checked = match target.edge.load(SeqCst) {
            0 => Ok(to),
            next => self.check(target, next, to),
        };
        match checked {
            Ok(to) => Ok(Some(to)),
            Err(cycle) => {
                let _ = self.edge.compare_exchange(to.0, from.0, SeqCst, SeqCst);
                Err(cycle)
            }
        }
    }

    /// Walks from `target` (whose edge read `next`); a cycle back to this node
    /// is reported only if every edge on it still holds when read again.
    #[cold]
    fn check(&self, target: &WaitNode, mut next: u64, mine: Token) -> Result<Token, Cycle> {
        let registry = registry().read().unwrap_or_else(PoisonError::into_inner);
        'retry: for _ in 0..MAX_RETRIES {
            let mut path = vec![self.name.to_string(), target.name.to_string()];
            let mut seen: Vec<(&AtomicU64, u64)> = vec![(&*target.edge, next)];
            for _ in 0..MAX_WALK {
                let id = next & ID_MASK;
                if id == self.id {
                    let unchanged = self.edge.load(SeqCst) == mine.0
                        && seen.iter().all(|(edge, value)| edge.load(SeqCst) == *value);
                    if unchanged {
                        path.push(self.name.to_string());
                        return Err(path);
                    }
                    next = target.edge.load(SeqCst);
                    if next == 0 {
                        return Ok(mine);
                    }
                    continue 'retry;
                }
                let Some((name, edge)) = registry.get(&id) else {
                    return Ok(mine);
                };
                path.push(name.to_string());
                next = edge.load(SeqCst);
                if next == 0 {
                    return Ok(mine);
                }
                seen.push((&**edge, next));
            }
            return Ok(mine);
        }
        Ok(mine)
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

/// The asking manager's edge, as its reply slot sees it: attached before the
/// request is sent, ended when the slot is completed, moved by a forward.
#[derive(Default)]
pub(crate) struct WaitLink {
    node: OnceLock<Arc<WaitNode>>,
    token: AtomicU64,
}

impl WaitLink {
    /// Ties the wait recorded as `token` in `node` to this slot.
    pub(crate) fn attach(&self, node: &Arc<WaitNode>, token: Token) {
        self.token.store(token.0, SeqCst);
        let _ = self.node.set(Arc::clone(node));
    }

    /// The slot is complete (or given up): the wait has ended.
    #[inline]
    pub(crate) fn release(&self) {
        if let Some(node) = self.node.get() {
            let token = self.token.swap(0, SeqCst);
            if token != 0 {
                node.end_wait(Token(token));
            }
        }
    }

    /// The reply moves to `target`: so does the asker's wait. `None` when
    /// there is no wait to move (asked from a plain thread, or already ended).
    ///
    /// # Errors
    ///
    /// The cycle, if the asker waiting on `target` would close one; the wait
    /// then stays where it was.
    pub(crate) fn move_to(&self, target: &WaitNode) -> Result<Option<Moved>, Cycle> {
        let Some(node) = self.node.get() else {
            return Ok(None);
        };
        let from = self.token.load(SeqCst);
        if from == 0 {
            return Ok(None);
        }
        let Some(to) = node.move_wait(Token(from), target)? else {
            return Ok(None);
        };
        if self
            .token
            .compare_exchange(from, to.0, SeqCst, SeqCst)
            .is_err()
        {
            // The asker gave up meanwhile, ending the old token: end the new.
            node.end_wait(to);
            return Ok(None);
        }
        Ok(Some(Moved { from, to: to.0 }))
    }

    /// Puts a moved wait back (the forward was refused).
    pub(crate) fn undo(&self, moved: Moved) {
        if let Some(node) = self.node.get()
            && self
                .token
                .compare_exchange(moved.to, moved.from, SeqCst, SeqCst)
                .is_ok()
        {
            let _ = node
                .edge
                .compare_exchange(moved.to, moved.from, SeqCst, SeqCst);
        }
    }
}

/// A wait moved by [`WaitLink::move_to`], for [`WaitLink::undo`].
pub(crate) struct Moved {
    from: u64,
    to: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_on_an_idle_manager_passes_and_a_cycle_is_caught() {
        let a = WaitNode::new("a");
        let b = WaitNode::new("b");
        let waiting = a.begin_wait(&b).expect("b waits on nothing");
        assert_eq!(
            b.begin_wait(&a),
            Err(vec!["b".to_owned(), "a".to_owned(), "b".to_owned()])
        );
        // The failed wait left no edge behind: a can finish and wait again.
        a.end_wait(waiting);
        let again = b.begin_wait(&a).expect("a no longer waits");
        b.end_wait(again);
        assert_eq!(a.begin_wait(&a), Err(vec!["a".to_owned(), "a".to_owned()]));
    }

    #[test]
    fn an_ended_wait_cannot_be_ended_again_by_a_stale_token() {
        let a = WaitNode::new("a");
        let b = WaitNode::new("b");
        let first = a.begin_wait(&b).unwrap();
        a.end_wait(first);
        let second = a.begin_wait(&b).unwrap();
        assert_ne!(first, second);
        a.end_wait(first); // late: must not end the second wait
        assert!(b.begin_wait(&a).is_err(), "the second wait still holds");
        a.end_wait(second);
        let ok = b.begin_wait(&a).expect("no wait left");
        b.end_wait(ok);
    }

    #[test]
    fn a_released_link_ends_the_wait_and_a_moved_one_follows_the_reply() {
        let a = Arc::new(WaitNode::new("a"));
        let router = WaitNode::new("router");
        let worker = WaitNode::new("worker");
        let link = WaitLink::default();
        link.attach(&a, a.begin_wait(&router).unwrap());
        assert!(link.move_to(&worker).unwrap().is_some());
        // a now waits on worker, not on router.
        let r = router.begin_wait(&a).expect("router is free");
        router.end_wait(r);
        assert_eq!(
            worker.begin_wait(&a),
            Err(vec![
                "worker".to_owned(),
                "a".to_owned(),
                "worker".to_owned()
            ])
        );
        link.release();
        let w = worker.begin_wait(&a).expect("the reply was completed");
        worker.end_wait(w);
        // Moving back to the asker itself is a cycle, and leaves the edge.
        let link = WaitLink::default();
        link.attach(&a, a.begin_wait(&router).unwrap());
        assert!(link.move_to(&a).is_err());
        assert!(router.begin_wait(&a).is_err(), "still waiting on router");
        link.release();
    }

    #[test]
    fn a_chain_that_ends_is_not_a_cycle() {
        let a = WaitNode::new("a");
        let b = WaitNode::new("b");
        let c = WaitNode::new("c");
        let bc = b.begin_wait(&c).unwrap();
        let ab = a.begin_wait(&b).unwrap();
        assert!(c.begin_wait(&a).is_err(), "c -> a -> b -> c");
        b.end_wait(bc);
        let ca = c.begin_wait(&a).expect("b no longer waits on c");
        c.end_wait(ca);
        a.end_wait(ab);
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
            if let Ok(token) = a.begin_wait(std::hint::black_box(&b)) {
                a.end_wait(token);
            }
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!("begin_wait + end_wait on an idle target: {per:.1} ns");
    }
}
