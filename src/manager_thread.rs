//! The manager thread: one loop that owns the resource.
//!
//! ```text
//! started
//! loop:
//!     block for one envelope
//!     drain what is already queued (up to max_batch), handling each message
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
use crate::handle::Handle;
use crate::mailbox::{Envelope, Receiver, RecvFailure};
use crate::manager::{Context, Manager};
use crate::reply::{self, DropMode};

/// How long the discard loop of an immediate stop waits between looks at the
/// gate, for senders that were accepted but have not pushed yet.
const DISCARD_POLL: Duration = Duration::from_millis(5);

/// Runs a manager on the current thread until it stops.
pub(crate) fn run<Mg: Manager>(
    mut manager: Mg,
    rx: Receiver<Envelope<Mg::Msg>>,
    handle: Handle<Mg::Msg>,
    runtime_id: u64,
    max_batch: u64,
) {
    let shared = &*handle.shared;
    let _current = current::enter(runtime_id, shared.id);
    let span = tracing::info_span!("manager", name = %shared.name, backend = %shared.backend);
    let _span = span.enter();
    tracing::debug!("started");
    let previous_mode = reply::set_drop_mode(DropMode::Handling);
    let mut ctx = Context::new(&handle);

    guard(&handle, "started", || manager.started(&mut ctx));
    loop {
        let first = match rx.recv(None) {
            Ok(envelope) => envelope,
            Err(_) => break,
        };
        let mut handled: u64 = 0;
        let mut dry = false;
        if let Envelope::Msg(msg) = first {
            handle_one(&mut manager, msg, &mut ctx);
            handled += 1;
        }
        while handled < max_batch && !shared.is_aborted() {
            match rx.try_recv() {
                Ok(Envelope::Msg(msg)) => {
                    handle_one(&mut manager, msg, &mut ctx);
                    handled += 1;
                }
                Ok(Envelope::Wake) => {}
                Err(RecvFailure::Empty) => {
                    dry = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if dry && handled > 0 && !shared.is_aborted() {
            guard(&handle, "idle", || manager.idle(&mut ctx));
        }
        reply::settle_unwound("the handler panicked and caught its own panic");
        shared.gate.leave(handled);
        tracing::trace!(handled, "batch settled");
        if shared.is_aborted() {
            discard_rest(&handle, &rx);
            break;
        }
        if shared.gate.is_closed_and_empty() {
            break;
        }
    }
    guard(&handle, "stopped", || manager.stopped(&mut ctx));
    reply::set_drop_mode(previous_mode);
    tracing::debug!(
        handled = shared.counters.handled(),
        panicked = shared.counters.panicked(),
        unhandled = shared.gate.dropped(),
        "stopped"
    );
    shared.gate.mark_exited();
}

#[inline]
fn handle_one<Mg: Manager>(manager: &mut Mg, msg: Mg::Msg, ctx: &mut Context<'_, Mg::Msg>) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| manager.handle(msg, ctx)));
    ctx.handle().shared.counters.add_handled();
    if let Err(payload) = outcome {
        on_panic(ctx.handle(), "handle", payload);
    }
}

/// Runs a hook, catching a panic.
fn guard<M: Send + 'static>(handle: &Handle<M>, hook: &str, f: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        on_panic(handle, hook, payload);
    }
}

#[cold]
fn on_panic<M: Send + 'static>(handle: &Handle<M>, hook: &str, payload: Box<dyn Any + Send>) {
    let message = panic_message(payload.as_ref());
    handle.shared.counters.add_panic();
    tracing::error!(hook, panic = %message, "manager panicked; carrying on");
    reply::settle_unwound(&message);
    // The payload may itself panic on drop; that must not take the loop down.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
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
/// as unhandled, until no sender holds an unsettled count.
fn discard_rest<M: Send + 'static>(handle: &Handle<M>, rx: &Receiver<Envelope<M>>) {
    let gate = &handle.shared.gate;
    let previous = reply::set_drop_mode(DropMode::Discarding);
    while gate.unfinished() > 0 {
        match rx.recv(Some(Instant::now() + DISCARD_POLL)) {
            Ok(Envelope::Msg(msg)) => {
                drop(msg);
                gate.add_dropped(1);
                gate.leave(1);
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
