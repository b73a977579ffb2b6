//! The mailbox seam: the one module that names a channel crate.
//!
//! A mailbox is a channel of [`Envelope`]s plus a [`Gate`] that counts the
//! messages accepted but not yet handled: [`Mailbox`] is its send side (the
//! sender, the gate, the immediate-stop flag and, for a manager served from
//! an outside queue, the queue's [`SettleOutside`]), shared by the handles;
//! [`Inbox`] is its receive side, owned by the manager thread. The rest of
//! the crate sees only these, the [`Sender`] and [`Receiver`] enums defined
//! here and the small failure enums below; `crossbeam_flavor.rs` and
//! `flume_flavor.rs` translate each crate's errors into them.
//! Enum dispatch keeps the choice of backend a runtime value (per runtime or per
//! manager) at the cost of one well-predicted branch per operation.

mod crossbeam_flavor;
mod flume_flavor;
mod gate;
mod outside;

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub(crate) use gate::Gate;
pub(crate) use outside::SettleOutside;

use crate::error::CapacityError;
use crate::observe::{Trace, trace};
use crate::wakers::Wakers;

/// Which channel implementation carries a manager's messages.
///
/// Both backends are always compiled in; pick one per runtime with
/// [`RuntimeBuilder::backend`](crate::RuntimeBuilder::backend) or per manager with
/// [`ManagerBuilder::backend`](crate::ManagerBuilder::backend).
///
/// # Examples
///
/// ```
/// use custody::{Backend, Runtime};
///
/// let rt = Runtime::builder().backend(Backend::Flume).build()?;
/// assert_eq!(rt.backend(), Backend::Flume);
/// # Ok::<(), custody::BuildError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `crossbeam-channel`: the default.
    #[default]
    Crossbeam,
    /// `flume`.
    Flume,
}

impl Backend {
    /// Every backend, in a stable order: handy for running one test per backend.
    pub const ALL: [Backend; 2] = [Backend::Crossbeam, Backend::Flume];

    /// A short lowercase name: `"crossbeam"` or `"flume"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Crossbeam => "crossbeam",
            Backend::Flume => "flume",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many messages a mailbox holds before `tell` blocks.
///
/// A zero capacity (a rendezvous channel) is refused: a manager's sender would
/// then wait for the manager to be idle, which defeats batching and makes a
/// manager that tells itself hang. Capacities above [`Capacity::MAX`] are
/// refused too, since a bounded crossbeam channel allocates its slots up front.
///
/// # Examples
///
/// ```
/// use custody::{Capacity, CapacityError};
///
/// assert_eq!(Capacity::bounded(64)?, Capacity::Bounded(64));
/// assert_eq!(Capacity::bounded(0), Err(CapacityError::Zero));
/// assert!(matches!(Capacity::bounded(usize::MAX), Err(CapacityError::TooLarge { .. })));
/// # Ok::<(), CapacityError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// No limit: `tell` never blocks.
    #[default]
    Unbounded,
    /// At most this many queued messages; build it with [`Capacity::bounded`].
    Bounded(usize),
}

impl Capacity {
    /// The largest bounded capacity accepted (2^24 messages).
    pub const MAX: usize = 1 << 24;

    /// A bounded capacity, checked.
    ///
    /// # Errors
    ///
    /// [`CapacityError::Zero`] for 0 and [`CapacityError::TooLarge`] above
    /// [`Capacity::MAX`].
    pub fn bounded(n: usize) -> Result<Capacity, CapacityError> {
        Capacity::Bounded(n).validate()
    }

    /// Whether a send can block waiting for room.
    pub fn is_bounded(self) -> bool {
        matches!(self, Capacity::Bounded(_))
    }

    /// Checks a capacity built by hand with `Capacity::Bounded(n)`.
    pub(crate) fn validate(self) -> Result<Capacity, CapacityError> {
        match self {
            Capacity::Bounded(0) => Err(CapacityError::Zero),
            Capacity::Bounded(n) if n > Capacity::MAX => Err(CapacityError::TooLarge {
                requested: n,
                max: Capacity::MAX,
            }),
            ok => Ok(ok),
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capacity::Unbounded => f.write_str("unbounded"),
            Capacity::Bounded(n) => write!(f, "bounded({n})"),
        }
    }
}

