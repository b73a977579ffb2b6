//! The `service` example (`examples/service/main.rs`) as a user runs it: a
//! child process serving a SQLite file over HTTP on loopback, driven by 64
//! concurrent clients (hyper's client), stopped by SIGTERM (or SIGINT, as
//! Ctrl-C sends) in the middle of the load. Every write answered `201` must be in the file under the id it
//! was answered with, every row must be a write that was sent, and the
//! process must exit 0.
//!
//! The example is built first (`cargo build --example service`, a no-op
//! when `cargo test` already built it), so that the binary tested is the
//! current one. Every wait is bounded: the test fails, never hangs.

#![cfg(unix)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use custody::resources::rusqlite::{Connection, OpenFlags};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Concurrent clients, each posting one event at a time.
const CLIENTS: usize = 64;
/// Events acknowledged before the signal is sent.
const ACKED_BEFORE_SIGNAL: u64 = 500;
/// At most this many events per client (a bound, never reached in a pass).
const MAX_PER_CLIENT: u64 = 5_000;
/// The bound on every wait of the test: the build aside, the service's
/// start, the load, one request, and the exit.
const WITHIN: Duration = Duration::from_secs(60);

/// The directory of the test's own profile (`target/debug`), where cargo
/// puts examples (`target/debug/examples`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/service-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_owned()
}

/// Builds the example with the test's own profile and returns its path.
fn build_example() -> PathBuf {
    let dir = profile_dir();
    let profile = dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a profile directory name")
        .to_owned();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--example",
        "service",
    ]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.status().expect("running cargo build");
    assert!(status.success(), "cargo build --example service: {status}");
    let binary = dir.join("examples").join("service");
    assert!(binary.exists(), "no example binary at {}", binary.display());
    binary
}

/// The service's process, killed if the test ends before it exited; its
/// stderr goes to a file, printed if the test fails.
struct Service {
    child: Child,
    exited: Option<ExitStatus>,
    stderr: PathBuf,
}

impl Service {
    fn start(db: &Path) -> (Service, SocketAddr) {
        let stderr = db.with_extension("stderr");
        let log = std::fs::File::create(&stderr).expect("creating the service's stderr log");
        let mut child = Command::new(build_example())
            .arg("--db")
            .arg(db)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting the service");
        let stdout = child.stdout.take().expect("the service's stdout");
        let service = Service {
            child,
            exited: None,
            stderr,
        };
        // Read the address on a thread of its own, so that a silent service
        // fails the test after WITHIN instead of hanging it.
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = found.send(addr.trim().to_owned());
                }
            }
        });
        let addr = address
            .recv_timeout(WITHIN)
            .expect("the service printed no `listening on` line");
        (service, addr.parse().expect("a socket address"))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal}: {status}");
    }

    /// Waits (at most WITHIN) for the process to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the service") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {WITHIN:?} of the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            eprintln!("--- the service's stderr ---\n{log}--- end ---");
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    /// Every key sent (answered or not).
    sent: Vec<String>,
    /// The keys answered `201`, with the id of the answer.
    acknowledged: Vec<(String, i64)>,
    /// Why the client stopped, if it stopped on a failure.
    ended_by: Option<String>,
}

