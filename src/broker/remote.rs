//! The sender side: `RemoteHandle<M>`, a typed address of a manager served
//! from a broker queue, possibly in another process.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use lapin::Channel;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::Serialize;

use super::codec::{self, DoneRecord};
use super::connection::{self, Broker, Link, block_until};
use super::error::{BrokerError, DeadLetter, RemoteJoinError, RemoteSendError};
use super::serve::unique;

/// How long an unused done queue outlives its producer (a producer that
/// crashed cannot delete it): one hour.
const DONE_QUEUE_EXPIRES_MS: i64 = 60 * 60 * 1000;

/// The typed address of a manager served from the broker queue
/// `custody.<name>`, in this process or another: `tell` publishes a
/// persistent message and waits for the broker's confirm; `join` waits until
/// the owner reports every confirmed message handled.
///
/// Each handle has a producer id of its own and a durable done queue
/// `custody.done.<producer-id>` where the owner sends done records (after the
/// batch's `idle` hook ran, before it acknowledges the batch). Clones share
/// the producer id; the done queue is deleted when the last clone is dropped.
///
/// # Examples
///
/// ```no_run
/// use custody::broker::Broker;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum Job {
///     Resize { path: String, width: u32 },
/// }
///
/// let broker = Broker::from_env()?;
/// let jobs = broker.remote_handle::<Job>("thumbnails")?;
/// jobs.tell(Job::Resize { path: "a.png".into(), width: 128 })?;
/// jobs.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteHandle<M> {
    remote: Arc<Remote>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for RemoteHandle<M> {
    fn clone(&self) -> Self {
        RemoteHandle {
            remote: Arc::clone(&self.remote),
            _msg: PhantomData,
        }
    }
}

impl<M> fmt::Debug for RemoteHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteHandle")
            .field("queue", &self.remote.queue)
            .field("producer", &self.remote.producer)
            .finish_non_exhaustive()
    }
}

/// What the clones of one handle share.
struct Remote {
    link: Arc<Link>,
    channel: Channel,
    name: String,
    queue: String,
    producer: String,
    done_queue: String,
    next_id: AtomicU64,
    joins: Arc<Joins>,
}

/// The join state, fed by the done-queue consumer.
#[derive(Default)]
struct Joins {
    state: Mutex<JoinState>,
    changed: Condvar,
}

#[derive(Default)]
struct JoinState {
    /// Ids being published or confirmed, not yet reported done.
    outstanding: HashSet<String>,
    /// Reported dead-lettered since the last join.
    dead: Vec<DeadLetter>,
    /// Why no more done records can arrive.
    lost: Option<String>,
}

impl Joins {
    fn state(&self) -> MutexGuard<'_, JoinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, id: &str) {
        if self.state().outstanding.remove(id) {
            self.changed.notify_all();
        }
    }

    fn on_delivery(&self, delivery: DeliveryResult) {
        match delivery {
            Ok(Some(delivery)) => match codec::decode::<DoneRecord>(&delivery.data) {
                Ok(record) => self.record(record),
                Err(e) => tracing::warn!(error = %e, "ignoring an undecodable done record"),
            },
            Ok(None) => self.lose("the done queue consumer was cancelled".to_owned()),
            Err(e) => self.lose(e.to_string()),
        }
    }

    fn record(&self, record: DoneRecord) {
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

    fn lose(&self, reason: String) {
        self.state().lost.get_or_insert(reason);
        self.changed.notify_all();
    }
}