/// What travels in a mailbox: a user message, a message delivered from an
/// outside queue (with the tag to settle it by), or an uncounted nudge that
/// makes the manager look at its gate again (sent on stop).
///
/// `Delivered` is boxed so that it does not make every local message larger:
/// the envelope of a local message is the message plus, at most, a tag word
/// (often nothing, when the message has a niche), which keeps more messages
/// per cache line on the hot path.
pub(crate) enum Envelope<M> {
    Msg(M),
    Delivered(Box<(M, u64)>),
    /// A message sent to a manager that traces messages, with its sender's
    /// span and send time (see `observe::trace`).
    Traced(Box<(M, Trace)>),
    Wake,
}

/// The envelope must not grow past the message plus one word.
const _: () = assert!(std::mem::size_of::<Envelope<u64>>() <= 16);

impl<M> Envelope<M> {
    /// The message and its outside tag (if it came from an outside queue);
    /// `None` for a wake-up.
    #[inline]
    pub(crate) fn open(self) -> Option<(M, Option<u64>)> {
        match self {
            Envelope::Msg(m) => Some((m, None)),
            Envelope::Delivered(delivered) => {
                let (m, tag) = *delivered;
                Some((m, Some(tag)))
            }
            Envelope::Traced(traced) => {
                let (m, capture) = *traced;
                trace::stash(capture);
                Some((m, None))
            }
            Envelope::Wake => None,
        }
    }

    /// The message inside, if any.
    pub(crate) fn into_msg(self) -> Option<M> {
        match self {
            Envelope::Msg(m) => Some(m),
            Envelope::Delivered(delivered) => Some(delivered.0),
            Envelope::Traced(traced) => Some(traced.0),
            Envelope::Wake => None,
        }
    }
}

/// Why a send did not go through; the envelope comes back.
pub(crate) enum SendFailure<T> {
    Full(T),
    Timeout(T),
    Disconnected(T),
}

/// Why a receive returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvFailure {
    Empty,
    Timeout,
    Disconnected,
}

/// The sending half of a mailbox channel.
pub(crate) enum Sender<T> {
    Crossbeam(crossbeam_channel::Sender<T>),
    Flume(flume::Sender<T>),
}

/// The receiving half of a mailbox channel.
pub(crate) enum Receiver<T> {
    Crossbeam(crossbeam_channel::Receiver<T>),
    Flume(flume::Receiver<T>),
}

/// Opens a channel of the given backend and (validated) capacity.
pub(crate) fn channel<T>(backend: Backend, capacity: Capacity) -> (Sender<T>, Receiver<T>) {
    match backend {
        Backend::Crossbeam => {
            let (tx, rx) = crossbeam_flavor::channel(capacity);
            (Sender::Crossbeam(tx), Receiver::Crossbeam(rx))
        }
        Backend::Flume => {
            let (tx, rx) = flume_flavor::channel(capacity);
            (Sender::Flume(tx), Receiver::Flume(rx))
        }
    }
}

impl<T> Sender<T> {
    /// Sends, blocking while full until `deadline` (forever when `None`).
    #[inline]
    pub(crate) fn send(&self, msg: T, deadline: Option<Instant>) -> Result<(), SendFailure<T>> {
        match self {
            Sender::Crossbeam(tx) => crossbeam_flavor::send(tx, msg, deadline),
            Sender::Flume(tx) => flume_flavor::send(tx, msg, deadline),
        }
    }

    /// Sends without blocking.
    #[inline]
    pub(crate) fn try_send(&self, msg: T) -> Result<(), SendFailure<T>> {
        match self {
            Sender::Crossbeam(tx) => crossbeam_flavor::try_send(tx, msg),
            Sender::Flume(tx) => flume_flavor::try_send(tx, msg),
        }
    }

