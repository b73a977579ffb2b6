//! When does a manager thread beat a lock, on this machine?
//!
//! Runs the same workloads with locks, atomics, bare channels and custody
//! managers, and prints one row per (workload, design, threads): the median
//! nanoseconds per operation, operations per second, and the ratio to the
//! workload's reference design at the same thread count.
//!
//! Run: `cargo run --release -p custody-compare -- --help`

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[cfg(feature = "amqp")]
use custody_compare::broker;
use custody_compare::measure::Sample;
use custody_compare::report::{self, Machine, Reference, Row};
use custody_compare::section::{self, Settings};
use custody_compare::{
    ask, async_ask, async_write, counter, database, measure, printer, python_queue, scale,
};

/// One workload: its designs (the reference first), the thread counts it is
/// measured at, and one run of a design.
impl Workload {
    /// `1 thread`, `4 threads`, `8 writers`.
    fn count(&self, threads: usize) -> String {
        let plural = if threads == 1 { "" } else { "s" };
        format!("{threads} {}{plural}", self.unit)
    }
}

struct Workload {
    name: &'static str,
    designs: &'static [&'static str],
    threads: &'static [usize],
    /// What the thread count counts (singular), for the progress line.
    unit: &'static str,
    /// How many times the mode's run budget one run may take: more for the
    /// workloads whose latency percentiles need enough requests.
    budget_scale: u32,
    run: fn(&str, usize, u64) -> Sample,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: counter::NAME,
        designs: &counter::DESIGNS,
        threads: &counter::THREADS,
        unit: "thread",
        budget_scale: 1,
        run: |design, threads, k| counter::run(design, threads, k).into(),
    },
    Workload {
        name: ask::NAME,
        designs: &ask::DESIGNS,
        threads: &ask::THREADS,
        unit: "caller",
        budget_scale: 1,
        run: ask::sample,
    },
    Workload {
        name: printer::NAME,
        designs: &printer::DESIGNS,
        threads: &printer::THREADS,
        unit: "thread",
        budget_scale: 1,
        run: |design, threads, k| printer::run(design, threads, k).into(),
    },
    Workload {
        name: database::NAME,
        designs: &database::DESIGNS,
        threads: &database::THREADS,
        unit: "writer",
        budget_scale: 1,
        run: |design, threads, k| database::run(design, threads, k).into(),
    },
    Workload {
        name: async_write::NAME,
        designs: &async_write::DESIGNS,
        threads: &async_write::THREADS,
        unit: "concurrent request",
        budget_scale: 4,
        run: async_write::run,
    },
    Workload {
        name: async_ask::NAME,
        designs: &async_ask::DESIGNS,
        threads: &async_ask::THREADS,
        unit: "asking task",
        budget_scale: 1,
        run: async_ask::run,
    },
    #[cfg(feature = "amqp")]
    Workload {
        name: broker::NAME,
        designs: &broker::DESIGNS,
        threads: &broker::THREADS,
        unit: "producer",
        budget_scale: 1,
        run: |design, threads, k| broker::run(design, threads, k).into(),
    },
];

