//! `Counter`: one `i64` owned by one manager thread.

use crate::future::{Ask, Tell};
use crate::{AskError, Context, Handle, Manager, Reply, Runtime, SendError, SpawnError};

/// The messages a [`Counter`] accepts.
///
/// Most code uses the methods of [`CounterHandle`] instead of building these
/// by hand. `Add` carries its operand inline, so telling it allocates nothing.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Counter, CounterMsg};
///
/// let rt = Runtime::new();
/// let counter = rt.spawn("counter", Counter::new())?;
/// counter.tell(CounterMsg::Add(5))?;
/// counter.tell(CounterMsg::Add(-2))?;
/// assert_eq!(counter.ask(CounterMsg::Get)?, 3);
/// counter.tell(CounterMsg::Reset)?;
/// assert_eq!(counter.ask(CounterMsg::Get)?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum CounterMsg {
    /// Adds the operand (negative to subtract), wrapping on overflow.
    Add(i64),
    /// Answers the current value.
    Get(Reply<i64>),
    /// Sets the value back to zero.
    Reset,
}

/// A manager owning one signed 64-bit count.
///
/// The count is an `i64` so that one message type both adds and subtracts.
/// Arithmetic wraps (two's complement) on overflow rather than panicking: an
/// `Add` must never fail, since nobody waits for its answer.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::Counter;
///
/// let rt = Runtime::new();
/// let hits = Counter::new().spawn(&rt, "hits")?;
/// let workers: Vec<_> = (0..4)
///     .map(|_| {
///         let hits = hits.clone();
///         std::thread::spawn(move || {
///             for _ in 0..100 {
///                 hits.add(1).unwrap();
///             }
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// assert_eq!(hits.get()?, 400);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    value: i64,
}

impl Counter {
    /// A counter starting at zero.
    pub fn new() -> Counter {
        Counter::default()
    }

    /// A counter starting at `value`.
    pub fn starting_at(value: i64) -> Counter {
        Counter { value }
    }

    /// Spawns this counter on `rt` with the runtime's defaults.
    ///
    /// To choose a backend or capacity, spawn it with
    /// [`Runtime::manager`] and wrap the handle with
    /// [`CounterHandle::from`].
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`].
    pub fn spawn(self, rt: &Runtime, name: impl Into<String>) -> Result<CounterHandle, SpawnError> {
        rt.spawn(name, self).map(CounterHandle::from)
    }
}

impl Manager for Counter {
    type Msg = CounterMsg;

    #[inline]
    fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<'_, CounterMsg>) {
        match msg {
            CounterMsg::Add(n) => self.value = self.value.wrapping_add(n),
            CounterMsg::Get(reply) => reply.send(self.value),
            CounterMsg::Reset => self.value = 0,
        }
    }
}

/// The handle of a [`Counter`], with one method per message.
///
/// It dereferences to the underlying [`Handle<CounterMsg>`], so
/// [`join`](Handle::join), [`stop`](Handle::stop) and the rest are there too.
///
/// # Examples
///
/// ```
/// use custody::{Backend, Runtime};
/// use custody::resources::{Counter, CounterHandle};
///
/// let rt = Runtime::new();
/// let handle = rt.manager("stock").backend(Backend::Flume).spawn(Counter::starting_at(10))?;
/// let stock = CounterHandle::from(handle);
/// stock.add(-3)?;
/// stock.join()?; // every add so far has been applied
/// assert_eq!(stock.get()?, 7);
/// stock.reset()?;
/// assert_eq!(stock.get()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CounterHandle {
    handle: Handle<CounterMsg>,
}

impl CounterHandle {
    /// Adds `n` (negative to subtract) without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError`] if the counter is stopping or stopped.
    #[inline]
    pub fn add(&self, n: i64) -> Result<(), SendError<CounterMsg>> {
        self.handle.tell(CounterMsg::Add(n))
    }

    /// The current value, after every message this thread sent before.
    ///
    /// # Errors
    ///
    /// As [`Handle::ask`].
    pub fn get(&self) -> Result<i64, AskError> {
        self.handle.ask(CounterMsg::Get)
    }

    /// The awaitable [`get`](CounterHandle::get).
    ///
    /// # Errors
    ///
    /// As [`Handle::ask_async`].
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::resources::Counter;
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = Counter::starting_at(41).spawn(&rt, "counter")?;
    /// counter.add(1)?;
    /// assert_eq!(futures_lite::future::block_on(counter.get_async())?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_async(&self) -> Ask<'_, CounterMsg, i64> {
        self.handle.ask_async(CounterMsg::Get)
    }

    /// The awaitable [`add`](CounterHandle::add): waits without blocking
    /// while a bounded mailbox is full.
    ///
    /// # Errors
    ///
    /// As [`Handle::tell_async`].
    pub fn add_async(&self, n: i64) -> Tell<'_, CounterMsg> {
        self.handle.tell_async(CounterMsg::Add(n))
    }

    /// Sets the value back to zero without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError`] if the counter is stopping or stopped.
    pub fn reset(&self) -> Result<(), SendError<CounterMsg>> {
        self.handle.tell(CounterMsg::Reset)
    }

    /// The underlying handle: every other call ([`Handle::stats`] for the
    /// runtime's counters of this manager, [`Handle::len`], ...).
    pub fn handle(&self) -> &Handle<CounterMsg> {
        &self.handle
    }

    /// Unwraps the underlying handle.
    pub fn into_handle(self) -> Handle<CounterMsg> {
        self.handle
    }
}

super::lifecycle!(CounterHandle);

impl From<Handle<CounterMsg>> for CounterHandle {
    fn from(handle: Handle<CounterMsg>) -> CounterHandle {
        CounterHandle { handle }
    }
}
