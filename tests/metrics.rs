//! The `metrics` facade (feature `metrics`): every series of a manager
//! reaches a recorder installed after the runtime started, with the values
//! `rt.stats()` gives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use custody::{Capacity, Runtime};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// One series' value: a counter's, a gauge's (as f64 bits), or the values
/// a histogram recorded.
#[derive(Default)]
struct Cell {
    value: AtomicU64,
    recorded: Mutex<Vec<f64>>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.value.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.value.load(Ordering::Relaxed)) - value);
    }
    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.recorded.lock().unwrap().push(value);
    }
}

/// A recorder that keeps every series by name and `manager` label.
#[derive(Default)]
struct Memory {
    series: Mutex<HashMap<(String, String), Arc<Cell>>>,
    described: Mutex<Vec<String>>,
}

impl Memory {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let manager = key
            .labels()
            .find(|l| l.key() == "manager")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        let mut series = self.series.lock().unwrap();
        Arc::clone(series.entry((key.name().to_owned(), manager)).or_default())
    }

    fn get(&self, name: &str, manager: &str) -> Option<Arc<Cell>> {
        self.series
            .lock()
            .unwrap()
            .get(&(name.to_owned(), manager.to_owned()))
            .cloned()
    }

    fn counter(&self, name: &str, manager: &str) -> Option<u64> {
        self.get(name, manager)
            .map(|c| c.value.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str, manager: &str) -> Option<f64> {
        self.get(name, manager)
            .map(|c| f64::from_bits(c.value.load(Ordering::Relaxed)))
    }

    fn recorded(&self, name: &str, manager: &str) -> Vec<f64> {
        self.get(name, manager)
            .map(|c| c.recorded.lock().unwrap().clone())
            .unwrap_or_default()
    }
}

impl Recorder for &'static Memory {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, _d: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, _d: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, _d: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_owned());
    }
    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

static MEMORY: OnceLock<&'static Memory> = OnceLock::new();

/// Installs the recorder (once per process).
fn install() -> &'static Memory {
    MEMORY.get_or_init(|| {
        let memory: &'static Memory = Box::leak(Box::default());
        metrics::set_global_recorder(memory).expect("the only recorder");
        memory
    })
}

/// Polls until `check` holds; fails the test after 60 s instead of hanging.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 60 s"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_recorder_installed_after_the_runtime_started_gets_every_series() {
    let rt = Runtime::builder()
        .stall_after(Duration::from_millis(20))
        .build()
        .unwrap();
    let counter = rt.own("late-counter", 0u64).unwrap();
    for _ in 0..100 {
        counter.cast(|n| *n += 1).unwrap();
    }
    counter.join().unwrap();
    let fragile = rt.own("late-fragile", ()).unwrap();
    let _ = fragile.call(|_| -> () { panic!("counted") });
    fragile.join().unwrap();
    let bounded = rt
        .manager("late-bounded")
        .capacity(Capacity::bounded(1).unwrap())
        .own(())
        .unwrap();
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
    assert!(
        bounded
            .handle()
            .try_tell(custody::Job::new(|_: &mut ()| {}))
            .is_err()
    );

    // Only now is a recorder installed.
    let memory = install();
    eventually("the handled counter", || {
        memory.counter("custody_messages_handled_total", "late-counter") == Some(100)
    });
    eventually("the stall", || {
        memory.gauge("custody_stalled", "late-bounded") == Some(1.0)
    });
    let stats = rt.stats();
    let m = stats.get("late-counter").unwrap();
    assert_eq!(
        memory.counter("custody_messages_handled_total", "late-counter"),
        Some(m.handled)
    );
    assert_eq!(
        memory.gauge("custody_mailbox_depth", "late-counter"),
        Some(0.0)
    );
    assert_eq!(
        memory.counter("custody_panics_total", "late-fragile"),
        Some(1)
    );
    assert_eq!(
        memory.counter("custody_restarts_total", "late-fragile"),
        Some(0)
    );
    let b = stats.get("late-bounded").unwrap();
    assert_eq!(b.refused, 1);
    eventually("the refused counter and depth", || {
        memory.counter("custody_messages_refused_total", "late-bounded") == Some(1)
            && memory.gauge("custody_mailbox_depth", "late-bounded") == Some(1.0)
    });
    for name in [
        "custody_mailbox_depth",
        "custody_messages_handled_total",
        "custody_service_seconds",
        "custody_mailbox_wait_seconds",
    ] {
        assert!(
            memory.described.lock().unwrap().iter().any(|d| d == name),
            "{name}"
        );
    }
    go.send(()).unwrap();
    bounded.join().unwrap();
    eventually("the stall cleared", || {
        memory.gauge("custody_stalled", "late-bounded") == Some(0.0)
    });
    rt.shutdown();
}

