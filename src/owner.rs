//! `Owner<R>`: any value handed to its own thread, reached through closures.
//!
//! A `cast` is a boxed closure. A `call` needs the closure and the slot its
//! answer lands in; both live in one allocation (a `CallCell`), shared by the
//! caller, who waits on the slot, and the owner thread, who takes the closure
//! out, runs it, and fills the slot.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::{AskError, JoinError, SendError};
use crate::future::{Ask, Join};
use crate::handle::Handle;
use crate::manager::{Context, Manager};
use crate::reply::{self, HoldsSlot, Slot, Unanswered, Waiter};
use crate::util::deadline_after;

/// A closure to run on an owner's thread: what [`Owner::cast`] sends, and
/// what comes back inside its error when the owner is stopped.
///
/// # Examples
///
/// ```
/// use custody::{Job, Runtime};
///
/// let rt = Runtime::new();
/// let n = rt.own("n", 1u32)?;
/// n.handle().tell(Job::new(|n: &mut u32| *n *= 10))?;
/// assert_eq!(n.call(|n| *n)?, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Job<R>(Kind<R>);

enum Kind<R> {
    Cast(Box<dyn FnOnce(&mut R) + Send>),
    Call(CallJob<R>),
}

impl<R> Job<R> {
    /// A job that runs `f` on the owner's thread.
    pub fn new(f: impl FnOnce(&mut R) + Send + 'static) -> Job<R> {
        Job(Kind::Cast(Box::new(f)))
    }

    /// Runs the job against the resource.
    fn run(self, resource: &mut R) {
        match self.0 {
            Kind::Cast(f) => f(resource),
            Kind::Call(call) => call.run(resource),
        }
    }
}

impl<R> fmt::Debug for Job<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Cast(_) => "Job::Cast(..)",
            Kind::Call(_) => "Job::Call(..)",
        })
    }
}

/// A call's closure and its answer, in one allocation.
struct CallCell<F, T> {
    f: Mutex<Option<F>>,
    slot: Slot<T>,
}

/// The owner thread's view of a call: run it against the resource.
trait Call<R>: Unanswered {
    fn run(self: Arc<Self>, resource: &mut R);
}

impl<F: Send, T: Send> Unanswered for CallCell<F, T> {
    fn end(&self, ending: reply::Ending) {
        self.slot.end(ending);
    }
}

impl<F: Send, T: Send> HoldsSlot for CallCell<F, T> {
    type Value = T;
    fn slot(&self) -> &Slot<T> {
        &self.slot
    }
}

impl<R, F, T> Call<R> for CallCell<F, T>
where
    F: FnOnce(&mut R) -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>, resource: &mut R) {
        let f = self.f.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(f) = f else { return };
        // If `f` panics, the armed cell is dropped while unwinding and the
        // caller is answered with the panic message.
        let armed = Armed(Some(self));
        let value = f(resource);
        if let Some(cell) = armed.disarm() {
            cell.slot.answer(value);
        }
    }
}

/// Holds a call's cell while its closure runs.
struct Armed<C: Unanswered + 'static>(Option<Arc<C>>);

impl<C: Unanswered + 'static> Armed<C> {
    fn disarm(mut self) -> Option<Arc<C>> {
        self.0.take()
    }
}

impl<C: Unanswered + 'static> Drop for Armed<C> {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take() {
            reply::drop_unanswered(cell);
        }
    }
}

/// A call in the owner's mailbox; dropped unrun (a discard, a refused send),
/// it answers the caller instead of leaving it waiting.
struct CallJob<R>(Option<Arc<dyn Call<R>>>);

impl<R> CallJob<R> {
    fn run(mut self, resource: &mut R) {
        if let Some(call) = self.0.take() {
            call.run(resource);
        }
    }
}

impl<R> Drop for CallJob<R> {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            reply::drop_unanswered(call);
        }
    }
}

/// The manager behind an [`Owner`]: it runs each job against the resource.
pub(crate) struct Owned<R>(pub(crate) R);

impl<R: Send + 'static> Manager for Owned<R> {
    type Msg = Job<R>;

    fn handle(&mut self, job: Job<R>, _ctx: &mut Context<'_, Job<R>>) {
        job.run(&mut self.0);
    }
}

