//! custody beside kameo, ractor and actix: ask, tell and a ring, each
//! framework inside its own runtime and from a plain thread.
//!
//! Run: `cargo run --release -p custody-frameworks -- --help`

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use custody_frameworks::{Sample, Workload};

const USAGE: &str = "\
Usage: cargo run --release -p custody-frameworks -- [OPTIONS]

custody beside the actor frameworks kameo, ractor and actix, on one counter
actor (a u64 incremented by messages):
  ask   one caller, sequential increment-and-get round trips, each timed
  tell  2 producers send increments, then one ask waits until all are handled
  ring  1,000 actors (tiny: 100) pass a token around with tell

Each framework runs inside its own runtime (tokio for kameo and ractor, a
System for actix) and is called from a plain thread (kameo's blocking_send,
a block_on of ractor's and actix's futures); custody from a plain thread
(its blocking API) and from a tokio task (ask_async, tell_async). The
reference, raw-crossbeam, is a thread owning a u64 behind a crossbeam channel,
answers on a crossbeam bounded(1).

The table: ns/op (median over the runs), p50 and p99 of single asks (median
over the runs), and ns/op over the reference's and over custody's (custody-
thread; the ring: custody). Then each target, met or not.

Options:
      --quick            fewer and shorter runs
      --tiny             small fixed sizes, one run each (a smoke test)
      --json             one JSON object per line instead of the table
      --workload NAME    only these workloads (ask, tell, ring; repeatable,
                         or comma-separated)
  -h, --help             print this help
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Default,
    Quick,
    Tiny,
}

impl Mode {
    fn runs(self) -> usize {
        match self {
            Mode::Default => 5,
            Mode::Quick => 3,
            Mode::Tiny => 1,
        }
    }

    /// The time one run should take, or `None` (tiny) for the smallest
    /// sizes as they are.
    fn budget(self) -> Option<Duration> {
        match self {
            Mode::Default => Some(Duration::from_millis(150)),
            Mode::Quick => Some(Duration::from_millis(60)),
            Mode::Tiny => None,
        }
    }

    /// The ring's actors.
    fn actors(self) -> usize {
        if self == Mode::Tiny { 100 } else { 1_000 }
    }
}

/// The smallest and largest `k` of a run (asks; increments per producer;
/// hops).
fn k_range(workload: Workload) -> (u64, u64) {
    match workload {
        Workload::Ask => (200, 500_000),
        Workload::Tell => (1_000, 2_000_000),
        Workload::Ring => (1_000, 1_000_000),
    }
}

/// The `k` whose run takes about `budget`: a pilot run at `min`, then one
/// sized from it, within `min..=max`.
fn fit(mut run: impl FnMut(u64) -> Duration, min: u64, max: u64, budget: Duration) -> u64 {
    let mut k = min;
    for _ in 0..2 {
        let elapsed = run(k).max(Duration::from_micros(1));
        let scaled = (k as f64 * budget.as_secs_f64() / elapsed.as_secs_f64()) as u64;
        let next = scaled.clamp(min, max);
        if next <= k {
            return k.max(next);
        }
        k = next;
    }
    k
}

