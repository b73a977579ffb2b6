//! The `metrics` facade (feature `metrics`): every series is looked up
//! through the facade each time it is set or recorded, and no handle is
//! kept, so a recorder installed after the runtime started receives every
//! series (the counters with their counts since the start).

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use super::Observed;
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
    if let Some(queue) = stats.outside {
        counter!("custody_queue_delivered_total", "manager" => label()).absolute(queue.delivered);
        counter!("custody_queue_redelivered_total", "manager" => label())
            .absolute(queue.redelivered);
        counter!("custody_queue_acked_total", "manager" => label()).absolute(queue.acked);
        counter!("custody_queue_dead_lettered_total", "manager" => label())
            .absolute(queue.dead_lettered);
    }
}

/// Records a sampled service time (on the manager thread).
pub(crate) fn service(name: &Arc<str>, service: Duration) {
    histogram!("custody_service_seconds", "manager" => Arc::clone(name))
        .record(service.as_secs_f64());
}

/// Records a sampled mailbox wait (on the manager thread).
pub(crate) fn wait(name: &Arc<str>, wait: Duration) {
    histogram!("custody_mailbox_wait_seconds", "manager" => Arc::clone(name))
        .record(wait.as_secs_f64());
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
