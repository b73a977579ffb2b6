//! A real SIGINT, sent from outside to the `graceful` example mid-ingest:
//! every acknowledged row is in the file afterwards.
#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use custody::resources::rusqlite::Connection;

use crate::support::example;

#[test]
fn sigint_mid_ingest_loses_no_acknowledged_row() {
    let db = std::env::temp_dir().join(format!("custody-sigint-test-{}.db", std::process::id()));
    let mut child = Command::new(example("graceful"))
        .args(["--db", db.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the graceful example");

    // Wait until it has ingested something, then interrupt it from outside.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ingested ") {
                let rows: u64 = n.trim_end_matches(" rows").parse().unwrap_or(0);
                if rows > 0 {
                    let _ = seen_tx.send(rows);
                }
            }
        }
    });
    let ingested = seen_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the example reported progress");
    assert!(ingested > 0);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the example did not exit within 60 s of SIGINT");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(
        status.success(),
        "the example failed its own check:\n{stdout}"
    );

    let field = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line in:\n{stdout}"))
            .to_owned()
    };
    let acknowledged: u64 = field("acknowledged=").parse().unwrap();
    assert_eq!(PathBuf::from(field("database=")), db);
    let conn = Connection::open(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
        .unwrap();
    // Each writer's sequence numbers are contiguous from 0: no gap, no loss.
    let gaps: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT writer, max(seq) + 1 - count(*) AS gap FROM rows GROUP BY writer) WHERE gap != 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    assert!(acknowledged >= ingested);
    assert_eq!(
        rows as u64, acknowledged,
        "rows in the file vs acknowledged writes"
    );
    assert_eq!(gaps, 0, "a writer's acknowledged rows have a gap");
}
