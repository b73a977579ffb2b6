//! `tell`, `ask` and `join` between two processes.

use super::*;
use crate::ask::Sum;

/// The environment variable that makes `calc_owner_process` serve.
const CALC_CHILD_VAR: &str = "CUSTODY_BROKER_TEST_CALC_OWNER";

/// Not a scenario of its own: the owner process of
/// `tell_ask_join_and_ask_timeout_between_two_processes`. Started by anything
/// else, it returns at once.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn calc_owner_process() {
    let Ok(name) = std::env::var(CALC_CHILD_VAR) else {
        return;
    };
    let rt = Runtime::new();
    let broker = connect(builder());
    let served = broker.serve(&rt, &name, Sum::default()).unwrap();
    println!("\nserving");
    // Killed by the parent long before this; never outlive a failed parent.
    std::thread::sleep(Duration::from_secs(60));
    drop(served);
}

#[test]
fn tell_ask_join_and_ask_timeout_between_two_processes() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    within(|| {
        let queues = Queues::new("procs");
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "processes::calc_owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CALC_CHILD_VAR, &queues.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let serving = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "serving");
        assert!(serving, "the owner process ended before serving");

        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        calc.tell_all((1..=20).map(Calc::Add)).unwrap();
        calc.tell(Calc::Add(1)).unwrap();
        calc.join().unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 211);
        assert_eq!(
            calc.ask_timeout(Calc::Total, Duration::from_secs(10))
                .unwrap(),
            211
        );
        // The owner keeps this reply and never answers: the deadline ends it.
        let started = Instant::now();
        let err = calc
            .ask_timeout(Calc::Hold, Duration::from_millis(300))
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(child);
        drop(calc);
        drop(queues);
    });
}