/// Workloads with a report of their own (`section.rs`), printed after the
/// table: their rows have columns the table has not.
type Section = (&'static str, fn(Settings) -> section::Report);

const SECTIONS: &[Section] = &[
    (scale::NAME, scale::run),
    (python_queue::NAME, python_queue::run),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Default,
    Quick,
    Tiny,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::Quick => "quick",
            Mode::Tiny => "tiny",
        }
    }

    /// Runs per row; the row reports their median.
    fn runs(self) -> usize {
        match self {
            Mode::Default => 5,
            Mode::Quick => 3,
            Mode::Tiny => 1,
        }
    }

    /// The time one run should take at most, or `None` (tiny) to use the
    /// smallest sizes as they are.
    fn run_budget(self) -> Option<Duration> {
        match self {
            Mode::Default => Some(Duration::from_millis(120)),
            Mode::Quick => Some(Duration::from_millis(70)),
            Mode::Tiny => None,
        }
    }

    /// The smallest and largest number of operations per thread (`k`) in
    /// one run of `design`.
    ///
    /// On a quiet machine most designs run at the largest `k`; where a run
    /// would take longer than [`run_budget`](Mode::run_budget) (slow
    /// designs, a busy machine, slow fsyncs) a pilot run sizes `k` down, so
    /// that the default mode stays under a minute on a busy 2-core machine
    /// and `--quick` around 15 s, plus about a minute (`--quick`: 20 s) for
    /// the async workloads, whose runs are longer (`budget_scale`). Designs that pay for one commit (an fsync)
    /// per insert get far fewer inserts than group-committed ones; ns/op
    /// stays per insert.
    fn ops_range(self, workload: &str, design: &str) -> (u64, u64) {
        let (default, quick, tiny) = match (workload, design) {
            // A few ns per increment.
            ("counter", "atomic" | "mutex-std" | "mutex-parking-lot" | "manager-coalesced") => {
                (2_000_000, 1_000_000, 2_000)
            }
            // Tens of ns per message.
            ("counter", _) => (500_000, 250_000, 1_000),
            ("ask", "mutex-read") => (2_000_000, 1_000_000, 2_000),
            // A wake-up per round trip: from about 100 ns (spinning, on a
            // quiet machine) to 100s of us (a busy one).
            ("ask", _) => (20_000, 10_000, 100),
            ("printer", _) => (40_000, 20_000, 200),
            // One commit (an fsync: 0.1 to several ms) per insert, or per
            // few inserts.
            ("database", "mutex-connection" | "manager-ask") => (50, 25, 2),
            // Group commits: hundreds of inserts per fsync.
            ("database", _) => (4_000, 2_000, 20),
            // One commit (an fsync) per request: k is requests per task.
            ("async-write", "tokio-rusqlite" | "mutex-spawn-blocking") => (2_000, 1_000, 2),
            // Group commits: up to a commit per batch of concurrent requests.
            ("async-write", _) => (8_000, 4_000, 2),
            // A round trip through a channel and a wake-up: µs; a hop
            // through the blocking pool: tens of µs.
            ("async-ask", _) => (20_000, 10_000, 100),
            // A confirm, a batch settled and an answer per ask: ms.
            ("broker", "remote-ask") => (500, 250, 10),
            // Publishes in flight: tens of us a message.
            ("broker", _) => (20_000, 10_000, 200),
            _ => unreachable!("no size for {workload}/{design}"),
        };
        match self {
            Mode::Default => (tiny, default),
            Mode::Quick => (tiny, quick),
            Mode::Tiny => (tiny, tiny),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    format: Format,
    svg: Option<PathBuf>,
    /// Indices into `WORKLOADS`, in its order.
    workloads: Vec<usize>,
    /// Indices into `SECTIONS`, in its order.
    sections: Vec<usize>,
}

enum Command {
    Help,
    Run(Options),
}

const USAGE: &str = "\
Usage: cargo run --release -p custody-compare -- [OPTIONS]

When does a manager thread beat a lock, on this machine? Measures each
workload with locks, atomics, bare channels and custody managers, and prints
one row per (workload, design, threads): the median ns per operation, ops/s,
and the ratio to the workload's reference design at the same thread count
(ratio = ns_per_op / reference ns_per_op; below 1 beats the reference).

Workloads:
  counter   threads add 1 to a shared count (reference: atomic)
  ask       one caller, sequential request/answer round trips, each timed
            but mutex-read's: also prints latency p50, p99 and p99.9
            (reference: spin-pingpong, two threads spinning on one cache line)
  printer   threads print lines to one file (reference: mutex-writer)
  database  writers insert rows into one SQLite file, WAL, synchronous=FULL,
            each acknowledged once committed (reference: mutex-connection)
  async-write
            tokio tasks (1, 16, 64, 256 at once) each insert rows into one
            SQLite file, WAL, synchronous=FULL, each awaited until committed;
            also prints each row's latency p50, p99, p99.9 (reference:
            tokio-rusqlite 0.7; the others: Mutex<Connection> and custody's
            Database through spawn_blocking, and the Database awaited)
  async-ask one tokio task, sequential round trips to a thread, each timed
            (reference: tokio-mpsc-oneshot, a tokio mpsc to a dedicated thread
            and a tokio oneshot back; custody's ask through spawn_blocking,
            and awaited, on each mailbox backend)
  broker    (feature amqp, needs RabbitMQ) one producer, one consumer through a
            durable quorum queue, each message confirmed and handled
            (reference: raw-lapin, the AMQP client alone)
  scale     spawn 1,000 and 10,000 managers (tiny: 200), one ask each,
            graceful shutdown, in a child process: time per phase and peak
            RSS (VmHWM), at the default and a 256 KiB stack, and with the
            process's futex hash enlarged (Linux 6.16+); then a ring of
            1,000 managers passing a token with tell (ns per hop). A table
            of its own, after the main one
  python-queue
            CPython's queue.Queue (python3, a child process) beside
            JoinableQueue: producers put, consumers get and task_done, join;
            1 and 1, then 4 and 4, unbounded and maxsize 100: ns per item
            and how many times faster custody is (skipped without python3)

