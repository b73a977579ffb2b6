//! The runtime layer against a bare channel, measured side by side.
//!
//! `tell`: one producer streams N increments to an owner thread, then waits
//! until all are handled (a manager's `join`; a marker message on the bare
//! channel). `tell-threads`: the same with 1, 2, 4 and 8 producers sharing
//! the N increments, on both backends, bare and through a manager (the
//! compare tool's `counter` rows under criterion; the producers are spawned
//! per iteration, the same cost for every design). `ask`: one caller does
//! sequential round trips.

use std::hint::black_box;
use std::thread;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use custody::{Backend, Context, Manager, Reply, Runtime};

enum Msg {
    Add(u64),
    Get(Reply<u64>),
}

struct Sum(u64);

impl Manager for Sum {
    type Msg = Msg;
    fn handle(&mut self, msg: Msg, _ctx: &mut Context<'_, Msg>) {
        match msg {
            Msg::Add(n) => self.0 += n,
            Msg::Get(reply) => reply.send(self.0),
        }
    }
}

enum Raw {
    Add(u64),
    Get(crossbeam_channel::Sender<u64>),
}

/// An owner thread on a bare crossbeam channel: the floor for `tell`.
fn raw_owner() -> (crossbeam_channel::Sender<Raw>, thread::JoinHandle<()>) {
    let (tx, rx) = crossbeam_channel::unbounded::<Raw>();
    let owner = thread::spawn(move || {
        let mut sum = 0u64;
        for msg in rx {
            match msg {
                Raw::Add(n) => sum += n,
                Raw::Get(reply) => {
                    let _ = reply.send(sum);
                }
            }
        }
    });
    (tx, owner)
}

fn tell(c: &mut Criterion) {
    let mut group = c.benchmark_group("tell");
    for n in [1_000u64, 10_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("raw-crossbeam", n), &n, |b, &n| {
            let (tx, owner) = raw_owner();
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            b.iter(|| {
                for i in 0..n {
                    tx.send(Raw::Add(i)).unwrap();
                }
                tx.send(Raw::Get(done_tx.clone())).unwrap();
                black_box(done_rx.recv().unwrap());
            });
            drop(tx);
            owner.join().unwrap();
        });
        for backend in Backend::ALL {
            let id = BenchmarkId::new(format!("manager-{backend}"), n);
            group.bench_with_input(id, &n, |b, &n| {
                let rt = Runtime::builder().backend(backend).build().unwrap();
                let h = rt.spawn("sum", Sum(0)).unwrap();
                b.iter(|| {
                    for i in 0..n {
                        h.tell(Msg::Add(i)).unwrap();
                    }
                    h.join().unwrap();
                });
            });
        }
    }
    group.finish();
}

/// An owner thread on a bare flume channel: the floor for `tell` on flume.
fn raw_flume_owner() -> (flume::Sender<Raw>, thread::JoinHandle<()>) {
    let (tx, rx) = flume::unbounded::<Raw>();
    let owner = thread::spawn(move || {
        let mut sum = 0u64;
        for msg in rx {
            match msg {
                Raw::Add(n) => sum += n,
                Raw::Get(reply) => {
                    let _ = reply.send(sum);
                }
            }
        }
    });
    (tx, owner)
}

/// Runs `send(i)` for `i` in `0..n`, shared among `producers` scoped threads.
fn produce(producers: u64, n: u64, send: impl Fn(u64) + Sync) {
    thread::scope(|s| {
        for p in 0..producers {
            let send = &send;
            s.spawn(move || {
                for i in (p..n).step_by(producers as usize) {
                    send(i);
                }
            });
        }
    });
}

