//! kameo: an actor owning the count, in a tokio runtime (each actor is a
//! tokio task). From a plain thread: kameo's `blocking_send`.

use std::thread;
use std::time::{Duration, Instant};

use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::message::{Context, Message};

use crate::{Caller, PRODUCERS, Sample, check_told, time_asks, time_asks_async, tokio_runtime};

#[derive(Actor, Default)]
struct Counter(u64);

struct Add;
struct AddGet;
struct Get;

impl Message<Add> for Counter {
    type Reply = ();

    async fn handle(&mut self, _: Add, _ctx: &mut Context<Self, Self::Reply>) {
        self.0 += 1;
    }
}

impl Message<AddGet> for Counter {
    type Reply = u64;

    async fn handle(&mut self, _: AddGet, _ctx: &mut Context<Self, Self::Reply>) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl Message<Get> for Counter {
    type Reply = u64;

    async fn handle(&mut self, _: Get, _ctx: &mut Context<Self, Self::Reply>) -> u64 {
        self.0
    }
}

/// `k` sequential asks from a tokio task or a plain thread.
pub fn ask(k: u64, caller: Caller) -> Sample {
    let tokio = tokio_runtime();
    let counter = tokio.block_on(async { Counter::spawn(Counter::default()) });
    match caller {
        Caller::Inside => tokio
            .block_on(tokio.spawn(async move {
                time_asks_async(k, || {
                    let counter = counter.clone();
                    async move { counter.ask(AddGet).await.expect("asking") }
                })
                .await
            }))
            .expect("the asking task panicked"),
        Caller::Thread => thread::spawn(move || {
            time_asks(k, || counter.ask(AddGet).blocking_send().expect("asking"))
        })
        .join()
        .expect("the asking thread panicked"),
    }
}

/// 2 producers (tokio tasks or plain threads) tell `k` increments each.
pub fn tell(k: u64, caller: Caller) -> Duration {
    let tokio = tokio_runtime();
    let counter = tokio.block_on(async { Counter::spawn(Counter::default()) });
    match caller {
        Caller::Inside => tokio
            .block_on(tokio.spawn(async move {
                let started = Instant::now();
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|_| {
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            for _ in 0..k {
                                counter.tell(Add).send().await.expect("telling");
                            }
                        })
                    })
                    .collect();
                for p in producers {
                    p.await.expect("a producer panicked");
                }
                check_told(counter.ask(Get).await.expect("asking"), k);
                started.elapsed()
            }))
            .expect("the telling task panicked"),
        Caller::Thread => {
            let started = Instant::now();
            thread::scope(|s| {
                for _ in 0..PRODUCERS {
                    s.spawn(|| {
                        for _ in 0..k {
                            counter.tell(Add).blocking_send().expect("telling");
                        }
                    });
                }
            });
            check_told(counter.ask(Get).blocking_send().expect("asking"), k);
            started.elapsed()
        }
    }
}

/// An actor of the ring.
#[derive(Actor)]
struct Node {
    next: Option<ActorRef<Node>>,
    done: tokio::sync::mpsc::UnboundedSender<()>,
}

struct Next(ActorRef<Node>);
struct Token(u64);

impl Message<Next> for Node {
    type Reply = ();

    async fn handle(&mut self, Next(next): Next, _ctx: &mut Context<Self, Self::Reply>) {
        self.next = Some(next);
    }
}

impl Message<Token> for Node {
    type Reply = ();

    async fn handle(&mut self, Token(hops): Token, _ctx: &mut Context<Self, Self::Reply>) {
        if hops == 0 {
            let _ = self.done.send(());
        } else if let Some(next) = &self.next {
            next.tell(Token(hops - 1))
                .send()
                .await
                .expect("the next node stopped");
        }
    }
}

/// `actors` actors in a ring; the token makes `hops` hops.
pub fn ring(actors: usize, hops: u64) -> Duration {
    let tokio = tokio_runtime();
    tokio
        .block_on(tokio.spawn(async move {
            let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
            let nodes: Vec<ActorRef<Node>> = (0..actors)
                .map(|_| {
                    Node::spawn(Node {
                        next: None,
                        done: done.clone(),
                    })
                })
                .collect();
            for (i, node) in nodes.iter().enumerate() {
                let next = nodes[(i + 1) % actors].clone();
                node.ask(Next(next)).await.expect("linking the ring");
            }
            let started = Instant::now();
            nodes[0].tell(Token(hops)).send().await.expect("telling");
            finished
                .recv()
                .await
                .expect("the ring ended without the token");
            let elapsed = started.elapsed();
            for node in &nodes {
                let _ = node.stop_gracefully().await;
            }
            elapsed
        }))
        .expect("the ring task panicked")
}
