//! Joins: the done records owners publish to a handle's done queue, and
//! `join`, which waits until every message the handle got confirmed is
//! reported done (or dead-lettered).

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::message::DeliveryResult;

use super::super::codec::{self, DoneRecord};
use super::super::connection::error_chain;
use super::super::error::{BrokerError, DeadLetter, RemoteJoinError};
use super::RemoteHandle;
use super::ask::ANSWER_SLICE;
use crate::util::deadline_after;

/// The join state, fed by the done-queue consumer.
#[derive(Default)]
pub(super) struct Joins {
    pub(super) state: Mutex<JoinState>,
    pub(super) changed: Condvar,
}

#[derive(Default)]
pub(super) struct JoinState {
    /// Ids being published or confirmed, not yet reported done.
    pub(super) outstanding: HashSet<String>,
    /// Reported dead-lettered since the last join.
    pub(super) dead: Vec<DeadLetter>,
    /// Why no more done records can arrive.
    pub(super) lost: Option<String>,
    /// The session whose done-queue consumer runs, if one does.
    pub(super) consuming: Option<u64>,
}

impl Joins {
    pub(super) fn state(&self) -> MutexGuard<'_, JoinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn forget(&self, id: &str) {
        if self.state().outstanding.remove(id) {
            self.changed.notify_all();
        }
    }

    /// Takes one delivery of the done-queue consumer of `session`; the acker
    /// of a record taken, to acknowledge it with (after it was recorded: a
    /// record lost with a connection is delivered again).
    pub(super) fn on_delivery(&self, session: u64, delivery: DeliveryResult) -> Option<Acker> {
        match delivery {
            Ok(Some(delivery)) => {
                match codec::decode::<DoneRecord>(&delivery.data) {
                    Ok(record) => self.record(record),
                    Err(e) => tracing::warn!(error = %e, "ignoring an undecodable done record"),
                }
                Some(delivery.acker)
            }
            // The channel is lost (or the consumer cancelled): the next join
            // opens a new one, which consumes again.
            Ok(None) | Err(_) => {
                let mut state = self.state();
                if state.consuming == Some(session) {
                    state.consuming = None;
                }
                drop(state);
                self.changed.notify_all();
                None
            }
        }
    }

    pub(super) fn record(&self, record: DoneRecord) {
        let mut state = self.state();
        for id in &record.done {
            state.outstanding.remove(id);
        }
        for (id, reason) in record.dead {
            if state.outstanding.remove(&id) {
                state.dead.push(DeadLetter { id, reason });
            }
        }
        drop(state);
        self.changed.notify_all();
    }
}

impl<M> RemoteHandle<M> {
    /// Blocks until the owner has reported every message this handle (or a
    /// clone) got confirmed as handled: its batch was handled, its `idle`
    /// hook ran, and it is about to be acknowledged. Waits for an owner to
    /// start if none runs. Having no deadline, it does not wait for a lost
    /// connection to be replaced: use
    /// [`join_timeout`](RemoteHandle::join_timeout) to wait across a
    /// reconnect.
    ///
    /// # Errors
    ///
    /// [`RemoteJoinError::DeadLettered`] if some of them were dead-lettered
    /// instead (undecodable, or a handler that panicked on every delivery);
    /// [`RemoteJoinError::Disconnected`] if the connection is lost (the
    /// done records sent meanwhile wait in the done queue: a later `join`
    /// gets them).
    pub fn join(&self) -> Result<(), RemoteJoinError> {
        self.join_until(None)
    }

    /// Like [`join`](RemoteHandle::join), giving up after `timeout`; waits
    /// across a reconnect within it.
    ///
    /// # Errors
    ///
    /// As [`join`](RemoteHandle::join), plus [`RemoteJoinError::Timeout`];
    /// `Disconnected` only once the connection is closed or lost for good.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteJoinError> {
        self.join_until(deadline_after(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), RemoteJoinError> {
        let remote = &*self.remote;
        let joins = &*remote.joins;
        loop {
            {
                let mut state = joins.state();
                loop {
                    if state.outstanding.is_empty() {
                        if state.dead.is_empty() {
                            return Ok(());
                        }
                        return Err(RemoteJoinError::DeadLettered {
                            queue: remote.queue.clone(),
                            dead: std::mem::take(&mut state.dead),
                        });
                    }
                    if let Some(reason) = &state.lost {
                        return Err(RemoteJoinError::Disconnected {
                            queue: remote.queue.clone(),
                            reason: reason.clone(),
                            outstanding: state.outstanding.len(),
                        });
                    }
                    if state.consuming.is_none() {
                        // No done-queue consumer: a new channel below.
                        break;
                    }
                    let slice = match deadline {
                        None => ANSWER_SLICE,
                        Some(at) => {
                            let left = at.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                return Err(RemoteJoinError::Timeout {
                                    queue: remote.queue.clone(),
                                    outstanding: state.outstanding.len(),
                                });
                            }
                            left.min(ANSWER_SLICE)
                        }
                    };
                    state = joins
                        .changed
                        .wait_timeout(state, slice)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    let seen = state.consuming;
                    if seen.is_some() {
                        // Not under the join state's lock: a new session
                        // takes the session lock, then this one.
                        drop(state);
                        let gone = remote.is_lost();
                        state = joins.state();
                        if gone && state.consuming == seen {
                            // Its channel is lost, the loss not reported yet.
                            state.consuming = None;
                        }
                    }
                }
            }
            // The records sent meanwhile wait in the durable done queue; a
            // new channel consumes it again.
            let reopened = remote.session(deadline);
            let mut state = joins.state();
            match reopened {
                Ok(session) => {
                    if state.consuming.is_none() && session.is_open() {
                        // An open channel whose done-queue consumer the
                        // broker cancelled: the done queue is gone.
                        state.lost =
                            Some("the done queue consumer was cancelled by the broker".to_owned());
                        drop(state);
                        joins.changed.notify_all();
                    }
                }
                Err(BrokerError::Disconnected {
                    reconnecting: true, ..
                }) if deadline.is_some() => {
                    return Err(RemoteJoinError::Timeout {
                        queue: remote.queue.clone(),
                        outstanding: state.outstanding.len(),
                    });
                }
                Err(e) => {
                    return Err(RemoteJoinError::Disconnected {
                        queue: remote.queue.clone(),
                        reason: error_chain(&e),
                        outstanding: state.outstanding.len(),
                    });
                }
            }
        }
    }
}
