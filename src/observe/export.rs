//! The `metrics` facade (feature `metrics`): every series is looked up
//! through the facade each time it is set or recorded, and no handle is
//! kept, so a recorder installed after the runtime started receives every
//! series (the counters with their counts since the start).

use std::sync::Arc;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use super::Observed;
use super::histogram::Histogram;
use crate::stats::ManagerStats;

/// Sets the counters and gauges of one manager from its stats (on the
/// watch thread).
pub(crate) fn manager(observed: &Observed, stats: &ManagerStats) {
    describe();
    let name = &observed.label;
    let label = || Arc::clone(name);
    gauge!("custody_mailbox_depth", "manager" => label()).set(stats.queued as f64);
    counter!("custody_messages_handled_total", "manager" => label()).absolute(stats.handled);
    counter!("custody_panics_total", "manager" => label()).absolute(stats.panicked);
    counter!("custody_restarts_total", "manager" => label()).absolute(stats.restarts);
    counter!("custody_messages_refused_total", "manager" => label()).absolute(stats.refused);
    let stalled = observed.stalled(stats.handled).is_some();
    gauge!("custody_stalled", "manager" => label()).set(if stalled { 1.0 } else { 0.0 });
    let growing = stats.growing.is_some();
    gauge!("custody_mailbox_growing", "manager" => label()).set(if growing { 1.0 } else { 0.0 });
    histograms(observed);
    if let Some(queue) = stats.outside {
        counter!("custody_queue_delivered_total", "manager" => label()).absolute(queue.delivered);
        counter!("custody_queue_redelivered_total", "manager" => label())
            .absolute(queue.redelivered);
        counter!("custody_queue_acked_total", "manager" => label()).absolute(queue.acked);
        counter!("custody_queue_dead_lettered_total", "manager" => label())
            .absolute(queue.dead_lettered);
    }
}

/// Forwards what a manager's histograms gained since the last round.
fn histograms(observed: &Observed) {
    let mut exported = observed
        .exported
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (service_then, wait_then) = &mut *exported;
    for (name, histogram, then) in [
        (
            "custody_service_seconds",
            &observed.times.service,
            service_then,
        ),
        (
            "custody_mailbox_wait_seconds",
            &observed.times.wait,
            wait_then,
        ),
    ] {
        let now = histogram.counts();
        then.resize(now.len(), 0);
        if now == *then {
            continue;
        }
        let series = histogram!(name, "manager" => Arc::clone(&observed.label));
        for (i, (&count, before)) in now.iter().zip(then.iter()).enumerate() {
            if count > *before {
                let value = Histogram::bucket_value(i).as_secs_f64();
                series.record_many(value, usize::try_from(count - before).unwrap_or(usize::MAX));
            }
        }
        *then = now;
    }
}

/// Describes every series (to whichever recorder is installed now).
fn describe() {
    describe_gauge!("custody_mailbox_depth", "messages waiting in the mailbox");
    describe_counter!(
        "custody_messages_handled_total",
        "messages handled, panicked ones included"
    );
    describe_counter!(
        "custody_panics_total",
        "panics caught in handlers and hooks"
    );
    describe_counter!(
        "custody_restarts_total",
        "restarts from the factory after a panic"
    );
    describe_counter!(
        "custody_messages_refused_total",
        "sends refused (stopped, full, timed out, deadlock)"
    );
    describe_gauge!(
        "custody_stalled",
        "1 while the current message has run past the stall threshold"
    );
    describe_gauge!(
        "custody_mailbox_growing",
        "1 while the mailbox has been growing for a whole window"
    );
    describe_histogram!(
        "custody_service_seconds",
        Unit::Seconds,
        "time in handle, sampled"
    );
    describe_histogram!(
        "custody_mailbox_wait_seconds",
        Unit::Seconds,
        "time from send to handle, sampled"
    );
    describe_counter!(
        "custody_queue_delivered_total",
        "deliveries received from the broker queue"
    );
    describe_counter!(
        "custody_queue_redelivered_total",
        "deliveries marked redelivered by the broker"
    );
    describe_counter!(
        "custody_queue_acked_total",
        "deliveries acknowledged after their batch"
    );
    describe_counter!(
        "custody_queue_dead_lettered_total",
        "deliveries moved to the dead-letter queue"
    );
}

