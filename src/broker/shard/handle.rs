//! `ShardedHandle<M>`: a `RemoteHandle` over every partition of a kind,
//! routing each message by its key.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::partition::{self, PartitionKey};
use crate::broker::connection::Broker;
use crate::broker::error::{
    BrokerError, RemoteAskError, RemoteJoinError, RemoteSendError, TellAllError,
};
use crate::broker::remote::RemoteHandle;
use crate::broker::reply::RemoteReply;
use crate::util::deadline_after;

/// The typed address of a sharded kind: sends each message to the
/// partition of its key ([`partition_of`](super::partition_of): FNV-1a 64
/// of the key's bytes modulo the partition count), so every message of one
/// key goes to one partition queue, in the order sent, and is handled by
/// that partition's one owner.
///
/// It is a [`RemoteHandle`] over the kind's partition queues: one channel
/// and one done queue for all of them, the same confirms, reconnection and
/// errors (which name the partition's queue), and one `join` for every
/// message it sent, whichever partition it went to.
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
///
/// let broker = Broker::from_env()?;
/// let counts = broker.sharded_handle::<u64>("counts", 8)?;
/// counts.tell_to("device-17", 1)?; // always partition 7 of 8, say
/// assert_eq!(counts.partition_of("device-17"), counts.partition_of("device-17"));
/// counts.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ShardedHandle<M> {
    remote: RemoteHandle<M>,
    partitions: u32,
}

impl<M> Clone for ShardedHandle<M> {
    fn clone(&self) -> Self {
        ShardedHandle {
            remote: self.remote.clone(),
            partitions: self.partitions,
        }
    }
}

impl<M> fmt::Debug for ShardedHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedHandle")
            .field("kind", &self.remote.name())
            .field("partitions", &self.partitions)
            .field("producer", &self.remote.producer_id())
            .finish_non_exhaustive()
    }
}

impl<M> ShardedHandle<M> {
    /// The kind this handle sends to.
    pub fn kind(&self) -> &str {
        self.remote.name()
    }

    /// The kind's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition `key` is routed to.
    pub fn partition_of(&self, key: impl AsRef<[u8]>) -> u32 {
        partition::partition_of(key.as_ref(), self.partitions)
    }

    /// Messages confirmed (or being sent) and not yet reported done.
    pub fn outstanding(&self) -> usize {
        self.remote.outstanding()
    }

    /// This handle's producer id (shared by its clones).
    pub fn producer_id(&self) -> &str {
        self.remote.producer_id()
    }

    fn route(&self, key: &[u8]) -> usize {
        partition::partition_of(key, self.partitions) as usize
    }
}

impl<M: Serialize> ShardedHandle<M> {
    pub(crate) fn new(
        broker: &Broker,
        kind: &str,
        partitions: u32,
    ) -> Result<ShardedHandle<M>, BrokerError> {
        Ok(ShardedHandle {
            remote: RemoteHandle::sharded(broker, kind, partitions)?,
            partitions,
        })
    }

    /// Sends `msg` to the partition of `key`, as
    /// [`RemoteHandle::tell`] does to its queue: `Ok` once the broker
    /// confirmed it.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell`], with the message inside.
    pub fn tell_to(&self, key: impl AsRef<[u8]>, msg: M) -> Result<(), RemoteSendError<M>> {
        let route = self.route(key.as_ref());
        self.remote
            .tell_timeout_on(route, msg, self.remote.confirm_timeout())
    }

    /// [`tell_to`](Self::tell_to), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell_timeout`].
    pub fn tell_timeout_to(
        &self,
        key: impl AsRef<[u8]>,
        msg: M,
        timeout: Duration,
    ) -> Result<(), RemoteSendError<M>> {
        let route = self.route(key.as_ref());
        self.remote.tell_timeout_on(route, msg, timeout)
    }

