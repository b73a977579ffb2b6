//! The awaitable twins of a `RemoteHandle`'s waiting calls.
//!
//! Each runs the blocking call on a shared pool of threads (the `blocking`
//! crate's, which the AMQP client's executor already uses) and resolves when
//! it returns, so the thread polling the future never blocks, whatever the
//! executor. A call waits for the broker anyway (a publisher confirm is about
//! an fsync on the broker: a millisecond or more), so the hop to the pool
//! costs little beside it. The reconnection, deadline and error semantics are
//! those of the blocking call, unchanged.
//!
//! Cancel safety: dropping one of these futures does not stop the call
//! already running on the pool. A `tell` goes on to its confirm (the message
//! may be sent and counted for `join`); an `ask`'s answer is dropped.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RemoteHandle;
use crate::broker::error::{RemoteAskError, RemoteJoinError, RemoteSendError, TellAllError};
use crate::broker::reply::RemoteReply;

impl<M: Serialize + Send + 'static> RemoteHandle<M> {
    /// The awaitable [`tell`](RemoteHandle::tell): resolves once the broker
    /// confirmed the message (or with why not), without blocking the thread
    /// polling it: the blocking call runs on a shared pool of threads (the
    /// `blocking` crate's) and the future resolves when it returns. Dropped
    /// before then, the call goes on: the message may still be sent and
    /// count for `join`.
    ///
    /// # Errors
    ///
    /// As [`tell`](RemoteHandle::tell).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use custody::broker::Broker;
    ///
    /// # futures_lite::future::block_on(async {
    /// let broker = Broker::from_env()?;
    /// let total = broker.remote_handle::<u64>("total")?;
    /// total.tell_async(1).await?;
    /// total.join_async().await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn tell_async(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<(), RemoteSendError<M>>> + Send + 'static {
        let handle = self.clone();
        blocking::unblock(move || handle.tell(msg))
    }

    /// The awaitable [`tell_timeout`](RemoteHandle::tell_timeout).
    ///
    /// # Errors
    ///
    /// As [`tell_timeout`](RemoteHandle::tell_timeout).
    pub fn tell_timeout_async(
        &self,
        msg: M,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), RemoteSendError<M>>> + Send + 'static {
        let handle = self.clone();
        blocking::unblock(move || handle.tell_timeout(msg, timeout))
    }

    /// The awaitable [`tell_all`](RemoteHandle::tell_all).
    ///
    /// # Errors
    ///
    /// As [`tell_all`](RemoteHandle::tell_all).
    pub fn tell_all_async<I>(
        &self,
        msgs: I,
    ) -> impl Future<Output = Result<(), TellAllError<M>>> + Send + 'static
    where
        I: IntoIterator<Item = M> + Send + 'static,
    {
        let handle = self.clone();
        blocking::unblock(move || handle.tell_all(msgs))
    }

    /// The awaitable [`ask`](RemoteHandle::ask), run on the same pool as
    /// [`tell_async`](RemoteHandle::tell_async). Dropped before it resolves,
    /// the request may still be sent and handled; its answer is dropped.
    ///
    /// # Errors
    ///
    /// As [`ask`](RemoteHandle::ask).
    pub fn ask_async<R, F>(
        &self,
        make: F,
    ) -> impl Future<Output = Result<R, RemoteAskError>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        F: FnOnce(RemoteReply<R>) -> M + Send + 'static,
    {
        let handle = self.clone();
        blocking::unblock(move || handle.ask(make))
    }

    /// The awaitable [`ask_timeout`](RemoteHandle::ask_timeout).
    ///
    /// # Errors
    ///
    /// As [`ask_timeout`](RemoteHandle::ask_timeout).
    pub fn ask_timeout_async<R, F>(
        &self,
        make: F,
        timeout: Duration,
    ) -> impl Future<Output = Result<R, RemoteAskError>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        F: FnOnce(RemoteReply<R>) -> M + Send + 'static,
    {
        let handle = self.clone();
        blocking::unblock(move || handle.ask_timeout(make, timeout))
    }
}

impl<M: Send + 'static> RemoteHandle<M> {
    /// The awaitable [`join`](RemoteHandle::join).
    ///
    /// # Errors
    ///
    /// As [`join`](RemoteHandle::join).
    pub fn join_async(&self) -> impl Future<Output = Result<(), RemoteJoinError>> + Send + 'static {
        let handle = self.clone();
        blocking::unblock(move || handle.join())
    }

    /// The awaitable [`join_timeout`](RemoteHandle::join_timeout).
    ///
    /// # Errors
    ///
    /// As [`join_timeout`](RemoteHandle::join_timeout).
    pub fn join_timeout_async(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), RemoteJoinError>> + Send + 'static {
        let handle = self.clone();
        blocking::unblock(move || handle.join_timeout(timeout))
    }
}
