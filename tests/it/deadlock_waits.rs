//! Waits the deadlock detector follows beyond a plain ask: a reply forwarded
//! to another manager, a manager blocked telling into a full bounded mailbox,
//! and a manager joining. Each would hang; each ends with a typed error.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use custody::{AskError, Backend, Capacity, Context, Handle, JoinError, Manager, Reply, SendError};

use crate::support::{runtime, within};

type Slot<T> = Arc<OnceLock<Handle<T>>>;

fn slot<T: Send + 'static>() -> Slot<T> {
    Arc::new(OnceLock::new())
}

fn cycle(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

// ---- a reply forwarded: `a` asks the router, which forwards the reply.

enum AMsg {
    /// Ask the router and report its answer.
    AskRouter(Reply<Result<String, AskError>>),
    /// Answer at once.
    Ping(Reply<&'static str>),
    /// Answer a forwarded request.
    Answer(Reply<String>),
}

struct Asker {
    router: Slot<RMsg>,
}

impl Manager for Asker {
    type Msg = AMsg;
    fn handle(&mut self, msg: AMsg, _ctx: &mut Context<'_, AMsg>) {
        match msg {
            AMsg::AskRouter(reply) => reply.send(self.router.get().unwrap().ask(RMsg::Route)),
            AMsg::Ping(reply) => reply.send("pong"),
            AMsg::Answer(reply) => reply.send("answered by a".to_owned()),
        }
    }
}

enum RMsg {
    Route(Reply<String>),
}

#[derive(Clone, Copy)]
enum RouteTo {
    /// Forward to the worker, which asks `a` back.
    Worker,
    /// Forward to `a` itself, which is blocked asking the router.
    Asker,
    /// Forward to a stopped worker, then ask `a` directly.
    StoppedWorker,
}

struct Router {
    to: RouteTo,
    worker: Slot<WMsg>,
    asker: Slot<AMsg>,
}

impl Manager for Router {
    type Msg = RMsg;
    fn handle(&mut self, RMsg::Route(reply): RMsg, _ctx: &mut Context<'_, RMsg>) {
        let worker = self.worker.get().unwrap();
        let asker = self.asker.get().unwrap();
        match self.to {
            RouteTo::Worker => {
                if let Err(e) = reply.forward(worker, WMsg::Work) {
                    let WMsg::Work(reply) = e.into_inner();
                    reply.send("forward refused".to_owned());
                }
            }
            RouteTo::Asker => match reply.forward(asker, AMsg::Answer) {
                Ok(()) => {}
                Err(SendError::Deadlock { msg, cycle }) => {
                    let AMsg::Answer(reply) = msg else {
                        unreachable!()
                    };
                    reply.send(format!("refused: {}", cycle.join(" -> ")));
                }
                Err(e) => drop(e),
            },
            RouteTo::StoppedWorker => {
                let refused = reply
                    .forward(worker, WMsg::Work)
                    .expect_err("worker stopped");
                assert!(refused.is_stopped());
                let WMsg::Work(reply) = refused.into_inner();
                // The reply is back here, so `a` waits on the router again:
                // asking it would close a cycle.
                let back = asker.ask(AMsg::Ping);
                reply.send(format!("{back:?}"));
            }
        }
    }
}

enum WMsg {
    Work(Reply<String>),
}

struct Worker {
    asker: Slot<AMsg>,
}

impl Manager for Worker {
    type Msg = WMsg;
    fn handle(&mut self, WMsg::Work(reply): WMsg, _ctx: &mut Context<'_, WMsg>) {
        // `a` waits on this worker now (the reply was forwarded here): asking
        // it back would hang both.
        let back = self.asker.get().unwrap().ask(AMsg::Ping);
        reply.send(format!("{back:?}"));
    }
}

/// Wires `a`, a router and a worker; returns `a`'s answer to one request.
fn route(backend: Backend, to: RouteTo, stop_worker: bool) -> Result<String, AskError> {
    within("forwarded reply", move || {
        let rt = runtime(backend);
        let (router_slot, worker_slot, asker_slot) = (slot(), slot(), slot());
        let a = rt
            .spawn(
                "a",
                Asker {
                    router: Arc::clone(&router_slot),
                },
            )
            .unwrap();
        asker_slot.set(a.clone()).ok();
        let worker = rt
            .spawn(
                "worker",
                Worker {
                    asker: Arc::clone(&asker_slot),
                },
            )
            .unwrap();
        worker_slot.set(worker.clone()).ok();
        let router = rt
            .spawn(
                "router",
                Router {
                    to,
                    worker: worker_slot,
                    asker: asker_slot,
                },
            )
            .unwrap();
        router_slot.set(router).ok();
        if stop_worker {
            worker.stop();
            worker.join().unwrap();
        }
        let answer = a.ask(AMsg::AskRouter).expect("a answers");
        rt.shutdown();
        answer
    })
}

fn a_worker_asking_back_the_asker_of_a_forwarded_reply_gets_deadlock(backend: Backend) {
    let answer = route(backend, RouteTo::Worker, false).expect("the worker answered");
    let expected = AskError::Deadlock {
        cycle: cycle(&["worker", "a", "worker"]),
    };
    assert_eq!(answer, format!("{:?}", Err::<&str, _>(expected)));
}

fn forwarding_a_reply_to_its_own_asker_is_refused_with_the_message_back(backend: Backend) {
    let answer = route(backend, RouteTo::Asker, false).expect("the router answered");
    // `a` would wait on itself.
    assert_eq!(answer, "refused: a -> a");
}

fn a_forward_refused_by_a_stopped_manager_leaves_the_wait_on_the_forwarder(backend: Backend) {
    let answer = route(backend, RouteTo::StoppedWorker, true).expect("the router answered");
    let expected = AskError::Deadlock {
        cycle: cycle(&["router", "a", "router"]),
    };
    assert_eq!(answer, format!("{:?}", Err::<&str, _>(expected)));
}

// ---- a blocked tell: `a` tells into `b`'s full bounded mailbox while `b`
// asks `a`.

enum BMsg {
    /// Ask `a` to fill this mailbox; report what `a` saw.
    AskA(Reply<Result<Vec<String>, AskError>>),
    /// Block until the receiver yields, then ask `a` for a ping.
    HoldThenAskA(mpsc::Receiver<()>, Reply<Result<&'static str, AskError>>),
    Noop,
}

struct B {
    a: Slot<FillMsg>,
}

impl Manager for B {
    type Msg = BMsg;
    fn handle(&mut self, msg: BMsg, _ctx: &mut Context<'_, BMsg>) {
        let a = self.a.get().unwrap();
        match msg {
            BMsg::AskA(reply) => reply.send(a.ask(FillMsg::FillB)),
            BMsg::HoldThenAskA(go, reply) => {
                go.recv().ok();
                reply.send(a.ask(FillMsg::Ping));
            }
            BMsg::Noop => {}
        }
    }
}

enum FillMsg {
    /// Tell `b` until a tell fails; answer with how each went.
    FillB(Reply<Vec<String>>),
    /// Tell `b` twice (the second blocks until `b` makes room).
    TellBTwice(Reply<Vec<String>>),
    Ping(Reply<&'static str>),
}

struct FillA {
    b: Slot<BMsg>,
}

impl FillA {
    fn tells(&self, n: usize) -> Vec<String> {
        let b = self.b.get().unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            match b.tell(BMsg::Noop) {
                Ok(()) => out.push("ok".to_owned()),
                Err(SendError::Deadlock { msg, cycle }) => {
                    assert!(matches!(msg, BMsg::Noop), "the message came back");
                    out.push(format!("deadlock: {}", cycle.join(" -> ")));
                    break;
                }
                Err(e) => {
                    out.push(format!("{e}"));
                    break;
                }
            }
        }
        out
    }
}

impl Manager for FillA {
    type Msg = FillMsg;
    fn handle(&mut self, msg: FillMsg, _ctx: &mut Context<'_, FillMsg>) {
        match msg {
            FillMsg::FillB(reply) => reply.send(self.tells(3)),
            FillMsg::TellBTwice(reply) => reply.send(self.tells(2)),
            FillMsg::Ping(reply) => reply.send("pong"),
        }
    }
}

fn pair(rt: &custody::Runtime) -> (Handle<FillMsg>, Handle<BMsg>) {
    let (a_slot, b_slot) = (slot(), slot());
    let a = rt
        .spawn(
            "a",
            FillA {
                b: Arc::clone(&b_slot),
            },
        )
        .unwrap();
    a_slot.set(a.clone()).ok();
    let b = rt
        .manager("b")
        .capacity(Capacity::bounded(1).unwrap())
        .spawn(B { a: a_slot })
        .unwrap();
    b_slot.set(b.clone()).ok();
    (a, b)
}

fn a_tell_that_would_block_on_a_manager_waiting_for_the_sender_returns_deadlock(backend: Backend) {
    within("blocked tell", move || {
        let rt = runtime(backend);
        let (_a, b) = pair(&rt);
        let seen = b.ask(BMsg::AskA).unwrap().expect("a answered b");
        // The first tell fits in b's one slot; the second would wait for b,
        // which waits for a.
        assert_eq!(seen, ["ok", "deadlock: a -> b -> a"]);
        b.join().unwrap();
        rt.shutdown();
    });
}

fn a_blocked_tell_and_an_ask_back_at_the_teller_end_with_one_deadlock(backend: Backend) {
    within("ask at a blocked teller", move || {
        let rt = runtime(backend);
        let (a, b) = pair(&rt);
        let (go, hold) = mpsc::channel();
        let (held_tx, held) = mpsc::channel();
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                b.ask(|reply| {
                    held_tx.send(()).unwrap();
                    BMsg::HoldThenAskA(hold, reply)
                })
            })
        };
        held.recv().unwrap();
        // b is busy holding; a's first tell fills b's slot, the second blocks.
        let teller = {
            let a = a.clone();
            std::thread::spawn(move || a.ask(FillMsg::TellBTwice))
        };
        // Wait until a is blocked on b's full mailbox: its second tell has
        // not returned, and b's slot is taken.
        while b.is_empty() || a.unfinished() == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        go.send(()).unwrap();
        let b_saw = waiter.join().unwrap().expect("b answered");
        let a_saw = teller.join().unwrap().expect("a answered");
        // Usually a is blocked on b by now, and b's ask finds it (a's tell then
        // goes through once b drains); if a had not blocked yet, its tell
        // finds b waiting on it instead. Exactly one side sees the cycle.
        match (&b_saw, a_saw.as_slice()) {
            (Err(AskError::Deadlock { cycle: c }), [first, second]) => {
                assert_eq!(c, &cycle(&["b", "a", "b"]));
                assert_eq!((first.as_str(), second.as_str()), ("ok", "ok"));
            }
            (Ok("pong"), [first, second]) => {
                assert_eq!(first, "ok");
                assert_eq!(second, "deadlock: a -> b -> a");
            }
            other => panic!("one side must see the cycle: {other:?}"),
        }
        rt.shutdown();
    });
}