    /// Messages waiting in the channel.
    pub(crate) fn len(&self) -> usize {
        match self {
            Sender::Crossbeam(tx) => tx.len(),
            Sender::Flume(tx) => tx.len(),
        }
    }
}

impl<T> Receiver<T> {
    /// Receives, blocking until `deadline` (forever when `None`).
    #[inline]
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvFailure> {
        match self {
            Receiver::Crossbeam(rx) => crossbeam_flavor::recv(rx, deadline),
            Receiver::Flume(rx) => flume_flavor::recv(rx, deadline),
        }
    }

    /// Whether nothing is queued right now.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Receiver::Crossbeam(rx) => rx.is_empty(),
            Receiver::Flume(rx) => rx.is_empty(),
        }
    }

    /// Receives what is already queued, without blocking.
    #[inline]
    pub(crate) fn try_recv(&self) -> Result<T, RecvFailure> {
        match self {
            Receiver::Crossbeam(rx) => crossbeam_flavor::try_recv(rx),
            Receiver::Flume(rx) => flume_flavor::try_recv(rx),
        }
    }
}

/// The send side of one manager's mailbox, shared by its handles.
pub(crate) struct Mailbox<M> {
    pub(crate) tx: Sender<Envelope<M>>,
    /// Counts what the mailbox accepted and the manager has not finished;
    /// closed by a stop.
    pub(crate) gate: Gate,
    /// Set by an immediate stop: discard what is queued. Read per message.
    abort: AtomicBool,
    /// Settles messages delivered from an outside queue (a manager served
    /// from a broker queue); given before the manager thread starts.
    outside: Option<Box<dyn SettleOutside>>,
    /// A bounded mailbox's waiting async senders (see [`Room`]).
    room: Option<Arc<Wakers>>,
}

impl<M> Mailbox<M> {
    /// Opens a mailbox of the given backend and (validated) capacity for a
    /// manager of runtime `runtime_id`: its send side, and the receive side
    /// for the manager thread.
    pub(crate) fn open(
        backend: Backend,
        capacity: Capacity,
        runtime_id: u64,
        outside: Option<Box<dyn SettleOutside>>,
    ) -> (Mailbox<M>, Inbox<M>) {
        let (tx, rx) = channel(backend, capacity);
        let room = capacity.is_bounded().then(|| Arc::new(Wakers::new()));
        let mailbox = Mailbox {
            tx,
            gate: Gate::new(runtime_id),
            abort: AtomicBool::new(false),
            outside,
            room: room.clone(),
        };
        (
            mailbox,
            Inbox {
                rx,
                room: room.map(Room),
                yield_early: Cell::new(false),
            },
        )
    }

    /// The waiting async senders of a bounded mailbox (`None` when
    /// unbounded: a send into it never waits).
    pub(crate) fn room(&self) -> Option<&Wakers> {
        self.room.as_deref()
    }

    /// Makes the manager look at its gate again. A full mailbox needs no
    /// nudge: the manager has messages to wake it.
    pub(crate) fn nudge(&self) {
        let _ = self.tx.try_send(Envelope::Wake);
    }

    /// Closes the gate (a graceful stop): what was accepted is still handled.
    pub(crate) fn stop(&self) {
        if self.gate.close() {
            self.nudge();
        }
    }

    /// An immediate stop: the manager discards what is queued.
    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.gate.close();
        self.nudge();
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// The outside queue's settler, for a manager served from one.
    pub(crate) fn outside(&self) -> Option<&dyn SettleOutside> {
        self.outside.as_deref()
    }

    /// Messages waiting in the channel.
    pub(crate) fn len(&self) -> usize {
        self.tx.len()
    }
}

/// The receive side of one manager's mailbox, owned by its thread.
pub(crate) struct Inbox<M> {
    /// Declared before `room`, so dropped first: see [`Room`].
    rx: Receiver<Envelope<M>>,
    room: Option<Room>,
    /// Whether the last [`Inbox::linger`] that found a message found it only
    /// after yielding: then the next one yields after a short wait.
    yield_early: Cell<bool>,
}

