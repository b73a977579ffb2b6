//! `scale`: many managers in one runtime.
//!
//! - **spawn / ask / shutdown**: spawn N owners (a `u64` each), ask each
//!   once (increment and get, answer checked), then a graceful shutdown.
//!   Each N runs in a child process of the tool (the binary run again with
//!   the hidden flag [`CHILD_FLAG`]), so that the peak RSS it reports
//!   (`VmHWM`) is that run's own, not the whole tool's.
//! - **ring**: M managers in a ring pass one token around with `tell`, each
//!   forwarding it to the next; the cost of a hop is the run's time divided
//!   by the hops. Every hop wakes a thread that was asleep on its mailbox.

use std::process::{Command, ExitCode};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use custody::{Context, Handle, Manager, Runtime};

use crate::section::{Report, Settings, Value, median, status_kib};

/// The workload's name.
pub const NAME: &str = "scale";

/// The hidden flag that makes the tool run one spawn / ask / shutdown
/// measurement and print it: `--scale-child MANAGERS STACK_BYTES
/// [FUTEX_SLOTS]` (a stack of 0: the runtime's default; futex slots: see
/// [`set_futex_slots`]).
pub const CHILD_FLAG: &str = "--scale-child";

/// One spawn / ask / shutdown run, as the child prints it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phases {
    pub spawn: Duration,
    pub ask: Duration,
    pub shutdown: Duration,
    /// Peak RSS of the child process, in KiB.
    pub peak_kib: u64,
}

impl Phases {
    fn total(&self) -> Duration {
        self.spawn + self.ask + self.shutdown
    }

    fn line(&self) -> String {
        format!(
            "spawn_ns={} ask_ns={} shutdown_ns={} vmhwm_kib={}",
            self.spawn.as_nanos(),
            self.ask.as_nanos(),
            self.shutdown.as_nanos(),
            self.peak_kib
        )
    }

    fn parse(line: &str) -> Option<Phases> {
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(Phases {
            spawn: Duration::from_nanos(field("spawn_ns")?),
            ask: Duration::from_nanos(field("ask_ns")?),
            shutdown: Duration::from_nanos(field("shutdown_ns")?),
            peak_kib: field("vmhwm_kib")?,
        })
    }
}

/// Spawns `managers` owners, asks each once, shuts the runtime down.
///
/// # Panics
///
/// If a spawn or an ask fails, or an answer is wrong.
pub fn spawn_ask_shutdown(managers: usize, stack_bytes: Option<usize>) -> Phases {
    let mut builder = Runtime::builder();
    if let Some(bytes) = stack_bytes {
        builder = builder.stack_size(bytes);
    }
    let rt = builder.build().expect("building the runtime");
    let started = Instant::now();
    let owners: Vec<_> = (0..managers)
        .map(|i| rt.own(format!("m{i}"), i as u64).expect("spawning"))
        .collect();
    let spawned = Instant::now();
    for (i, owner) in owners.iter().enumerate() {
        let v = owner
            .call(|n| {
                *n += 1;
                *n
            })
            .expect("asking");
        assert_eq!(v, i as u64 + 1, "{NAME}: wrong answer");
    }
    let asked = Instant::now();
    let report = rt.shutdown();
    let done = Instant::now();
    assert_eq!(report.total_unhandled(), 0, "{NAME}: unhandled messages");
    assert_eq!(report.managers.len(), managers);
    drop(owners);
    Phases {
        spawn: spawned - started,
        ask: asked - spawned,
        shutdown: done - asked,
        peak_kib: status_kib("VmHWM").unwrap_or(0),
    }
}

/// The child's side of [`CHILD_FLAG`]: `None` unless `args` (without the
/// program name) start with it.
pub fn child_main(args: &[String]) -> Option<ExitCode> {
    if args.first().map(String::as_str) != Some(CHILD_FLAG) {
        return None;
    }
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
    let (Some(managers), Some(stack)) = (number(1), number(2)) else {
        eprintln!("compare: {CHILD_FLAG} MANAGERS STACK_BYTES [FUTEX_SLOTS]");
        return Some(ExitCode::from(2));
    };
    if let Some(slots) = number(3)
        && let Err(message) = set_futex_slots(slots)
    {
        eprintln!("compare: no futex hash of {slots} slots: {message}");
        return Some(ExitCode::from(3));
    }
    let phases = spawn_ask_shutdown(managers, (stack > 0).then_some(stack));
    println!("{}", phases.line());
    Some(ExitCode::SUCCESS)
}

