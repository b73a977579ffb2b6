//! What the broker test binaries share: the broker's address, a connection
//! that fails the test (never skips it) when no broker answers, queue names
//! no other run uses, and a guard that deletes a test's queues.

// Each test binary uses its own subset of these.
#![allow(dead_code)]

pub mod proxy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use custody::Backend;
use custody::broker::{Broker, BrokerBuilder};

/// Runs `f` on a thread of its own and fails the test, naming `what`, if it
/// takes longer than `limit` (a hang becomes a failure).
pub fn within_limit<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: the scenario did not finish within {limit:?}"),
    }
}

/// The bound on one scenario, unless a test names its own.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own and fails the test if it takes longer
/// than [`SCENARIO_LIMIT`].
pub fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within_limit(SCENARIO_LIMIT, "scenario", f)
}

/// Prints custody's log lines at the level named in the environment
/// variable `var` (`debug`, `info`, ...), if it is set.
pub fn log_from(var: &str) {
    use tracing_subscriber::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    let Some(level) = std::env::var(var)
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
    else {
        return;
    };
    ONCE.call_once(|| {
        let filter = tracing_subscriber::filter::Targets::new().with_target("custody", level);
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .try_init();
    });
}

/// Runs the scenario once per backend, each bounded by `limit`.
pub fn per_backend_within(
    limit: Duration,
    what: &'static str,
    scenario: impl Fn(Backend) + Send + Sync + Clone + 'static,
) {
    for backend in Backend::ALL {
        let scenario = scenario.clone();
        within_limit(limit, &format!("{what} ({})", backend.name()), move || {
            scenario(backend)
        });
    }
}

/// `CUSTODY_AMQP_URL`, or the machine's broker.
pub fn url() -> String {
    std::env::var("CUSTODY_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| custody::broker::DEFAULT_URL.to_owned())
}

pub fn builder() -> BrokerBuilder {
    Broker::builder(url())
}

/// Connects, or fails the test: the broker tests need a broker.
pub fn connect(b: BrokerBuilder) -> Broker {
    b.connect().unwrap_or_else(|e| {
        panic!("the broker tests need a reachable RabbitMQ broker (CUSTODY_AMQP_URL): {e}")
    })
}

/// A manager name no other test run uses.
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "test.{label}.{}.{}.{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// For a proxy of a test's own listening on `port`: the broker's `host:port`
/// to forward to, and `url` with its authority replaced by the proxy's.
pub fn through_proxy(url: &str, port: u16) -> (String, String) {
    let scheme_end = url.find("://").expect("an amqp:// url") + 3;
    let authority_start = url[scheme_end..]
        .find('@')
        .map_or(scheme_end, |at| scheme_end + at + 1);
    let authority_end = url[authority_start..]
        .find(['/', '?'])
        .map_or(url.len(), |end| authority_start + end);
    let mut upstream = url[authority_start..authority_end].to_owned();
    if !upstream.contains(':') {
        upstream.push_str(":5672");
    }
    let proxied = format!(
        "{}127.0.0.1:{port}{}",
        &url[..authority_start],
        &url[authority_end..]
    );
    (upstream, proxied)
}

/// Deletes the queues of a manager name when dropped, pass or fail.
pub struct Queues {
    pub broker: Broker,
    pub name: String,
}

impl Queues {
    pub fn new(label: &str) -> Queues {
        Queues {
            broker: connect(builder()),
            name: unique_name(label),
        }
    }

    /// The queue the manager is served from.
    pub fn queue(&self) -> String {
        format!("custody.{}", self.name)
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        if let Err(e) = self.broker.delete_queues(&self.name) {
            eprintln!("could not delete the queues of {}: {e}", self.name);
        }
    }
}
