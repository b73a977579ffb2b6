//! The reference: a thread owning a `u64`, requests on a crossbeam
//! channel, answers on a crossbeam `bounded(1)` made per ask.

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::{PRODUCERS, Sample, check_told, time_asks};

enum Request {
    Add,
    AddGet(Sender<u64>),
    Get(Sender<u64>),
}

fn serve(inbox: Receiver<Request>) {
    let mut count = 0u64;
    for request in inbox {
        match request {
            Request::Add => count += 1,
            Request::AddGet(answer) => {
                count += 1;
                let _ = answer.send(count);
            }
            Request::Get(answer) => {
                let _ = answer.send(count);
            }
        }
    }
}

fn ask_with(requests: &Sender<Request>, make: fn(Sender<u64>) -> Request) -> u64 {
    let (answer, reply) = bounded(1);
    requests.send(make(answer)).expect("the owner is gone");
    reply.recv().expect("the owner dropped the answer")
}

/// `k` sequential increment-and-get round trips.
pub fn ask(k: u64) -> Sample {
    let (requests, inbox) = unbounded();
    let owner = thread::spawn(move || serve(inbox));
    let sample = time_asks(k, || ask_with(&requests, Request::AddGet));
    drop(requests);
    owner.join().expect("the owner panicked");
    sample
}

/// 2 producers send `k` increments each; one ask waits for them.
pub fn tell(k: u64) -> Duration {
    let (requests, inbox) = unbounded();
    let owner = thread::spawn(move || serve(inbox));
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..PRODUCERS {
            let requests = requests.clone();
            s.spawn(move || {
                for _ in 0..k {
                    requests.send(Request::Add).expect("the owner is gone");
                }
            });
        }
    });
    check_told(ask_with(&requests, Request::Get), k);
    let elapsed = started.elapsed();
    drop(requests);
    owner.join().expect("the owner panicked");
    elapsed
}

/// `actors` threads in a ring, each forwarding the token (the hops left)
/// to the next over a crossbeam channel.
pub fn ring(actors: usize, hops: u64) -> Duration {
    let (done, finished) = bounded(1);
    let channels: Vec<(Sender<u64>, Receiver<u64>)> = (0..actors).map(|_| unbounded()).collect();
    let threads: Vec<_> = (0..actors)
        .map(|i| {
            let inbox = channels[i].1.clone();
            let next = channels[(i + 1) % actors].0.clone();
            let done = done.clone();
            thread::spawn(move || {
                for hops in inbox {
                    if hops == u64::MAX {
                        break;
                    }
                    if hops == 0 {
                        let _ = done.send(());
                    } else {
                        let _ = next.send(hops - 1);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    channels[0].0.send(hops).expect("the ring is gone");
    finished.recv().expect("the ring ended without the token");
    let elapsed = started.elapsed();
    for (sender, _) in &channels {
        let _ = sender.send(u64::MAX);
    }
    for t in threads {
        t.join().expect("a ring thread panicked");
    }
    elapsed
}
