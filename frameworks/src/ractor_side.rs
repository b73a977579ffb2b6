//! ractor: an actor owning the count, in a tokio runtime (each actor is a
//! tokio task). From a plain thread: a `block_on` of `call`.

use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::{Caller, PRODUCERS, Sample, check_told, time_asks, time_asks_async, tokio_runtime};

struct Counter;

/// The counter's messages.
pub enum Msg {
    Add,
    AddGet(RpcReplyPort<u64>),
    Get(RpcReplyPort<u64>),
}

impl Actor for Counter {
    type Msg = Msg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        msg: Msg,
        count: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Add => *count += 1,
            Msg::AddGet(reply) => {
                *count += 1;
                let _ = reply.send(*count);
            }
            Msg::Get(reply) => {
                let _ = reply.send(*count);
            }
        }
        Ok(())
    }
}

async fn call(counter: &ActorRef<Msg>, make: fn(RpcReplyPort<u64>) -> Msg) -> u64 {
    counter
        .call(make, None)
        .await
        .expect("asking")
        .success_or("no answer")
        .expect("answered")
}

fn counter(tokio: &tokio::runtime::Runtime) -> (ActorRef<Msg>, tokio::task::JoinHandle<()>) {
    tokio
        .block_on(Actor::spawn(None, Counter, ()))
        .expect("spawning")
}

fn stop(
    tokio: &tokio::runtime::Runtime,
    counter: ActorRef<Msg>,
    handle: tokio::task::JoinHandle<()>,
) {
    counter.stop(None);
    let _ = tokio.block_on(handle);
}

/// `k` sequential calls from a tokio task or a plain thread.
pub fn ask(k: u64, caller: Caller) -> Sample {
    let tokio = tokio_runtime();
    let (actor, handle) = counter(&tokio);
    let counter = actor.clone();
    let sample = match caller {
        Caller::Inside => tokio
            .block_on(tokio.spawn(async move {
                time_asks_async(k, || {
                    let counter = counter.clone();
                    async move { call(&counter, Msg::AddGet).await }
                })
                .await
            }))
            .expect("the asking task panicked"),
        Caller::Thread => {
            thread::spawn(move || time_asks(k, || block_on(call(&counter, Msg::AddGet))))
                .join()
                .expect("the asking thread panicked")
        }
    };
    stop(&tokio, actor, handle);
    sample
}

/// 2 producers (tokio tasks or plain threads) cast `k` increments each.
pub fn tell(k: u64, caller: Caller) -> Duration {
    let tokio = tokio_runtime();
    let (actor, handle) = counter(&tokio);
    let counter = actor.clone();
    let elapsed = match caller {
        Caller::Inside => tokio
            .block_on(tokio.spawn(async move {
                let started = Instant::now();
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|_| {
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            for _ in 0..k {
                                counter.cast(Msg::Add).expect("telling");
                            }
                        })
                    })
                    .collect();
                for p in producers {
                    p.await.expect("a producer panicked");
                }
                check_told(call(&counter, Msg::Get).await, k);
                started.elapsed()
            }))
            .expect("the telling task panicked"),
        Caller::Thread => {
            let started = Instant::now();
            thread::scope(|s| {
                for _ in 0..PRODUCERS {
                    s.spawn(|| {
                        for _ in 0..k {
                            counter.cast(Msg::Add).expect("telling");
                        }
                    });
                }
            });
            check_told(block_on(call(&counter, Msg::Get)), k);
            started.elapsed()
        }
    };
    stop(&tokio, actor, handle);
    elapsed
}

struct Node;

/// A ring node's messages.
pub enum NodeMsg {
    Next(ActorRef<NodeMsg>),
    Token(u64),
}

impl Actor for Node {
    type Msg = NodeMsg;
    type State = (
        Option<ActorRef<NodeMsg>>,
        tokio::sync::mpsc::UnboundedSender<()>,
    );
    type Arguments = tokio::sync::mpsc::UnboundedSender<()>;

    async fn pre_start(
        &self,
        _: ActorRef<NodeMsg>,
        done: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok((None, done))
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        msg: NodeMsg,
        (next, done): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Next(n) => *next = Some(n),
            NodeMsg::Token(0) => {
                let _ = done.send(());
            }
            NodeMsg::Token(hops) => {
                if let Some(next) = next {
                    next.cast(NodeMsg::Token(hops - 1))?;
                }
            }
        }
        Ok(())
    }
}

/// `actors` actors in a ring; the token makes `hops` hops.
pub fn ring(actors: usize, hops: u64) -> Duration {
    let tokio = tokio_runtime();
    tokio
        .block_on(tokio.spawn(async move {
            let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
            let mut nodes = Vec::with_capacity(actors);
            for _ in 0..actors {
                nodes.push(
                    Actor::spawn(None, Node, done.clone())
                        .await
                        .expect("spawning"),
                );
            }
            for (i, (node, _)) in nodes.iter().enumerate() {
                let next = nodes[(i + 1) % actors].0.clone();
                node.cast(NodeMsg::Next(next)).expect("linking the ring");
            }
            let started = Instant::now();
            nodes[0].0.cast(NodeMsg::Token(hops)).expect("telling");
            finished
                .recv()
                .await
                .expect("the ring ended without the token");
            let elapsed = started.elapsed();
            for (node, handle) in nodes {
                node.stop(None);
                let _ = handle.await;
            }
            elapsed
        }))
        .expect("the ring task panicked")
}