struct Options {
    mode: Mode,
    json: bool,
    workloads: Vec<Workload>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        mode: Mode::Default,
        json: false,
        workloads: Vec::new(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" | "--tiny" => {
                let mode = if flag == "--quick" {
                    Mode::Quick
                } else {
                    Mode::Tiny
                };
                if options.mode != Mode::Default && options.mode != mode {
                    return Err("--quick and --tiny exclude each other".to_owned());
                }
                options.mode = mode;
            }
            "--json" => options.json = true,
            "--workload" => {
                let value = inline
                    .or_else(|| args.next())
                    .ok_or("--workload needs a value")?;
                for name in value.split(',').map(str::trim) {
                    let workload = Workload::ALL
                        .into_iter()
                        .find(|w| w.name() == name)
                        .ok_or_else(|| format!("unknown workload `{name}` (ask, tell, ring)"))?;
                    if !options.workloads.contains(&workload) {
                        options.workloads.push(workload);
                    }
                }
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if options.workloads.is_empty() {
        options.workloads = Workload::ALL.to_vec();
    }
    options
        .workloads
        .sort_by_key(|w| Workload::ALL.iter().position(|a| a == w));
    Ok(Some(options))
}

struct Row {
    workload: Workload,
    design: &'static str,
    k: u64,
    ns_per_op: f64,
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
    vs_raw: f64,
    vs_custody: f64,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_nanos() as f64
}

/// Measures one workload: sizes each design, then runs them in turns.
fn measure(workload: Workload, mode: Mode) -> Vec<Row> {
    let designs = workload.designs();
    let actors = mode.actors();
    let (min, max) = k_range(workload);
    let ks: Vec<u64> = designs
        .iter()
        .map(|design| match mode.budget() {
            None => min,
            Some(budget) => fit(
                |k| workload.run(design, k, actors).elapsed,
                min,
                max,
                budget,
            ),
        })
        .collect();
    let runs = mode.runs();
    let terminal = std::io::stderr().is_terminal();
    let mut ns = vec![Vec::new(); designs.len()];
    let mut p50 = vec![Vec::new(); designs.len()];
    let mut p99 = vec![Vec::new(); designs.len()];
    for run in 1..=runs {
        for (d, design) in designs.iter().enumerate() {
            if terminal {
                eprint!(
                    "\r{} {design} (run {run}/{runs})          ",
                    workload.name()
                );
                let _ = std::io::stderr().flush();
            }
            let Sample {
                elapsed,
                mut latencies,
            } = workload.run(design, ks[d], actors);
            ns[d].push(elapsed.as_nanos() as f64 / workload.ops(ks[d]) as f64);
            if !latencies.is_empty() {
                latencies.sort_unstable();
                p50[d].push(percentile(&latencies, 0.50));
                p99[d].push(percentile(&latencies, 0.99));
            }
        }
    }
    if terminal {
        eprint!("\r{:60}\r", "");
    } else {
        eprintln!("frameworks: {} measured", workload.name());
    }
    let medians: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    // The reference is first, custody's native row second.
    let (raw, custody) = (medians[0], medians[1]);
    designs
        .iter()
        .enumerate()
        .map(|(d, &design)| Row {
            workload,
            design,
            k: ks[d],
            ns_per_op: medians[d],
            p50_ns: (!p50[d].is_empty()).then(|| median(&mut p50[d])),
            p99_ns: (!p99[d].is_empty()).then(|| median(&mut p99[d])),
            vs_raw: medians[d] / raw,
            vs_custody: medians[d] / custody,
        })
        .collect()
}

/// `1,234.5`
fn grouped(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let text = format!("{v:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((&*text, None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// A design's figure, by name.
fn ns(rows: &[Row], workload: Workload, design: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.workload == workload && r.design == design)
        .map(|r| r.ns_per_op)
}

/// The fastest of `designs` (name and ns/op).
fn fastest<'a>(rows: &[Row], workload: Workload, designs: &[&'a str]) -> Option<(&'a str, f64)> {
    designs
        .iter()
        .filter_map(|&d| ns(rows, workload, d).map(|v| (d, v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// Each target: what it compares, the factor reached and the one asked for.
fn targets(rows: &[Row]) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    let mut target = |workload, what: &str, designs: &[&str], custody: &str, wanted| {
        if let (Some((name, framework)), Some(custody_ns)) = (
            fastest(rows, workload, designs),
            ns(rows, workload, custody),
        ) {
            out.push((
                format!("{what}: fastest framework {name} over {custody}"),
                framework / custody_ns,
                wanted,
            ));
        }
    };
    let inside = ["kameo-tokio", "ractor-tokio", "actix-system"];
    let thread = ["kameo-thread", "ractor-thread", "actix-thread"];
    let all = [
        "kameo-tokio",
        "kameo-thread",
        "ractor-tokio",
        "ractor-thread",
        "actix-system",
        "actix-thread",
    ];
    target(
        Workload::Ask,
        "ask, framework inside its runtime",
        &inside,
        "custody-thread",
        2.5,
    );
    target(
        Workload::Ask,
        "ask, framework inside its runtime",
        &inside,
        "custody-tokio",
        2.5,
    );
    target(
        Workload::Ask,
        "ask from a plain thread",
        &thread,
        "custody-thread",
        25.0,
    );
    target(Workload::Tell, "tell", &all, "custody-thread", 4.0);
    target(Workload::Tell, "tell", &all, "custody-tokio", 4.0);
    out
}

fn table(rows: &[Row], mode: Mode, load: Option<f64>) -> String {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(
        out,
        "cpus: {cpus}   load: {}   runs: {} per row   {}",
        load.map_or("?".to_owned(), |l| format!("{l:.2}")),
        mode.runs(),
        versions()
    );
    let _ = writeln!(
        out,
        "\n{:<8} {:<15} {:>9} {:>10} {:>9} {:>9} {:>8} {:>10}",
        "workload", "design", "k", "ns/op", "p50", "p99", "/raw", "/custody"
    );
    let _ = writeln!(out, "{}", "-".repeat(84));
    let mut last = None;
    for row in rows {
        if last.is_some_and(|w| w != row.workload) {
            out.push('\n');
        }
        last = Some(row.workload);
        let _ = writeln!(
            out,
            "{:<8} {:<15} {:>9} {:>10} {:>9} {:>9} {:>8.2} {:>10.2}",
            row.workload.name(),
            row.design,
            row.k,
            grouped(row.ns_per_op, 1),
            row.p50_ns.map_or("-".to_owned(), |v| grouped(v, 0)),
            row.p99_ns.map_or("-".to_owned(), |v| grouped(v, 0)),
            row.vs_raw,
            row.vs_custody,
        );
    }
    let targets = targets(rows);
    if !targets.is_empty() {
        let _ = writeln!(
            out,
            "\ntargets (custody faster by at least the factor asked):"
        );
        for (what, reached, wanted) in targets {
            let verdict = if reached >= wanted { "met" } else { "NOT met" };
            let _ = writeln!(out, "  {what}: {reached:.1}x (asked {wanted}x): {verdict}");
        }
    }
    out
}

fn json(rows: &[Row]) -> String {
    let number = |v: Option<f64>, d: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.d$}"),
        _ => "null".to_owned(),
    };
    let mut out = String::new();
    for row in rows {
        let _ = writeln!(
            out,
            "{{\"workload\":\"{}\",\"design\":\"{}\",\"k\":{},\"ns_per_op\":{},\"p50_ns\":{},\"p99_ns\":{},\"ratio_raw\":{},\"ratio_custody\":{}}}",
            row.workload.name(),
            row.design,
            row.k,
            number(Some(row.ns_per_op), 3),
            number(row.p50_ns, 0),
            number(row.p99_ns, 0),
            number(Some(row.vs_raw), 4),
            number(Some(row.vs_custody), 4),
        );
    }
    for (what, reached, wanted) in targets(rows) {
        let _ = writeln!(
            out,
            "{{\"target\":\"{what}\",\"factor\":{reached:.3},\"asked\":{wanted},\"met\":{}}}",
            reached >= wanted
        );
    }
    out
}

/// The frameworks' versions, as the workspace's lockfile pins them.
fn versions() -> String {
    const LOCK: &str = include_str!("../../Cargo.lock");
    let version = |name: &str| {
        let needle = format!("name = \"{name}\"\nversion = \"");
        LOCK.find(&needle)
            .map(|i| &LOCK[i + needle.len()..])
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?")
            .to_owned()
    };
    [
        "kameo",
        "ractor",
        "actix",
        "actix-rt",
        "tokio",
        "crossbeam-channel",
    ]
    .iter()
    .map(|name| format!("{name} {}", version(name)))
    .collect::<Vec<_>>()
    .join(", ")
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("frameworks: {message}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("frameworks: this is a debug build; use --release for meaningful numbers");
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    let started = Instant::now();
    let rows: Vec<Row> = options
        .workloads
        .iter()
        .flat_map(|&w| measure(w, options.mode))
        .collect();
    eprintln!(
        "frameworks: measured in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let output = if options.json {
        json(&rows)
    } else {
        table(&rows, options.mode, load)
    };
    let _ = std::io::stdout().lock().write_all(output.as_bytes());
    ExitCode::SUCCESS
}
