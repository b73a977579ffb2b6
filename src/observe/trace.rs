//! Traces that follow a message: what a traced send captures, how it
//! reaches the handler, and the span the message is handled in.
//!
//! A traced send wraps the message in `Envelope::Traced`, boxed, with the
//! caller's current span and the time. Opening that envelope on the manager
//! thread puts the capture in a thread-local slot, which the loop takes
//! when it starts the message ([`Observed::begin`](super::Observed::begin)):
//! the loop's code between opening and handling stays the same for every
//! kind of envelope. The slot holds at most the message about to be
//! handled; a traced message dropped unhandled leaves its capture there
//! only until the next one is opened.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// What a traced send captured.
pub(crate) struct Trace {
    /// The caller's current span when it sent.
    pub(crate) span: tracing::Span,
    /// When it sent.
    pub(crate) sent: Instant,
}

impl Trace {
    /// Captures the current span and the time.
    pub(crate) fn here() -> Trace {
        Trace {
            span: tracing::Span::current(),
            sent: Instant::now(),
        }
    }
}

std::thread_local! {
    static OPENED: RefCell<Option<Trace>> = const { RefCell::new(None) };
    /// The span of the traced message being handled on this thread.
    static HANDLING: RefCell<Option<tracing::span::EnteredSpan>> = const { RefCell::new(None) };
}

/// Keeps the capture of the message just opened on this thread.
pub(crate) fn stash(trace: Trace) {
    OPENED.with(|slot| *slot.borrow_mut() = Some(trace));
}

/// Takes the capture of the message about to be handled, if it was traced.
pub(crate) fn take() -> Option<Trace> {
    OPENED.with(|slot| slot.borrow_mut().take())
}

/// The span a traced message is handled in: a child of the manager's span
/// that follows from the caller's.
pub(crate) fn handling(manager: &str, trace: &Trace, wait: Duration) -> tracing::Span {
    let span = tracing::info_span!(
        target: "custody::message",
        "message",
        manager = %manager,
        wait_us = duration_us(wait),
        service_us = tracing::field::Empty,
    );
    span.follows_from(&trace.span);
    span
}

/// Enters a message's span until [`exit`].
pub(crate) fn enter(span: tracing::Span) {
    HANDLING.with(|slot| *slot.borrow_mut() = Some(span.entered()));
}

/// Exits the span of the message just handled, recording its service time.
pub(crate) fn exit(service: Duration) {
    if let Some(entered) = HANDLING.with(|slot| slot.borrow_mut().take()) {
        entered.exit().record("service_us", duration_us(service));
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
