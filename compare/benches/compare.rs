//! The compare tool's workloads under criterion, at a few sizes each: the
//! same code (`custody_compare`'s modules), with criterion's statistics
//! instead of a median of a few runs.
//!
//! Run: `cargo bench -p custody-compare` (or `-- counter` for one group).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use custody_compare::{ask, counter, database, printer};

/// Benchmarks `designs` of one workload at `threads` threads and each of
/// `sizes` (operations per thread); every iteration is one whole run.
fn group(
    c: &mut Criterion,
    name: &str,
    run: fn(&str, usize, u64) -> Duration,
    designs: &[&str],
    threads: usize,
    sizes: &[u64],
) {
    let mut group = c.benchmark_group(name);
    for &k in sizes {
        group.throughput(Throughput::Elements(threads as u64 * k));
        for &design in designs {
            group.bench_with_input(BenchmarkId::new(design, k), &k, |b, &k| {
                b.iter_custom(|iters| (0..iters).map(|_| run(design, threads, k)).sum());
            });
        }
    }
    group.finish();
}

fn counter(c: &mut Criterion) {
    group(
        c,
        "counter/2-threads",
        counter::run,
        &[
            "atomic",
            "mutex-parking-lot",
            "raw-crossbeam",
            "manager-crossbeam",
            "manager-coalesced",
        ],
        2,
        &[1_000, 20_000],
    );
}

fn ask(c: &mut Criterion) {
    group(
        c,
        "ask",
        ask::run,
        &["spin-pingpong", "manager-ask", "owner-call"],
        1,
        &[100, 2_000],
    );
}

fn printer(c: &mut Criterion) {
    group(
        c,
        "printer/2-threads",
        printer::run,
        &["mutex-writer", "printer-manager"],
        2,
        &[100, 2_000],
    );
}

fn database(c: &mut Criterion) {
    group(
        c,
        "database/4-writers",
        database::run,
        &["mutex-connection", "manager-pipelined"],
        4,
        &[5, 20],
    );
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn slow() -> Criterion {
    // Each database run pays for fsyncs: fewer, longer samples.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = fast;
    config = quick();
    targets = counter, ask, printer
}
criterion_group! {
    name = fsync;
    config = slow();
    targets = database
}
criterion_main!(fast, fsync);
