//! The live view: a table of a runtime's managers redrawn in the terminal
//! with plain ANSI escapes (clear, home), from [`Runtime::stats`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::runtime::Runtime;
use crate::stats::{ManagerState, Stats};

/// Why [`top`] returned.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::Runtime;
/// use custody::observe::{self, Ended, TopOptions};
///
/// let rt = Runtime::new();
/// rt.own("n", 0u8)?;
/// let once = TopOptions::new().duration(Some(Duration::ZERO));
/// assert_eq!(observe::top_to(&rt, &once, &mut std::io::sink())?, Ended::Duration);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The duration of [`TopOptions::duration`] passed.
    Duration,
    /// `q` was read ([`TopOptions::quit_on_q`]).
    Quit,
    /// Every manager of the runtime has stopped.
    Stopped,
}

/// How [`top`] draws: how often, for how long, and whether `q` quits.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::observe::TopOptions;
///
/// let options = TopOptions::new()
///     .refresh(Duration::from_millis(250))
///     .duration(Some(Duration::from_secs(10)))
///     .quit_on_q(true);
/// assert_eq!(options.refresh_every(), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug)]
pub struct TopOptions {
    refresh: Duration,
    duration: Option<Duration>,
    quit_on_q: bool,
}

impl Default for TopOptions {
    fn default() -> Self {
        TopOptions {
            refresh: Duration::from_millis(500),
            duration: None,
            quit_on_q: false,
        }
    }
}

impl TopOptions {
    /// Redraw every 500 ms, until every manager has stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::observe::TopOptions;
    ///
    /// assert_eq!(TopOptions::new().refresh_every(), Duration::from_millis(500));
    /// ```
    pub fn new() -> TopOptions {
        TopOptions::default()
    }

    /// How often to redraw (at least every 10 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::observe::TopOptions;
    ///
    /// let fast = TopOptions::new().refresh(Duration::ZERO);
    /// assert_eq!(fast.refresh_every(), Duration::from_millis(10));
    /// ```
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(10));
        self
    }

    /// The redraw interval.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::observe::TopOptions;
    ///
    /// assert!(!TopOptions::new().refresh_every().is_zero());
    /// ```
    pub fn refresh_every(&self) -> Duration {
        self.refresh
    }

    /// Stop drawing after this long (`None`, the default: until every
    /// manager has stopped, or `q`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use custody::observe::TopOptions;
    ///
    /// let bounded = TopOptions::new().duration(Some(Duration::from_secs(5)));
    /// # let _ = bounded;
    /// ```
    pub fn duration(mut self, duration: Option<Duration>) -> Self {
        self.duration = duration;
        self
    }

    /// Stop drawing when `q` is read from standard input (default off).
    /// A thread reads standard input for it; it ends at the next byte read
    /// after the view has returned, or with the process. In a terminal's
    /// usual line mode the `q` arrives with Enter; a program that puts the
    /// terminal in raw mode (as `examples/top.rs` does with `stty`) gets it
    /// at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use custody::observe::TopOptions;
    ///
    /// let interactive = TopOptions::new().quit_on_q(true);
    /// # let _ = interactive;
    /// ```
    pub fn quit_on_q(mut self, on: bool) -> Self {
        self.quit_on_q = on;
        self
    }
}

/// Draws a live table of `runtime`'s managers on standard output until the
/// options say to stop, or every manager has stopped: state, mailbox depth,
/// messages handled per second, p50 and p99 service time, handled, panics,
/// restarts, and alerts (stalled, growing). Returns why it ended.
///
/// # Errors
///
/// A failed write to standard output.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use custody::Runtime;
/// use custody::observe::{self, TopOptions};
///
/// let rt = Runtime::new();
/// let n = rt.own("n", 0u64)?;
/// n.cast(|n| *n += 1)?;
/// observe::top(&rt, &TopOptions::new().duration(Some(Duration::from_secs(5))).quit_on_q(true))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn top(runtime: &Runtime, options: &TopOptions) -> io::Result<Ended> {
    top_to(runtime, options, &mut io::stdout().lock())
}

