//! A demo workload for the observing examples (`prometheus`, `top`): a few
//! managers with different troubles, fed by producer threads until stopped.
//!
//! - `orders`: quick, busy (about 2000 messages a second);
//! - `db`: a few milliseconds per message, and now and then a long call
//!   that the watch reports stalled;
//! - `flaky`: panics on one message in 50, restarted from its factory;
//! - `mailer`: slower than its arrivals, so its mailbox grows;
//! - `bounded`: a mailbox of 8, some sends refused.
//!
//! Not an example of its own: Cargo picks up `examples/*.rs` and
//! `examples/*/main.rs` only.

// Each example uses only some of these.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use custody::{Capacity, PanicPolicy, Runtime};

/// The running demo: its runtime and the producer threads.
pub struct Demo {
    pub rt: Runtime,
    stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<()>>,
}

/// Starts the demo workload.
pub fn start() -> Result<Demo, Box<dyn std::error::Error>> {
    let rt = Runtime::builder()
        .stall_after(Duration::from_millis(200))
        .growth_window(Duration::from_secs(1))
        .build()?;
    let orders = rt.own("orders", 0u64)?;
    let db = rt.own("db", 0u64)?;
    let flaky = rt
        .manager("flaky")
        .on_panic(PanicPolicy::Restart {
            max_restarts: 1_000_000,
            within: Duration::from_secs(1),
        })
        .own_with(|| 0u64)?;
    let mailer = rt.own("mailer", 0u64)?;
    let bounded = rt
        .manager("bounded")
        .capacity(Capacity::bounded(8)?)
        .own(0u64)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    let every = |period: Duration, mut send: Box<dyn FnMut(u64) + Send>| {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                send(i);
                i += 1;
                thread::sleep(period);
            }
        })
    };
    producers.push(every(
        Duration::from_micros(500),
        Box::new(move |_| {
            let _ = orders.cast(|n| *n += 1);
        }),
    ));
    producers.push(every(
        Duration::from_millis(4),
        Box::new(move |i| {
            let pause = if i % 150 == 149 { 400 } else { 1 + i % 3 };
            let _ = db.cast(move |n| {
                thread::sleep(Duration::from_millis(pause));
                *n += 1;
            });
        }),
    ));
    producers.push(every(
        Duration::from_millis(2),
        Box::new(move |i| {
            let _ = flaky.cast(move |n| {
                assert!(i % 50 != 49, "flaky: message {i}");
                *n += 1;
            });
        }),
    ));
    producers.push(every(
        Duration::from_millis(3),
        Box::new(move |_| {
            let _ = mailer.cast(|n| {
                thread::sleep(Duration::from_millis(5));
                *n += 1;
            });
        }),
    ));
    producers.push(every(
        Duration::from_millis(1),
        Box::new(move |_| {
            let _ = bounded.handle().try_tell(custody::Job::new(|n: &mut u64| {
                thread::sleep(Duration::from_millis(2));
                *n += 1;
            }));
        }),
    ));
    Ok(Demo {
        rt,
        stop,
        producers,
    })
}

impl Demo {
    /// Stops the producers (the runtime keeps running).
    pub fn stop_producers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for p in self.producers.drain(..) {
            let _ = p.join();
        }
    }
}

/// Quiets the panic messages of `flaky` (they are the point of it).
pub fn quiet_flaky_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let flaky = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|s| s.starts_with("flaky:"));
        if !flaky {
            default(info);
        }
    }));
}

/// `--seconds N` from the command line, or `default`.
pub fn seconds_arg(default: f64) -> Result<Duration, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().position(|a| a == "--seconds") {
        None => Ok(Duration::from_secs_f64(default)),
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| "usage: --seconds N (a number of seconds)".to_owned()),
    }
}
