//! One member of a sharded kind: the thread that beats on the kind's
//! members exchange, listens to the other members' beats, and serves the
//! partitions the assignment gives this member (and only those).
//!
//! ```text
//! every beat:   publish Beat { member, partitions, ready, leaving: false }
//! each beat heard:  note the member as seen now (leaving: forget it)
//! live members: seen within the member timeout
//! in touch:     this member heard its own beat within the timeout
//! ready:        warmed up (two beats since it started: it has heard the
//!               others), and says so in its beats
//! when in touch and ready:
//!     mine = assign(live members that are ready)[me]
//!     p in mine, not served:      serve it (as the active owner, or as the
//!                                 standby of a holder that is handing over)
//!     p served, not in mine:      stop it on a thread of its own (graceful:
//!                                 settle, close; the holder-elect takes over)
//!     p served whose serving ended (its manager exited): serve it again
//! asked to stop: publish leaving, wait one beat (the others subscribe),
//!     stop every served partition, close the channel
//! ```
//!
//! Out of touch (its channel lost, a freeze), a member changes nothing: it
//! keeps what it serves and takes nothing new, so a member cut off never
//! grabs every partition.
//!
//! A partition is served on one channel only: when that channel is lost,
//! its manager is stopped at once (what its mailbox held of the lost channel
//! is dropped, never acknowledged) and the serving ends; the member serves
//! the partition again, with a new manager, once there is a connection and
//! the partition is still its own. So a manager's state (a claim on the
//! partition's epoch) never outlives the channel it was earned on: a write
//! fenced after a claim means that channel is gone, and nothing it handled
//! is acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{Receiver, Sender};

use super::assign;
use super::partition;
use crate::broker::codec;
use crate::broker::connection::Broker;
use crate::broker::error::BrokerError;
use crate::broker::fanout::Fanout;
use crate::broker::names;
use crate::broker::serve::{self, Served};
use crate::error::SpawnError;
use crate::manager::Manager;
use crate::runtime::WeakRuntime;

/// The largest beat accepted; anything larger is not a beat.
const MAX_BEAT: usize = 1024;

/// The longest member id accepted in a beat.
const MAX_MEMBER_ID: usize = 200;

/// What a member publishes on the members exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Beat {
    pub(crate) member: String,
    pub(crate) partitions: u32,
    /// Warmed up: it has heard the others for two beats and serves its
    /// share. Only ready members are given partitions, so the others hand
    /// a partition over only to a member that is about to subscribe.
    pub(crate) ready: bool,
    pub(crate) leaving: bool,
}

impl Beat {
    /// Decodes and checks a beat from the wire (untrusted: any client can
    /// publish to the exchange).
    pub(crate) fn parse(body: &[u8]) -> Result<Beat, String> {
        if body.len() > MAX_BEAT {
            return Err(format!("{} bytes, more than {MAX_BEAT}", body.len()));
        }
        let beat: Beat = codec::decode(body)?;
        if beat.member.is_empty() || beat.member.len() > MAX_MEMBER_ID {
            return Err(format!(
                "a member id of {} bytes (1 to {MAX_MEMBER_ID})",
                beat.member.len()
            ));
        }
        Ok(beat)
    }
}

/// How a member beats and when it gives up on another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) beat: Duration,
    pub(crate) member_timeout: Duration,
}

/// What the member thread shares with its [`Sharded`](super::Sharded).
#[derive(Default)]
pub(crate) struct View {
    state: Mutex<ViewState>,
    /// Set to ask the member to leave.
    pub(crate) leave: AtomicBool,
    /// Partitions this member started serving, over its life.
    pub(crate) taken: AtomicU64,
    /// Partitions it handed over, over its life.
    pub(crate) handed_over: AtomicU64,
    /// Beats that were not beats (undecodable, too large, another count).
    pub(crate) rejected: AtomicU64,
}

#[derive(Default, Clone)]
pub(crate) struct ViewState {
    pub(crate) serving: BTreeSet<u32>,
    pub(crate) members: Vec<String>,
    pub(crate) in_touch: bool,
    /// Why the member thread ended, if it ended on its own.
    pub(crate) ended: Option<String>,
}

impl View {
    pub(crate) fn state(&self) -> MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Publishes `beat` on the members exchange (no confirm: a lost beat is
/// the next beat's job).
fn publish(fanout: &mut Fanout, broker: &Broker, kind: &str, beat: &Beat, wait: Duration) {
    let body = match codec::encode(beat) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(kind, error = %e, "a beat could not be encoded");
            return;
        }
    };
    if let Err(why) = fanout.publish(&broker.link, &body, wait) {
        tracing::debug!(kind, %why, "a beat was not sent");
    }
}

