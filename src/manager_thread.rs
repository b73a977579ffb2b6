//! The manager thread: one loop that owns the resource.
//!
//! ```text
//! started
//! loop:
//!     if the manager's next_wake has passed: wake
//!     block for one envelope (until next_wake, if any)
//!     drain what is already queued (up to max_batch), handling each message;
//!         after a panic: recover, then the panic policy (resume, restart, stop)
//!     if the mailbox ran dry: idle            (flush / commit point)
//!     settle the batch: one fetch_sub on the gate, wake joiners at zero
//!     exit if aborted (discard the rest) or if closed and nothing is unfinished
//! stopped
//! ```
//!
//! Every call into user code runs under `catch_unwind`; a panic is traced,
//! counted, and answered to the asker of the message, and the loop goes on.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::current;
use crate::fuzz;
use crate::handle::Handle;
use crate::mailbox::{Envelope, Inbox, RecvFailure};
use crate::manager::{Context, Manager};
use crate::reply::{self, DropMode};
use crate::stats::Counters;
use crate::supervision::{PanicPolicy, RestartWindow};

/// How long the discard loop of an immediate stop waits between looks at the
/// gate, for senders that were accepted but have not pushed yet.
const DISCARD_POLL: Duration = Duration::from_millis(5);

/// Builds a fresh manager for a restart.
pub(crate) type Factory<Mg> = Box<dyn FnMut() -> Mg + Send>;

/// Everything a manager thread starts from.
pub(crate) struct Spec<Mg: Manager> {
    pub(crate) manager: Mg,
    pub(crate) factory: Option<Factory<Mg>>,
    pub(crate) policy: PanicPolicy,
    pub(crate) runtime_id: u64,
    pub(crate) max_batch: u64,
    pub(crate) fuzz: bool,
}

/// The running state of one manager thread.
struct Supervisor<'h, Mg: Manager> {
    manager: Mg,
    factory: Option<Factory<Mg>>,
    policy: PanicPolicy,
    window: RestartWindow,
    /// Whether `manager` still needs its `stopped` hook.
    live: bool,
    /// The message of the latest handler panic.
    last_panic: String,
    handle: &'h Handle<Mg::Msg>,
}