// ---- a join: on yourself, or on a manager that waits on you.

enum JMsg {
    JoinSelf(Reply<Result<(), JoinError>>),
    JoinOther(Reply<Result<(), JoinError>>),
    AskOther(Reply<Result<Result<(), JoinError>, AskError>>),
}

struct Joiner {
    me: Slot<JMsg>,
    other: Slot<JMsg>,
}

impl Manager for Joiner {
    type Msg = JMsg;
    fn handle(&mut self, msg: JMsg, _ctx: &mut Context<'_, JMsg>) {
        match msg {
            JMsg::JoinSelf(reply) => reply.send(self.me.get().unwrap().join()),
            JMsg::JoinOther(reply) => reply.send(self.other.get().unwrap().join()),
            JMsg::AskOther(reply) => reply.send(self.other.get().unwrap().ask(JMsg::JoinOther)),
        }
    }
}

fn a_manager_joining_itself_gets_deadlock_at_once(backend: Backend) {
    within("join self", move || {
        let rt = runtime(backend);
        let me = slot();
        let a = rt
            .spawn(
                "a",
                Joiner {
                    me: Arc::clone(&me),
                    other: slot(),
                },
            )
            .unwrap();
        me.set(a.clone()).ok();
        let joined = a.ask(JMsg::JoinSelf).unwrap();
        assert_eq!(
            joined,
            Err(JoinError::Deadlock {
                cycle: cycle(&["a", "a"])
            })
        );
        a.join().unwrap();
        rt.shutdown();
    });
}

