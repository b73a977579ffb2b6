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

use std::time::{Duration, Instant};

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

struct Config {
    name: &'static str,
    _rt: Runtime,
    h: Handle<Msg>,
    tell: Vec<f64>,
    ask: Vec<f64>,
}

fn config(name: &'static str, rt: Runtime) -> Config {
    let h = rt.spawn("sum", Sum(0)).unwrap();
    Config {
        name,
        _rt: rt,
        h,
        tell: Vec::new(),
        ask: Vec::new(),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounds(configs: &mut [Config], n: usize) {
    // A warm-up round, not kept.
    for c in configs.iter() {
        tell(&c.h);
        ask(&c.h);
    }
    for round in 0..n {
        // Rotate the order each round, so no configuration always goes first.
        for i in 0..configs.len() {
            let c = &mut configs[(i + round) % configs.len()];
            c.tell.push(tell(&c.h));
            c.ask.push(ask(&c.h));
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
    let built = || Runtime::builder();
    let mut first = vec![
        config("off", built().metrics(false).build().unwrap()),
        config("on, no recorder", built().build().unwrap()),
        config(
            "traced, no subscriber",
            built().trace_messages(true).build().unwrap(),
        ),
    ];
    rounds(&mut first, n);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the recorder installs");
    let mut second = vec![
        config("off", built().metrics(false).build().unwrap()),
        config("on, prometheus", built().build().unwrap()),
    ];
    rounds(&mut second, n);
    println!(
        "median of {n} rounds, each running every configuration in turn; ratio = ns/op / off's ns/op in the same phase"
    );
    print("phase 1: no recorder installed", &first);
    print("phase 2: the Prometheus recorder installed", &second);
    // The watch thread exports once per round of its own; let it run once
    // more so its cost is in nothing measured above.
    std::thread::sleep(Duration::from_millis(1));
}
