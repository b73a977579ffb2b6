//! actix: an actor owning the count, in actix's `System` (a single-threaded
//! arbiter: the actor and the tasks that call it share one thread). From a
//! plain thread: a `block_on` of `Addr::send`, the System running on a
//! thread of its own.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Context, Handler, Message};
use futures_lite::future::block_on;

use crate::{Caller, PRODUCERS, Sample, check_told, time_asks, time_asks_async};

#[derive(Default)]
struct Counter(u64);

impl Actor for Counter {
    type Context = Context<Self>;
}

struct Add;
struct AddGet;
struct Get;

impl Message for Add {
    type Result = ();
}
impl Message for AddGet {
    type Result = u64;
}
impl Message for Get {
    type Result = u64;
}

impl Handler<Add> for Counter {
    type Result = ();

    fn handle(&mut self, _: Add, _ctx: &mut Context<Self>) {
        self.0 += 1;
    }
}

impl Handler<AddGet> for Counter {
    type Result = u64;

    fn handle(&mut self, _: AddGet, _ctx: &mut Context<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl Handler<Get> for Counter {
    type Result = u64;

    fn handle(&mut self, _: Get, _ctx: &mut Context<Self>) -> u64 {
        self.0
    }
}

/// Runs `work` with a counter's address on a plain thread while a System
/// runs the counter on another; stops the System after.
fn from_thread<T>(work: impl FnOnce(Addr<Counter>) -> T) -> T {
    let (sender, started) = mpsc::channel();
    let system = thread::spawn(move || {
        let system = actix_rt::System::new();
        let addr = system.block_on(async { Counter::default().start() });
        sender
            .send((addr, actix_rt::System::current()))
            .expect("the caller is gone");
        system.run().expect("running the System");
    });
    let (addr, handle) = started.recv().expect("the System did not start");
    let out = work(addr);
    handle.stop();
    system.join().expect("the System's thread panicked");
    out
}

/// `k` sequential sends inside the System or from a plain thread.
pub fn ask(k: u64, caller: Caller) -> Sample {
    match caller {
        Caller::Inside => actix_rt::System::new().block_on(async move {
            let counter = Counter::default().start();
            time_asks_async(k, || {
                let request = counter.send(AddGet);
                async move { request.await.expect("asking") }
            })
            .await
        }),
        Caller::Thread => {
            from_thread(|counter| time_asks(k, || block_on(counter.send(AddGet)).expect("asking")))
        }
    }
}

/// 2 producers (tasks of the System, or plain threads) `do_send` `k`
/// increments each.
pub fn tell(k: u64, caller: Caller) -> Duration {
    match caller {
        Caller::Inside => actix_rt::System::new().block_on(async move {
            let counter = Counter::default().start();
            let started = Instant::now();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|_| {
                    let counter = counter.clone();
                    actix_rt::spawn(async move {
                        for _ in 0..k {
                            counter.do_send(Add);
                        }
                    })
                })
                .collect();
            for p in producers {
                p.await.expect("a producer panicked");
            }
            check_told(counter.send(Get).await.expect("asking"), k);
            started.elapsed()
        }),
        Caller::Thread => from_thread(|counter| {
            let started = Instant::now();
            thread::scope(|s| {
                for _ in 0..PRODUCERS {
                    s.spawn(|| {
                        for _ in 0..k {
                            counter.do_send(Add);
                        }
                    });
                }
            });
            check_told(block_on(counter.send(Get)).expect("asking"), k);
            started.elapsed()
        }),
    }
}

/// An actor of the ring.
struct Node {
    next: Option<Addr<Node>>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Actor for Node {
    type Context = Context<Self>;
}

struct Next(Addr<Node>);
struct Token(u64);

impl Message for Next {
    type Result = ();
}
impl Message for Token {
    type Result = ();
}

impl Handler<Next> for Node {
    type Result = ();

    fn handle(&mut self, Next(next): Next, _ctx: &mut Context<Self>) {
        self.next = Some(next);
    }
}

impl Handler<Token> for Node {
    type Result = ();

    fn handle(&mut self, Token(hops): Token, _ctx: &mut Context<Self>) {
        if hops == 0 {
            let _ = self.done.send(());
        } else if let Some(next) = &self.next {
            next.do_send(Token(hops - 1));
        }
    }
}

/// `actors` actors in a ring, in one System; the token makes `hops` hops.
pub fn ring(actors: usize, hops: u64) -> Duration {
    actix_rt::System::new().block_on(async move {
        let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
        let nodes: Vec<Addr<Node>> = (0..actors)
            .map(|_| {
                Node {
                    next: None,
                    done: done.clone(),
                }
                .start()
            })
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            let next = nodes[(i + 1) % actors].clone();
            node.send(Next(next)).await.expect("linking the ring");
        }
        let started = Instant::now();
        nodes[0].do_send(Token(hops));
        finished
            .recv()
            .await
            .expect("the ring ended without the token");
        started.elapsed()
    })
}