fn a_manager_joining_one_that_asks_it_gets_deadlock(backend: Backend) {
    within("join a waiting manager", move || {
        let rt = runtime(backend);
        let (a_slot, b_slot) = (slot(), slot());
        let a = rt
            .spawn(
                "a",
                Joiner {
                    me: Arc::clone(&a_slot),
                    other: Arc::clone(&b_slot),
                },
            )
            .unwrap();
        a_slot.set(a.clone()).ok();
        let b = rt
            .spawn(
                "b",
                Joiner {
                    me: Arc::clone(&b_slot),
                    other: Arc::clone(&a_slot),
                },
            )
            .unwrap();
        b_slot.set(b.clone()).ok();
        // b asks a to join b; b's own request is unfinished while it waits.
        let seen = b.ask(JMsg::AskOther).unwrap().expect("a answered");
        assert_eq!(
            seen,
            Err(JoinError::Deadlock {
                cycle: cycle(&["a", "b", "a"])
            })
        );
        // A join with nothing to wait for needs no edge and succeeds.
        b.join().unwrap();
        assert_eq!(a.ask(JMsg::JoinOther).unwrap(), Ok(()));
        rt.shutdown();
    });
}

backend_tests!(
    a_worker_asking_back_the_asker_of_a_forwarded_reply_gets_deadlock,
    forwarding_a_reply_to_its_own_asker_is_refused_with_the_message_back,
    a_forward_refused_by_a_stopped_manager_leaves_the_wait_on_the_forwarder,
    a_tell_that_would_block_on_a_manager_waiting_for_the_sender_returns_deadlock,
    a_blocked_tell_and_an_ask_back_at_the_teller_end_with_one_deadlock,
    a_manager_joining_itself_gets_deadlock_at_once,
    a_manager_joining_one_that_asks_it_gets_deadlock,
    no_false_deadlock_under_churn_of_acyclic_asks,
);

