//! Schedule, then cancel, many times over: the memory stays flat.
//!
//! A common pattern arms a timeout and cancels it when the answer comes first
//! (`tell_after(one hour, msg)`, then drop the guard). Cancelling has the
//! timer manager drop the entry and its message at once, so a program doing
//! this a million times holds no more memory at the end than after the first
//! thousand pairs.
//!
//! The program schedules `--pairs` messages (each carrying a `--payload`
//! byte buffer) one `--delay-secs` ahead and cancels each right away (or,
//! with `--in-flight N`, keeps the last N schedules pending and cancels each
//! one N schedules later, as a server with N requests waiting would), and
//! prints the process's resident memory (`VmRSS` from `/proc/self/status`,
//! Linux only) ten times along the way, with the timer manager's mailbox
//! length and the cost of one schedule-and-cancel pair.
//!
//! Run: `cargo run --release --example schedule_cancel -- --pairs 1000000`
//! (default 20 000 pairs, a fraction of a second).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use custody::{Context, Manager, Runtime};

/// Receives the scheduled buffers (none arrives: each is cancelled first).
struct Sink;

impl Manager for Sink {
    type Msg = Vec<u8>;

    fn handle(&mut self, _msg: Vec<u8>, _ctx: &mut Context<'_, Vec<u8>>) {}
}

struct Args {
    pairs: u64,
    delay: Duration,
    payload: usize,
    in_flight: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        pairs: 20_000,
        delay: Duration::from_secs(3600),
        payload: 256,
        in_flight: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match flag.as_str() {
            "--pairs" => args.pairs = value("--pairs")?.max(1),
            "--delay-secs" => args.delay = Duration::from_secs(value("--delay-secs")?),
            "--payload" => {
                args.payload = usize::try_from(value("--payload")?).map_err(|e| e.to_string())?;
            }
            "--in-flight" => {
                args.in_flight =
                    usize::try_from(value("--in-flight")?).map_err(|e| e.to_string())?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --pairs N, --delay-secs S, \
                     --payload BYTES, --in-flight N"
                ));
            }
        }
    }
    Ok(args)
}

/// The resident set size in KiB, from `/proc/self/status`.
fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss() -> String {
    vm_rss_kib().map_or_else(
        || "n/a".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = Runtime::new();
    let sink = match rt.spawn("sink", Sink) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot spawn the sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} schedule+cancel pairs, {:?} ahead, {} bytes each, {} in flight",
        args.pairs, args.delay, args.payload, args.in_flight
    );
    println!(
        "{:>10}  {:>12}  {:>13}  {:>9}",
        "pairs", "VmRSS", "timers queue", "ns/pair"
    );
    println!("{:>10}  {:>12}  {:>13}  {:>9}", 0, rss(), 0, "-");
    let step = (args.pairs / 10).max(1);
    let mut since = Instant::now();
    let mut done_at_since = 0;
    let mut pending = VecDeque::with_capacity(args.in_flight + 1);
    for i in 1..=args.pairs {
        match sink.tell_after(args.delay, vec![1u8; args.payload]) {
            Ok(guard) => {
                pending.push_back(guard);
                if pending.len() > args.in_flight {
                    drop(pending.pop_front()); // cancels
                }
            }
            Err(e) => {
                eprintln!("scheduling failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        if i % step == 0 || i == args.pairs {
            let per_pair = since.elapsed().as_nanos() / u128::from(i - done_at_since);
            let queued = rt.stats().get("custody.timers").map_or(0, |m| m.queued);
            println!("{i:>10}  {:>12}  {queued:>13}  {per_pair:>9}", rss());
            since = Instant::now();
            done_at_since = i;
        }
    }
    let report = rt.shutdown();
    println!(
        "shut down: {} messages unhandled; resident at the end: {}",
        report.total_unhandled(),
        rss()
    );
    ExitCode::SUCCESS
}
