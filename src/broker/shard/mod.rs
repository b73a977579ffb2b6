//! Sharded kinds: many resources of one kind (accounts, devices, tenants)
//! spread over the partitions of a kind, each partition owned by exactly
//! one thread in one of several owner processes at a time, the partitions
//! balanced over the live processes.
//!
//! ```text
//! producers: ShardedHandle ---key--FNV-1a 64 mod N--> custody.<kind>.<p>
//!                                                     (quorum, single active consumer)
//! owners:    Sharded member ---beats---> custody.<kind>.members (fanout)
//!            each member: live members -> assign() -> serve its partitions
//! ```
//!
//! # Routing
//!
//! A [`ShardedHandle`] sends each message to partition
//! [`partition_of`]`(key, N)`: the 64-bit FNV-1a hash of the key's bytes
//! modulo the partition count, a hash fixed byte by byte, so one key lands
//! in one partition in every process, platform and Rust release, and keeps
//! its order there (one queue, one owner). The key is named by the message
//! ([`PartitionKey`]) or given to [`ShardedHandle::tell_to`]. The partition
//! count is recorded on the broker with the kind's queues (the
//! `x-max-length` of the empty queue `custody.<kind>.partitions`, an
//! argument the broker checks at every declaration): a process asking for
//! another count gets [`BrokerError::PartitionMismatch`] at startup,
//! before it sends or serves anything.
//!
//! # Balanced ownership
//!
//! Each partition is an ordinary served manager (see [`Broker::serve`]):
//! a durable quorum queue with single active consumer, so the broker itself
//! never delivers a partition's messages to two owners at once. On top of
//! that, the members of a kind (one [`Sharded`] per owner process) decide
//! who serves what:
//!
//! - **Membership.** Every member publishes a beat (its id, the partition
//!   count) on the fanout exchange `custody.<kind>.members` every
//!   [`beat`](ShardedBuilder::beat) (500 ms by default) and hears every
//!   member's beats on an exclusive queue of its own. A member is live
//!   while its last beat is younger than the
//!   [`member_timeout`](ShardedBuilder::member_timeout) (2 s by default);
//!   a member leaving gracefully says so in a last beat and is forgotten at
//!   once.
//! - **Warm-up.** A member that just started listens for two beats before
//!   it takes anything (it has then heard every live member), and says in
//!   its beats when it is ready; only ready members are given partitions.
//!   So the holders of the partitions a newcomer is to get hand them over
//!   only once it is about to subscribe to them.
//! - **Assignment.** From the sorted list of ready live members, every member
//!   computes the same assignment: rendezvous hashing (each partition ranks
//!   the members by a hash of member and partition) with a bound on load, so
//!   that every member serves ⌊P/k⌋ or ⌈P/k⌉ partitions: within one
//!   partition of even. A member joining or leaving moves mostly the
//!   partitions that rank it first.
//! - **Hand-over.** A member serves the partitions assigned to it and stops
//!   serving the others. Stopping is [`Served::stop`](crate::broker::Served::stop)'s graceful hand-over:
//!   the holder settles what it was handed, then closes its channel; the
//!   member the partition is now assigned to has meanwhile subscribed as
//!   the queue's standby, and the broker makes it active. So a partition
//!   moves without two owners at once and without losing its order.
//!
//! # Failure cases
//!
//! - *An owner process dies (SIGKILL, a crash).* The broker returns its
//!   unacknowledged deliveries to their queues at once; its beats stop, and
//!   once the member timeout passes, the survivors assign its partitions
//!   among themselves and serve them. Failover therefore takes the member
//!   timeout plus a beat (measured in BENCHMARKS.md). Messages it handled
//!   but had not acknowledged are handled again (at least once, as for any
//!   served manager); exactly-once effects need the message id recorded
//!   with the effect, as [`PgState`](crate::resources::postgres) and
//!   [`RemoteDatabase`](crate::resources::RemoteDatabase) do.
//! - *An owner freezes (SIGSTOP, a long pause) or is cut off.* The others
//!   stop hearing it and subscribe to its partitions, as standbys: the
//!   broker keeps delivering to the frozen owner until its connection's
//!   heartbeat expires, then makes the standby active. Whatever the frozen
//!   owner does when it wakes up with deliveries in hand is a zombie's
//!   write; it must be fenced where the effect lands (a per-partition epoch
//!   in [`PgState`](crate::resources::postgres)).
//! - *Views differ for a moment* (a beat lost or late, a member just
//!   started). Two members may both believe they own a partition: both
//!   subscribe, the broker's single active consumer picks one, and the
//!   views converge within a member timeout. Balance is a matter of views;
//!   exclusivity never is.
//! - *A member loses touch* (it no longer hears its own beats: its channel
//!   or connection is down). It changes nothing until it hears itself
//!   again: it keeps serving what it served (each partition reconnects on
//!   its own) and takes nothing new, so a member cut off from the others
//!   never grabs every partition.
//! - *Forged beats.* Anyone who can publish to the exchange can claim to be
//!   a member. A forged member unbalances the assignment (its partitions go
//!   unserved while it "lives"), but cannot make two owners of a partition:
//!   that is the broker's single active consumer. Beats that do not decode,
//!   are too large, or carry another partition count are ignored and
//!   counted ([`Sharded::rejected_beats`]).
//! - *The runtime shuts down.* Its served partitions stop as any served
//!   manager does; the member then leaves.
//!
//! # Examples
//!
//! ```no_run
//! use std::borrow::Cow;
//! use custody::broker::{Broker, PartitionKey};
//! use custody::{Context, Manager, Runtime};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Deposit {
//!     account: String,
//!     cents: i64,
//! }
//!
//! impl PartitionKey for Deposit {
//!     fn partition_key(&self) -> Cow<'_, [u8]> {
//!         Cow::Borrowed(self.account.as_bytes())
//!     }
//! }
//!
//! struct Accounts {
//!     partition: u32,
//! }
//!
//! impl Manager for Accounts {
//!     type Msg = Deposit;
//!     fn handle(&mut self, d: Deposit, _ctx: &mut Context<'_, Deposit>) {
//!         println!("partition {}: {} += {}", self.partition, d.account, d.cents);
//!     }
//! }
//!
//! // Every owner process:
//! let rt = Runtime::new();
//! let broker = Broker::from_env()?;
//! let member = broker
//!     .sharded("accounts", 16)
//!     .serve(&rt, |partition| Accounts { partition })?;
//!
//! // Any process:
//! let accounts = broker.sharded_handle::<Deposit>("accounts", 16)?;
//! accounts.tell(Deposit { account: "alice".into(), cents: 500 })?;
//! accounts.join()?;
//! member.stop(); // hand this member's partitions over to the others
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod assign;
mod handle;
mod member;
pub(crate) mod partition;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;