/// Runs a manager on the current thread until it stops.
pub(crate) fn run<Mg: Manager>(spec: Spec<Mg>, rx: Inbox<Mg::Msg>, handle: Handle<Mg::Msg>) {
    let shared = &*handle.shared;
    // Whatever happens below, joiners and askers are released at the end.
    let exit = ExitGuard {
        gate: &shared.mailbox.gate,
    };
    let _current = current::enter(spec.runtime_id, &shared.waits);
    let span = tracing::info_span!("manager", name = %shared.name, backend = %shared.backend);
    let _span = span.enter();
    tracing::debug!("started");
    let previous_mode = reply::set_drop_mode(DropMode::Handling);
    let max_batch = spec.max_batch;
    let fuzz = spec.fuzz;
    let mut sup = Supervisor {
        manager: spec.manager,
        factory: spec.factory,
        policy: spec.policy,
        window: RestartWindow::default(),
        live: true,
        last_panic: String::new(),
        handle: &handle,
    };

    sup.hook("started", |m, ctx| m.started(ctx));
    // Handled messages whose count is released only after `stopped` (an
    // immediate stop cut their batch short before `idle`).
    let mut held: u64 = 0;
    // A message taken off the channel to see whether a full batch ended dry.
    let mut carried: Option<(Mg::Msg, Option<u64>)> = None;
    // The last handled delivery not yet covered by an `idle`.
    let mut unsettled_tag: Option<u64> = None;
    loop {
        let mut next = match carried.take() {
            Some(opened) => Some(opened),
            None => {
                let mut wake_at = sup.next_wake();
                if wake_at.is_some_and(|at| at <= Instant::now()) {
                    sup.hook("wake", |m, ctx| m.wake(ctx));
                    wake_at = sup.next_wake();
                }
                match rx.recv(wake_at) {
                    Ok(envelope) => envelope.open(),
                    Err(RecvFailure::Timeout | RecvFailure::Empty) => continue,
                    Err(RecvFailure::Disconnected) => break,
                }
            }
        };
        let mut handled: u64 = 0;
        let mut dry = false;
        loop {
            if let Some((msg, tag)) = next.take() {
                if fuzz {
                    fuzz::pause();
                }
                if tag.is_some_and(|tag| !sup.admit(tag)) {
                    // Its queue delivers it again: not handled here.
                    sup.drop_stale(msg);
                } else if sup.handle_one(msg) {
                    unsettled_tag = tag.or(unsettled_tag);
                } else if let Some(tag) = tag {
                    sup.delivery_failed(tag);
                }
                handled += 1;
            }
            if shared.is_aborted() {
                break;
            }
            if handled >= max_batch {
                // A full batch still ends dry if nothing but wake-ups is
                // queued; a message taken to find out starts the next batch.
                carried = rx.next_message();
                dry = carried.is_none();
                break;
            }
            match rx.try_recv() {
                // A plain message, decoded once (no tag, no capture).
                Ok(Envelope::Msg(msg)) => next = Some((msg, None)),
                Ok(envelope) => next = envelope.open(),
                Err(RecvFailure::Empty) => {
                    if rx.linger() {
                        continue;
                    }
                    dry = true;
                    break;
                }
                Err(_) => {
                    dry = true;
                    break;
                }
            }
        }
        reply::settle_unwound("the handler panicked and caught its own panic");
        if shared.is_aborted() {
            // Cut short before `idle`: these count as finished only once
            // `stopped` has run, and their deliveries are not settled.
            held += handled;
            discard_rest(&mut sup, &rx, held, carried.take());
            break;
        }
        if dry && handled > 0 {
            match sup.hook_caught("idle", |m, ctx| m.idle(ctx)) {
                Ok(()) => {
                    if let Some(tag) = unsettled_tag.take() {
                        sup.settle_outside(tag);
                    }
                }
                // No commit point was reached: nothing is settled outside.
                Err(message) => sup.after_panic(&message),
            }
        }
        // Not dry: a counted message is still queued (or carried), so this
        // cannot bring the count to zero; the next dry batch's `idle` covers
        // these messages too, before any joiner is released.
        shared.mailbox.gate.leave(handled);
        tracing::trace!(handled, "batch settled");
        if shared.is_aborted() {
            discard_rest(&mut sup, &rx, held, carried.take());
            break;
        }
        if carried.is_none() && shared.mailbox.gate.is_closed_and_empty() {
            break;
        }
    }
    if sup.live {
        let _ = sup.hook_caught("stopped", |m, ctx| m.stopped(ctx));
    }
    reply::settle_unwound("the `stopped` hook panicked");
    // The manager's own drop is user code too.
    let counters = &shared.counters;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(sup))) {
        on_panic_counted(counters, "drop", payload);
    }
    shared.mailbox.gate.leave(held);
    reply::set_drop_mode(previous_mode);
    tracing::debug!(
        handled = shared.counters.handled(),
        panicked = shared.counters.panicked(),
        unhandled = shared.mailbox.gate.dropped(),
        "stopped"
    );
    drop(exit);
}

/// Marks the manager exited when its thread leaves `run`, also by unwinding
/// (a bug in the loop itself): joiners and waiting askers are never left
/// behind.
struct ExitGuard<'g> {
    gate: &'g crate::mailbox::Gate,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        reply::settle_unwound("the manager thread ended unexpectedly");
        self.gate.mark_exited();
    }
}