Options:
      --quick            fewer and smaller runs (about 35 s)
      --tiny             smallest sizes, one run each (a smoke test)
      --json             one JSON object per line instead of the table
      --csv              CSV (header + rows) instead of the table
      --svg PATH         also draw ops/s against threads to an SVG file
      --workload NAME    only these workloads (repeatable, or comma-separated)
  -h, --help             print this help

Each row's runs do k operations per thread (the table's k column): a fixed
size on a quiet machine, sized down by a pilot run where one run would take
too long (slow fsyncs, a busy machine), so the default run stays under a
minute and --quick around 15 s even on a busy 2-core machine, plus about a
minute (--quick: 20 s) for async-write and async-ask. Progress goes to
stderr; results to stdout.
";

fn workload_names() -> String {
    WORKLOADS
        .iter()
        .map(|w| w.name)
        .chain(SECTIONS.iter().map(|s| s.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut mode: Option<Mode> = None;
    let mut format: Option<Format> = None;
    let mut svg = None;
    let mut chosen = Vec::new();
    let mut sections = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        const FLAGS: [&str; 8] = [
            "-h",
            "--help",
            "--quick",
            "--tiny",
            "--json",
            "--csv",
            "--svg",
            "--workload",
        ];
        if !FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown option `{flag}`"));
        }
        let takes_value = matches!(flag.as_str(), "--svg" | "--workload");
        if inline.is_some() && !takes_value {
            return Err(format!("{flag} takes no value"));
        }
        let mut value = || -> Result<String, String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "--quick" | "--tiny" => {
                let m = if flag == "--quick" {
                    Mode::Quick
                } else {
                    Mode::Tiny
                };
                if mode.is_some_and(|old| old != m) {
                    return Err("--quick and --tiny exclude each other".to_owned());
                }
                mode = Some(m);
            }
            "--json" | "--csv" => {
                let f = if flag == "--json" {
                    Format::Json
                } else {
                    Format::Csv
                };
                if format.is_some_and(|old| old != f) {
                    return Err("--json and --csv exclude each other".to_owned());
                }
                format = Some(f);
            }
            "--svg" => svg = Some(PathBuf::from(value()?)),
            "--workload" => {
                for name in value()?.split(',') {
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!(
                            "--workload got an empty name; valid workloads: {}",
                            workload_names()
                        ));
                    }
                    if let Some(i) = SECTIONS.iter().position(|s| s.0 == name) {
                        sections.push(i);
                        continue;
                    }
                    let Some(i) = WORKLOADS.iter().position(|w| w.name == name) else {
                        return Err(format!(
                            "unknown workload `{name}`; valid workloads: {}",
                            workload_names()
                        ));
                    };
                    chosen.push(i);
                }
            }
            _ => return Ok(Command::Help),
        }
    }
    let all = chosen.is_empty() && sections.is_empty();
    let workloads = if all {
        (0..WORKLOADS.len()).collect()
    } else {
        chosen.sort_unstable();
        chosen.dedup();
        chosen
    };
    let sections = if all {
        (0..SECTIONS.len()).collect()
    } else {
        sections.sort_unstable();
        sections.dedup();
        sections
    };
    Ok(Command::Run(Options {
        mode: mode.unwrap_or(Mode::Default),
        format: format.unwrap_or(Format::Table),
        svg,
        workloads,
        sections,
    }))
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per (workload, threads) group otherwise.
struct Progress {
    done: usize,
    total: usize,
    terminal: bool,
    width: usize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            done: 0,
            total,
            terminal: std::io::stderr().is_terminal(),
            width: 0,
        }
    }

    fn group(&mut self, workload: &Workload, threads: usize) {
        if !self.terminal {
            eprintln!(
                "[{}/{}] {} {}",
                self.done,
                self.total,
                workload.name,
                workload.count(threads)
            );
        }
    }

    fn run(&mut self, workload: &Workload, design: &str, threads: usize, run: usize, runs: usize) {
        self.done += 1;
        if self.terminal {
            let line = format!(
                "[{}/{}] {} {design} {} (run {run}/{runs})",
                self.done,
                self.total,
                workload.name,
                workload.count(threads)
            );
            self.width = self.width.max(line.len());
            eprint!("\r{line:<width$}", width = self.width);
            let _ = std::io::stderr().flush();
        }
    }

    fn sizing(&mut self, workload: &Workload, design: &str, threads: usize) {
        if self.terminal {
            let line = format!(
                "[{}/{}] {} {design} {} (sizing)",
                self.done,
                self.total,
                workload.name,
                workload.count(threads)
            );
            self.width = self.width.max(line.len());
            eprint!("\r{line:<width$}", width = self.width);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&mut self, elapsed: Duration) {
        if self.terminal {
            eprint!("\r{:width$}\r", "", width = self.width);
        }
        eprintln!(
            "compare: {} runs in {:.2} s",
            self.total,
            elapsed.as_secs_f64()
        );
    }
}