/// Everything the member thread owns.
pub(crate) struct Member<Mg: Manager, F> {
    pub(crate) broker: Broker,
    pub(crate) rt: WeakRuntime,
    pub(crate) kind: String,
    pub(crate) partitions: u32,
    pub(crate) id: String,
    pub(crate) timing: Timing,
    pub(crate) factory: F,
    pub(crate) view: Arc<View>,
    pub(crate) served: BTreeMap<u32, Served<Mg::Msg>>,
    pub(crate) stopping: HashMap<u32, JoinHandle<()>>,
}

impl<Mg, F> Member<Mg, F>
where
    Mg: Manager,
    Mg::Msg: DeserializeOwned,
    F: FnMut(u32) -> Mg + Send + 'static,
{
    /// The member thread: beats, listens, serves its share, until asked to
    /// leave or the runtime shuts down.
    pub(crate) fn run(mut self, heard: Receiver<Vec<u8>>, beats: Sender<Vec<u8>>) {
        let mut beats = Fanout::new(names::members_exchange(&self.kind), beats);
        let started = Instant::now();
        // Each member heard: when, and whether it said it was ready.
        let mut seen: HashMap<String, (Instant, bool)> = HashMap::new();
        let mut next_beat = Instant::now();
        let ended = loop {
            if self.view.leave.load(Ordering::SeqCst) {
                break None;
            }
            // Closed, or lost with reconnecting off: no beat will go out
            // again, and every served partition has ended.
            if self.broker.link.is_final() {
                break Some(format!("the broker connection is {}", self.broker.state()));
            }
            let now = Instant::now();
            let ready = started.elapsed() >= self.timing.beat * 2;
            if now >= next_beat {
                let beat = Beat {
                    member: self.id.clone(),
                    partitions: self.partitions,
                    ready,
                    leaving: false,
                };
                publish(
                    &mut beats,
                    &self.broker,
                    &self.kind,
                    &beat,
                    self.timing.beat,
                );
                next_beat = now + self.timing.beat;
            }
            // Listen until the next beat is due.
            let wait = next_beat.saturating_duration_since(Instant::now());
            if let Ok(body) = heard.recv_timeout(wait) {
                self.hear(&body, &mut seen);
                while let Ok(body) = heard.try_recv() {
                    self.hear(&body, &mut seen);
                }
            }
            let now = Instant::now();
            seen.retain(|_, (at, _)| now.duration_since(*at) <= self.timing.member_timeout);
            let mut members: Vec<String> = seen.keys().cloned().collect();
            members.sort();
            let in_touch = seen.contains_key(&self.id);
            self.reap_stopped();
            if in_touch && ready {
                // This member counts as ready from now on, even before its
                // next beat says so.
                let mut assignees: Vec<String> = seen
                    .iter()
                    .filter(|(m, (_, r))| *r || **m == self.id)
                    .map(|(m, _)| m.clone())
                    .collect();
                assignees.sort();
                let mine: BTreeSet<u32> = assign::owned_by(&assignees, self.partitions, &self.id)
                    .into_iter()
                    .collect();
                if let Err(why) = self.reconcile(&mine) {
                    break Some(why);
                }
            }
            let mut state = self.view.state();
            state.serving = self.served.keys().copied().collect();
            state.members = members;
            state.in_touch = in_touch;
        };
        self.leave(&mut beats, ended);
    }

    /// Takes one beat heard on the exchange.
    fn hear(&self, body: &[u8], seen: &mut HashMap<String, (Instant, bool)>) {
        match Beat::parse(body) {
            Ok(beat) if beat.partitions != self.partitions => {
                self.view.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    kind = %self.kind,
                    member = %beat.member,
                    theirs = beat.partitions,
                    ours = self.partitions,
                    "a member beats with another partition count; ignored"
                );
            }
            Ok(beat) if beat.leaving => {
                seen.remove(&beat.member);
            }
            Ok(beat) => {
                seen.insert(beat.member, (Instant::now(), beat.ready));
            }
            Err(reason) => {
                self.view.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = %self.kind, %reason, "not a beat; ignored");
            }
        }
    }

    /// Serves what is this member's and is not served, and hands over what
    /// is served and no longer this member's. `Err` once the runtime is
    /// shutting down.
    fn reconcile(&mut self, mine: &BTreeSet<u32>) -> Result<(), String> {
        // A serving that ended on its own (the manager exited): serve the
        // partition again below, with a new manager, if it is still ours.
        let ended: Vec<u32> = self
            .served
            .iter()
            .filter(|(_, s)| s.has_ended())
            .map(|(&p, _)| p)
            .collect();
        for p in ended {
            if let Some(served) = self.served.remove(&p) {
                tracing::warn!(kind = %self.kind, partition = p, "the serving of a partition ended on its own");
                drop(served);
            }
        }
        let gone: Vec<u32> = self
            .served
            .keys()
            .copied()
            .filter(|p| !mine.contains(p))
            .collect();
        for p in gone {
            let Some(served) = self.served.remove(&p) else {
                continue;
            };
            tracing::info!(kind = %self.kind, partition = p, member = %self.id, "handing a partition over");
            self.view.handed_over.fetch_add(1, Ordering::Relaxed);
            let stopper = std::thread::Builder::new()
                .name(format!("custody-handover-{}", self.kind))
                .spawn(move || served.stop());
            match stopper {
                Ok(thread) => {
                    self.stopping.insert(p, thread);
                }
                // No thread: stop it here (the served was moved into the
                // closure that failed to spawn, and is dropped, which stops it).
                Err(e) => tracing::warn!(error = %e, "no thread for a hand-over; stopped inline"),
            }
        }
        for &p in mine {
            if self.served.contains_key(&p) || self.stopping.contains_key(&p) {
                continue;
            }
            let manager = match panic::catch_unwind(AssertUnwindSafe(|| (self.factory)(p))) {
                Ok(manager) => manager,
                Err(_) => {
                    tracing::error!(kind = %self.kind, partition = p, "the partition's factory panicked; tried again at the next beat");
                    continue;
                }
            };
            let name = partition::partition_name(&self.kind, p);
            let Some(rt) = self.rt.upgrade() else {
                return Err("the runtime is gone".to_owned());
            };
            match serve::serve_on(&self.broker, &rt, &name, manager, true) {
                Ok(served) => {
                    tracing::info!(kind = %self.kind, partition = p, member = %self.id, "serving a partition");
                    self.view.taken.fetch_add(1, Ordering::Relaxed);
                    self.served.insert(p, served);
                }
                Err(BrokerError::Spawn(SpawnError::ShutDown)) => {
                    return Err("the runtime shut down".to_owned());
                }
                Err(e) => {
                    tracing::warn!(kind = %self.kind, partition = p, error = %e, "a partition could not be served; tried again at the next beat");
                }
            }
        }
        Ok(())
    }

    /// Forgets the hand-overs that finished.
    fn reap_stopped(&mut self) {
        let done: Vec<u32> = self
            .stopping
            .iter()
            .filter(|(_, t)| t.is_finished())
            .map(|(&p, _)| p)
            .collect();
        for p in done {
            if let Some(thread) = self.stopping.remove(&p)
                && thread.join().is_err()
            {
                tracing::error!(kind = %self.kind, partition = p, "a hand-over panicked");
            }
        }
    }

    /// Leaves the kind: says so, gives the others a beat to subscribe as
    /// standbys, then stops every served partition (in parallel: each
    /// settles what it was handed) and waits for the hand-overs.
    fn leave(mut self, beats: &mut Fanout, ended: Option<String>) {
        let beat = Beat {
            member: self.id.clone(),
            partitions: self.partitions,
            ready: false,
            leaving: true,
        };
        publish(beats, &self.broker, &self.kind, &beat, self.timing.beat);
        if !self.served.is_empty() {
            std::thread::sleep(self.timing.beat);
        }
        let served = std::mem::take(&mut self.served);
        std::thread::scope(|scope| {
            for (_, s) in served {
                scope.spawn(move || s.stop());
            }
        });
        for (_, thread) in self.stopping.drain() {
            let _ = thread.join();
        }
        beats.close();
        let mut state = self.view.state();
        state.serving.clear();
        state.members.clear();
        state.in_touch = false;
        state.ended = ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_round_trips_and_forged_ones_are_refused() {
        let beat = Beat {
            member: "m-1".to_owned(),
            partitions: 8,
            ready: true,
            leaving: false,
        };
        let body = codec::encode(&beat).unwrap();
        assert_eq!(Beat::parse(&body).unwrap(), beat);
        assert!(Beat::parse(b"not cbor at all").is_err());
        assert!(
            Beat::parse(&vec![0u8; MAX_BEAT + 1])
                .unwrap_err()
                .contains("bytes")
        );
        let empty = codec::encode(&Beat {
            member: String::new(),
            ..beat.clone()
        })
        .unwrap();
        assert!(Beat::parse(&empty).unwrap_err().contains("member id"));
        let long = codec::encode(&Beat {
            member: "x".repeat(MAX_MEMBER_ID + 1),
            ..beat
        })
        .unwrap();
        assert!(Beat::parse(&long).unwrap_err().contains("member id"));
    }
}