impl<Mg: Manager> Supervisor<'_, Mg> {
    /// Handles one message; `false` if the handler panicked.
    #[inline]
    fn handle_one(&mut self, msg: Mg::Msg) -> bool {
        let mut ctx = Context::new(self.handle);
        let manager = &mut self.manager;
        let observed = &self.handle.shared.observed;
        let begun = observed.begin();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| manager.handle(msg, &mut ctx)));
        self.handle.shared.counters.add_handled();
        observed.end(begun);
        match outcome {
            Ok(()) => true,
            Err(payload) => {
                let message = on_panic(self.handle, "handle", payload);
                self.after_panic(&message);
                self.last_panic = message;
                false
            }
        }
    }

    /// Whether the outside queue still wants the delivery with this tag
    /// handled (see [`SettleOutside::admit`]).
    fn admit(&mut self, tag: u64) -> bool {
        let Some(outside) = self.handle.shared.mailbox.outside() else {
            return true;
        };
        match panic::catch_unwind(AssertUnwindSafe(|| outside.admit(tag))) {
            Ok(admitted) => admitted,
            Err(payload) => {
                let message = on_panic(self.handle, "settle", payload);
                self.after_panic(&message);
                true
            }
        }
    }

    /// Drops a delivery its outside queue delivers again, as a discarded
    /// message (its reply, if any, is not answered here), catching a panic
    /// of its `Drop`.
    #[cold]
    fn drop_stale(&mut self, msg: Mg::Msg) {
        let previous = reply::set_drop_mode(DropMode::Discarding);
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(msg))) {
            on_panic(self.handle, "drop", payload);
        }
        reply::set_drop_mode(previous);
    }

    /// Tells the outside queue that the delivery with this tag failed.
    #[cold]
    fn delivery_failed(&mut self, tag: u64) {
        if let Some(outside) = self.handle.shared.mailbox.outside() {
            let panic = &self.last_panic;
            if let Err(payload) =
                panic::catch_unwind(AssertUnwindSafe(|| outside.failed(tag, panic)))
            {
                let message = on_panic(self.handle, "settle", payload);
                self.after_panic(&message);
            }
        }
    }

    /// Tells the outside queue that every delivery up to `tag` is done.
    fn settle_outside(&mut self, tag: u64) {
        if let Some(outside) = self.handle.shared.mailbox.outside()
            && let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| outside.settle(tag)))
        {
            let message = on_panic(self.handle, "settle", payload);
            self.after_panic(&message);
        }
    }

    /// The manager's `next_wake`, caught: a panic counts as "no wake-up".
    fn next_wake(&mut self) -> Option<Instant> {
        let manager = &self.manager;
        match panic::catch_unwind(AssertUnwindSafe(|| manager.next_wake())) {
            Ok(at) => at,
            Err(payload) => {
                let message = on_panic(self.handle, "next_wake", payload);
                self.after_panic(&message);
                None
            }
        }
    }

    /// Runs a hook on the current instance; a panic is caught, counted, and
    /// handled by the panic policy (`recover` first).
    fn hook(&mut self, name: &str, f: impl FnOnce(&mut Mg, &mut Context<'_, Mg::Msg>)) {
        if let Err(message) = self.hook_caught(name, f) {
            self.after_panic(&message);
        }
    }

    /// Runs a hook on the current instance; a panic is caught and counted
    /// only (for the hooks of the panic path itself: `recover`, `stopped`).
    fn hook_caught(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Mg, &mut Context<'_, Mg::Msg>),
    ) -> Result<(), String> {
        let mut ctx = Context::new(self.handle);
        let manager = &mut self.manager;
        match panic::catch_unwind(AssertUnwindSafe(|| f(manager, &mut ctx))) {
            Ok(()) => Ok(()),
            Err(payload) => Err(on_panic(self.handle, name, payload)),
        }
    }

    /// `recover`, then the panic policy.
    #[cold]
    fn after_panic(&mut self, message: &str) {
        if !self.live {
            return; // the instance is gone: nothing to recover or restart
        }
        let _ = self.hook_caught("recover", |m, ctx| m.recover(message, ctx));
        match self.policy {
            PanicPolicy::Resume => {}
            PanicPolicy::Stop => {
                tracing::error!("panic policy is Stop: stopping for good");
                self.handle.shared.abort();
            }
            PanicPolicy::Restart {
                max_restarts,
                within,
            } => {
                if self.window.allow(max_restarts, within, Instant::now()) {
                    self.restart();
                } else {
                    tracing::error!(
                        max_restarts,
                        ?within,
                        "restart limit reached: stopping for good"
                    );
                    self.handle.shared.abort();
                }
            }
        }
    }

    /// Replaces the instance with a fresh one from the factory.
    fn restart(&mut self) {
        let _ = self.hook_caught("stopped", |m, ctx| m.stopped(ctx));
        self.live = false;
        let Some(factory) = self.factory.as_mut() else {
            tracing::error!("no factory to restart from: stopping for good");
            self.handle.shared.abort();
            return;
        };
        match panic::catch_unwind(AssertUnwindSafe(factory)) {
            Ok(fresh) => {
                let broken = std::mem::replace(&mut self.manager, fresh);
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(broken))) {
                    on_panic(self.handle, "drop", payload);
                }
                self.live = true;
                self.handle.shared.counters.add_restart();
                tracing::warn!("restarted from the factory");
                self.hook("started", |m, ctx| m.started(ctx));
            }
            Err(payload) => {
                on_panic(self.handle, "factory", payload);
                tracing::error!("the factory panicked: stopping for good");
                self.handle.shared.abort();
            }
        }
    }
}