/// Measures every (design, threads) of the chosen workloads. Within one
/// (workload, threads) group the designs take turns, run after run, so that
/// a burst of noise from the rest of the machine is spread over all of them.
fn measure(options: &Options) -> Vec<Row> {
    let mode = options.mode;
    let runs = mode.runs();
    let total = options
        .workloads
        .iter()
        .map(|&w| WORKLOADS[w].designs.len() * WORKLOADS[w].threads.len() * runs)
        .sum();
    let mut progress = Progress::new(total);
    let started = Instant::now();
    let mut rows = Vec::new();
    for &w in &options.workloads {
        let workload = &WORKLOADS[w];
        for &threads in workload.threads {
            progress.group(workload, threads);
            let ks: Vec<u64> = workload
                .designs
                .iter()
                .map(|&design| {
                    let (min, max) = mode.ops_range(workload.name, design);
                    match mode.run_budget() {
                        None => min,
                        Some(budget) => {
                            progress.sizing(workload, design, threads);
                            let run = |k| (workload.run)(design, threads, k).elapsed;
                            measure::fit(run, min, max, budget * workload.budget_scale)
                        }
                    }
                })
                .collect();
            let mut samples = vec![Vec::with_capacity(runs); workload.designs.len()];
            let mut p50s = vec![Vec::with_capacity(runs); workload.designs.len()];
            let mut p99s = vec![Vec::with_capacity(runs); workload.designs.len()];
            let mut p999s = vec![Vec::with_capacity(runs); workload.designs.len()];
            for run in 1..=runs {
                for (d, &design) in workload.designs.iter().enumerate() {
                    progress.run(workload, design, threads, run, runs);
                    let sample = (workload.run)(design, threads, ks[d]);
                    samples[d].push(measure::ns_per_op(sample.elapsed, threads as u64 * ks[d]));
                    if let Some(latency) = sample.latency {
                        p50s[d].push(latency.p50.as_nanos() as f64);
                        p99s[d].push(latency.p99.as_nanos() as f64);
                        p999s[d].push(latency.p999.as_nanos() as f64);
                    }
                }
            }
            let medians: Vec<f64> = samples.iter_mut().map(|s| measure::median(s)).collect();
            let reference = medians[0];
            // The median of each percentile over the runs.
            let median_of =
                |values: &mut Vec<f64>| (!values.is_empty()).then(|| measure::median(values));
            for (d, &design) in workload.designs.iter().enumerate() {
                rows.push(Row {
                    workload: workload.name,
                    design,
                    threads,
                    k: ks[d],
                    ns_per_op: medians[d],
                    ops_per_s: 1e9 / medians[d],
                    ratio: medians[d] / reference,
                    p50_ns: median_of(&mut p50s[d]),
                    p99_ns: median_of(&mut p99s[d]),
                    p999_ns: median_of(&mut p999s[d]),
                });
            }
        }
    }
    progress.finish(started.elapsed());
    rows
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The scale workload's child process: one measurement, then exit.
    if let Some(code) = scale::child_main(&args) {
        return code;
    }
    let options = match parse(args) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(message) => {
            eprintln!("compare: {message}");
            eprintln!("Try `cargo run --release -p custody-compare -- --help`.");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("compare: this is a debug build; use --release for meaningful numbers");
    }
    let machine = Machine::detect(options.mode.name(), options.mode.runs());
    if options.format != Format::Table {
        eprintln!("compare: {}", machine.summary());
    }
    if machine.busy() {
        eprintln!(
            "compare: warning: the machine is already busy (load {:.2} on {} cpus); \
             expect noisy numbers, worst for designs that spin",
            machine.load.unwrap_or_default(),
            machine.cpus
        );
    }
    let rows = measure(&options);
    let mut output = match options.format {
        _ if options.workloads.is_empty() => String::new(),
        Format::Table => {
            let references: Vec<Reference> = options
                .workloads
                .iter()
                .map(|&w| Reference {
                    workload: WORKLOADS[w].name,
                    design: WORKLOADS[w].designs[0],
                })
                .collect();
            report::table(&rows, &machine, &references)
        }
        Format::Json => report::json(&rows),
        Format::Csv => report::csv(&rows),
    };
    let settings = Settings {
        tiny: options.mode == Mode::Tiny,
        quick: options.mode == Mode::Quick,
    };
    for &s in &options.sections {
        let (name, run) = SECTIONS[s];
        eprintln!("compare: {name}");
        let report = run(settings);
        match options.format {
            Format::Json => {
                output.push_str(&report.json());
                for note in &report.notes {
                    eprintln!("compare: {name}: {note}");
                }
            }
            Format::Table | Format::Csv => output.push_str(&report.table()),
        }
    }
    // A closed stdout (`| head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(output.as_bytes());
    if let Some(path) = &options.svg {
        let panels: Vec<_> = options
            .workloads
            .iter()
            .map(|&w| (WORKLOADS[w].name, WORKLOADS[w].designs))
            .collect();
        if let Err(message) = report::svg(path, &rows, &panels, &machine) {
            eprintln!("compare: {message}");
            return ExitCode::FAILURE;
        }
        eprintln!("compare: chart written to {}", path.display());
    }
    ExitCode::SUCCESS
}