#[cfg(test)]
mod tests {
    //! A manager served from an outside queue (a broker queue, feature
    //! `amqp`) adds the queue's counters; a fake settler stands for the
    //! broker here, and a recorder of the test's own reads the series.

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    };

    use crate::mailbox::SettleOutside;
    use crate::{Context, Manager, OutsideStats, Runtime};

    #[derive(Default)]
    struct Counters(Mutex<HashMap<(String, String), Arc<AtomicU64>>>);

    struct Cell(Arc<AtomicU64>);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::Relaxed);
        }
    }

    impl Recorder for &'static Counters {
        fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let manager = key
                .labels()
                .find(|l| l.key() == "manager")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let mut all = self.0.lock().unwrap();
            let cell = all.entry((key.name().to_owned(), manager)).or_default();
            Counter::from_arc(Arc::new(Cell(Arc::clone(cell))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    struct Queue;

    impl SettleOutside for Queue {
        fn settle(&self, _up_to: u64) {}
        fn failed(&self, _tag: u64, _panic: &str) {}
        fn stats(&self) -> OutsideStats {
            OutsideStats {
                delivered: 7,
                redelivered: 2,
                acked: 5,
                dead_lettered: 1,
                stale: 0,
            }
        }
    }

    struct Sink;

    impl Manager for Sink {
        type Msg = u32;
        fn handle(&mut self, _n: u32, _ctx: &mut Context<'_, u32>) {}
    }

    #[test]
    fn a_manager_served_from_a_queue_exports_the_queue_counters() {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(counters).expect("the lib tests' only recorder");
        let rt = Runtime::new();
        let h = rt
            .manager("queue-served")
            .outside(Box::new(Queue))
            .spawn(Sink)
            .unwrap();
        h.deliver(1, 1).map_err(|_| ()).unwrap();
        h.join().unwrap();
        let get = |name: &str| {
            counters
                .0
                .lock()
                .unwrap()
                .get(&(name.to_owned(), "queue-served".to_owned()))
                .map(|c| c.load(Ordering::Relaxed))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // A round that read the stats before the join may come first, and
        // a round sets the queue counters last: wait for both.
        while get("custody_messages_handled_total") != Some(1)
            || get("custody_queue_dead_lettered_total").is_none()
        {
            assert!(Instant::now() < deadline, "no queue counters within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(get("custody_queue_delivered_total"), Some(7));
        assert_eq!(get("custody_queue_redelivered_total"), Some(2));
        assert_eq!(get("custody_queue_acked_total"), Some(5));
        assert_eq!(get("custody_queue_dead_lettered_total"), Some(1));
        // A manager without a queue has none of them.
        let plain = rt.own("plain", ()).unwrap();
        plain.call(|_| ()).unwrap();
        while counters
            .0
            .lock()
            .unwrap()
            .get(&(
                "custody_messages_handled_total".to_owned(),
                "plain".to_owned(),
            ))
            .is_none()
        {
            assert!(Instant::now() < deadline, "no series for plain within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!counters.0.lock().unwrap().contains_key(&(
            "custody_queue_delivered_total".to_owned(),
            "plain".to_owned()
        )));
    }

    /// Admits no delivery: each is dropped unhandled, never started.
    struct AdmitsNone;

    impl SettleOutside for AdmitsNone {
        fn settle(&self, _up_to: u64) {}
        fn failed(&self, _tag: u64, _panic: &str) {}
        fn stats(&self) -> OutsideStats {
            OutsideStats::default()
        }
        fn admit(&self, _tag: u64) -> bool {
            false
        }
    }

    enum Step {
        Block(std::sync::mpsc::Receiver<()>),
        Go,
    }

    struct Stepper;

    impl Manager for Stepper {
        type Msg = Step;
        fn handle(&mut self, step: Step, _ctx: &mut Context<'_, Step>) {
            if let Step::Block(wait) = step {
                let _ = wait.recv();
            }
        }
    }

    #[test]
    fn a_wait_ticket_that_can_no_longer_be_reached_is_freed_by_the_watch() {
        let rt = Runtime::new();
        let h = rt
            .manager("stale-ticket")
            .outside(Box::new(AdmitsNone))
            .spawn(Stepper)
            .unwrap();
        let (go, wait) = std::sync::mpsc::channel();
        h.tell(Step::Block(wait)).map_err(|_| ()).unwrap();
        // Queued behind the blocked message: deliveries never started...
        for tag in 1..=5 {
            h.deliver(Step::Go, tag).map_err(|_| ()).unwrap();
        }
        // ... then tells from a thread of their own: its 64th takes a ticket
        // that counts the five deliveries.
        let sender = h.clone();
        std::thread::spawn(move || {
            for _ in 0..64 {
                sender.tell(Step::Go).map_err(|_| ()).unwrap();
            }
        })
        .join()
        .unwrap();
        let observed = &h.shared.observed;
        assert!(
            observed.pending_ticket().is_some(),
            "the 64th tell took a ticket"
        );
        go.send(()).unwrap();
        h.join().unwrap();
        // Every message was started; the ticket is beyond them all.
        let deadline = Instant::now() + Duration::from_secs(60);
        while observed.pending_ticket().is_some() {
            assert!(Instant::now() < deadline, "the ticket was never freed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            h.stats().wait,
            None,
            "no wait was measured from the old note"
        );
    }
}
