//! Shutdown on SIGINT and SIGTERM: the first signal drains, a second one
//! stops at once.
//!
//! The signals arrive through signal-hook's iterator, whose registry lets
//! other users of the same signals (tokio's, for one) keep theirs. A SIGINT
//! that is ignored when the handlers are installed (a non-interactive shell
//! starts `prog &` that way) stays ignored, as Python leaves it: the check
//! reads the `SigIgn` mask of `/proc/self/status`, since no safe API reports
//! a signal's disposition.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(unix)]
use std::sync::{Arc, Weak};

#[cfg(unix)]
use super::Inner;
use super::Runtime;
use crate::error::SignalError;

/// One handler set per process (signal dispositions are process-wide).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The signals that [`Runtime::shutdown_on_signals`] handles.
///
/// SIGTERM is always handled. SIGINT is handled unless it was ignored when
/// the handlers were installed: a non-interactive shell starts a program run
/// with `&` with SIGINT ignored, so that a Ctrl-C meant for the foreground
/// does not reach it, and the runtime leaves it so.
///
/// # Examples
///
/// ```
/// use custody::Runtime;
///
/// let rt = Runtime::new();
/// let handled = rt.shutdown_on_signals()?;
/// assert!(handled.terminate);
/// println!("stopping gracefully on {handled}");
/// # Ok::<(), custody::SignalError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandledSignals {
    /// SIGINT (Ctrl-C) is handled.
    pub interrupt: bool,
    /// SIGTERM (the stop signal of systemd, Docker, Kubernetes and `kill`)
    /// is handled.
    pub terminate: bool,
}

impl fmt::Display for HandledSignals {
    /// The handled signals' names: `SIGINT and SIGTERM`, `SIGTERM`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.interrupt, self.terminate) {
            (true, true) => f.write_str("SIGINT and SIGTERM"),
            (true, false) => f.write_str("SIGINT"),
            (false, true) => f.write_str("SIGTERM"),
            (false, false) => f.write_str("no signal"),
        }
    }
}

impl Runtime {
    /// Shuts the runtime down on SIGINT (Ctrl-C) or SIGTERM; returns which of
    /// the two are handled.
    ///
    /// The first signal starts a graceful shutdown (new sends from outside
    /// refused, every non-daemon mailbox drained, `stopped` hooks run); a
    /// second one, of either kind, stops at once and prints, on stderr, what
    /// each manager left unhandled (once that stop completes: a program that
    /// ends as soon as `wait` returns may end first, and `wait` returns the
    /// same report). Use [`wait`](Runtime::wait) on the main thread to block
    /// until the shutdown completes. The signals are read by a thread of
    /// their own (`custody-signals`).
    ///
    /// A SIGINT that is ignored at the call (as a non-interactive shell
    /// ignores it for a program started with `&`) stays ignored, and
    /// [`HandledSignals::interrupt`] is `false`; SIGTERM is handled
    /// regardless. Whether SIGINT is ignored is read from
    /// `/proc/self/status` (Linux, Android); where that file does not exist,
    /// SIGINT is taken as not ignored and handled.
    ///
    /// Opt-in: the library never installs a signal handler on its own. The
    /// handlers coexist with those of other signal-hook users (tokio's
    /// signals, for one). Once this runtime has been dropped, SIGINT and
    /// SIGTERM end the process as they would without a handler.
    ///
    /// # Errors
    ///
    /// [`SignalError::AlreadyInstalled`] if `shutdown_on_signals` was
    /// already called in this process (signal handlers are process-wide);
    /// [`SignalError::System`] if the handlers or their thread could not be
    /// set up; [`SignalError::Unsupported`] on a platform without Unix
    /// signals.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::Runtime;
    ///
    /// let rt = Runtime::new();
    /// let counter = rt.own("counter", 0u64)?;
    /// let handled = rt.shutdown_on_signals()?;
    /// eprintln!("running; {handled} stops gracefully");
    /// counter.cast(|n| *n += 1)?;
    /// // A service would block here until a signal has shut the runtime down:
    /// // let report = rt.wait();
    /// let report = rt.shutdown();
    /// assert_eq!(report.total_unhandled(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_on_signals(&self) -> Result<HandledSignals, SignalError> {
        if INSTALLED
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(SignalError::AlreadyInstalled);
        }
        #[cfg(unix)]
        let installed = unix::install(Arc::downgrade(&self.inner));
        #[cfg(not(unix))]
        let installed = Err(SignalError::Unsupported);
        if installed.is_err() {
            INSTALLED.store(false, Ordering::SeqCst);
        }
        installed
    }
}

