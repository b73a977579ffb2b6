//! `JoinableQueue` against a raw `crossbeam_channel` doing the same work.
//!
//! * `round_trip`: one thread puts one item and takes it back
//!   (`put` + `get` + `task_done` against `send` + `recv`).
//! * `stream_10k_*`: one producer sends 10,000 items to one consumer
//!   thread, unbounded and bounded to 128 items.

use std::hint::black_box;
use std::thread;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custody::queue::JoinableQueue;

const ITEMS: u64 = 10_000;
const BOUND: usize = 128;

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));

    let queue = JoinableQueue::new(0);
    group.bench_function("joinable_queue", |b| {
        b.iter(|| {
            queue.put(black_box(1_u64)).unwrap();
            let item = queue.get().unwrap();
            queue.task_done().unwrap();
            black_box(item)
        });
    });

    let (tx, rx) = crossbeam_channel::unbounded();
    group.bench_function("crossbeam_channel", |b| {
        b.iter(|| {
            tx.send(black_box(1_u64)).unwrap();
            black_box(rx.recv().unwrap())
        });
    });

    group.finish();
}

fn stream_queue(maxsize: usize) -> u64 {
    let queue = JoinableQueue::new(maxsize);
    thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut sum = 0_u64;
            for _ in 0..ITEMS {
                sum += queue.get().unwrap();
                queue.task_done().unwrap();
            }
            sum
        });
        for i in 0..ITEMS {
            queue.put(i).unwrap();
        }
        queue.join();
        consumer.join().unwrap()
    })
}

fn stream_crossbeam(bound: Option<usize>) -> u64 {
    let (tx, rx) = match bound {
        Some(bound) => crossbeam_channel::bounded(bound),
        None => crossbeam_channel::unbounded(),
    };
    thread::scope(|s| {
        let consumer = s.spawn(move || {
            let mut sum = 0_u64;
            for _ in 0..ITEMS {
                sum += rx.recv().unwrap();
            }
            sum
        });
        for i in 0..ITEMS {
            tx.send(i).unwrap();
        }
        consumer.join().unwrap()
    })
}

fn stream(c: &mut Criterion) {
    for (name, bound) in [
        ("stream_10k_unbounded", None),
        ("stream_10k_bounded_128", Some(BOUND)),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(ITEMS));
        group.sample_size(30);
        group.bench_function("joinable_queue", |b| {
            b.iter(|| black_box(stream_queue(bound.unwrap_or(0))));
        });
        group.bench_function("crossbeam_channel", |b| {
            b.iter(|| black_box(stream_crossbeam(bound)));
        });
        group.finish();
    }
}

criterion_group!(benches, round_trip, stream);
criterion_main!(benches);