/// A resource of any type `R: Send`, owned by one thread; [`call`](Owner::call)
/// and [`cast`](Owner::cast) run closures on that thread, so `R` never needs a
/// lock and never leaves its thread.
///
/// Made by [`Runtime::own`](crate::Runtime::own). Cloning an `Owner` clones
/// the address, not the resource.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let names = rt.own("names", Vec::<String>::new())?;
/// names.cast(|v| v.push("ada".into()))?;
/// names.cast(|v| v.push("grace".into()))?;
/// assert_eq!(names.call(|v| v.join(", "))?, "ada, grace");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Owner<R: Send + 'static> {
    handle: Handle<Job<R>>,
}

impl<R: Send + 'static> Owner<R> {
    pub(crate) fn new(handle: Handle<Job<R>>) -> Owner<R> {
        Owner { handle }
    }

    /// Runs `f` on the owning thread and returns its result. One allocation
    /// carries both the closure and its answer.
    ///
    /// # Errors
    ///
    /// [`AskError::Stopped`] if the owner is stopped, [`AskError::Panicked`]
    /// if `f` panicked (the resource stays owned and usable),
    /// [`AskError::Deadlock`] if called from the owner's own thread.
    pub fn call<T, F>(&self, f: F) -> Result<T, AskError>
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        self.call_until(f, None)
    }

    /// Like [`call`](Owner::call), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// As [`call`](Owner::call), plus [`AskError::Timeout`]; a timed-out
    /// closure may still run later.
    pub fn call_timeout<T, F>(&self, f: F, timeout: Duration) -> Result<T, AskError>
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        self.call_until(f, deadline_after(timeout))
    }

    fn call_until<T, F>(&self, f: F, deadline: Option<std::time::Instant>) -> Result<T, AskError>
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        let (job, waiter) = Self::call_job(f);
        self.handle.request(job, waiter, deadline)
    }

    /// The awaitable [`call`](Owner::call): runs `f` on the owning thread and
    /// resolves with its result, without blocking the thread that polls it.
    /// One allocation, as for `call`.
    ///
    /// # Errors
    ///
    /// As [`call`](Owner::call). Dropped before it resolves, the closure may
    /// still run (if it was sent); its result is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let names = rt.own("names", Vec::<String>::new())?;
    /// let len = futures_lite::future::block_on(async {
    ///     names.call_async(|v| v.push("ada".to_owned())).await?;
    ///     names.call_async(|v| v.len()).await
    /// })?;
    /// assert_eq!(len, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_async<T, F>(&self, f: F) -> Ask<'_, Job<R>, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        let (job, waiter) = Self::call_job(f);
        Ask::new(&self.handle, job, waiter.erase())
    }

    /// A call's job and the waiter of its answer: one allocation for both.
    fn call_job<T, F>(f: F) -> (Job<R>, Waiter<CallCell<F, T>>)
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        let cell = Arc::new(CallCell {
            f: Mutex::new(Some(f)),
            slot: Slot::new(),
        });
        let call: Arc<dyn Call<R>> = Arc::clone(&cell) as Arc<dyn Call<R>>;
        (Job(Kind::Call(CallJob(Some(call)))), Waiter::new(cell))
    }

    /// The awaitable [`join`](Owner::join).
    ///
    /// # Errors
    ///
    /// As [`Handle::join_async`].
    pub fn join_async(&self) -> Join<'_, Job<R>> {
        self.handle.join_async()
    }

    /// Queues `f` to run on the owning thread and returns at once.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the job inside if the owner is stopped.
    pub fn cast<F>(&self, f: F) -> Result<(), SendError<Job<R>>>
    where
        F: FnOnce(&mut R) + Send + 'static,
    {
        self.handle.tell(Job::new(f))
    }

    /// Waits until every closure queued so far has run.
    ///
    /// # Errors
    ///
    /// As [`Handle::join`].
    pub fn join(&self) -> Result<(), JoinError> {
        self.handle.join()
    }

    /// Stops the owner gracefully (queued closures still run).
    pub fn stop(&self) {
        self.handle.stop();
    }

    /// The underlying manager handle.
    pub fn handle(&self) -> &Handle<Job<R>> {
        &self.handle
    }
}

impl<R: Send + 'static> Clone for Owner<R> {
    fn clone(&self) -> Self {
        Owner::new(self.handle.clone())
    }
}

impl<R: Send + 'static> fmt::Debug for Owner<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("name", &self.handle.name())
            .finish_non_exhaustive()
    }
}