#[cfg(unix)]
mod unix {
    use std::sync::mpsc;
    use std::thread;

    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    use super::{Arc, HandledSignals, Inner, SignalError, Weak};
    use crate::util::to_stderr;

    /// Registers the handlers and starts the thread that reads them.
    pub(super) fn install(inner: Weak<Inner>) -> Result<HandledSignals, SignalError> {
        let handled = HandledSignals {
            interrupt: !sigint_ignored(),
            terminate: true,
        };
        // The thread first, the handlers after: a handler registered and then
        // dropped would leave its signal with no action at all (ignored).
        let (give, take) = mpsc::channel::<Signals>();
        thread::Builder::new()
            .name("custody-signals".to_owned())
            .spawn(move || {
                if let Ok(signals) = take.recv() {
                    watch(signals, &inner, handled);
                }
            })
            .map_err(SignalError::System)?;
        let mut wanted = vec![SIGTERM];
        if handled.interrupt {
            wanted.push(SIGINT);
        }
        // On an error the sender drops with it and the thread ends.
        let signals = Signals::new(wanted).map_err(SignalError::System)?;
        give.send(signals)
            .map_err(|_| SignalError::System(std::io::Error::other("the signal thread ended")))?;
        Ok(handled)
    }

    /// Reads signals for as long as the process lives.
    fn watch(mut signals: Signals, inner: &Weak<Inner>, handled: HandledSignals) {
        let mut received = 0u32;
        for signal in signals.forever() {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            let Some(inner) = inner.upgrade() else {
                // The runtime is gone: do what the signal would do unhandled.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                continue;
            };
            received += 1;
            if received == 1 {
                let again = if handled.interrupt {
                    "a second Ctrl-C or SIGTERM"
                } else {
                    "a second SIGTERM"
                };
                to_stderr(format_args!(
                    "custody: {name} received: shutting down gracefully ({again} stops at once)\n"
                ));
                // A thread of its own keeps this one free for a second signal.
                let graceful = Arc::clone(&inner);
                let spawned = thread::Builder::new()
                    .name("custody-shutdown".to_owned())
                    .spawn(move || {
                        graceful.shutdown(false);
                    });
                if let Err(e) = spawned {
                    to_stderr(format_args!(
                        "custody: could not start the graceful shutdown ({e}); stopping at once\n"
                    ));
                    to_stderr(format_args!("{}", inner.shutdown(true)));
                }
            } else {
                // Said first: once the shutdown completes, `wait` returns and
                // the program may end before the report is printed.
                to_stderr(format_args!(
                    "custody: {name} received, the second signal: stopping at once\n"
                ));
                to_stderr(format_args!("{}", inner.shutdown(true)));
            }
        }
    }

    /// Whether SIGINT is ignored (SIG_IGN) in this process, from the
    /// `SigIgn` mask of `/proc/self/status`; taken as not where that file
    /// (Linux's and Android's) is missing or has no such line.
    fn sigint_ignored() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| ignored_in_status(&status, SIGINT))
            .unwrap_or(false)
    }

    /// Reads `signal`'s bit in the `SigIgn` line of a `/proc/PID/status`
    /// text: a hexadecimal mask whose bit `n - 1` is signal `n`.
    pub(super) fn ignored_in_status(status: &str, signal: i32) -> Option<bool> {
        let mask = status
            .lines()
            .find_map(|line| line.strip_prefix("SigIgn:"))?
            .trim();
        let mask = u128::from_str_radix(mask, 16).ok()?;
        let bit = u32::try_from(signal.checked_sub(1)?).ok()?;
        Some(mask.checked_shr(bit)? & 1 == 1)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::unix::ignored_in_status;

    const STATUS: &str = "Name:\tsh\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000006\nSigCgt:\t0000000000010000\n";

    #[test]
    fn the_sigign_mask_gives_each_signal_its_bit() {
        // 0x6: SIGINT (2) and SIGQUIT (3) ignored, SIGHUP (1) and SIGTERM (15) not.
        assert_eq!(ignored_in_status(STATUS, 2), Some(true));
        assert_eq!(ignored_in_status(STATUS, 3), Some(true));
        assert_eq!(ignored_in_status(STATUS, 1), Some(false));
        assert_eq!(ignored_in_status(STATUS, 15), Some(false));
    }

    #[test]
    fn a_status_without_a_readable_mask_tells_nothing() {
        assert_eq!(ignored_in_status("Name:\tsh\n", 2), None);
        assert_eq!(ignored_in_status("SigIgn:\tzz\n", 2), None);
        assert_eq!(ignored_in_status(STATUS, 0), None);
    }
}