#[test]
fn service_and_wait_times_are_recorded_as_histograms() {
    let memory = install();
    let rt = Runtime::new();
    let slow = rt.own("timed", ()).unwrap();
    // From this thread: one send in 64 samples the wait.
    for _ in 0..256 {
        slow.cast(|_| thread::sleep(Duration::from_micros(200)))
            .unwrap();
    }
    slow.join().unwrap();
    let stats = slow.handle().stats();
    let (timed, waited) = (stats.service.unwrap(), stats.wait.expect("a wait sampled"));
    assert_eq!(timed.samples, 256 / 16, "one message in 16 is timed");
    // The watch thread forwards the runtime's histograms on its next round.
    eventually("the histograms", || {
        memory.recorded("custody_service_seconds", "timed").len() as u64 == timed.samples
            && memory
                .recorded("custody_mailbox_wait_seconds", "timed")
                .len() as u64
                == waited.samples
    });
    let service = memory.recorded("custody_service_seconds", "timed");
    // Each slept 200 us; a value is forwarded as its bucket's middle (within 1/8).
    assert!(service.iter().all(|&s| s >= 175e-6), "{service:?}");
    let wait = memory.recorded("custody_mailbox_wait_seconds", "timed");
    // Each sampled message waited behind the ones before it.
    assert!(wait.iter().all(|&w| w > 0.0), "{wait:?}");
    rt.shutdown();
}

#[test]
fn a_runtime_with_metrics_off_exports_nothing() {
    let memory = install();
    let rt = Runtime::builder().metrics(false).build().unwrap();
    let quiet = rt.own("quiet", 0u64).unwrap();
    for _ in 0..64 {
        quiet.cast(|n| *n += 1).unwrap();
    }
    quiet.join().unwrap();
    // A runtime with metrics on, spawned after: once it shows, the watch
    // of the quiet one has had its rounds too.
    let loud_rt = Runtime::new();
    let loud = loud_rt.own("loud", 0u64).unwrap();
    loud.cast(|n| *n += 1).unwrap();
    loud.join().unwrap();
    eventually("the loud runtime's series", || {
        memory.counter("custody_messages_handled_total", "loud") == Some(1)
    });
    thread::sleep(Duration::from_millis(300)); // more than a round of the quiet watch
    assert_eq!(
        memory
            .get("custody_messages_handled_total", "quiet")
            .map(|_| ()),
        None
    );
    assert!(
        memory
            .recorded("custody_service_seconds", "quiet")
            .is_empty()
    );
}

#[test]
fn a_sampled_wait_covers_the_time_a_message_spent_queued() {
    install();
    let rt = Runtime::new();
    let h = rt.own("queued", ()).unwrap();
    let (go, wait) = mpsc::channel::<()>();
    let (inside, is_inside) = mpsc::channel::<()>();
    h.cast(move |_| {
        inside.send(()).unwrap();
        let _ = wait.recv();
    })
    .unwrap();
    is_inside.recv().unwrap();
    // From a thread of its own, so that its 64th send takes the ticket.
    let sender = h.clone();
    thread::spawn(move || {
        for _ in 0..64 {
            sender.cast(|_| {}).unwrap();
        }
    })
    .join()
    .unwrap();
    let queued_for = Duration::from_millis(40);
    thread::sleep(queued_for);
    go.send(()).unwrap();
    h.join().unwrap();
    let waited = h.handle().stats().wait.expect("the 64th send was sampled");
    assert_eq!(waited.samples, 1);
    // At least the time it sat behind the blocked message (a bucket's
    // middle is within 1/8 of the value).
    assert!(waited.max >= queued_for * 7 / 8, "{waited:?}");
    rt.shutdown();
}
