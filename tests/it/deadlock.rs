//! Deadlock detection: an ask that would close a cycle of waiting managers
//! fails at once with the names in the cycle.

use std::sync::{Arc, OnceLock};

use custody::{AskError, Backend, Context, Handle, Manager, Reply};

use crate::support::{runtime, within};

/// Asks the next manager in the ring, which asks the next, ...
enum Msg {
    /// Ask the next manager and report what came back.
    Pass(Reply<Result<Vec<String>, AskError>>),
    /// Answer directly.
    Ping(Reply<Vec<String>>),
}

struct Ring {
    name: String,
    next: Arc<OnceLock<Handle<Msg>>>,
    /// Where the chain of asks ends: answer without asking on.
    stop_passing: bool,
}

impl Manager for Ring {
    type Msg = Msg;

    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Pass(reply) => {
                let next = self.next.get().expect("ring wired");
                let result = if self.stop_passing {
                    Ok(Vec::new())
                } else {
                    next.ask(Msg::Pass).and_then(|inner| inner)
                };
                reply.send(result.map(|mut path| {
                    path.insert(0, self.name.clone());
                    path
                }));
            }
            Msg::Ping(reply) => reply.send(vec![self.name.clone()]),
        }
    }
}

/// Spawns managers named by `names`, each asking the next, the last asking
/// the first; if `open`, the last answers instead of asking on.
fn ring(rt: &custody::Runtime, names: &[&str], open: bool) -> Vec<Handle<Msg>> {
    let slots: Vec<Arc<OnceLock<Handle<Msg>>>> =
        names.iter().map(|_| Arc::new(OnceLock::new())).collect();
    let handles: Vec<Handle<Msg>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            rt.spawn(
                *name,
                Ring {
                    name: name.to_string(),
                    next: Arc::clone(&slots[i]),
                    stop_passing: open && i == names.len() - 1,
                },
            )
            .unwrap()
        })
        .collect();
    for (i, slot) in slots.iter().enumerate() {
        let _ = slot.set(handles[(i + 1) % handles.len()].clone());
    }
    handles
}

backend_tests!(
    two_managers_asking_each_other_get_deadlock,
    a_cycle_of_three_gets_deadlock_with_every_name,
    a_chain_without_a_cycle_still_works,
    owners_calling_each_other_get_deadlock,
);

fn two_managers_asking_each_other_get_deadlock(backend: Backend) {
    within("2-cycle", move || {
        let rt = runtime(backend);
        let ring = ring(&rt, &["a", "b"], false);
        // a asks b; b asks a, which is waiting on b.
        let outcome = ring[0].ask(Msg::Pass).unwrap();
        match outcome {
            Err(AskError::Deadlock { cycle }) => assert_eq!(cycle, ["b", "a", "b"]),
            other => panic!("expected Deadlock, got {other:?}"),
        }
    });
}

fn a_cycle_of_three_gets_deadlock_with_every_name(backend: Backend) {
    within("3-cycle", move || {
        let rt = runtime(backend);
        let ring = ring(&rt, &["x", "y", "z"], false);
        match ring[0].ask(Msg::Pass).unwrap() {
            Err(AskError::Deadlock { cycle }) => {
                assert_eq!(cycle, ["z", "x", "y", "z"]);
                let text = AskError::Deadlock { cycle }.to_string();
                assert_eq!(text, "asking would deadlock: z -> x -> y -> z");
            }
            other => panic!("expected Deadlock, got {other:?}"),
        }
        // The ring still works afterwards: nobody is left waiting.
        for h in &ring {
            assert_eq!(h.ask(Msg::Ping).unwrap().len(), 1);
        }
    });
}

fn a_chain_without_a_cycle_still_works(backend: Backend) {
    within("chain", move || {
        let rt = runtime(backend);
        let ring = ring(&rt, &["p", "q", "r"], true);
        assert_eq!(ring[0].ask(Msg::Pass).unwrap().unwrap(), ["p", "q", "r"]);
    });
}

fn owners_calling_each_other_get_deadlock(backend: Backend) {
    within("owners", move || {
        let rt = runtime(backend);
        let left = rt.own("left", ()).unwrap();
        let right = rt.own("right", ()).unwrap();
        let back = left.clone();
        let result = left
            .call(move |_| right.call(move |_| back.call(|_| 1)))
            .unwrap();
        match result {
            Ok(Err(AskError::Deadlock { cycle })) => assert_eq!(cycle, ["right", "left", "right"]),
            other => panic!("expected a nested Deadlock, got {other:?}"),
        }
    });
}