/// Traces and counts a panic, answers the replies it dropped; returns its message.
#[cold]
fn on_panic<M: Send + 'static>(
    handle: &Handle<M>,
    hook: &str,
    payload: Box<dyn Any + Send>,
) -> String {
    on_panic_counted(&handle.shared.counters, hook, payload)
}

/// [`on_panic`] with only the counters at hand.
#[cold]
fn on_panic_counted(counters: &Counters, hook: &str, payload: Box<dyn Any + Send>) -> String {
    let message = panic_message(payload.as_ref());
    counters.add_panic();
    tracing::error!(hook, panic = %message, "manager panicked");
    reply::settle_unwound(&message);
    // The payload may itself panic on drop; that must not take the loop down.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    message
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// After an immediate stop: drops every message still accepted, counting each
/// as unhandled, until no sender holds an unsettled count (beyond the `held`
/// ones, handled and released after `stopped`). A message whose drop panics
/// is still counted; the panic is caught and counted too.
fn discard_rest<Mg: Manager>(
    sup: &mut Supervisor<'_, Mg>,
    rx: &Inbox<Mg::Msg>,
    held: u64,
    carried: Option<(Mg::Msg, Option<u64>)>,
) {
    let handle = sup.handle;
    let gate = &handle.shared.mailbox.gate;
    let previous = reply::set_drop_mode(DropMode::Discarding);
    let discard = |msg: Option<Envelope<Mg::Msg>>| {
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(msg))) {
            on_panic(handle, "drop", payload);
        }
        gate.add_dropped(1);
        gate.leave(1);
    };
    if let Some((msg, tag)) = carried {
        discard(Some(match tag {
            Some(tag) => Envelope::Delivered(Box::new((msg, tag))),
            None => Envelope::Msg(msg),
        }));
    }
    while gate.unfinished() > held {
        match rx.recv(Some(Instant::now() + DISCARD_POLL)) {
            Ok(envelope @ (Envelope::Msg(_) | Envelope::Delivered(_) | Envelope::Traced(_))) => {
                discard(Some(envelope))
            }
            Ok(Envelope::Wake) | Err(RecvFailure::Timeout) | Err(RecvFailure::Empty) => {}
            Err(RecvFailure::Disconnected) => break,
        }
    }
    reply::set_drop_mode(previous);
    if gate.dropped() > 0 {
        tracing::warn!(
            unhandled = gate.dropped(),
            "stopped at once; messages discarded"
        );
    }
}

#[cfg(test)]
mod tests {
    //! Messages delivered from an outside queue are settled after the batch's
    //! `idle`, and a panicking one is reported by its tag.

    use std::sync::{Arc, Mutex};

