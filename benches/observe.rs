//! The cost of observing on `tell` and `ask` (feature `metrics`), measured
//! side by side in one process: each round runs every configuration once,
//! in turn, and the table gives medians over the rounds and their ratio to
//! `off` measured in the same rounds.
//!
//! - `off`: a runtime built with `.metrics(false)` (the feature compiled
//!   in, the export turned off: the send path checks one flag);
//! - `on, no recorder`: the default, before any recorder is installed;
//! - `traced, no subscriber`: `.trace_messages(true)`, no tracing subscriber;
//! - `on, prometheus`: the default, after `metrics-exporter-prometheus`'s
//!   recorder is installed (second phase, beside `off` again).
//!
//! `cargo bench --features metrics --bench observe [-- --rounds N]`

#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use std::time::Instant;

use custody::{Context, Handle, Manager, Reply, Runtime};

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

const TELLS: u64 = 200_000;
const ASKS: u64 = 20_000;

/// ns per tell: `TELLS` tells, then a join (all handled).
fn tell(h: &Handle<Msg>) -> f64 {
    let start = Instant::now();
    for i in 0..TELLS {
        h.tell(Msg::Add(i)).map_err(|_| ()).unwrap();
    }
    h.join().unwrap();
    start.elapsed().as_nanos() as f64 / TELLS as f64
}

/// ns per ask: `ASKS` sequential round trips.
fn ask(h: &Handle<Msg>) -> f64 {
    let start = Instant::now();
    for _ in 0..ASKS {
        std::hint::black_box(h.ask(Msg::Get).unwrap());
    }
    start.elapsed().as_nanos() as f64 / ASKS as f64
}

/// One configuration: how to build its runtime, and its results.
struct Config {
    name: &'static str,
    build: fn() -> Runtime,
    tell: Vec<f64>,
    ask: Vec<f64>,
}

