//! custody: a manager owning the count, asked from a plain thread (its
//! native blocking API) or awaited from a tokio task.

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use custody::{Context, Handle, Manager, Reply, Runtime};

use crate::{PRODUCERS, Sample, check_told, time_asks, time_asks_async, tokio_runtime};

/// The counter's messages.
pub enum Msg {
    Add,
    AddGet(Reply<u64>),
    Get(Reply<u64>),
}

struct Counter(u64);

impl Manager for Counter {
    type Msg = Msg;

    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Add => self.0 += 1,
            Msg::AddGet(reply) => {
                self.0 += 1;
                reply.send(self.0);
            }
            Msg::Get(reply) => reply.send(self.0),
        }
    }
}

fn counter(rt: &Runtime) -> Handle<Msg> {
    rt.spawn("counter", Counter(0)).expect("spawning")
}

/// `k` sequential asks from this thread.
pub fn ask_thread(k: u64) -> Sample {
    let rt = Runtime::new();
    let counter = counter(&rt);
    time_asks(k, || counter.ask(Msg::AddGet).expect("asking"))
}

/// `k` sequential `ask_async` from a tokio task.
pub fn ask_tokio(k: u64) -> Sample {
    let rt = Runtime::new();
    let counter = counter(&rt);
    let tokio = tokio_runtime();
    tokio
        .block_on(tokio.spawn(async move {
            time_asks_async(k, || {
                let counter = counter.clone();
                async move { counter.ask_async(Msg::AddGet).await.expect("asking") }
            })
            .await
        }))
        .expect("the asking task panicked")
}

/// 2 plain threads tell `k` increments each.
pub fn tell_thread(k: u64) -> Duration {
    let rt = Runtime::new();
    let counter = counter(&rt);
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..PRODUCERS {
            s.spawn(|| {
                for _ in 0..k {
                    counter.tell(Msg::Add).expect("telling");
                }
            });
        }
    });
    check_told(counter.ask(Msg::Get).expect("asking"), k);
    started.elapsed()
}

/// 2 tokio tasks `tell_async` `k` increments each.
pub fn tell_tokio(k: u64) -> Duration {
    let rt = Runtime::new();
    let counter = counter(&rt);
    let tokio = tokio_runtime();
    tokio
        .block_on(tokio.spawn(async move {
            let started = Instant::now();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|_| {
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        for _ in 0..k {
                            counter.tell_async(Msg::Add).await.expect("telling");
                        }
                    })
                })
                .collect();
            for p in producers {
                p.await.expect("a producer panicked");
            }
            check_told(counter.ask_async(Msg::Get).await.expect("asking"), k);
            started.elapsed()
        }))
        .expect("the telling task panicked")
}

/// A manager of the ring: forwards the token (the hops left) to the next.
struct Node {
    next: Arc<OnceLock<Handle<u64>>>,
    done: crossbeam_channel::Sender<()>,
}

impl Manager for Node {
    type Msg = u64;

    fn handle(&mut self, hops: u64, _ctx: &mut Context<'_, u64>) {
        if hops == 0 {
            let _ = self.done.send(());
        } else if let Some(next) = self.next.get() {
            next.tell(hops - 1).expect("the next node stopped");
        }
    }
}

/// `actors` managers in a ring; the token makes `hops` hops.
pub fn ring(actors: usize, hops: u64) -> Duration {
    let rt = Runtime::new();
    let (done, finished) = crossbeam_channel::bounded(1);
    let slots: Vec<Arc<OnceLock<Handle<u64>>>> =
        (0..actors).map(|_| Arc::new(OnceLock::new())).collect();
    let handles: Vec<Handle<u64>> = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let node = Node {
                next: Arc::clone(slot),
                done: done.clone(),
            };
            rt.spawn(format!("ring{i}"), node).expect("spawning")
        })
        .collect();
    for (i, slot) in slots.iter().enumerate() {
        let _ = slot.set(handles[(i + 1) % actors].clone());
    }
    let started = Instant::now();
    handles[0].tell(hops).expect("telling");
    finished.recv().expect("the ring ended without the token");
    started.elapsed()
}