pub use handle::ShardedHandle;
pub use partition::{MAX_PARTITIONS, PartitionKey, fnv1a_64, partition_of};

use super::connection::Broker;
use super::error::BrokerError;
use crate::manager::Manager;
use crate::runtime::Runtime;
use member::{Member, Timing, View};

/// How often a member beats, unless [`ShardedBuilder::beat`] says otherwise.
pub const DEFAULT_BEAT: Duration = Duration::from_millis(500);

/// How long a member stays live without a beat, unless
/// [`ShardedBuilder::member_timeout`] says otherwise.
pub const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings for serving a sharded kind from this process; from
/// [`Broker::sharded`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `serve` is called"]
pub struct ShardedBuilder {
    broker: Broker,
    kind: String,
    partitions: u32,
    timing: Timing,
}

impl ShardedBuilder {
    pub(crate) fn new(broker: &Broker, kind: &str, partitions: u32) -> ShardedBuilder {
        ShardedBuilder {
            broker: broker.clone(),
            kind: kind.to_owned(),
            partitions,
            timing: Timing {
                beat: DEFAULT_BEAT,
                member_timeout: DEFAULT_MEMBER_TIMEOUT,
            },
        }
    }

    /// How often this member beats (500 ms by default). Every member of a
    /// kind should beat at the same pace.
    pub fn beat(mut self, interval: Duration) -> Self {
        self.timing.beat = interval.max(Duration::from_millis(10));
        self
    }

    /// How long another member stays live without a beat (2 s by default):
    /// what a dead member's partitions wait before the others serve them.
    /// At least two beats; shorter makes a slow member look dead.
    pub fn member_timeout(mut self, timeout: Duration) -> Self {
        self.timing.member_timeout = timeout;
        self
    }

    /// Joins the kind as a member: beats, and serves the partitions the
    /// assignment gives this member, each with a manager from
    /// `factory(partition)` on `rt` (named `<kind>.<partition>`; a
    /// partition that moves away and comes back gets a new manager).
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], [`BrokerError::InvalidPartitions`],
    /// [`BrokerError::PartitionMismatch`] when the kind exists with another
    /// partition count, [`BrokerError::QueueMismatch`], a failed or
    /// timed-out declaration, or [`BrokerError::Spawn`] when the member's
    /// thread cannot start.
    pub fn serve<Mg, F>(self, rt: &Runtime, factory: F) -> Result<Sharded<Mg::Msg>, BrokerError>
    where
        Mg: Manager,
        Mg::Msg: DeserializeOwned,
        F: FnMut(u32) -> Mg + Send + 'static,
    {
        let ShardedBuilder {
            broker,
            kind,
            partitions,
            mut timing,
        } = self;
        partition::check(&kind, partitions)?;
        timing.member_timeout = timing.member_timeout.max(timing.beat * 2);
        // The count is checked, and the partition queues declared, before
        // the member exists: a mismatch is an error here, not a log line.
        broker.link.declare_sharded(&kind, partitions)?;
        let id = super::remote::producer_id();
        let view = Arc::new(View::default());
        let (beats, heard) = std::sync::mpsc::channel();
        let member = Member {
            broker,
            rt: rt.downgrade(),
            kind: kind.clone(),
            partitions,
            id: id.clone(),
            timing,
            factory,
            view: Arc::clone(&view),
            served: BTreeMap::new(),
            stopping: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("custody-shard-{kind}"))
            .spawn(move || member.run(heard, beats))
            .map_err(|source| crate::error::SpawnError::Thread {
                name: format!("custody-shard-{kind}"),
                source,
            })?;
        Ok(Sharded {
            kind,
            partitions,
            id,
            view,
            thread: Some(thread),
            _msg: std::marker::PhantomData,
        })
    }
}