/// [`top`], drawing to any writer.
///
/// # Errors
///
/// A failed write to `out`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use custody::Runtime;
/// use custody::observe::{self, TopOptions};
///
/// let rt = Runtime::new();
/// let n = rt.own("counter", 0u64)?;
/// n.cast(|n| *n += 1)?;
/// let mut screen = Vec::new();
/// let once = TopOptions::new().refresh(Duration::from_millis(10)).duration(Some(Duration::ZERO));
/// observe::top_to(&rt, &once, &mut screen)?;
/// let screen = String::from_utf8(screen)?;
/// assert!(screen.contains("MANAGER") && screen.contains("counter"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn top_to(runtime: &Runtime, options: &TopOptions, out: &mut dyn Write) -> io::Result<Ended> {
    let quit = Arc::new(AtomicBool::new(false));
    if options.quit_on_q {
        let quit = Arc::clone(&quit);
        let _ = std::thread::Builder::new()
            .name("custody-top-keys".to_owned())
            .spawn(move || {
                let mut byte = [0u8; 1];
                let mut stdin = io::stdin();
                while !quit.load(Ordering::Relaxed) {
                    match stdin.read(&mut byte) {
                        Ok(1) if matches!(byte[0], b'q' | b'Q') => {
                            quit.store(true, Ordering::Relaxed)
                        }
                        Ok(1) => {}
                        _ => return,
                    }
                }
            });
    }
    let start = Instant::now();
    let mut previous: Option<(Instant, HashMap<String, u64>)> = None;
    // Hide the cursor while drawing.
    write!(out, "\x1b[?25l")?;
    let drawn = loop {
        let now = Instant::now();
        let stats = runtime.stats();
        let rates = previous.as_ref().map(|(at, handled)| {
            let seconds = now.saturating_duration_since(*at).as_secs_f64().max(1e-9);
            stats
                .managers
                .iter()
                .map(|m| {
                    let before = handled.get(&m.name).copied().unwrap_or(0);
                    (
                        m.name.clone(),
                        m.handled.saturating_sub(before) as f64 / seconds,
                    )
                })
                .collect::<HashMap<_, _>>()
        });
        let frame = render(
            &stats,
            rates.as_ref(),
            now.saturating_duration_since(start),
            options,
        );
        if let Err(e) = write!(out, "\x1b[H\x1b[2J{frame}").and_then(|()| out.flush()) {
            break Err(e);
        }
        previous = Some((
            now,
            stats
                .managers
                .iter()
                .map(|m| (m.name.clone(), m.handled))
                .collect(),
        ));
        let all_stopped = !stats.managers.is_empty()
            && stats
                .managers
                .iter()
                .all(|m| m.state == ManagerState::Stopped);
        if all_stopped {
            break Ok(Ended::Stopped);
        }
        if quit.load(Ordering::Relaxed) {
            break Ok(Ended::Quit);
        }
        let until_end = options.duration.map(|d| d.saturating_sub(start.elapsed()));
        if until_end.is_some_and(|left| left.is_zero()) {
            break Ok(Ended::Duration);
        }
        let pause = until_end.map_or(options.refresh, |left| left.min(options.refresh));
        // Sleep in short steps, to see `q` soon.
        let wake = Instant::now() + pause;
        while !quit.load(Ordering::Relaxed) {
            let left = wake.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    };
    quit.store(true, Ordering::Relaxed);
    write!(out, "\x1b[?25h")?;
    out.flush()?;
    drawn
}

/// One frame of the view.
fn render(
    stats: &Stats,
    rates: Option<&HashMap<String, f64>>,
    elapsed: Duration,
    options: &TopOptions,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "custody top: {} managers, {:.1} s{}\r",
        stats.managers.len(),
        elapsed.as_secs_f64(),
        if options.quit_on_q { ", q to quit" } else { "" }
    );
    let width = stats
        .managers
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let _ = writeln!(
        s,
        "{:<width$}  {:<8}  {:>7}  {:>9}  {:>8}  {:>8}  {:>9}  {:>6}  {:>8}  ALERTS\r",
        "MANAGER", "STATE", "DEPTH", "RATE/s", "P50", "P99", "HANDLED", "PANICS", "RESTARTS"
    );
    for m in &stats.managers {
        let rate = rates
            .and_then(|r| r.get(&m.name))
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let (p50, p99) = m.service.map_or(("-".to_owned(), "-".to_owned()), |p| {
            (short(p.p50), short(p.p99))
        });
        let mut alerts = Vec::new();
        if let Some(stalled) = m.stalled {
            alerts.push(format!("STALLED {}", short(stalled.running_for)));
        }
        if let Some(growing) = m.growing {
            alerts.push(format!("GROWING {}->{}", growing.from, growing.to));
        }
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {:>7}  {:>9}  {:>8}  {:>8}  {:>9}  {:>6}  {:>8}  {}\r",
            m.name,
            m.state.to_string(),
            m.queued,
            rate,
            p50,
            p99,
            m.handled,
            m.panicked,
            m.restarts,
            alerts.join(", ")
        );
    }
    s
}

/// A duration in a few characters: `850ns`, `12.3us`, `4.56ms`, `7.89s`.
fn short(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::short;
    use std::time::Duration;

    #[test]
    fn durations_print_short() {
        assert_eq!(short(Duration::from_nanos(850)), "850ns");
        assert_eq!(short(Duration::from_nanos(12_345)), "12.3us");
        assert_eq!(short(Duration::from_micros(4_560)), "4.56ms");
        assert_eq!(short(Duration::from_millis(7_890)), "7.89s");
    }
}