    /// Sends every `(key, message)` pair to its key's partition with many
    /// publishes in flight (see [`RemoteHandle::tell_all`]); the messages
    /// of one key reach their partition in iteration order.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell_all`].
    pub fn tell_all_to<K, I>(&self, msgs: I) -> Result<(), TellAllError<M>>
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, M)>,
    {
        self.remote.tell_all_on(
            msgs.into_iter()
                .map(|(key, msg)| (self.route(key.as_ref()), msg)),
        )
    }

    /// Asks the owner of `key`'s partition and waits for the answer (see
    /// [`RemoteHandle::ask`]).
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::ask`].
    pub fn ask_to<R, F>(&self, key: impl AsRef<[u8]>, make: F) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.remote
            .ask_until(self.route(key.as_ref()), make, None, None)
    }

    /// [`ask_to`](Self::ask_to), ending with
    /// [`RemoteAskError::Timeout`] when no answer came within `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::ask_timeout`].
    pub fn ask_timeout_to<R, F>(
        &self,
        key: impl AsRef<[u8]>,
        make: F,
        timeout: Duration,
    ) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        self.remote.ask_until(
            self.route(key.as_ref()),
            make,
            deadline_after(timeout),
            Some(timeout),
        )
    }
}

impl<M: Serialize + PartitionKey> ShardedHandle<M> {
    /// Sends `msg` to the partition of the key it names
    /// ([`PartitionKey::partition_key`]).
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell`], with the message inside.
    pub fn tell(&self, msg: M) -> Result<(), RemoteSendError<M>> {
        let route = self.route(&msg.partition_key());
        self.remote
            .tell_timeout_on(route, msg, self.remote.confirm_timeout())
    }

    /// [`tell`](Self::tell), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell_timeout`].
    pub fn tell_timeout(&self, msg: M, timeout: Duration) -> Result<(), RemoteSendError<M>> {
        let route = self.route(&msg.partition_key());
        self.remote.tell_timeout_on(route, msg, timeout)
    }

    /// Sends every message to its key's partition with many publishes in
    /// flight (see [`RemoteHandle::tell_all`]).
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::tell_all`].
    pub fn tell_all<I>(&self, msgs: I) -> Result<(), TellAllError<M>>
    where
        I: IntoIterator<Item = M>,
    {
        self.remote.tell_all_on(
            msgs.into_iter()
                .map(|msg| (self.route(&msg.partition_key()), msg)),
        )
    }

    /// Asks the owner of the partition of the key the request names: the
    /// request is built first (around a placeholder reply, as
    /// [`RemoteHandle::ask`] does), then routed by its key.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::ask`].
    pub fn ask<R, F>(&self, make: F) -> Result<R, RemoteAskError>
    where
        R: DeserializeOwned,
        F: FnOnce(RemoteReply<R>) -> M,
    {
        let msg = make(RemoteReply::placeholder());
        let route = self.route(&msg.partition_key());
        self.remote.ask_until(route, |_| msg, None, None)
    }
}

impl<M> ShardedHandle<M> {
    /// Waits until every message this handle (and its clones) got confirmed
    /// was handled, in whichever partition (see [`RemoteHandle::join`]).
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::join`].
    pub fn join(&self) -> Result<(), RemoteJoinError> {
        self.remote.join()
    }

    /// [`join`](Self::join), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`RemoteHandle::join_timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteJoinError> {
        self.remote.join_timeout(timeout)
    }
}

impl<M: Serialize + Send + 'static> ShardedHandle<M> {
    /// The awaitable [`tell_to`](Self::tell_to) (on the shared pool of
    /// threads, as [`RemoteHandle::tell_async`]).
    ///
    /// # Errors
    ///
    /// As [`tell_to`](Self::tell_to).
    pub fn tell_to_async(
        &self,
        key: impl AsRef<[u8]>,
        msg: M,
    ) -> impl Future<Output = Result<(), RemoteSendError<M>>> + Send + 'static {
        let handle = self.clone();
        let route = self.route(key.as_ref());
        blocking::unblock(move || {
            let timeout = handle.remote.confirm_timeout();
            handle.remote.tell_timeout_on(route, msg, timeout)
        })
    }

    /// The awaitable [`ask_to`](Self::ask_to).
    ///
    /// # Errors
    ///
    /// As [`ask_to`](Self::ask_to).
    pub fn ask_to_async<R, F>(
        &self,
        key: impl AsRef<[u8]>,
        make: F,
    ) -> impl Future<Output = Result<R, RemoteAskError>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        F: FnOnce(RemoteReply<R>) -> M + Send + 'static,
    {
        let handle = self.clone();
        let route = self.route(key.as_ref());
        blocking::unblock(move || handle.remote.ask_until(route, make, None, None))
    }

    /// The awaitable [`join`](Self::join).
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join).
    pub fn join_async(&self) -> impl Future<Output = Result<(), RemoteJoinError>> + Send + 'static {
        let handle = self.clone();
        blocking::unblock(move || handle.remote.join())
    }
}
