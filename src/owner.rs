//! `Owner<R>`: any value handed to its own thread, reached through closures.

use std::fmt;
use std::time::Duration;

use crate::error::{AskError, JoinError, SendError};
use crate::handle::Handle;
use crate::manager::{Context, Manager};

/// A closure to run on an owner's thread.
pub type Job<R> = Box<dyn FnOnce(&mut R) + Send>;

/// The manager behind an [`Owner`]: it runs each job against the resource.
pub(crate) struct Owned<R>(pub(crate) R);

impl<R: Send + 'static> Manager for Owned<R> {
    type Msg = Job<R>;

    fn handle(&mut self, job: Job<R>, _ctx: &mut Context<'_, Job<R>>) {
        job(&mut self.0);
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

    /// Runs `f` on the owning thread and returns its result.
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
        self.call_until(f, Some(timeout))
    }

    fn call_until<T, F>(&self, f: F, timeout: Option<Duration>) -> Result<T, AskError>
    where
        T: Send + 'static,
        F: FnOnce(&mut R) -> T + Send + 'static,
    {
        let make =
            |reply: crate::Reply<T>| -> Job<R> { Box::new(move |r: &mut R| reply.send(f(r))) };
        match timeout {
            None => self.handle.ask(make),
            Some(t) => self.handle.ask_timeout(make, t),
        }
    }

    /// Queues `f` to run on the owning thread and returns at once.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the boxed closure inside if the owner is stopped.
    pub fn cast<F>(&self, f: F) -> Result<(), SendError<Job<R>>>
    where
        F: FnOnce(&mut R) + Send + 'static,
    {
        self.handle.tell(Box::new(f))
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
        Owner {
            handle: self.handle.clone(),
        }
    }
}

impl<R: Send + 'static> fmt::Debug for Owner<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("name", &self.handle.name())
            .finish_non_exhaustive()
    }
}