    use crate::mailbox::SettleOutside;
    use crate::{Backend, Context, Manager, Runtime};

    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl SettleOutside for Arc<Record> {
        fn settle(&self, up_to: u64) {
            self.0.lock().unwrap().push(format!("settle {up_to}"));
        }
        fn failed(&self, tag: u64, panic: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("failed {tag}: {panic}"));
        }
        fn stats(&self) -> crate::OutsideStats {
            crate::OutsideStats::default()
        }
    }

    struct Worker(Arc<Record>);

    impl Manager for Worker {
        type Msg = u32;
        fn handle(&mut self, n: u32, _ctx: &mut Context<'_, u32>) {
            if n == 0 {
                panic!("zero");
            }
            self.0.0.lock().unwrap().push(format!("handle {n}"));
        }
        fn idle(&mut self, _ctx: &mut Context<'_, u32>) {
            self.0.0.lock().unwrap().push("idle".to_owned());
        }
    }

    #[test]
    fn deliveries_settle_after_idle_and_panics_report_their_tag() {
        for backend in Backend::ALL {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let record = Arc::new(Record::default());
            let h = rt
                .manager("outside")
                .outside(Box::new(Arc::clone(&record)))
                .spawn(Worker(Arc::clone(&record)))
                .unwrap();
            h.deliver(1, 10).map_err(|_| ()).unwrap();
            h.join().unwrap();
            h.deliver(2, 11).map_err(|_| ()).unwrap();
            h.deliver(0, 12).map_err(|_| ()).unwrap();
            h.deliver(3, 13).map_err(|_| ()).unwrap();
            h.join().unwrap();
            let log = record.0.lock().unwrap().clone();
            assert_eq!(&log[..3], ["handle 1", "idle", "settle 10"]);
            assert!(log.contains(&"failed 12: zero".to_owned()), "{log:?}");
            let settle = log
                .iter()
                .rposition(|l| l == "settle 13")
                .expect("settled 13");
            let idle = log.iter().rposition(|l| l == "idle").unwrap();
            assert!(idle < settle, "settled before idle: {log:?}");
            assert!(log.contains(&"handle 3".to_owned()));
        }
    }

    /// Admits only odd tags; a panic on tag 7.
    struct OddOnly(Arc<Record>);

    impl SettleOutside for OddOnly {
        fn settle(&self, up_to: u64) {
            self.0.settle(up_to);
        }
        fn failed(&self, tag: u64, panic: &str) {
            self.0.failed(tag, panic);
        }
        fn stats(&self) -> crate::OutsideStats {
            crate::OutsideStats::default()
        }
        fn admit(&self, tag: u64) -> bool {
            assert_ne!(tag, 7, "admit exploded");
            tag % 2 == 1
        }
    }

    #[test]
    fn deliveries_the_outside_queue_does_not_admit_are_dropped_unhandled() {
        bounded(|| {
            for backend in Backend::ALL {
                let rt = Runtime::builder().backend(backend).build().unwrap();
                let record = Arc::new(Record::default());
                let h = rt
                    .manager("outside")
                    .outside(Box::new(OddOnly(Arc::clone(&record))))
                    .spawn(Worker(Arc::clone(&record)))
                    .unwrap();
                for (n, tag) in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 7), (6, 9)] {
                    h.deliver(n, tag).map_err(|_| ()).unwrap();
                }
                h.tell(8).unwrap(); // not a delivery: always handled
                h.join().unwrap();
                let log = record.0.lock().unwrap().clone();
                let handled: Vec<&String> =
                    log.iter().filter(|l| l.starts_with("handle")).collect();
                // 2 and 4 not admitted; 5's admit panicked: handled (counted).
                assert_eq!(
                    handled,
                    ["handle 1", "handle 3", "handle 5", "handle 6", "handle 8"],
                    "{log:?}"
                );
                assert_eq!(h.stats().panicked, 1);
                let last_settle = log.iter().rfind(|l| l.starts_with("settle"));
                assert_eq!(last_settle.map(String::as_str), Some("settle 9"), "{log:?}");
                assert!(!h.has_exited());
            }
        });
    }

    /// A settler that panics on every call.
    struct Exploding;

    impl SettleOutside for Exploding {
        fn settle(&self, _up_to: u64) {
            panic!("settle exploded");
        }
        fn failed(&self, _tag: u64, _panic: &str) {
            panic!("failed exploded");
        }
        fn stats(&self) -> crate::OutsideStats {
            crate::OutsideStats::default()
        }
    }

    /// Fails instead of hanging when `f` does not finish within a minute.
    fn bounded(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => worker.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("still running after 60 s"),
            Err(_) => std::panic::resume_unwind(worker.join().unwrap_err()),
        }
    }

    #[test]
    fn a_panicking_settler_is_caught_counted_and_the_manager_serves_on() {
        bounded(a_panicking_settler_scenario);
    }

    fn a_panicking_settler_scenario() {
        for backend in Backend::ALL {
            let rt = Runtime::builder().backend(backend).build().unwrap();
            let record = Arc::new(Record::default());
            let h = rt
                .manager("outside")
                .outside(Box::new(Exploding))
                .spawn(Worker(Arc::clone(&record)))
                .unwrap();
            h.deliver(1, 10).map_err(|_| ()).unwrap();
            h.join().unwrap();
            h.deliver(0, 11).map_err(|_| ()).unwrap(); // handler and failed() panic
            h.join().unwrap();
            h.deliver(2, 12).map_err(|_| ()).unwrap();
            h.join().unwrap();
            let stats = h.stats();
            // settle(10), handle(0), failed(11), settle(12)
            assert_eq!(stats.panicked, 4, "{stats:?}");
            assert!(!h.has_exited());
            let log = record.0.lock().unwrap().clone();
            assert!(log.contains(&"handle 2".to_owned()), "{log:?}");
        }
    }
}
