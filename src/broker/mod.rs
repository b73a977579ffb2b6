//! Managers past one machine: a manager whose mailbox is a durable RabbitMQ
//! queue (feature `amqp`).
//!
//! The API is the runtime's, blocking and thread-based: [`Broker::serve`]
//! runs a manager on a [`Runtime`](crate::Runtime) and feeds it from the queue
//! `custody.<name>`; [`Broker::remote_handle`] gives a typed
//! [`RemoteHandle`] that sends to it from any process, with `tell`, `join`
//! and `ask` (the answer comes back in a [`RemoteReply`]).
//! The AMQP client's futures stay inside this module.
//!
//! ```no_run
//! use custody::broker::Broker;
//! use custody::{Context, Manager, Runtime};
//!
//! struct Total(u64);
//! impl Manager for Total {
//!     type Msg = u64;
//!     fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
//!         self.0 += n;
//!     }
//!     fn idle(&mut self, _ctx: &mut Context<'_, u64>) {
//!         // commit here: a message is acknowledged only after this ran
//!     }
//! }
//!
//! // The owner process (start a second one for a hot standby):
//! let rt = Runtime::new();
//! let owner = Broker::from_env()?;
//! let served = owner.serve(&rt, "total", Total(0))?;
//!
//! // Any process:
//! let sender = Broker::from_env()?;
//! let total = sender.remote_handle::<u64>("total")?;
//! total.tell(5)?;
//! total.join()?;
//! served.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The design
//!
//! **Exactly one owner across machines.** The queue is a durable *quorum*
//! queue with *single active consumer*: any number of processes may serve the
//! same name, and the broker delivers to one of them at a time. The others
//! are hot standbys: their consumers are registered and idle, and when the
//! active owner's connection goes (a crash, or a freeze noticed through the
//! heartbeat, a few seconds) the broker makes one of them active and
//! redelivers every unacknowledged message to it, marked redelivered, in
//! queue order. So the rule of the crate, one resource, one thread, holds
//! across processes, with the exception the next paragraph is about.
//!
//! **Two owners at once, and what fences them.** The broker replaces an
//! owner whose connection it has lost, but the owner may not know yet: a
//! frozen process (SIGSTOP, a long pause) or one behind a silent network
//! still holds the deliveries it was sent (at most the prefetch, 256 by
//! default) and would handle them. So an owner that learns its channel or
//! connection is gone (an error, a close, its heartbeat check) answers,
//! reports and acknowledges nothing it handled since its last settled
//! batch. With reconnecting off (or once the broker is closed) it also
//! stops at once: its manager is stopped immediately, its mailbox dropped
//! (a [`RemoteDatabase`](crate::resources::RemoteDatabase) rolls its batch
//! in hand back too). With reconnecting on, the default, it keeps its
//! manager to serve again after the reconnect (see *Lost connections*
//! below), and what its mailbox still holds of the lost channel is dropped
//! unhandled (its redelivery is handled instead): only the message in hand
//! when the channel was lost is handled twice. A `RemoteDatabase` is also
//! fenced by its epoch as below (its claim counts only on a channel that
//! has had a delivery, so an owner back as a standby cannot claim). What an owner does before it learns cannot
//! be prevented by the owner, only fenced where the effect lands: a
//! `RemoteDatabase` claims the database with an owner epoch confirmed by the
//! broker, and checks it inside every batch's transaction, so no batch of a
//! superseded owner commits after the new owner's first (its commit is
//! rejected and it steps down). **The effects of other managers (a
//! counter, a printer, a call to another service) are at least once across
//! an owner change**: a superseded owner may act on the deliveries it held,
//! which the new owner gets again. A closed connection is noticed at once
//! (the old owner handles at most the message in hand); a frozen owner acts
//! on nothing while frozen, and once resumed notices at once; behind a
//! silent network the old owner goes on with what it holds until its
//! heartbeat check gives up, about two and a half heartbeat intervals (it
//! then drops the rest). That is the zombie window: at most the prefetch,
//! for at most that long. A shorter [`heartbeat`](BrokerBuilder::heartbeat)
//! shortens it, and the standby's wait after a freeze with it. The times
//! measured for each fault are in the project's BENCHMARKS.md (*Failover
//! under faults*).
//!
//! **One manager loop.** A delivery is decoded on a consumer thread and handed
//! to the manager through its ordinary mailbox, tagged with its delivery tag;
//! the manager thread runs the same loop as for local messages (block for
//! one, drain, `idle`), then settles the batch.
//!
//! **`task_done` is the ack.** A batch is acknowledged with one multiple-ack
//! after the manager's `idle` hook ran, so for a manager that commits in
//! `idle`, acknowledged means committed; a crash before that redelivers the
//! batch to the next owner (at least once). A batch cut short by the
//! runtime's `max_batch` (below the prefetch) waits for the next `idle`, and
//! an immediate stop acknowledges nothing that no `idle` covered (nor a
//! batch whose `idle` returned as the stop came): those deliveries go back
//! to the queue. For exactly-once *effects*, the
//! manager records each message's id in the transaction that applies it and
//! skips an id it has seen:
//! [`RemoteDatabase`](crate::resources::RemoteDatabase) does this for SQLite
//! writes (features `amqp` and `sqlite`). A delivery whose handler panicked
//! is requeued; on its last allowed delivery (the broker's `x-delivery-limit`,
//! default 5 redeliveries) it is copied to the dead-letter queue
//! `custody.<name>.dead` with the panic message in the `x-custody-error`
//! header, then acknowledged. Were the owner to crash on it every time
//! instead, the broker's delivery limit dead-letters it all the same.
//!
//! **`join` across processes.** The broker cannot tell a publisher that its
//! messages were handled, so each `RemoteHandle` owns a durable done queue
//! `custody.done.<producer-id>`, named in a header of each message it sends.
//! Before acknowledging a batch, the owner publishes one done record per
//! producer listing the message ids of the batch, and waits for the broker's
//! confirms; `join` returns once every id the handle got confirmed is in a
//! record. Messages that were dead-lettered are reported too, and make `join`
//! return [`RemoteJoinError::DeadLettered`].
//!
//! **`ask` across processes.** A request carries a [`RemoteReply<T>`]
//! (`ask(Msg::Get)` builds the message around a placeholder, as the local
//! `ask` does around a [`Reply`](crate::Reply)); it is nothing on the wire.
//! The request goes out like a `tell`, with RabbitMQ's direct reply-to
//! (`amq.rabbitmq.reply-to`, consumed without acks on the handle's channel
//! before the first request) as `reply_to` and its message id as correlation
//! id. The owner's consumer thread decodes it with that address bound, so the
//! manager's `RemoteReply` knows where to answer. **Answered means committed:**
//! the answer is held until the request's batch is settled (`idle` ran), like
//! the local `Database`, whose writers hear back only after the commit; a
//! reply kept past its batch is sent when answered. A reply dropped
//! unanswered (or a request with none in it) answers
//! [`RemoteAskError::NoReply`]. A handler that panics is retried like any
//! delivery; once its last delivery is dead-lettered the asker gets
//! [`RemoteAskError::DeadLettered`] with the panic, never a hang.
//! `ask_timeout` ends with [`RemoteAskError::Timeout`] at its deadline; the
//! request may still be handled, and its late answer is dropped (nobody
//! consumes it).
//!
//! **Answered before acknowledged.** Settling a batch publishes its answers
//! first, then its done records, waits for the broker's confirms of both,
//! and only then acknowledges the batch, all on the owner's one channel.
//! Direct reply-to keeps nothing: the broker hands an answer straight to the
//! asker's channel, and its confirm (RabbitMQ confirms such a publish once it
//! has routed it) says only that the broker took it, not that the asker got
//! it. What the order gives: the broker has every answer of a batch before
//! it has the batch's ack, so an owner that dies after the ack has answered,
//! and one that dies before it leaves the request unacknowledged, to be
//! redelivered to the next owner, handled again and answered again. The
//! asker takes the first answer for its correlation id and drops any later
//! one. What it does not give: the answers are not persistent, so an asker
//! whose connection drops loses them (its request is still handled), and the
//! second answer to a redelivered request is the second handling's (a
//! [`RemoteDatabase`](crate::resources::RemoteDatabase) write applied the
//! first time answers 0 rows changed the second).
//!
//! **Every delivery is untrusted input.** Any client can publish to the
//! queue, so the consumer thread checks each delivery before it decodes or
//! trusts any of it: the body's size (at most
//! [`BrokerBuilder::max_body`], 16 MiB by default), the content type and
//! encoding (CBOR, not compressed, when given), the `custody-producer` header
//! (UTF-8 text short enough to name a done queue) with its message id, the
//! `reply-to` address with its correlation id, and the broker's
//! `x-delivery-count`. A delivery that fails a check, does not decode, or
//! whose message type's `Deserialize` panics is dead-lettered with the reason
//! (naming the field and what was wrong) in `x-custody-error`; its producer
//! and its asker are told when their own fields are valid. No delivery stops
//! the queue: the messages around it are handled and acknowledged. Should the
//! consumer thread itself panic, the panic is logged as an error and the
//! serving ends as a stop does, so a standby takes over; so it does when the
//! manager exits on its own (an immediate stop, or its panic policy).
//!
//! **Every wait has a deadline.** A broker under a memory or disk alarm
//! blocks publishers without a word, so each confirm wait ends at the
//! broker's confirm timeout (default 10 s) with a typed error that gives the
//! message back. An unreachable broker is [`BrokerError::Unreachable`] within
//! the connect timeout (default 5 s), naming the host and never the password.
//!
//! **Lost connections.** A [`Broker`] keeps its nodes and settings; when
//! its connection is lost (a socket error, a missed heartbeat, a node that
//! stops), a supervisor thread tries the nodes again in rounds, starting
//! after the node lost, with a pause between rounds that doubles from
//! 100 ms up to 10 s and is drawn between half of it and all of it
//! ([`BrokerBuilder::reconnect_backoff`]; [`BrokerBuilder::reconnect`]
//! turns it off). [`Broker::state`] says where it is (connected, lost,
//! reconnecting, closed) and [`Broker::reconnects`] counts the new
//! connections. An owner whose channel is lost does not stop: the broker
//! has returned its unacknowledged deliveries to the queue (to a standby,
//! if one runs), and once there is a connection it declares the queue
//! again and consumes again with the same manager, as the active owner or
//! as a standby (single active consumer decides). Delivery tags belong to
//! their channel, so the lost channel's deliveries still queued in the
//! manager's mailbox are dropped before they are handled (counted in
//! [`OutsideStats::stale`](crate::OutsideStats::stale)) and never
//! acknowledged, answered or reported done: their redelivery is. Only the
//! one in hand when the channel was lost is handled twice (at least once,
//! as after a crash). A [`RemoteHandle`] opens a new channel at its
//! next call: a send waits for the connection until its deadline, then
//! fails with [`RemoteSendError::Unreachable`] (nothing was sent); a
//! publish cut before its confirm is sent again, with the same id; done
//! records are acknowledged once recorded, so none is lost with a
//! connection, and the durable done queue keeps those sent meanwhile; an
//! ask whose request went out on the lost connection ends with
//! [`RemoteAskError::Disconnected`] (its answer was to come back there),
//! never a hang. A call without a deadline (`join`, an `ask`'s wait for
//! its answer) does not wait for a new connection.
//!
//! **TLS.** `amqps://` URLs need the feature `amqps` (rustls with its `ring`
//! provider, which compiles C and assembly with the system C compiler; the
//! broker's certificate is checked against the system's root
//! certificates). Without it an `amqps://` URL is
//! [`BrokerError::InvalidUrl`], never a plain connection; a handshake that
//! fails (a port without TLS, a certificate not trusted) is
//! [`BrokerError::Tls`].
//!
//! **Why CBOR.** Messages cross the broker as CBOR (RFC 8949) through serde:
//! compact, standard, and self-describing, so a message of the wrong type
//! fails to decode (a missing field, an unknown variant, a string where a
//! number was expected) instead of decoding into garbage, and is
//! dead-lettered with the decode error in `x-custody-error`, never dropped
//! and never redelivered forever. Two types of the same shape (a `u32` and a
//! `u64`) do decode as each other.
//!
//! **Stopping, and handing over.** [`Served::stop`] (or dropping it) hands
//! the manager no more deliveries, lets it handle and acknowledge those it
//! was given, stops it, and only then closes the channel; the deliveries the
//! broker had sent ahead (at most the prefetch) return to the queue and go,
//! in order, to the next owner. It does not cancel the consumer first: on a
//! single-active-consumer queue a cancel makes the standby active at once,
//! while the old owner is still handling earlier messages (measured: two
//! owners at once, and the order lost). The price is that on RabbitMQ 3.x
//! each returned delivery counts towards the delivery limit. A
//! [`Runtime`](crate::Runtime) shutdown ends the serving the same way.
//!
//! **Changing a queue's settings.** A queue's arguments (its type, the
//! delivery limit, the dead-letter queue) are fixed when it is first
//! declared; serving or sending with other ones is
//! [`BrokerError::QueueMismatch`] (a [`QueueMismatch`]), naming the argument, the queue's value and
//! the one asked for. To change one: stop the owners and senders, let the
//! queue drain, delete its queues with [`Broker::delete_queues`], and serve
//! again with the new setting (or keep the old one).
//!
//! **Costs.** One connection per process (it runs its own I/O thread), one
//! channel per served manager and per `RemoteHandle`. A `tell` waits for
//! its publisher confirm (a disk sync on the broker); use
//! [`RemoteHandle::tell_all`], with many publishes in flight, for
//! throughput, and `ask` for answers: a round trip is a confirmed publish,
//! a batch of one settled and the answer confirmed. The measured costs, on
//! one node and on a three-node cluster, are in BENCHMARKS.md (*Through
//! RabbitMQ*).
//!

mod admin;
mod book;
mod codec;
mod connection;
mod error;
mod fanout;
mod names;
mod remote;
mod reply;
mod serve;
pub mod shard;

pub use admin::DeadMessage;
pub use connection::{
    BROKER_LIMIT_MARGIN, Broker, BrokerBuilder, BrokerState, DEFAULT_MAX_BODY,
    DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, DEFAULT_URL, URL_VAR,
};
pub use error::{
    BrokerError, Cause, DeadLetter, QueueMismatch, RemoteAskError, RemoteJoinError,
    RemoteSendError, TellAllError,
};
pub use remote::RemoteHandle;
pub use reply::RemoteReply;
pub use serve::Served;
#[cfg(feature = "sqlite")]
pub(crate) use serve::{Ownership, is_served, ownership};
pub use shard::{PartitionKey, Sharded, ShardedBuilder, ShardedHandle, fnv1a_64, partition_of};
