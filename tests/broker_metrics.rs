//! A manager served from a RabbitMQ queue (features `amqp` and `metrics`)
//! exports its queue's counters through the `metrics` facade, read back
//! from a recorder of the test's own. Needs a broker; fails without one.

#![cfg(all(feature = "amqp", feature = "metrics"))]

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Queues, builder, connect, within};
use custody::{Context, Manager, Runtime};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde::{Deserialize, Serialize};

/// Counters by (name, manager label); gauges and histograms ignored.
#[derive(Default)]
struct Counters(Mutex<HashMap<(String, String), Arc<Cell>>>);

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Recorder for &'static Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let manager = key
            .labels()
            .find(|l| l.key() == "manager")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        let mut all = self.0.lock().unwrap();
        Counter::from_arc(Arc::clone(
            all.entry((key.name().to_owned(), manager)).or_default(),
        ))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(counters).expect("the only recorder");
        counters
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Job(u64);

struct Sink;

impl Manager for Sink {
    type Msg = Job;
    fn handle(&mut self, _job: Job, _ctx: &mut Context<'_, Job>) {}
}

#[test]
fn a_manager_served_from_a_queue_exports_the_queue_counters() {
    within(|| {
        let counters = counters();
        let queues = Queues::new("metrics");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner.serve(&rt, &queues.name, Sink).unwrap();
        let name = served.handle().name().to_owned();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 50;
        for n in 0..N {
            jobs.tell(Job(n)).unwrap();
        }
        jobs.join().unwrap();
        let get = |series: &str| {
            counters
                .0
                .lock()
                .unwrap()
                .get(&(series.to_owned(), name.clone()))
                .map(|c| c.0.load(Ordering::Relaxed))
        };
        // The acks trail the join by a moment, and the export by a round.
        let deadline = Instant::now() + Duration::from_secs(50);
        while get("custody_queue_acked_total") != Some(N) {
            assert!(
                Instant::now() < deadline,
                "acked never reached {N}: {:?}",
                get("custody_queue_acked_total")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let queue = served
            .handle()
            .stats()
            .outside
            .expect("served from a queue");
        assert_eq!(get("custody_queue_delivered_total"), Some(queue.delivered));
        assert_eq!(queue.delivered, N);
        assert_eq!(get("custody_queue_redelivered_total"), Some(0));
        assert_eq!(get("custody_queue_dead_lettered_total"), Some(0));
        assert_eq!(get("custody_messages_handled_total"), Some(N));
        served.stop();
    });
}
