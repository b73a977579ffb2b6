//! A hot standby takes over from an owner process that is SIGKILLed.

use super::*;

/// The environment variable that makes `owner_process_for_the_kill_test` act.
const CHILD_VAR: &str = "CUSTODY_BROKER_TEST_OWNER";

/// Handles one job every 2 ms and prints its number, for the parent to read.
struct Announcer;

impl Manager for Announcer {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(2));
        if let Job::Work(n) = job {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "handled {n}");
            let _ = out.flush();
        }
    }
}

/// Not a scenario of its own: the owner process that
/// `a_hot_standby_takes_over_when_the_owner_is_killed` starts and kills.
/// Started by anything else, it returns at once.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn owner_process_for_the_kill_test() {
    let Ok(name) = std::env::var(CHILD_VAR) else {
        return;
    };
    let rt = Runtime::new();
    let broker = connect(builder().prefetch(8));
    let served = broker.serve(&rt, &name, Announcer).unwrap();
    // On a line of its own: the harness has printed "test ... " before it.
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

#[test]
fn a_hot_standby_takes_over_when_the_owner_is_killed() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(|| {
        let queues = Queues::new("kill");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 150;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "kill::owner_process_for_the_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, &queues.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let (lines_tx, lines) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut by_child = Vec::new();
        let mut serving = false;
        // The child is the active owner; start the standby once it serves.
        while !serving {
            let line = lines.recv().expect("the child process ended early");
            if line == "serving" {
                serving = true;
            } else if let Some(n) = line.strip_prefix("handled ") {
                by_child.push(n.parse::<u64>().unwrap());
            }
        }
        let log = Arc::new(Mutex::new(Log::default()));
        let standby_count = Arc::new(AtomicU64::new(0));
        let rt = Runtime::new();
        let standby = connect(builder());
        let served = standby
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&standby_count)),
            )
            .unwrap();
        while by_child.len() < 20 {
            let line = lines.recv().expect("the child process ended early");
            if let Some(n) = line.strip_prefix("handled ") {
                by_child.push(n.parse::<u64>().unwrap());
            }
        }
        assert_eq!(
            standby_count.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
        let killed = Instant::now();
        child.0.kill().unwrap(); // SIGKILL: no goodbye to the broker
        child.0.wait().unwrap();
        while standby_count.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        eprintln!(
            "the standby handled its first message {:?} after the kill",
            killed.elapsed()
        );
        reader.join().unwrap();
        by_child.extend(lines.try_iter().filter_map(|l| {
            l.strip_prefix("handled ")
                .map(|n| n.parse::<u64>().unwrap())
        }));
        jobs.join().unwrap();
        let by_standby = handled(&log);
        // The child handled a prefix in order; the standby took over where
        // the child's last acknowledgement ended (so it may handle again what
        // the child handled but had not acknowledged), in order, to the end.
        assert_eq!(by_child, (0..by_child.len() as u64).collect::<Vec<_>>());
        let first = by_standby[0];
        assert!(
            first <= by_child.len() as u64,
            "a gap: {first} after {}",
            by_child.len()
        );
        assert_eq!(by_standby, (first..N).collect::<Vec<_>>());
        served.stop();
        drop(child);
        drop(queues);
    });
}
