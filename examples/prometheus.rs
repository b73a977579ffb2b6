//! Point Prometheus at a running runtime: the `metrics` feature's series,
//! served by `metrics-exporter-prometheus` on loopback while a demo
//! workload runs, for `--seconds N` (default 2).
//!
//! ```text
//! cargo run --features metrics --example prometheus -- --seconds 60
//! curl -s http://127.0.0.1:<port>/metrics | grep custody_
//! ```
//!
//! A Prometheus `scrape_configs` entry for it:
//!
//! ```text
//! - job_name: custody-demo
//!   static_configs:
//!     - targets: ["127.0.0.1:<port>"]
//! ```

mod demo;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prometheus: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = demo::seconds_arg(2.0)?;
    demo::quiet_flaky_panics();
    // A free port on loopback (the exporter does not say which one it got).
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    println!("serving http://{addr}/metrics for {seconds:?}");
    let mut demo = demo::start()?;
    thread::sleep(seconds);
    demo.stop_producers();
    // Stop at once (what is queued is discarded, and counted): a demo need
    // not drain. Then the exporter catches up with the final counts.
    demo.rt.shutdown_now();
    let stats = demo.rt.stats();
    let deadline = Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        let scraped = scrape(addr)?;
        let agrees = stats.managers.iter().all(|m| {
            let line = format!(
                "custody_messages_handled_total{{manager=\"{}\"}} {}",
                m.name, m.handled
            );
            scraped.lines().any(|l| l == line)
        });
        if agrees {
            break scraped;
        }
        if Instant::now() > deadline {
            return Err(
                format!("/metrics never agreed with the stats:\n{scraped}\n{stats}").into(),
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    for line in scraped
        .lines()
        .filter(|l| l.starts_with("custody_messages_handled_total"))
    {
        println!("{line}");
    }
    println!("{stats}");
    println!("/metrics agrees with rt.stats()");
    Ok(())
}

/// One GET of `/metrics`, with nothing but the standard library.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