/// Posts one event; `Ok(id)` only for a `201` with the event's key and an id.
async fn post_event(client: &HttpClient, url: &str, key: &str) -> Result<i64, String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "key": key, "body": "under load" }).to_string(),
        )))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| chain(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(WITHIN, exchange)
        .await
        .map_err(|_| format!("no answer within {WITHIN:?}"))??;
    if status != StatusCode::CREATED {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    assert_eq!(
        answer["key"], key,
        "the answer names another event: {answer}"
    );
    answer["id"]
        .as_i64()
        .ok_or_else(|| format!("201 without an id: {answer}"))
}

/// `GET url`, answered `200` with a JSON body.
async fn get_json(client: &HttpClient, url: &str) -> Value {
    let request = Request::builder()
        .uri(url)
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let exchange = async {
        let response = client.request(request).await.expect("GET");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a body");
        (status, body.to_bytes())
    };
    let (status, body) = tokio::time::timeout(WITHIN, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {WITHIN:?}"));
    assert_eq!(status, StatusCode::OK, "GET {url}");
    serde_json::from_slice(&body).expect("a JSON body")
}

/// The service before the load: no events, its database manager running.
async fn check_fresh(addr: SocketAddr) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let count = get_json(&client, &format!("http://{addr}/events/count")).await;
    assert_eq!(count, json!({ "count": 0 }), "GET /events/count");
    let stats = get_json(&client, &format!("http://{addr}/stats")).await;
    let managers = stats["managers"].as_array().expect("managers in /stats");
    assert!(
        managers
            .iter()
            .any(|m| m["name"] == "events" && m["state"] == "running"),
        "GET /stats: {stats}"
    );
    assert_eq!(
        stats["database"]["committed_writes"], 0,
        "GET /stats: {stats}"
    );
}

/// Runs the clients until each one fails (the service went away) and sends
/// `signal` once `ACKED_BEFORE_SIGNAL` events were acknowledged.
async fn load(addr: SocketAddr, service: &Service, signal: &str) -> (Vec<ClientLog>, bool) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/events");
    let acked = Arc::new(AtomicU64::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            let (acked, signalled) = (Arc::clone(&acked), Arc::clone(&signalled));
            tokio::spawn(async move {
                let mut log = ClientLog::default();
                for n in 0..MAX_PER_CLIENT {
                    let key = format!("client{c}-{n}");
                    log.sent.push(key.clone());
                    match post_event(&client, &url, &key).await {
                        Ok(id) => {
                            log.acknowledged.push((key, id));
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => {
                            // A request may fail once the signal was sent (its
                            // connection closed as idle, or refused), never
                            // before.
                            assert!(
                                signalled.load(Ordering::SeqCst),
                                "client {c}: a request failed before the signal: {error}"
                            );
                            log.ended_by = Some(error);
                            break;
                        }
                    }
                }
                log
            })
        })
        .collect();
    let deadline = Instant::now() + WITHIN;
    while acked.load(Ordering::SeqCst) < ACKED_BEFORE_SIGNAL {
        assert!(
            Instant::now() < deadline,
            "only {} events acknowledged within {WITHIN:?}",
            acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signalled.store(true, Ordering::SeqCst);
    service.signal(signal);
    let mut logs = Vec::with_capacity(CLIENTS);
    let mut all_running = true;
    for client in clients {
        let log = tokio::time::timeout(WITHIN, client)
            .await
            .expect("a client still running a minute after the signal")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        all_running &= log.ended_by.is_some();
        logs.push(log);
    }
    (logs, all_running)
}

/// Every row of the file: key to id.
fn rows(db: &Path) -> HashMap<String, i64> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the service's file");
    let mut select = conn
        .prepare("SELECT key, id FROM events")
        .expect("reading the events");
    select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("reading the events")
        .collect::<Result<_, _>>()
        .expect("reading the events")
}

/// Starts the service, loads it, sends `signal` (`TERM`, `INT`) mid-load,
/// and checks its exit and its file.
fn stop_mid_load(signal: &str) {
    let dir = std::env::temp_dir().join(format!(
        "custody-service-test-{}-{signal}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let db = dir.join("events.db");
    let (mut service, addr) = Service::start(&db);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    tokio.block_on(check_fresh(addr));
    let (logs, all_running) = tokio.block_on(load(addr, &service, signal));
    let status = service.wait();
    assert!(
        status.success(),
        "the service exited with {status} after SIG{signal}"
    );
    // The load went on until the service went away: every client stopped on
    // a failed request (not on its bound).
    assert!(
        all_running,
        "a client ran out of requests before SIG{signal}"
    );

    let stored = rows(&db);
    let sent: HashSet<&str> = logs
        .iter()
        .flat_map(|log| log.sent.iter().map(String::as_str))
        .collect();
    let mut acknowledged = 0;
    for (key, id) in logs.iter().flat_map(|log| &log.acknowledged) {
        acknowledged += 1;
        assert_eq!(
            stored.get(key),
            Some(id),
            "event {key} was acknowledged with id {id} but the file has {:?}",
            stored.get(key)
        );
    }
    for key in stored.keys() {
        assert!(sent.contains(key.as_str()), "row {key} was never sent");
    }
    assert!(
        acknowledged >= ACKED_BEFORE_SIGNAL,
        "{acknowledged} acknowledged"
    );
    eprintln!(
        "service test, SIG{signal}: {} sent, {acknowledged} acknowledged, {} rows \
         (the rest: refused or cut off by the shutdown)",
        sent.len(),
        stored.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_mid_load_keeps_every_acknowledged_write() {
    stop_mid_load("TERM");
}

#[test]
fn ctrl_c_mid_load_keeps_every_acknowledged_write() {
    stop_mid_load("INT");
}