fn tell_threads(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut group = c.benchmark_group("tell-threads");
    group.throughput(Throughput::Elements(N));
    for producers in [1u64, 2, 4, 8] {
        group.bench_with_input(
            BenchmarkId::new("raw-crossbeam", producers),
            &producers,
            |b, &producers| {
                let (tx, owner) = raw_owner();
                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                b.iter(|| {
                    produce(producers, N, |i| tx.send(Raw::Add(i)).unwrap());
                    tx.send(Raw::Get(done_tx.clone())).unwrap();
                    black_box(done_rx.recv().unwrap());
                });
                drop(tx);
                owner.join().unwrap();
            },
        );
        group.bench_with_input(
            BenchmarkId::new("raw-flume", producers),
            &producers,
            |b, &producers| {
                let (tx, owner) = raw_flume_owner();
                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                b.iter(|| {
                    produce(producers, N, |i| tx.send(Raw::Add(i)).unwrap());
                    tx.send(Raw::Get(done_tx.clone())).unwrap();
                    black_box(done_rx.recv().unwrap());
                });
                drop(tx);
                owner.join().unwrap();
            },
        );
        for backend in Backend::ALL {
            let id = BenchmarkId::new(format!("manager-{backend}"), producers);
            group.bench_with_input(id, &producers, |b, &producers| {
                let rt = Runtime::builder().backend(backend).build().unwrap();
                let h = rt.spawn("sum", Sum(0)).unwrap();
                b.iter(|| {
                    produce(producers, N, |i| {
                        h.tell(Msg::Add(i)).map_err(|_| ()).unwrap();
                    });
                    h.join().unwrap();
                });
            });
        }
    }
    group.finish();
}

/// Two threads bouncing a counter on one cache line: the floor for a round trip.
fn spin_pingpong(b: &mut criterion::Bencher<'_>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let line = Arc::new(AtomicU64::new(0));
    let server = {
        let line = Arc::clone(&line);
        thread::spawn(move || {
            loop {
                let v = line.load(Ordering::Acquire);
                if v == u64::MAX {
                    return;
                }
                if v % 2 == 1 {
                    line.store(v + 1, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let mut next = 1u64;
    b.iter(|| {
        line.store(next, Ordering::Release);
        while line.load(Ordering::Acquire) != next + 1 {
            std::hint::spin_loop();
        }
        next += 2;
    });
    line.store(u64::MAX, Ordering::Release);
    server.join().unwrap();
}

/// Asks `target` `n` times from inside a manager (so deadlock detection runs).
struct Asker {
    target: custody::Handle<Msg>,
}

impl Manager for Asker {
    type Msg = (u64, Reply<()>);
    fn handle(&mut self, (n, done): Self::Msg, _ctx: &mut Context<'_, Self::Msg>) {
        for _ in 0..n {
            black_box(self.target.ask(Msg::Get).unwrap());
        }
        done.send(());
    }
}

fn ask(c: &mut Criterion) {
    let mut group = c.benchmark_group("ask");
    group.bench_function("spin-pingpong", spin_pingpong);
    group.bench_function("raw-crossbeam-pingpong", |b| {
        let (tx, owner) = raw_owner();
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        b.iter(|| {
            tx.send(Raw::Get(reply_tx.clone())).unwrap();
            black_box(reply_rx.recv().unwrap());
        });
        drop(tx);
        owner.join().unwrap();
    });
    for backend in Backend::ALL {
        group.bench_function(format!("manager-ask-{backend}"), |b| {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let h = rt.spawn("sum", Sum(0)).unwrap();
            b.iter(|| black_box(h.ask(Msg::Get).unwrap()));
        });
    }
    group.bench_function("manager-ask-from-a-manager", |b| {
        let rt = Runtime::new();
        let target = rt.spawn("sum", Sum(0)).unwrap();
        let asker = rt.spawn("asker", Asker { target }).unwrap();
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            asker.ask(|done| (iters, done)).unwrap();
            start.elapsed()
        });
    });
    group.bench_function("manager-ask-from-a-thread", |b| {
        let rt = Runtime::new();
        let target = rt.spawn("sum", Sum(0)).unwrap();
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                black_box(target.ask(Msg::Get).unwrap());
            }
            start.elapsed()
        });
    });
    group.bench_function("owner-call", |b| {
        let rt = Runtime::new();
        let owner = rt.own("n", 0u64).unwrap();
        b.iter(|| black_box(owner.call(|n| *n).unwrap()));
    });
    group.finish();
}

criterion_group!(benches, tell, tell_threads, ask);
criterion_main!(benches);