// ---- no false cycle under churn: asks only go from lower to higher index,
// so no cycle can ever exist; any Deadlock would be a false one.

struct Layer {
    index: usize,
    all: Arc<OnceLock<Vec<Handle<LayerMsg>>>>,
}

enum LayerMsg {
    /// Ask `hops` managers further up the chain (each asks the next), then
    /// answer; `answer_first` answers before asking on.
    Chain {
        hops: usize,
        seed: u64,
        answer_first: bool,
        reply: Reply<Result<usize, AskError>>,
    },
}

impl Manager for Layer {
    type Msg = LayerMsg;
    fn handle(&mut self, msg: LayerMsg, _ctx: &mut Context<'_, LayerMsg>) {
        let LayerMsg::Chain {
            hops,
            seed,
            answer_first,
            reply,
        } = msg;
        let all = self.all.get().unwrap();
        let above = all.len() - self.index - 1;
        if hops == 0 || above == 0 {
            reply.send(Ok(0));
            return;
        }
        let next = self.index + 1 + (seed as usize % above);
        let seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let ask = |reply| LayerMsg::Chain {
            hops: hops - 1,
            seed,
            answer_first: !answer_first,
            reply,
        };
        if answer_first {
            reply.send(Ok(hops));
            // Asking on after answering: the asker is free again.
            if let Err(e) = all[next].ask(ask).and_then(|r| r) {
                panic!("false deadlock after answering: {e}");
            }
        } else {
            reply.send(all[next].ask(ask).and_then(|r| r.map(|n| n + 1)));
        }
    }
}

fn no_false_deadlock_under_churn_of_acyclic_asks(backend: Backend) {
    within("acyclic churn", move || {
        let rt = runtime(backend);
        let all = Arc::new(OnceLock::new());
        let handles: Vec<_> = (0..8)
            .map(|index| {
                rt.spawn(
                    format!("layer{index}"),
                    Layer {
                        index,
                        all: Arc::clone(&all),
                    },
                )
                .unwrap()
            })
            .collect();
        all.set(handles.clone()).ok();
        let askers: Vec<_> = (0..4u64)
            .map(|t| {
                let handles = handles.clone();
                std::thread::spawn(move || {
                    let mut false_cycles = Vec::new();
                    for i in 0..300u64 {
                        let seed = t * 1_000_003 + i * 7919;
                        let first = &handles[(seed % 3) as usize];
                        let got = first.ask(|reply| LayerMsg::Chain {
                            hops: 1 + (seed % 6) as usize,
                            seed,
                            answer_first: i % 2 == 0,
                            reply,
                        });
                        if let Ok(Err(e)) | Err(e) = got {
                            false_cycles.push(e.to_string());
                        }
                    }
                    false_cycles
                })
            })
            .collect();
        for asker in askers {
            let false_cycles = asker.join().unwrap();
            assert!(false_cycles.is_empty(), "{false_cycles:?}");
        }
        for h in &handles {
            h.join().unwrap();
            assert_eq!(h.stats().panicked, 0, "a handler saw a false deadlock");
        }
        rt.shutdown();
    });
}