/// Sizes this process's private futex hash (Linux 6.16 and later):
/// `prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots)`; 0 selects the
/// global hash. The kernel sizes the private hash from the online CPUs
/// (16 slots on 2 CPUs) whatever the number of threads, so with thousands
/// of threads asleep each futex wake walks a long chain.
///
/// # Errors
///
/// The OS error, on an older kernel or another system.
pub fn set_futex_slots(slots: usize) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        const PR_FUTEX_HASH: libc::c_int = 78;
        const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
        // SAFETY: prctl with integer arguments only; no memory is passed
        // to or from the kernel.
        #[allow(unsafe_code)]
        let done = unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_SET_SLOTS,
                slots as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slots;
        Err("a Linux prctl".to_owned())
    }
}

/// Runs one spawn / ask / shutdown in a child process of this binary.
fn in_child(
    managers: usize,
    stack_bytes: usize,
    futex_slots: Option<usize>,
) -> Result<Phases, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    let output = Command::new(exe)
        .args([CHILD_FLAG, &managers.to_string(), &stack_bytes.to_string()])
        .args(futex_slots.map(|slots| slots.to_string()))
        .output()
        .map_err(|e| format!("running the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    stdout
        .lines()
        .find_map(Phases::parse)
        .ok_or_else(|| format!("no phases in the child's output: {stdout}"))
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

/// A ring of `managers` custody managers; the token makes `hops` hops.
/// Returns the time from the first tell to the last hop.
///
/// # Panics
///
/// If a spawn or a tell fails.
pub fn ring(managers: usize, hops: u64) -> Duration {
    assert!(managers >= 2, "{NAME}: a ring needs two managers");
    let rt = Runtime::new();
    let (done, finished) = crossbeam_channel::bounded(1);
    let slots: Vec<Arc<OnceLock<Handle<u64>>>> =
        (0..managers).map(|_| Arc::new(OnceLock::new())).collect();
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
        let _ = slot.set(handles[(i + 1) % managers].clone());
    }
    let started = Instant::now();
    handles[0].tell(hops).expect("telling");
    finished.recv().expect("the ring ended without the token");
    let elapsed = started.elapsed();
    // Each node holds the next one's handle: shutdown stops them all.
    rt.shutdown();
    elapsed
}

/// The sizes a mode measures: managers for spawn / ask / shutdown, and
/// the ring's managers and hops.
fn sizes(settings: Settings) -> (Vec<usize>, usize, u64) {
    if settings.tiny {
        (vec![200], 200, 2_000)
    } else {
        (vec![1_000, 10_000], 1_000, 20_000)
    }
}

/// The stack sizes measured: the runtime's default (std's, 2 MiB unless
/// `RUST_MIN_STACK` says otherwise) and a small one.
const STACKS: [(usize, &str); 2] = [(0, "default (2 MiB)"), (256 * 1024, "256 KiB")];

/// The futex hash of the `futex-hash` rows (default stack): 16,384 slots
/// instead of the kernel's default for this many CPUs.
const FUTEX_SLOTS: usize = 16_384;

/// One configuration of a spawn / ask / shutdown row.
struct Config {
    design: &'static str,
    stack: (usize, &'static str),
    futex_slots: Option<usize>,
}

/// Measures every size of the mode, runs interleaved.
pub fn run(settings: Settings) -> Report {
    let (counts, ring_managers, ring_hops) = sizes(settings);
    let runs = settings.runs().min(3);
    let mut report = Report {
        workload: NAME,
        title: format!(
            "scale: spawn N managers, one ask each, graceful shutdown (child process, median of {runs}); \
             then a ring of {ring_managers} managers passing a token with tell"
        ),
        columns: vec![
            "design",
            "managers",
            "stack",
            "total_ms",
            "spawn_ms",
            "ask_ms",
            "shutdown_ms",
            "spawn_us_each",
            "ask_us_each",
            "peak_rss_mib",
            "hop_ns",
        ],
        ..Report::default()
    };
    let mut configs = vec![Config {
        design: "spawn-ask-shutdown",
        stack: STACKS[0],
        futex_slots: None,
    }];
    if !settings.tiny {
        configs.push(Config {
            design: "spawn-ask-shutdown",
            stack: STACKS[1],
            futex_slots: None,
        });
        configs.push(Config {
            design: "futex-hash-16384",
            stack: STACKS[0],
            futex_slots: Some(FUTEX_SLOTS),
        });
    }
    let mut failed = Vec::new();
    for &managers in &counts {
        for config in &configs {
            let (stack, stack_name) = config.stack;
            let mut phases = Vec::new();
            for _ in 0..runs {
                match in_child(managers, stack, config.futex_slots) {
                    Ok(p) => phases.push(p),
                    Err(message) => {
                        failed.push(format!("{} {managers} managers: {message}", config.design));
                        break;
                    }
                }
            }
            if phases.is_empty() {
                continue;
            }
            let ms = |f: fn(&Phases) -> Duration| {
                let mut v: Vec<f64> = phases.iter().map(|p| f(p).as_secs_f64() * 1e3).collect();
                median(&mut v)
            };
            let mut peaks: Vec<f64> = phases.iter().map(|p| p.peak_kib as f64 / 1024.0).collect();
            let spawn = ms(|p| p.spawn);
            let ask = ms(|p| p.ask);
            report.rows.push(vec![
                Value::Text(config.design.to_owned()),
                Value::Number(managers as f64, 0),
                Value::Text(stack_name.to_owned()),
                Value::Number(ms(Phases::total), 1),
                Value::Number(spawn, 1),
                Value::Number(ask, 1),
                Value::Number(ms(|p| p.shutdown), 1),
                Value::Number(spawn * 1e3 / managers as f64, 1),
                Value::Number(ask * 1e3 / managers as f64, 1),
                Value::Number(median(&mut peaks), 1),
                Value::Missing,
            ]);
        }
    }
    let mut hops: Vec<f64> = (0..runs)
        .map(|_| ring(ring_managers, ring_hops).as_nanos() as f64 / ring_hops as f64)
        .collect();
    report.rows.push(vec![
        Value::Text("ring-tell".to_owned()),
        Value::Number(ring_managers as f64, 0),
        Value::Text(STACKS[0].1.to_owned()),
        Value::Missing,
        Value::Missing,
        Value::Missing,
        Value::Missing,
        Value::Missing,
        Value::Missing,
        Value::Missing,
        Value::Number(median(&mut hops), 0),
    ]);
    if !settings.tiny {
        report.notes.push(format!(
            "futex-hash-16384: the child first sets its private futex hash to \
             {FUTEX_SLOTS} slots (prctl PR_FUTEX_HASH, Linux 6.16+; the kernel's \
             default follows the CPUs, 16 slots on 2)"
        ));
    }
    report.notes.push(format!(
        "ring: {ring_hops} hops a run; the same ring on kameo, ractor and actix: \
         `cargo run --release -p custody-frameworks -- --workload ring`"
    ));
    for message in failed {
        report.notes.push(format!("failed: {message}"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_the_child_line() {
        let phases = Phases {
            spawn: Duration::from_nanos(12),
            ask: Duration::from_nanos(34),
            shutdown: Duration::from_nanos(56),
            peak_kib: 789,
        };
        assert_eq!(Phases::parse(&phases.line()), Some(phases));
        assert_eq!(Phases::parse("spawn_ns=1"), None);
    }

    #[test]
    fn a_small_run_in_process() {
        let phases = spawn_ask_shutdown(20, None);
        assert!(phases.total() > Duration::ZERO);
        assert!(ring(5, 50) > Duration::ZERO);
    }

    #[test]
    fn child_flag_is_only_taken_first() {
        assert!(child_main(&["--tiny".to_owned()]).is_none());
        assert!(child_main(&[]).is_none());
    }
}