/// The async senders waiting for room in a bounded mailbox, seen from the
/// receive side.
///
/// Crossbeam has no async send, and flume's would be a second mechanism
/// beside this one, so both backends share it: a send future that finds the
/// channel full registers its waker in the mailbox's [`Wakers`] list, then
/// (after a `SeqCst` fence) tries the channel again. Each message the manager
/// receives frees a slot: the inbox then (after a fence) wakes the first
/// waiting sender, if any. So either the sender's second try sees the freed
/// slot, or the inbox sees the sender. Blocked threads are woken by the
/// channel itself, for the same freed slots; a woken sender that loses the
/// slot to one waits again at the front of the list.
///
/// Dropped after the receiver (the manager thread has ended): every waiting
/// sender is woken, and finds the channel disconnected.
struct Room(Arc<Wakers>);

impl Room {
    /// A slot was freed: wake the first waiting sender.
    #[inline]
    fn freed(&self) {
        self.0.fence_then_wake_one();
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.0.wake_all();
    }
}

/// How many spin hints [`Inbox::linger`] waits for one more message before
/// it yields, when its last message came only after a yield (about half a
/// microsecond here: a spin hint is about 30 ns on this project's machine).
const LINGER_SHORT: u32 = 16;
/// The same, when its last message came while polling (about 2 µs).
const LINGER_LONG: u32 = 64;

impl<M> Inbox<M> {
    /// Receives, blocking until `deadline` (forever when `None`).
    #[inline]
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Envelope<M>, RecvFailure> {
        let Some(room) = &self.room else {
            return self.rx.recv(deadline);
        };
        let received = self.rx.recv(deadline);
        if received.is_ok() {
            room.freed();
        }
        received
    }

    /// Receives what is already queued, without blocking.
    ///
    /// An unbounded mailbox (no async sender ever waits for room) returns
    /// the channel's result as it is: this is the loop's per-message path.
    #[inline]
    pub(crate) fn try_recv(&self) -> Result<Envelope<M>, RecvFailure> {
        let Some(room) = &self.room else {
            return self.rx.try_recv();
        };
        let received = self.rx.try_recv();
        if received.is_ok() {
            // A bounded mailbox that gave up an envelope has room for a
            // waiting async sender.
            room.freed();
        }
        received
    }

    /// The next message queued, skipping wake-ups; `None` if only wake-ups
    /// were.
    pub(crate) fn next_message(&self) -> Option<(M, Option<u64>)> {
        loop {
            match self.try_recv() {
                Ok(envelope) => {
                    if let Some(opened) = envelope.open() {
                        return Some(opened);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Before a batch ends, waits a moment for the next message: `true` if
    /// one came. Under a steady stream this merges what would be many
    /// one-message batches into one, so the batch's fixed costs (idle,
    /// settling the gate) are paid once, not per message.
    ///
    /// It polls for a moment (a sender on another core that is already
    /// running, such as an asker sending its next request, lands within
    /// it), then yields the core once and looks again: a sender waiting for
    /// this very core (an asker on the same core, which needs the manager
    /// thread to step aside to read its answer and send again) runs now, and
    /// the batch goes on instead of ending and paying the channel's own
    /// spin-then-park. The moment is short (half a microsecond) when the
    /// last message found here came only after the yield, long (2 µs) when
    /// it came while polling, so that a sender on another core does not
    /// make the manager yield. An idle mailbox costs this once per batch.
    #[inline]
    pub(crate) fn linger(&self) -> bool {
        let spins = if self.yield_early.get() {
            LINGER_SHORT
        } else {
            LINGER_LONG
        };
        for _ in 0..spins {
            std::hint::spin_loop();
            if !self.rx.is_empty() {
                self.yield_early.set(false);
                return true;
            }
        }
        std::thread::yield_now();
        let came = !self.rx.is_empty();
        if came {
            self.yield_early.set(true);
        }
        came
    }
}
