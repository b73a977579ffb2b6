//! `Printer`: one output stream owned by one manager thread.

use std::fmt;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;

use crate::future::{Ask, Tell};
use crate::{AskError, Context, Handle, Manager, Reply, Runtime, SendError, SpawnError};

/// The messages a [`Printer`] accepts.
///
/// Most code uses the methods of [`PrinterHandle`] instead of building these
/// by hand.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{PrinterMsg, Printer, SharedBuffer};
///
/// let rt = Runtime::new();
/// let out = SharedBuffer::new();
/// let printer = rt.spawn("printer", Printer::new(out.clone()))?;
/// printer.tell(PrinterMsg::Job(vec!["The count is 1".into(), "-----".into()]))?;
/// printer.tell(PrinterMsg::Line("done".into()))?;
/// printer.ask(PrinterMsg::Flush)??;
/// assert_eq!(out.contents(), "The count is 1\n-----\ndone\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub enum PrinterMsg {
    /// One line (a newline is appended).
    Line(String),
    /// Lines printed together: no other job's line comes between them.
    Job(Vec<String>),
    /// Flushes the output now and reports write errors recorded since the
    /// last flush request (see [`PrinterHandle::flush`]).
    Flush(Reply<Result<(), PrinterError>>),
    /// Answers the printer's counters.
    Stats(Reply<PrinterStats>),
}

/// Why printing failed.
///
/// # Examples
///
/// ```
/// use std::io;
/// use custody::Runtime;
/// use custody::resources::{Printer, PrinterError};
///
/// struct Broken;
/// impl io::Write for Broken {
///     fn write(&mut self, _: &[u8]) -> io::Result<usize> {
///         Err(io::Error::other("disk on fire"))
///     }
///     fn flush(&mut self) -> io::Result<()> {
///         Ok(())
///     }
/// }
///
/// let rt = Runtime::new();
/// let printer = Printer::new(Broken).spawn(&rt, "broken")?;
/// printer.print("lost")?;
/// match printer.flush() {
///     Err(PrinterError::Write { failed, latest }) => {
///         assert!(failed >= 1);
///         assert_eq!(latest.to_string(), "disk on fire");
///     }
///     other => panic!("expected a write error, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PrinterError {
    /// Writing or flushing failed since the last flush request; the output
    /// of those writes may be lost or partial.
    #[error("{failed} write(s) to the printer's output failed since the last flush request")]
    Write {
        /// How many writes or flushes failed.
        failed: u64,
        /// The latest failure.
        #[source]
        latest: io::Error,
    },
    /// The printer could not be asked.
    #[error(transparent)]
    Runtime(#[from] AskError),
}

/// A snapshot of a printer's counters.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Printer, SharedBuffer};
///
/// let rt = Runtime::new();
/// let printer = Printer::new(SharedBuffer::new()).spawn(&rt, "printer")?;
/// printer.print_job(["a", "b"])?;
/// printer.print("c")?;
/// let stats = printer.stats()?;
/// assert_eq!((stats.jobs, stats.lines, stats.write_errors), (2, 3, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrinterStats {
    /// Jobs printed (a single line counts as one job).
    pub jobs: u64,
    /// Lines printed.
    pub lines: u64,
    /// Writes and flushes that failed since the printer started.
    pub write_errors: u64,
}

/// A manager owning one output stream `W`: standard output, a file, or a
/// [`SharedBuffer`] in tests.
///
/// Each job's lines are written together, so jobs never interleave, whoever
/// sends them. Output goes through a [`BufWriter`], flushed whenever the
/// mailbox has run dry (and when the printer stops), so it is never held back
/// longer than one batch of messages.
///
/// Write errors never panic the printer: each is counted, logged with
/// `tracing::warn!`, and the latest is reported by the next
/// [`flush`](PrinterHandle::flush). A job whose write fails is cut short.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::Printer;
///
/// let rt = Runtime::new();
/// let printer = Printer::stdout().spawn(&rt, "stdout")?;
/// printer.print_job(["The count is 1", "-----"])?;
/// printer.flush()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Printer<W: Write + Send + 'static> {
    out: BufWriter<W>,
    /// Bytes were written since the last successful flush.
    dirty: bool,
    stats: PrinterStats,
    failed_since_flush: u64,
    latest_error: Option<io::Error>,
}

