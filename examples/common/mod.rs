//! What the tutorial examples share: log lines shaped like the seed's
//! `logging.basicConfig(format="%(asctime)s: %(message)s", datefmt="%H:%M:%S")`.
//!
//! Each example includes this file with `mod common;`. It is not an example
//! of its own (Cargo only picks up `examples/*.rs` and `examples/*/main.rs`).

use std::fmt;
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
