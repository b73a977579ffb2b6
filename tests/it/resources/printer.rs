//! The `Printer` manager, on every backend.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use super::{each_backend, runtime};
use custody::resources::{Printer, PrinterError, PrinterHandle, PrinterMsg, SharedBuffer};

const WRITERS: usize = 8;

/// Job `j` of writer `w` has this many lines.
fn job_len(j: usize) -> usize {
    1 + j % 5
}

fn job_lines(w: usize, j: usize) -> Vec<String> {
    let n = job_len(j);
    (0..n).map(|k| format!("w{w} j{j} {k}/{n}")).collect()
}

/// Prints jobs `jobs` of every writer, one thread per writer.
fn print_from_writers(printer: &PrinterHandle, jobs: std::ops::Range<usize>) {
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let printer = printer.clone();
            let jobs = jobs.clone();
            thread::spawn(move || {
                for j in jobs {
                    if j % 3 == 0 && job_len(j) == 1 {
                        printer.print(job_lines(w, j).remove(0)).unwrap();
                    } else {
                        printer.print_job(job_lines(w, j)).unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
}

/// Parses "w{w} j{j} {k}/{n}".
fn parse(line: &str) -> (usize, usize, usize, usize) {
    let parsed = (|| {
        let mut words = line.split(' ');
        let w = words.next()?.strip_prefix('w')?.parse().ok()?;
        let j = words.next()?.strip_prefix('j')?.parse().ok()?;
        let (k, n) = words.next()?.split_once('/')?;
        Some((w, j, k.parse().ok()?, n.parse().ok()?))
    })();
    parsed.unwrap_or_else(|| panic!("unexpected output line {line:?}"))
}

/// Checks that the output is made of whole jobs, each one contiguous and
/// present exactly once, for jobs `jobs` of every writer.
fn assert_whole_jobs(lines: &[String], jobs: std::ops::Range<usize>) {
    let mut seen: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let (w, j, k, n) = parse(&lines[i]);
        assert_eq!(k, 0, "line {i} ({:?}) is not the start of a job", lines[i]);
        assert!(
            i + n <= lines.len(),
            "job w{w} j{j} is cut short at the end"
        );
        for (m, line) in lines[i..i + n].iter().enumerate() {
            assert_eq!(
                parse(line),
                (w, j, m, n),
                "job w{w} j{j} is interleaved at line {}",
                i + m
            );
        }
        *seen.entry((w, j)).or_default() += 1;
        i += n;
    }
    for w in 0..WRITERS {
        for j in jobs.clone() {
            assert_eq!(
                seen.remove(&(w, j)),
                Some(1),
                "job w{w} j{j} must appear once"
            );
        }
    }
    assert!(seen.is_empty(), "unexpected jobs in the output: {seen:?}");
}

#[test]
fn jobs_from_eight_writers_never_interleave_and_are_flushed_by_join() {
    each_backend(
        "jobs_from_eight_writers_never_interleave_and_are_flushed_by_join",
        |backend| {
            let rt = runtime(backend);
            let out = SharedBuffer::new();
            // A small buffer, so that jobs also straddle the buffer's flushes.
            let printer = Printer::with_capacity(256, out.clone())
                .spawn(&rt, "printer")
                .unwrap();
            print_from_writers(&printer, 0..400);
            // No explicit flush: joining waits for the flush after the batch.
            printer.join().unwrap();
            assert_whole_jobs(&out.lines(), 0..400);

            let stats = printer.stats().unwrap();
            let lines: usize = (0..400).map(job_len).sum::<usize>() * WRITERS;
            assert_eq!(stats.jobs, 400 * WRITERS as u64);
            assert_eq!(stats.lines, lines as u64);
            assert_eq!(stats.write_errors, 0);
        },
    );
}

#[test]
fn output_is_flushed_by_runtime_shutdown() {
    each_backend("output_is_flushed_by_runtime_shutdown", |backend| {
        let rt = runtime(backend);
        let out = SharedBuffer::new();
        // A buffer larger than all the output: only flushes put it out.
        let printer = Printer::with_capacity(1 << 20, out.clone())
            .spawn(&rt, "printer")
            .unwrap();
        print_from_writers(&printer, 0..200);
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 0);
        assert!(printer.handle().has_exited());
        assert_whole_jobs(&out.lines(), 0..200);
    });
}

#[test]
fn flush_waits_for_earlier_output() {
    each_backend("flush_waits_for_earlier_output", |backend| {
        let rt = runtime(backend);
        let out = SharedBuffer::new();
        let printer = Printer::with_capacity(1 << 20, out.clone())
            .spawn(&rt, "printer")
            .unwrap();
        printer.print_job(["The count is 1", "-----"]).unwrap();
        printer
            .handle()
            .tell(PrinterMsg::Line("The count is 2".into()))
            .unwrap();
        printer.flush().unwrap();
        assert_eq!(out.contents(), "The count is 1\n-----\nThe count is 2\n");
    });
}

/// Fails every write while `failures_left` is above zero, then writes to
/// `out`.
struct Flaky {
    failures_left: Arc<AtomicU64>,
    out: SharedBuffer,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Err(io::Error::other("the device is unplugged"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_are_counted_and_reported_without_a_panic() {
    each_backend(
        "write_errors_are_counted_and_reported_without_a_panic",
        |backend| {
            let rt = runtime(backend);
            let out = SharedBuffer::new();
            let failures_left = Arc::new(AtomicU64::new(3));
            let flaky = Flaky {
                failures_left: Arc::clone(&failures_left),
                out: out.clone(),
            };
            // No buffering to speak of: every line reaches the writer.
            let printer = Printer::with_capacity(1, flaky)
                .spawn(&rt, "printer")
                .unwrap();
            for n in 0..3 {
                printer.print(format!("lost {n}")).unwrap();
            }
            match printer.flush() {
                Err(PrinterError::Write { failed, latest }) => {
                    assert_eq!(failed, 3);
                    assert_eq!(latest.to_string(), "the device is unplugged");
                }
                other => panic!("expected the write errors, got {other:?}"),
            }
            // Reported once; the printer goes on.
            printer.print("kept").unwrap();
            printer.flush().unwrap();
            assert_eq!(out.contents(), "kept\n");
            assert_eq!(printer.stats().unwrap().write_errors, 3);
            assert_eq!(printer.handle().stats().panicked, 0);
            assert_eq!(failures_left.load(Ordering::SeqCst), 0);
        },
    );
}

#[test]
fn a_printer_spawned_with_options_works_through_from() {
    each_backend(
        "a_printer_spawned_with_options_works_through_from",
        |backend| {
            let rt = runtime(backend);
            let out = SharedBuffer::new();
            let handle = rt
                .manager("printer")
                .capacity(custody::Capacity::bounded(4).unwrap())
                .spawn(Printer::new(out.clone()))
                .unwrap();
            let printer = PrinterHandle::from(handle);
            for n in 0..100 {
                printer.print(n.to_string()).unwrap();
            }
            printer.join().unwrap();
            let expected: Vec<String> = (0..100).map(|n: i32| n.to_string()).collect();
            assert_eq!(out.lines(), expected);
        },
    );
}

#[test]
fn handles_and_errors_have_the_auto_traits() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<PrinterHandle>();
    send_sync::<SharedBuffer>();
    send_sync::<Printer<SharedBuffer>>();
    error::<PrinterError>();
}

/// With a runtime batch limit of one message the manager loop never calls
/// `idle`; the printer must still flush when its mailbox is empty.
#[test]
fn output_is_flushed_by_join_with_a_runtime_batch_limit_of_one() {
    each_backend(
        "output_is_flushed_by_join_with_a_runtime_batch_limit_of_one",
        |backend| {
            let rt = runtime(backend);
            let out = SharedBuffer::new();
            let handle = rt
                .manager("printer")
                .max_batch(1)
                .spawn(Printer::with_capacity(1 << 20, out.clone()))
                .unwrap();
            let printer = PrinterHandle::from(handle);
            print_from_writers(&printer, 0..50);
            printer.join().unwrap();
            assert_whole_jobs(&out.lines(), 0..50);
        },
    );
}
