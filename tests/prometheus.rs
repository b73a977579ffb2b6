//! The Prometheus exporter scraped over HTTP (a plain GET on a TCP stream)
//! while a workload runs: every series is there, and the counters are those
//! of `rt.stats()`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use custody::{Capacity, Job, PanicPolicy, Runtime};
use metrics_exporter_prometheus::PrometheusBuilder;

fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("the exporter listens");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// `name{manager="m"} value` lines, by (name, manager); histograms' and
/// summaries' lines keep their suffix (`_count`, `_sum`) and quantile.
fn samples(body: &str) -> HashMap<(String, String), f64> {
    body.lines()
        .filter(|l| l.starts_with("custody_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{')?;
            let manager = labels.split("manager=\"").nth(1)?.split('"').next()?;
            let name = match labels.split("quantile=\"").nth(1) {
                Some(q) => format!("{name}@{}", q.split('"').next()?),
                None => name.to_owned(),
            };
            Some(((name, manager.to_owned()), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_exporter_serves_every_series_with_the_counts_of_stats() {
    let (done, finished) = mpsc::channel();
    let worker = thread::spawn(move || {
        scenario();
        let _ = done.send(());
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after 60 s"),
        Err(_) => std::panic::resume_unwind(worker.join().unwrap_err()),
    }
}

fn scenario() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|s| s.starts_with("scraped:"))
        {
            default_hook(info);
        }
    }));
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("the exporter starts");
    let rt = Runtime::new();
    let orders = rt.own("orders", 0u64).unwrap();
    let flaky = rt
        .manager("flaky")
        .on_panic(PanicPolicy::Restart {
            max_restarts: 100,
            within: Duration::from_secs(60),
        })
        .own_with(|| 0u64)
        .unwrap();
    let bounded = rt
        .manager("bounded")
        .capacity(Capacity::bounded(1).unwrap())
        .own(())
        .unwrap();
    // A workload from a few threads.
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let orders = orders.clone();
            thread::spawn(move || {
                for _ in 0..1000 {
                    orders.cast(|n| *n += 1).unwrap();
                }
            })
        })
        .collect();
    for i in 0..40u64 {
        flaky
            .cast(move |n| {
                assert!(i % 10 != 9, "scraped: every tenth panics");
                *n += 1;
            })
            .unwrap();
    }
    let (go, wait) = mpsc::channel::<()>();
    let (inside, is_inside) = mpsc::channel::<()>();
    bounded
        .cast(move |_| {
            inside.send(()).unwrap();
            let _ = wait.recv();
        })
        .unwrap();
    is_inside.recv().unwrap();
    bounded.cast(|_| {}).unwrap();
    for _ in 0..3 {
        assert!(
            bounded
                .handle()
                .try_tell(Job::new(|_: &mut ()| {}))
                .is_err()
        );
    }
    // Served while the workload runs.
    scrape(addr);
    for s in senders {
        s.join().unwrap();
    }
    orders.join().unwrap();
    flaky.join().unwrap();
    // ... and until the exporter has the counts of `stats`.
    let stats = rt.stats();
    let deadline = Instant::now() + Duration::from_secs(50);
    let matches = |seen: &HashMap<(String, String), f64>| {
        ["orders", "flaky", "bounded"].iter().all(|name| {
            let m = stats.get(name).unwrap();
            let get = |series: &str| seen.get(&(series.to_owned(), (*name).to_owned())).copied();
            get("custody_messages_handled_total") == Some(m.handled as f64)
                && get("custody_panics_total") == Some(m.panicked as f64)
                && get("custody_restarts_total") == Some(m.restarts as f64)
                && get("custody_messages_refused_total") == Some(m.refused as f64)
                && get("custody_mailbox_depth") == Some(m.queued as f64)
                && get("custody_service_seconds_count") == m.service.map(|p| p.samples as f64)
        })
    };
    let seen = loop {
        let seen = samples(&scrape(addr));
        if matches(&seen) {
            break seen;
        }
        assert!(Instant::now() < deadline, "never matched {stats}: {seen:?}");
        thread::sleep(Duration::from_millis(20));
    };
    let get = |series: &str, name: &str| seen.get(&(series.to_owned(), name.to_owned())).copied();
    assert_eq!(
        get("custody_messages_handled_total", "orders"),
        Some(3000.0)
    );
    assert_eq!(get("custody_panics_total", "flaky"), Some(4.0));
    assert_eq!(get("custody_restarts_total", "flaky"), Some(4.0));
    assert_eq!(get("custody_messages_refused_total", "bounded"), Some(3.0));
    assert_eq!(get("custody_mailbox_depth", "bounded"), Some(1.0));
    assert_eq!(get("custody_stalled", "orders"), Some(0.0));
    assert_eq!(get("custody_mailbox_growing", "orders"), Some(0.0));
    // Sampled histograms (summaries in Prometheus's text format).
    let timed = get("custody_service_seconds_count", "orders").expect("service times");
    assert_eq!(timed, (3000 / 16) as f64, "one message in 16 is timed");
    assert!(get("custody_service_seconds@0.5", "orders").is_some());
    assert!(get("custody_mailbox_wait_seconds_count", "orders").is_some_and(|n| n >= 1.0));
    go.send(()).unwrap();
    rt.shutdown();
}

/// `examples/prometheus.rs` itself, run as a child process: it serves
/// `/metrics`, the test scrapes it while the workload runs, and the example
/// ends by itself once its own last scrape agrees with its `rt.stats()`.
#[test]
fn the_example_serves_the_series_while_its_workload_runs() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("prometheus");
    assert!(
        example.exists(),
        "{} is missing: `cargo test --features metrics` builds it",
        example.display()
    );
    let mut child = Command::new(&example)
        .args(["--seconds", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let addr: SocketAddr = first
        .strip_prefix("serving http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    // Scraped while the workload runs: every demo manager shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = samples(&scrape(addr));
        let all = ["orders", "db", "flaky", "mailer", "bounded"]
            .iter()
            .all(|name| {
                seen.contains_key(&(
                    "custody_messages_handled_total".to_owned(),
                    (*name).to_owned(),
                ))
            });
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every manager within 30 s: {seen:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest:#?}");
    assert!(
        rest.iter().any(|l| l == "/metrics agrees with rt.stats()"),
        "{rest:#?}"
    );
}