fn config(name: &'static str, build: fn() -> Runtime) -> Config {
    Config {
        name,
        build,
        tell: Vec::new(),
        ask: Vec::new(),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Each round builds every configuration's runtime afresh (so no
/// configuration keeps a lucky or unlucky placement of its threads for the
/// whole run), warms it up, and measures it; the order rotates each round.
fn rounds(configs: &mut [Config], n: usize) {
    for round in 0..n {
        for i in 0..configs.len() {
            let c = &mut configs[(i + round) % configs.len()];
            let rt = (c.build)();
            let h = rt.spawn("sum", Sum(0)).unwrap();
            for i in 0..TELLS / 10 {
                h.tell(Msg::Add(i)).map_err(|_| ()).unwrap();
            }
            h.join().unwrap();
            c.tell.push(tell(&h));
            c.ask.push(ask(&h));
            rt.shutdown();
        }
    }
}

fn print(phase: &str, configs: &[Config]) {
    let base_tell = median(&configs[0].tell);
    let base_ask = median(&configs[0].ask);
    println!("{phase}");
    println!(
        "  {:<24} {:>12} {:>8} {:>12} {:>8}",
        "configuration", "tell ns/op", "ratio", "ask ns/op", "ratio"
    );
    for c in configs {
        let (t, a) = (median(&c.tell), median(&c.ask));
        println!(
            "  {:<24} {:>12.1} {:>8.3} {:>12.1} {:>8.3}",
            c.name,
            t,
            t / base_tell,
            a,
            a / base_ask
        );
    }
}

/// The bare channel a tell is compared with: N `Add`s through an unbounded
/// channel of `backend` to an owner thread that sums them, then the owner
/// joined (`--count tell raw-crossbeam|raw-flume N`).
fn count_raw(backend: custody::Backend, n: u64) {
    fn owner(recv: impl FnOnce() -> u64 + Send + 'static) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(recv)
    }
    let sum = match backend {
        custody::Backend::Crossbeam => {
            let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
            let owner = owner(move || sum_of(rx.iter()));
            for i in 0..n {
                tx.send(Msg::Add(i)).map_err(|_| ()).unwrap();
            }
            drop(tx);
            owner.join().unwrap()
        }
        custody::Backend::Flume => {
            let (tx, rx) = flume::unbounded::<Msg>();
            let owner = owner(move || sum_of(rx.iter()));
            for i in 0..n {
                tx.send(Msg::Add(i)).map_err(|_| ()).unwrap();
            }
            drop(tx);
            owner.join().unwrap()
        }
    };
    assert_eq!(sum, n * n.saturating_sub(1) / 2);
}

/// What the owner of a bare channel does with each message: the same as `Sum`.
fn sum_of(messages: impl Iterator<Item = Msg>) -> u64 {
    let mut sum = 0;
    for msg in messages {
        match msg {
            Msg::Add(n) => sum += n,
            Msg::Get(reply) => reply.send(sum),
        }
    }
    sum
}

/// `--count tell|ask CONFIG N`: only N tells (then a join) or N asks on a
/// fresh runtime of one configuration, for an instruction count under
/// valgrind (`--tool=callgrind`): the difference between two sizes,
/// divided by the difference in N, is the instructions per message, both
/// threads included, free of the machine's noise. `CONFIG` is `on`,
/// `traced`, `flume` (the default configuration on a flume mailbox),
/// `raw-crossbeam` or `raw-flume` (tells only: a bare channel to an owner
/// thread, the reference), and with the feature `off` and `prometheus`.
fn count(what: &str, config: &str, n: u64) {
    match (what, config) {
        ("tell", "raw-crossbeam") => return count_raw(custody::Backend::Crossbeam, n),
        ("tell", "raw-flume") => return count_raw(custody::Backend::Flume, n),
        _ => {}
    }
    let rt = match config {
        #[cfg(feature = "metrics")]
        "off" => Runtime::builder().metrics(false).build(),
        "on" => Runtime::builder().build(),
        "traced" => Runtime::builder().trace_messages(true).build(),
        "flume" => Runtime::builder().backend(custody::Backend::Flume).build(),
        #[cfg(feature = "metrics")]
        "prometheus" => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the recorder installs");
            Runtime::builder().build()
        }
        other => panic!("unknown configuration {other}"),
    }
    .unwrap();
    let h = rt.spawn("sum", Sum(0)).unwrap();
    match what {
        "tell" => {
            for i in 0..n {
                h.tell(Msg::Add(i)).map_err(|_| ()).unwrap();
            }
            h.join().unwrap();
        }
        "ask" => {
            for _ in 0..n {
                std::hint::black_box(h.ask(Msg::Get).unwrap());
            }
        }
        other => panic!("unknown operation {other}"),
    }
    rt.shutdown();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--count") {
        let arg = |k: usize| args.get(i + k).map(String::as_str).unwrap_or("");
        count(
            arg(1),
            arg(2),
            arg(3).parse().expect("--count tell|ask CONFIG N"),
        );
        return;
    }
    let n = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs one round.
    let n = if args.iter().any(|a| a == "--bench") {
        n
    } else {
        1
    };
    #[cfg(not(feature = "metrics"))]
    {
        let _ = n;
        println!(
            "built without the feature `metrics`: only --count works (--count tell|ask on|traced|flume N, --count tell raw-crossbeam|raw-flume N)"
        );
    }
    #[cfg(feature = "metrics")]
    {
        let off = || Runtime::builder().metrics(false).build().unwrap();
        let on = || Runtime::builder().build().unwrap();
        let traced = || Runtime::builder().trace_messages(true).build().unwrap();
        let mut first = vec![
            config("off", off),
            config("on, no recorder", on),
            config("traced, no subscriber", traced),
        ];
        rounds(&mut first, n);
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the recorder installs");
        let mut second = vec![config("off", off), config("on, prometheus", on)];
        rounds(&mut second, n);
        println!(
            "median of {n} rounds, each running every configuration in turn; ratio = ns/op / off's ns/op in the same phase"
        );
        print("phase 1: no recorder installed", &first);
        print("phase 2: the Prometheus recorder installed", &second);
    }
}