impl<M: Serialize> RemoteHandle<M> {
    pub(crate) fn new(broker: &Broker, name: &str) -> Result<RemoteHandle<M>, BrokerError> {
        connection::check_name(name)?;
        let link = Arc::clone(&broker.link);
        let channel = link.confirmed_channel()?;
        link.declare_mailbox(&channel, name)?;
        let producer = producer_id();
        let done_queue = connection::done_queue(&producer);
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(DONE_QUEUE_EXPIRES_MS),
        );
        link.run(
            || format!("declaring queue `{done_queue}`"),
            channel.queue_declare(
                ShortString::from(done_queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            ),
        )?;
        let joins = Arc::new(Joins::default());
        let consumer = link.run(
            || format!("consuming from `{done_queue}`"),
            channel.basic_consume(
                ShortString::from(done_queue.as_str()),
                ShortString::from(format!("{done_queue}.join")),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )?;
        let fed = Arc::clone(&joins);
        consumer.set_delegate(move |delivery: DeliveryResult| {
            fed.on_delivery(delivery);
            std::future::ready(())
        });
        Ok(RemoteHandle {
            remote: Arc::new(Remote {
                link,
                channel,
                name: name.to_owned(),
                queue: connection::mailbox_queue(name),
                producer,
                done_queue,
                next_id: AtomicU64::new(0),
                joins,
            }),
            _msg: PhantomData,
        })
    }

    /// Publishes `msg` as a persistent message and waits (at most the
    /// broker's confirm timeout) for the broker to confirm it: `Ok` means it
    /// is in the queue, on disk, and will be handled by the owner (now, or
    /// when one starts).
    ///
    /// # Errors
    ///
    /// [`RemoteSendError`] with the message inside: `Timeout`, `Nacked`,
    /// `Unroutable` (the queue was deleted), `Disconnected`, `Encode`.
    pub fn tell(&self, msg: M) -> Result<(), RemoteSendError<M>> {
        self.tell_timeout(msg, self.remote.link.settings.confirm_timeout)
    }

    /// Like [`tell`](RemoteHandle::tell), waiting at most `timeout` for the
    /// confirm.
    ///
    /// # Errors
    ///
    /// As [`tell`](RemoteHandle::tell). After a `Timeout` the broker may still
    /// take the message; `join` does not wait for it.
    pub fn tell_timeout(&self, msg: M, timeout: Duration) -> Result<(), RemoteSendError<M>> {
        let remote = &*self.remote;
        let queue = || remote.queue.clone();
        let body = match codec::encode(&msg) {
            Ok(body) => body,
            Err(reason) => {
                return Err(RemoteSendError::Encode {
                    msg,
                    queue: queue(),
                    reason,
                });
            }
        };
        let id = format!(
            "{}.{}",
            remote.producer,
            remote.next_id.fetch_add(1, Ordering::Relaxed)
        );
        // Counted before the publish: the done record may beat the confirm.
        remote.joins.state().outstanding.insert(id.clone());
        let deadline = connection::deadline(timeout);
        let outcome = block_until(deadline, async {
            let confirm = remote
                .channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(remote.queue.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    codec::message_properties(&id, &remote.producer),
                )
                .await?;
            confirm.await
        });
        let refused = match outcome {
            Some(Ok(confirm)) if confirm.is_ack() => match confirm.take_message() {
                None => return Ok(()),
                Some(_) => RemoteSendError::Unroutable {
                    msg,
                    queue: queue(),
                },
            },
            Some(Ok(_)) => RemoteSendError::Nacked {
                msg,
                queue: queue(),
            },
            Some(Err(e)) => RemoteSendError::Disconnected {
                msg,
                queue: queue(),
                reason: e.to_string(),
            },
            None => RemoteSendError::Timeout {
                msg,
                queue: queue(),
                waited: timeout,
            },
        };
        remote.joins.forget(&id);
        Err(refused)
    }
}

impl<M> RemoteHandle<M> {
    /// Blocks until the owner has reported every message this handle (or a
    /// clone) got confirmed as handled: its batch was handled, its `idle`
    /// hook ran, and it is about to be acknowledged. Waits for an owner to
    /// start if none runs.
    ///
    /// # Errors
    ///
    /// [`RemoteJoinError::DeadLettered`] if some of them were dead-lettered
    /// instead (undecodable, or a handler that panicked on every delivery);
    /// [`RemoteJoinError::Disconnected`] if the connection was lost.
    pub fn join(&self) -> Result<(), RemoteJoinError> {
        self.join_until(None)
    }

    /// Like [`join`](RemoteHandle::join), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`join`](RemoteHandle::join), plus [`RemoteJoinError::Timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteJoinError> {
        self.join_until(connection::deadline(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), RemoteJoinError> {
        let remote = &*self.remote;
        let joins = &*remote.joins;
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
            state = match deadline {
                None => joins
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        return Err(RemoteJoinError::Timeout {
                            queue: remote.queue.clone(),
                            outstanding: state.outstanding.len(),
                        });
                    }
                    joins
                        .changed
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Messages confirmed (or being sent) and not yet reported done.
    pub fn outstanding(&self) -> usize {
        self.remote.joins.state().outstanding.len()
    }

    /// The name of the manager this handle sends to.
    pub fn name(&self) -> &str {
        &self.remote.name
    }

    /// The queue this handle publishes to, `custody.<name>`.
    pub fn queue(&self) -> &str {
        &self.remote.queue
    }

    /// This handle's producer id (shared by its clones).
    pub fn producer_id(&self) -> &str {
        &self.remote.producer
    }

    /// The queue the owner's done records for this handle arrive in.
    pub fn done_queue(&self) -> &str {
        &self.remote.done_queue
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let deleted = self.link.run(
            || format!("deleting queue `{}`", self.done_queue),
            self.channel.queue_delete(
                ShortString::from(self.done_queue.as_str()),
                QueueDeleteOptions::default(),
            ),
        );
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "done queue not deleted; it expires in an hour");
        }
        let _ = block_until(
            self.link.confirm_deadline(),
            self.channel
                .close(200, ShortString::from("custody: handle dropped")),
        );
    }
}

/// A producer id unique across processes and machines in practice: the
/// process id, the start time in nanoseconds, and a counter.
fn producer_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}-{}", std::process::id(), nanos, unique())
}
