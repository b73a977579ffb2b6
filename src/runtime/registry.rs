//! The runtime's managers, in spawn order, with their names indexed.
//!
//! Shutdown walks the managers in reverse spawn order, so they are kept in a
//! `Vec`; a spawn asks whether its name is taken, so the names are also kept
//! in a set. Without the set each spawn compared its name with every
//! manager's: 10,000 spawns made 50 million comparisons.

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};

use super::Entry;

#[derive(Default)]
pub(super) struct Registry {
    /// In spawn order.
    entries: Vec<Entry>,
    /// The names of `entries`, each once.
    names: HashSet<String>,
}

impl Registry {
    /// The position of the manager named `name`, if one is registered.
    /// Linear, but only reached when the name is taken.
    pub(super) fn position(&self, name: &str) -> Option<usize> {
        if !self.names.contains(name) {
            return None;
        }
        self.entries.iter().position(|e| e.name == name)
    }

    /// Adds a manager whose name is not registered.
    pub(super) fn push(&mut self, entry: Entry) {
        let fresh = self.names.insert(entry.name.clone());
        debug_assert!(fresh, "two managers named {}", entry.name);
        self.entries.push(entry);
    }

    /// Removes the manager at `index` (which must exist).
    pub(super) fn remove(&mut self, index: usize) -> Entry {
        let entry = self.entries.remove(index);
        self.names.remove(&entry.name);
        entry
    }
}

/// Read access and in-place changes go through the slice: its names cannot
/// change from there, so the set stays in step.
impl Deref for Registry {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        &self.entries
    }
}

impl DerefMut for Registry {
    fn deref_mut(&mut self) -> &mut [Entry] {
        &mut self.entries
    }
}

#[cfg(test)]
mod tests {
    use crate::{Runtime, SpawnError};

    #[test]
    fn names_are_refused_while_taken_and_reused_once_exited() {
        let rt = Runtime::new();
        let owners: Vec<_> = (0..200)
            .map(|i| rt.own(format!("m{i}"), i).expect("spawning"))
            .collect();
        // A taken name is refused, whichever manager holds it.
        for name in ["m0", "m117", "m199"] {
            assert!(matches!(
                rt.own(name, 0),
                Err(SpawnError::DuplicateName(taken)) if taken == name
            ));
        }
        // A stopped manager's name can be taken again; the new manager is
        // last in spawn order.
        owners[117].handle().stop();
        owners[117].join().expect("joining");
        let again = loop {
            match rt.own("m117", 1000) {
                Ok(owner) => break owner,
                // `join` returns once the mailbox is drained; the thread
                // may not have exited yet.
                Err(SpawnError::DuplicateName(_)) => std::thread::yield_now(),
                Err(other) => panic!("respawning: {other}"),
            }
        };
        assert_eq!(again.call(|n| *n).expect("asking"), 1000);
        assert!(matches!(
            rt.own("m117", 0),
            Err(SpawnError::DuplicateName(_))
        ));
        let names: Vec<String> = rt.stats().managers.into_iter().map(|m| m.name).collect();
        assert_eq!(names.len(), 200);
        assert_eq!(names.last().map(String::as_str), Some("m117"));
        assert_eq!(names.iter().filter(|n| *n == "m117").count(), 1);
        for (i, owner) in owners.iter().enumerate().filter(|(i, _)| *i != 117) {
            assert_eq!(owner.call(|n| *n).expect("asking"), i);
        }
        let report = rt.shutdown();
        assert_eq!(report.managers.len(), 200);
        assert_eq!(report.total_unhandled(), 0);
    }
}
