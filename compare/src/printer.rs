//! `printer`: every thread prints `k` lines to one file in the temporary
//! directory. A run ends when every line has reached the file; the file is
//! then checked (untimed) and deleted.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use custody::Runtime;
use custody::resources::Printer;

use crate::measure::{race, temp_path};

/// The workload's name.
pub const NAME: &str = "printer";

/// The designs, the reference (`mutex-writer`) first.
pub const DESIGNS: [&str; 2] = ["mutex-writer", "printer-manager"];

/// The thread counts measured.
pub const THREADS: [usize; 4] = [1, 2, 4, 8];

/// One run of `design`: `threads` threads each print `k` lines. Returns the
/// time until every line is written.
///
/// # Panics
///
/// On an unknown design, an I/O error, or if the file does not end up with
/// `threads * k` lines.
pub fn run(design: &str, threads: usize, k: u64) -> Duration {
    let file = OutputFile::create();
    let elapsed = match design {
        "mutex-writer" => mutex_writer(&file, threads, k),
        "printer-manager" => printer_manager(&file, threads, k),
        other => panic!("printer: unknown design `{other}`"),
    };
    file.check(design, threads as u64 * k);
    elapsed
}

/// The output file; deleted when dropped.
struct OutputFile {
    path: PathBuf,
}

impl OutputFile {
    fn create() -> OutputFile {
        OutputFile {
            path: temp_path("txt"),
        }
    }

    fn open(&self) -> File {
        File::create(&self.path).unwrap_or_else(|e| panic!("creating {}: {e}", self.path.display()))
    }

    fn check(&self, design: &str, lines: u64) {
        let text =
            fs::read(&self.path).unwrap_or_else(|e| panic!("reading {}: {e}", self.path.display()));
        let found = text.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(found, lines, "printer/{design}: wrong number of lines");
        assert!(
            text.ends_with(b"\n") || text.is_empty(),
            "printer/{design}: cut line"
        );
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A lock around a line-buffered file: each line is one `write` to the file
/// (what `println!` does with its own lock on standard output).
fn mutex_writer(file: &OutputFile, threads: usize, k: u64) -> Duration {
    let out = Mutex::new(LineWriter::new(file.open()));
    race(
        threads,
        |t| {
            let mut line = String::new();
            for i in 0..k {
                line.clear();
                writeln!(line, "worker {t} line {i}").expect("formatting");
                let mut out = out.lock().expect("poisoned");
                out.write_all(line.as_bytes())
                    .unwrap_or_else(|e| panic!("writing {}: {e}", file.path().display()));
            }
        },
        || {},
    )
}

/// The `Printer` manager owns the file; the run ends after `join` (every
/// line handled and flushed).
fn printer_manager(file: &OutputFile, threads: usize, k: u64) -> Duration {
    let rt = Runtime::new();
    let printer = Printer::new(file.open())
        .spawn(&rt, "printer")
        .expect("spawning the printer");
    let elapsed = race(
        threads,
        |t| {
            for i in 0..k {
                printer
                    .print(format!("worker {t} line {i}"))
                    .expect("printer stopped");
            }
        },
        || printer.join().expect("joining the printer"),
    );
    printer.flush().expect("the printer failed to write");
    rt.shutdown();
    elapsed
}