/// This process's membership of a sharded kind (see the
/// [module docs](self)); leaves the kind when dropped.
pub struct Sharded<M> {
    kind: String,
    partitions: u32,
    id: String,
    view: Arc<View>,
    thread: Option<JoinHandle<()>>,
    _msg: std::marker::PhantomData<fn(M)>,
}

impl<M> fmt::Debug for Sharded<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharded")
            .field("kind", &self.kind)
            .field("member", &self.id)
            .field("serving", &self.serving())
            .finish_non_exhaustive()
    }
}

impl<M> Sharded<M> {
    /// The kind served.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The kind's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// This member's id, unique across processes (as the other members see
    /// it in beats).
    pub fn member_id(&self) -> &str {
        &self.id
    }

    /// The partitions this member serves now, in order: subscribed to, as
    /// the active owner, or for a moment as the standby of a holder that is
    /// handing the partition over.
    pub fn serving(&self) -> Vec<u32> {
        self.view.state().serving.iter().copied().collect()
    }

    /// The live members this member sees (itself included while it hears
    /// its own beats), sorted.
    pub fn members(&self) -> Vec<String> {
        self.view.state().members.clone()
    }

    /// Whether this member hears its own beats: only then does it take or
    /// hand over partitions.
    pub fn is_in_touch(&self) -> bool {
        self.view.state().in_touch
    }

    /// How many times this member started serving a partition, and handed
    /// one over, since it joined.
    pub fn moves(&self) -> (u64, u64) {
        (
            self.view.taken.load(Ordering::Relaxed),
            self.view.handed_over.load(Ordering::Relaxed),
        )
    }

    /// Beats heard that were not beats of this kind (undecodable, too
    /// large, another partition count): ignored.
    pub fn rejected_beats(&self) -> u64 {
        self.view.rejected.load(Ordering::Relaxed)
    }

    /// Whether the member still runs: `false` once it left, or once it
    /// ended on its own: its runtime shut down, or its broker connection
    /// was closed (or lost with reconnecting off).
    pub fn is_member(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Why the member ended on its own, once it has (see
    /// [`is_member`](Self::is_member)); `None` while it runs or after a
    /// [`stop`](Self::stop).
    pub fn ended(&self) -> Option<String> {
        self.view.state().ended.clone()
    }

    /// Leaves the kind gracefully and waits until it has: tells the others,
    /// gives them a beat to subscribe, then hands every partition over
    /// (each settles what it was handed; see
    /// [`Served::stop`](crate::broker::Served::stop)).
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.view.leave.store(true, Ordering::SeqCst);
        if thread.join().is_err() {
            tracing::error!(kind = %self.kind, "a sharded kind's member thread panicked");
        }
    }
}

impl<M> Drop for Sharded<M> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Broker {
    /// Settings for serving the sharded kind `kind` of `partitions`
    /// partitions from this process; [`ShardedBuilder::serve`] joins it.
    /// See the [shard module docs](crate::broker::shard) for the design.
    pub fn sharded(&self, kind: &str, partitions: u32) -> ShardedBuilder {
        ShardedBuilder::new(self, kind, partitions)
    }

    /// Deletes the queues of the sharded kind `kind` of `partitions`
    /// partitions (each partition's queues, as
    /// [`delete_queues`](Broker::delete_queues) does, then the record of
    /// its count) and its members exchange: what to do, with every owner
    /// and sender stopped and the queues drained, before declaring the kind
    /// again with another partition count.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], [`BrokerError::InvalidPartitions`], or
    /// a failed or timed-out deletion.
    pub fn delete_sharded(&self, kind: &str, partitions: u32) -> Result<(), BrokerError> {
        partition::check(kind, partitions)?;
        for p in 0..partitions {
            self.delete_queues(&partition::partition_name(kind, p))?;
        }
        self.delete_record_and_exchange(
            &super::names::partitions_queue(kind),
            &super::names::members_exchange(kind),
        )
    }

    /// A sender to the sharded kind `kind`, routing each message to its
    /// key's partition (see [`ShardedHandle`]). Declares the kind's queues,
    /// so messages can be sent before any owner runs.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InvalidName`], [`BrokerError::InvalidPartitions`],
    /// [`BrokerError::PartitionMismatch`] when the kind exists with another
    /// partition count, [`BrokerError::QueueMismatch`], or a failed or
    /// timed-out declaration.
    pub fn sharded_handle<M: serde::Serialize>(
        &self,
        kind: &str,
        partitions: u32,
    ) -> Result<ShardedHandle<M>, BrokerError> {
        ShardedHandle::new(self, kind, partitions)
    }
}
