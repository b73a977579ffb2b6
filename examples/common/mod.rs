//! What the tutorial examples share: log lines shaped like the seed's
//! `logging.basicConfig(format="%(asctime)s: %(message)s", datefmt="%H:%M:%S")`.
//!
//! Each example includes this file with `mod common;`. It is not an example
//! of its own (Cargo only picks up `examples/*.rs` and `examples/*/main.rs`).

// Each example uses only some of these helpers.
#![allow(dead_code)]

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Logs `HH:MM:SS: message` lines to standard output, up to `level`.
///
/// The time is UTC: the standard library has no time zones. The runtime's
/// own logging is kept at `INFO` and above, so that `DEBUG` shows the
/// example's lines only (the seed's `logging.DEBUG` runs).
pub fn init_logging(level: Level) {
    let filter = Targets::new()
        .with_default(level)
        .with_target("custody", Level::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .event_format(SeedFormat)
                .with_filter(filter),
        )
        .init();
}

/// `HH:MM:SS: message`, with the level in front of warnings and errors.
struct SeedFormat;

impl<S, N> FormatEvent<S, N> for SeedFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        write!(writer, "{h:02}:{m:02}:{s:02}: ")?;
        let level = *event.metadata().level();
        if level <= Level::WARN {
            write!(writer, "{level}: ")?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The first command-line argument as a positive number of `what`, or
/// `default` when there is none.
pub fn positive_arg<T: FromStr + PartialOrd + Default>(
    what: &str,
    default: T,
) -> Result<T, String> {
    match std::env::args().nth(1) {
        None => Ok(default),
        Some(text) => match text.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err(format!(
                "expected a positive number of {what}, got {text:?}"
            )),
        },
    }
}

/// Success if no check failed; otherwise each failure on stderr and a failure
/// exit code.
pub fn verdict(failures: Vec<String>) -> ExitCode {
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for failure in failures {
        eprintln!("check failed: {failure}");
    }
    ExitCode::FAILURE
}