impl Printer<io::Stdout> {
    /// A printer writing to standard output.
    pub fn stdout() -> Printer<io::Stdout> {
        Printer::new(io::stdout())
    }
}

impl<W: Write + Send + 'static> Printer<W> {
    /// A printer writing to `out` through a buffer of the default size.
    pub fn new(out: W) -> Printer<W> {
        Printer::from_writer(BufWriter::new(out))
    }

    /// A printer writing to `out` through a buffer of `capacity` bytes.
    pub fn with_capacity(capacity: usize, out: W) -> Printer<W> {
        Printer::from_writer(BufWriter::with_capacity(capacity, out))
    }

    fn from_writer(out: BufWriter<W>) -> Printer<W> {
        Printer {
            out,
            dirty: false,
            stats: PrinterStats::default(),
            failed_since_flush: 0,
            latest_error: None,
        }
    }

    /// Spawns this printer on `rt` with the runtime's defaults.
    ///
    /// To choose a backend or capacity, spawn it with
    /// [`Runtime::manager`] and wrap the handle with
    /// [`PrinterHandle::from`].
    ///
    /// # Errors
    ///
    /// As [`Runtime::spawn`].
    pub fn spawn(self, rt: &Runtime, name: impl Into<String>) -> Result<PrinterHandle, SpawnError> {
        rt.spawn(name, self).map(PrinterHandle::from)
    }

    fn print_lines<'a>(&mut self, lines: impl IntoIterator<Item = &'a str>) {
        self.stats.jobs += 1;
        for line in lines {
            self.dirty = true;
            let written = self
                .out
                .write_all(line.as_bytes())
                .and_then(|()| self.out.write_all(b"\n"));
            if let Err(error) = written {
                self.record(error, "writing a job; the rest of it is dropped");
                return;
            }
            self.stats.lines += 1;
        }
    }

    fn record(&mut self, error: io::Error, doing: &str) {
        self.stats.write_errors += 1;
        self.failed_since_flush += 1;
        tracing::warn!(%error, "printer output failed while {doing}");
        self.latest_error = Some(error);
    }

    /// Flushes if anything was written since the last successful flush.
    fn flush_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        match self.out.flush() {
            Ok(()) => self.dirty = false,
            Err(error) => self.record(error, "flushing"),
        }
    }

    fn flush_now(&mut self) -> Result<(), PrinterError> {
        match self.out.flush() {
            Ok(()) => self.dirty = false,
            Err(error) => self.record(error, "flushing"),
        }
        let failed = std::mem::take(&mut self.failed_since_flush);
        match self.latest_error.take() {
            Some(latest) => Err(PrinterError::Write { failed, latest }),
            None => Ok(()),
        }
    }
}

impl<W: Write + Send + 'static> Manager for Printer<W> {
    type Msg = PrinterMsg;

    fn handle(&mut self, msg: PrinterMsg, _ctx: &mut Context<'_, PrinterMsg>) {
        match msg {
            PrinterMsg::Line(line) => self.print_lines([line.as_str()]),
            PrinterMsg::Job(lines) => self.print_lines(lines.iter().map(String::as_str)),
            PrinterMsg::Flush(reply) => reply.send(self.flush_now()),
            PrinterMsg::Stats(reply) => reply.send(self.stats),
        }
    }

    fn idle(&mut self, _ctx: &mut Context<'_, PrinterMsg>) {
        self.flush_if_dirty();
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, PrinterMsg>) {
        self.flush_if_dirty();
        if self.failed_since_flush > 0 {
            tracing::warn!(
                failed = self.failed_since_flush,
                "printer stopped with unreported write errors"
            );
        }
    }
}

impl<W: Write + Send + 'static> fmt::Debug for Printer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Printer")
            .field("buffered", &self.out.buffer().len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The handle of a [`Printer`], with one method per message.
///
/// It dereferences to the underlying [`Handle<PrinterMsg>`], so
/// [`join`](Handle::join) (which also waits for the flush that follows the
/// last batch) and the rest are there too.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
/// use custody::resources::{Printer, PrinterHandle, SharedBuffer};
///
/// let rt = Runtime::new();
/// let out = SharedBuffer::new();
/// let printer = PrinterHandle::from(rt.spawn("printer", Printer::new(out.clone()))?);
/// printer.print("hello")?;
/// printer.join()?; // handled and flushed
/// assert_eq!(out.contents(), "hello\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct PrinterHandle {
    handle: Handle<PrinterMsg>,
}

impl PrinterHandle {
    /// Prints one line without waiting.
    ///
    /// # Errors
    ///
    /// [`SendError`] if the printer is stopping or stopped.
    pub fn print(&self, line: impl Into<String>) -> Result<(), SendError<PrinterMsg>> {
        self.handle.tell(PrinterMsg::Line(line.into()))
    }

    /// Prints `lines` together, without waiting: no other job's line comes
    /// between them.
    ///
    /// # Errors
    ///
    /// [`SendError`] if the printer is stopping or stopped.
    pub fn print_job<I>(&self, lines: I) -> Result<(), SendError<PrinterMsg>>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.handle
            .tell(PrinterMsg::Job(lines.into_iter().map(Into::into).collect()))
    }

    /// Waits until everything sent before is written and flushed.
    ///
    /// # Errors
    ///
    /// [`PrinterError::Write`] if any write or flush failed since the last
    /// `flush` (the count and the latest error are then reset),
    /// [`PrinterError::Runtime`] if the printer could not be asked.
    pub fn flush(&self) -> Result<(), PrinterError> {
        self.handle.ask(PrinterMsg::Flush)?
    }

    /// The awaitable [`flush`](PrinterHandle::flush).
    ///
    /// # Errors
    ///
    /// As [`flush`](PrinterHandle::flush).
    pub fn flush_async(&self) -> impl Future<Output = Result<(), PrinterError>> + Send + '_ {
        let ask = self.handle.ask_async(PrinterMsg::Flush);
        async move { ask.await? }
    }

    /// The awaitable [`print`](PrinterHandle::print): waits without blocking
    /// while a bounded mailbox is full.
    ///
    /// # Errors
    ///
    /// As [`Handle::tell_async`].
    pub fn print_async(&self, line: impl Into<String>) -> Tell<'_, PrinterMsg> {
        self.handle.tell_async(PrinterMsg::Line(line.into()))
    }

    /// The printer's own counters. (The runtime's counters for this manager
    /// are [`Handle::stats`], through [`handle`](PrinterHandle::handle).)
    ///
    /// # Errors
    ///
    /// As [`Handle::ask`].
    pub fn stats(&self) -> Result<PrinterStats, AskError> {
        self.handle.ask(PrinterMsg::Stats)
    }

    /// The awaitable [`stats`](PrinterHandle::stats).
    ///
    /// # Errors
    ///
    /// As [`Handle::ask_async`].
    pub fn stats_async(&self) -> Ask<'_, PrinterMsg, PrinterStats> {
        self.handle.ask_async(PrinterMsg::Stats)
    }

    /// The underlying handle: every other call ([`Handle::stats`] for the
    /// runtime's counters of this manager, [`Handle::len`], ...).
    pub fn handle(&self) -> &Handle<PrinterMsg> {
        &self.handle
    }

    /// Unwraps the underlying handle.
    pub fn into_handle(self) -> Handle<PrinterMsg> {
        self.handle
    }
}

super::lifecycle!(PrinterHandle);

impl From<Handle<PrinterMsg>> for PrinterHandle {
    fn from(handle: Handle<PrinterMsg>) -> PrinterHandle {
        PrinterHandle { handle }
    }
}

/// A cloneable in-memory output: every clone writes to, and reads from, the
/// same bytes. Give one clone to a [`Printer`] and keep another to look at
/// what was printed.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use custody::resources::SharedBuffer;
///
/// let buffer = SharedBuffer::new();
/// let mut writer = buffer.clone();
/// writeln!(writer, "one")?;
/// writeln!(writer, "two")?;
/// assert_eq!(buffer.contents(), "one\ntwo\n");
/// assert_eq!(buffer.lines(), ["one", "two"]);
/// buffer.clear();
/// assert!(buffer.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct SharedBuffer {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> SharedBuffer {
        SharedBuffer::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the bytes written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// The bytes written so far as text (invalid UTF-8 replaced).
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    /// The lines written so far, without their line endings.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }

    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forgets everything written so far.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.lock().extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("len", &self.len())
            .finish()
    }
}
