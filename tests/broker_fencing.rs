//! Two owners at once, against a real RabbitMQ broker (features `amqp` and
//! `sqlite`; the URL comes from `CUSTODY_AMQP_URL`, or guest@127.0.0.1:5672;
//! an unreachable broker fails these tests, it never skips them).
//!
//! The broker makes a standby active once the active owner's connection is
//! gone, but the old owner may not know it yet: frozen (SIGSTOP), or cut
//! off, it still holds the deliveries it was sent. These scenarios check
//! that
//!
//! - an owner that learns its connection is gone stops at once and drops
//!   what it had not settled (nothing of it is committed or acknowledged);
//! - an owner that does not know (frozen, or behind a silent network) cannot
//!   commit after the new owner's first commit: the `RemoteDatabase` fences
//!   it with the owner epoch, checked inside each batch's transaction;
//! - a write that fails for a transient reason (the database locked by a
//!   frozen owner's open transaction) is held and run again, never
//!   acknowledged or reported done before it commits.
//!
//! Each owner's connection stamps the rows it inserts with its own name (a
//! TEMP trigger of that connection), and rowids follow commit order, so
//! "no row of the old owner after the new owner's first row" is read from
//! the file itself, whatever the code under test believes.
//!
//! Smoke size by default; `CUSTODY_BROKER_FENCING_FULL=1` runs ten times
//! more writes. Each scenario runs inside `within` (60 s, 180 s at full
//! size), once per backend, with queue names and a database file of its own.

#![cfg(all(feature = "amqp", feature = "sqlite"))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{Queues, builder, connect, unique_name};
use custody::broker::{Broker, RemoteHandle};
use custody::resources::{Database, RemoteDatabase, RemoteDatabaseMsg, RemoteWrite};
use custody::{Backend, Context, Manager, Runtime};

/// Whether to run at full size.
fn full() -> bool {
    std::env::var("CUSTODY_BROKER_FENCING_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `smoke` writes, or ten times that at full size.
fn size(smoke: u64) -> u64 {
    if full() { smoke * 10 } else { smoke }
}

/// The bound on one scenario.
fn limit() -> Duration {
    Duration::from_secs(if full() { 180 } else { 60 })
}

/// Runs the scenario once per backend, each inside `within`.
fn per_backend(what: &'static str, scenario: impl Fn(Backend) + Send + Sync + Clone + 'static) {
    common::per_backend_within(limit(), what, scenario);
}

/// A SQLite file, removed with its companions when dropped, pass or fail.
struct DbFile(std::path::PathBuf);

impl DbFile {
    fn new(label: &str) -> DbFile {
        DbFile(std::env::temp_dir().join(format!("custody-{}.db", unique_name(label))))
    }

    fn query(&self, sql: &str) -> u64 {
        let conn = custody::resources::rusqlite::Connection::open(&self.0).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Rows and distinct `n`s in `writes`, and rows in `custody_applied`.
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.query("SELECT count(*) FROM writes"),
            self.query("SELECT count(DISTINCT n) FROM writes"),
            self.query("SELECT count(*) FROM custody_applied"),
        )
    }

    /// Rows inserted by the owner named `owner`.
    fn rows_of(&self, owner: &str) -> u64 {
        self.query(&format!(
            "SELECT count(*) FROM writes WHERE owner = '{owner}'"
        ))
    }

    /// Rows of `old` committed after the first row of `new`.
    fn rows_after(&self, old: &str, new: &str) -> u64 {
        self.query(&format!(
            "SELECT count(*) FROM writes WHERE owner = '{old}' \
             AND rowid > (SELECT min(rowid) FROM writes WHERE owner = '{new}')"
        ))
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A `RemoteDatabase` with the table `writes (n, owner)`, which has no
/// unique key (a write applied twice shows as two rows), committing every 16
/// writes, whose connection stamps each row it inserts with `owner`.
fn owner_db(path: &std::path::Path, owner: &str) -> RemoteDatabase {
    stamped_db(Database::builder(path).max_batch(16), owner)
}

/// The same, committing each write on its own (SQLite's write lock is free
/// between two writes).
fn commit_each_db(path: &std::path::Path, owner: &str) -> RemoteDatabase {
    stamped_db(Database::builder(path).max_batch(1), owner)
}

/// The same, committing only in `idle` (or at 512 writes), as by default.
fn idle_committing_db(path: &std::path::Path, owner: &str) -> RemoteDatabase {
    stamped_db(Database::builder(path), owner)
}

fn stamped_db(builder: custody::resources::DatabaseBuilder, owner: &str) -> RemoteDatabase {
    RemoteDatabase::open(builder.init_sql(format!(
        "CREATE TABLE IF NOT EXISTS writes (n INTEGER NOT NULL, owner TEXT);
         CREATE TEMP TABLE me (name TEXT NOT NULL);
         INSERT INTO temp.me VALUES ('{owner}');
         CREATE TEMP TRIGGER stamp AFTER INSERT ON main.writes BEGIN
             UPDATE writes SET owner = (SELECT name FROM me) WHERE rowid = new.rowid;
         END;"
    )))
    .unwrap()
}

fn insert(n: u64) -> RemoteDatabaseMsg {
    RemoteDatabaseMsg::Execute(RemoteWrite::new(
        "INSERT INTO writes (n) VALUES (?1)",
        vec![i64::try_from(n).unwrap().into()],
    ))
}

/// What a wrapped `RemoteDatabase` did, as its manager saw it.
#[derive(Debug, Default, Clone)]
struct Report {
    handled: u64,
    first_handled: Option<Instant>,
    last_handled: Option<Instant>,
    /// Handled after the latch opened (or the child was resumed).
    handled_after_latch: u64,
    latch_opened: Option<Instant>,
    /// The highest owner epoch the database held.
    epoch: Option<u64>,
    rejected_commits: u64,
    retries: u64,
    held: usize,
    superseded: bool,
}

/// The fencing counters of `db`.
fn fence_of(db: &RemoteDatabase, report: &mut Report) {
    // The highest claim held: an owner that stepped down holds none now.
    report.epoch = report.epoch.max(db.epoch());
    report.rejected_commits = db.rejected_commits();
    report.retries = db.retries();
    report.held = db.held_writes();
    report.superseded = db.is_superseded();
}

/// A gate a manager can be held at until the test opens it.
#[derive(Default)]
struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
    reached: Mutex<bool>,
    arrived: Condvar,
}

impl Latch {
    fn wait_reached(&self) {
        let mut reached = self.reached.lock().unwrap();
        while !*reached {
            reached = self.arrived.wait(reached).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Marks the latch reached and waits until it is opened.
    fn hold(&self) {
        *self.reached.lock().unwrap() = true;
        self.arrived.notify_all();
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// A `RemoteDatabase` that reports what it does, may be slow for its first
/// writes, and may be held at a latch in its first `idle` (after the
/// commit, before the acknowledgement).
struct Observed {
    db: RemoteDatabase,
    report: Arc<Mutex<Report>>,
    /// Sleeps this long in each of its first `slow_for` writes.
    delay: Duration,
    slow_for: u64,
    latch: Option<Arc<Latch>>,
}

impl Observed {
    fn new(db: RemoteDatabase) -> (Observed, Arc<Mutex<Report>>) {
        let report = Arc::new(Mutex::new(Report::default()));
        let observed = Observed {
            db,
            report: Arc::clone(&report),
            delay: Duration::ZERO,
            slow_for: 0,
            latch: None,
        };
        (observed, report)
    }

    fn slow(mut self, delay: Duration, writes: u64) -> Observed {
        self.delay = delay;
        self.slow_for = writes;
        self
    }

    fn latched(mut self, latch: &Arc<Latch>) -> Observed {
        self.latch = Some(Arc::clone(latch));
        self
    }

    fn note(&self) {
        fence_of(&self.db, &mut self.report.lock().unwrap());
    }
}

impl Manager for Observed {
    type Msg = RemoteDatabaseMsg;
    fn handle(&mut self, msg: RemoteDatabaseMsg, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        let handled = {
            let mut r = self.report.lock().unwrap();
            r.handled += 1;
            let now = Instant::now();
            r.first_handled.get_or_insert(now);
            r.last_handled = Some(now);
            if r.latch_opened.is_some() {
                r.handled_after_latch += 1;
            }
            r.handled
        };
        if handled <= self.slow_for {
            std::thread::sleep(self.delay);
        }
        self.db.handle(msg, ctx);
        self.note();
    }
    fn idle(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.idle(ctx);
        self.note();
        if let Some(latch) = self.latch.take() {
            latch.hold();
            self.report.lock().unwrap().latch_opened = Some(Instant::now());
        }
    }
    fn stopped(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.stopped(ctx);
        self.note();
    }
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.recover(panic, ctx);
    }
}

/// Polls `cond` every 10 ms until it holds; `false` if it still does not
/// after `limit`.
fn holds_within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Polls `cond` every 10 ms until it holds; fails the test, naming `what`,
/// if it does not within 30 s.
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        holds_within(Duration::from_secs(30), cond),
        "waited 30 s in vain for {what}"
    );
}

// ---------------------------------------------------------------------------
// The owner as a child process.

/// The environment variable that makes `fencing_owner_process` serve:
/// `MODE|NAME|PATH|BACKEND`, MODE `freeze` or `stall`.
const OWNER_VAR: &str = "CUSTODY_BROKER_FENCING_OWNER";

/// Writes the `stall` owner handles before it stalls inside its transaction.
const STALL_AT: u64 = 150;

/// The child's owner: a `RemoteDatabase` stamped `A` that prints what the
/// parent needs.
///
/// - `freeze`: at its first `idle` (after the commit, before the ack) it
///   prints `freeze-point`, then waits for a line on stdin (the parent
///   SIGSTOPs it there, and writes the line after SIGCONT).
/// - `stall`: after `STALL_AT` writes, inside the batch's open transaction
///   (SQLite's write lock held), it prints `stalled` and waits on stdin for
///   good (the parent SIGSTOPs, then SIGKILLs it).
struct ChildOwner {
    db: RemoteDatabase,
    mode: String,
    handled: u64,
    frozen: bool,
    resumed_at: Option<Instant>,
    handled_after_resume: u64,
    last_handle_after_resume: Option<Duration>,
    rejected_printed: u64,
}

impl ChildOwner {
    fn print_rejections(&mut self) {
        while self.rejected_printed < self.db.rejected_commits() {
            self.rejected_printed += 1;
            println!("rejected-commit {}", self.rejected_printed);
        }
    }
}

impl Manager for ChildOwner {
    type Msg = RemoteDatabaseMsg;
    fn handle(&mut self, msg: RemoteDatabaseMsg, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.handled += 1;
        if let Some(at) = self.resumed_at {
            self.handled_after_resume += 1;
            self.last_handle_after_resume = Some(at.elapsed());
        }
        self.db.handle(msg, ctx);
        self.print_rejections();
        if self.mode == "stall" && self.handled == STALL_AT {
            println!("stalled handled={}", self.handled);
            // SIGSTOPped, then SIGKILLed, long before a line comes.
            let _ = std::io::stdin().lock().lines().next();
        }
    }
    fn idle(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.idle(ctx);
        self.print_rejections();
        if self.mode == "freeze" && !self.frozen {
            self.frozen = true;
            let outside = ctx.handle().stats().outside.unwrap_or_default();
            println!(
                "freeze-point handled={} delivered={} acked={}",
                self.handled, outside.delivered, outside.acked
            );
            // The parent SIGSTOPs this process here, and sends a line once
            // it has sent SIGCONT.
            let _ = std::io::stdin().lock().lines().next();
            self.resumed_at = Some(Instant::now());
            println!("resumed");
        }
    }
    fn stopped(&mut self, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.stopped(ctx);
        self.print_rejections();
        println!(
            "final handled_after_resume={} last_handle_after_resume_us={} rejected={} superseded={} stopped_after_resume_us={}",
            self.handled_after_resume,
            self.last_handle_after_resume.map_or(0, |d| d.as_micros()),
            self.db.rejected_commits(),
            self.db.is_superseded(),
            self.resumed_at.map_or(0, |at| at.elapsed().as_micros()),
        );
    }
    fn recover(&mut self, panic: &str, ctx: &mut Context<'_, RemoteDatabaseMsg>) {
        self.db.recover(panic, ctx);
    }
}

/// Not a scenario: the owner process the child-process scenarios start
/// (with `--ignored --exact`), freeze and kill.
#[test]
#[ignore = "an owner process started by a test of this file"]
fn fencing_owner_process() {
    let Ok(arg) = std::env::var(OWNER_VAR) else {
        return;
    };
    let parts: Vec<&str> = arg.split('|').collect();
    let [mode, name, path, backend] = parts[..] else {
        panic!("{OWNER_VAR}: expected MODE|NAME|PATH|BACKEND, got {arg}");
    };
    let backend = Backend::ALL[backend.parse::<usize>().unwrap()];
    let rt = Runtime::builder()
        .backend(backend)
        .max_batch(16)
        .build()
        .unwrap();
    // A short heartbeat: the broker drops this owner soon after a SIGSTOP.
    // Reconnecting off: an owner that learns its connection is gone then
    // stops at once (reconnecting, it would keep its manager to serve again:
    // tests/broker_reconnect.rs).
    let broker = connect(
        builder()
            .heartbeat(Duration::from_secs(2))
            .prefetch(256)
            .reconnect(false),
    );
    let path = std::path::Path::new(path);
    let owner = ChildOwner {
        // Stalled, it holds a transaction of writes not yet committed.
        db: if mode == "stall" {
            idle_committing_db(path, "A")
        } else {
            owner_db(path, "A")
        },
        mode: mode.to_owned(),
        handled: 0,
        frozen: false,
        resumed_at: None,
        handled_after_resume: 0,
        last_handle_after_resume: None,
        rejected_printed: 0,
    };
    let served = broker.serve(&rt, name, owner).unwrap();
    // On a line of its own: the harness has printed "test ... " before it.
    println!("\nserving");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_queued = usize::MAX;
    while served.is_serving() && Instant::now() < deadline {
        let queued = served.handle().len();
        if queued != last_queued {
            println!("queued {queued}");
            last_queued = queued;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("ended serving={}", served.is_serving());
    drop(served);
}

/// A child owner process, killed when dropped, pass or fail.
struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    fn start(mode: &str, name: &str, file: &DbFile, backend: Backend) -> ChildProcess {
        let backend = Backend::ALL.iter().position(|b| *b == backend).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "fencing_owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                OWNER_VAR,
                format!("{mode}|{name}|{}|{backend}", file.0.to_str().unwrap()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        ChildProcess {
            child,
            stdin,
            lines,
        }
    }

    /// The next line that starts with `prefix` (earlier lines are skipped).
    fn expect(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv() {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!("the owner process ended before printing `{prefix}`"),
            }
        }
    }

    /// Every line up to the one that starts with `prefix`, that one included.
    fn lines_until(&self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv() {
                Ok(line) => {
                    let last = line.starts_with(prefix);
                    seen.push(line);
                    if last {
                        return seen;
                    }
                }
                Err(_) => panic!("the owner process ended before printing `{prefix}`: {seen:?}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    fn send_line(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` of a line of the child's.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} of `{line}` is not a number"))
}

/// Sends the first `first` writes, then the rest once `then` returns.
fn send_in_two(db: &RemoteHandle<RemoteDatabaseMsg>, n: u64, first: u64) -> impl FnOnce() + '_ {
    db.tell_all((0..first).map(insert)).unwrap();
    move || db.tell_all((first..n).map(insert)).unwrap()
}

// ---------------------------------------------------------------------------
// Case 2: two owners at once.

#[test]
fn a_frozen_owner_commits_nothing_after_its_standby_took_over() {
    per_backend("frozen owner", |backend| {
        let n = size(2000);
        let queues = Queues::new("fence-frozen");
        let file = DbFile::new("fence-frozen");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        let rest = send_in_two(&db, n, 10);
        let mut a = ChildProcess::start("freeze", &queues.name, &file, backend);
        a.expect("serving");
        // The standby, in this process: slow on its first writes (outside
        // its transactions), so that the frozen owner's deliveries are not
        // all handled again by the time it resumes.
        let rt = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let standby = connect(builder());
        let (b, b_report) = Observed::new(commit_each_db(&file.0, "B"));
        let served_b = standby
            .serve(&rt, &queues.name, b.slow(Duration::from_millis(2), 400))
            .unwrap();
        // The owner waits in its first idle, committed, not acknowledged;
        // the rest of the stream fills its prefetch meanwhile.
        let freeze = a.expect("freeze-point");
        let unacked = field(&freeze, "delivered") - field(&freeze, "acked");
        rest();
        let queued = loop {
            let queued: u64 = a.expect("queued ")["queued ".len()..].parse().unwrap();
            if queued >= 200 {
                break queued;
            }
        };
        a.signal("-STOP");
        let stopped_at = Instant::now();
        wait_until("a row of the standby", || file.rows_of("B") > 0);
        let (failover, b_during_freeze) = {
            let r = b_report.lock().unwrap();
            (
                r.first_handled.unwrap().duration_since(stopped_at),
                r.handled,
            )
        };
        a.signal("-CONT");
        a.send_line();
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let output = a.lines_until("ended");
        let final_line = output
            .iter()
            .find(|l| l.starts_with("final"))
            .unwrap_or_else(|| panic!("no `final` line from the owner: {output:?}"))
            .clone();
        let rejected = output
            .iter()
            .filter(|l| l.starts_with("rejected-commit"))
            .count();
        let (rows, distinct, applied) = file.counts();
        let late = file.rows_after("A", "B");
        eprintln!(
            "frozen owner ({}): held {} deliveries when stopped ({unacked} handled, {queued} \
             in its mailbox); the standby handled its first {failover:?} after the SIGSTOP and \
             {b_during_freeze} during the freeze; after SIGCONT the old owner handled {} (the \
             last {} us after resuming), stopped {} us after resuming, {rejected} commits \
             rejected, superseded: {}; rows A {}, B {}, of A after B's first {late}; rows \
             {rows}, distinct {distinct}, applied {applied} of {n}",
            backend.name(),
            unacked + queued,
            field(&final_line, "handled_after_resume"),
            field(&final_line, "last_handle_after_resume_us"),
            field(&final_line, "stopped_after_resume_us"),
            final_line.contains("superseded=true"),
            file.rows_of("A"),
            file.rows_of("B"),
        );
        assert!(
            unacked + queued > 0,
            "the owner held no delivery when frozen"
        );
        assert!(
            b_during_freeze > 0,
            "the standby handled nothing during the freeze"
        );
        assert_eq!(
            late, 0,
            "the old owner committed {late} rows after the new owner's first commit"
        );
        assert_eq!(
            (rows, distinct, applied),
            (n, n, n),
            "rows, distinct ids and applied ids differ from the {n} confirmed writes"
        );
        served_b.stop();
        drop(a);
        drop(db);
        drop(queues);
    });
}

// ---------------------------------------------------------------------------
// A TCP proxy between one owner and the broker.

#[test]
fn an_owner_cut_off_stops_at_once_and_drops_what_it_had_not_settled() {
    per_backend("cut owner", |backend| {
        let n = size(2000);
        let queues = Queues::new("fence-cut");
        let file = DbFile::new("fence-cut");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        db.tell_all((0..n).map(insert)).unwrap();
        let proxy = Proxy::start();
        let rt_a = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        // Reconnecting off: an owner that learns its connection is gone
        // then stops at once (reconnecting, it would keep its manager).
        let owner = connect(
            Broker::builder(proxy.url.clone())
                .prefetch(256)
                .reconnect(false),
        );
        // Slow throughout: its mailbox stays full.
        let (a, a_report) = Observed::new(owner_db(&file.0, "A"));
        let served_a = owner
            .serve(
                &rt_a,
                &queues.name,
                a.slow(Duration::from_millis(5), u64::MAX),
            )
            .unwrap();
        let rt_b = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let standby = connect(builder());
        let (b, b_report) = Observed::new(owner_db(&file.0, "B"));
        let served_b = standby
            .serve(&rt_b, &queues.name, b.slow(Duration::from_millis(2), 400))
            .unwrap();
        wait_until("the owner with a full mailbox", || {
            a_report.lock().unwrap().handled >= 20 && served_a.handle().len() >= 100
        });
        let queued_at_cut = served_a.handle().len();
        let handled_at_cut = a_report.lock().unwrap().handled;
        proxy.cut();
        let cut_at = Instant::now();
        let a_stopped = holds_within(Duration::from_secs(20), || !served_a.is_serving());
        let ended_after = cut_at.elapsed();
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let a_end = a_report.lock().unwrap().clone();
        let handled_after_cut = a_end.handled - handled_at_cut;
        let last_after_cut = a_end
            .last_handled
            .map(|at| at.saturating_duration_since(cut_at));
        let failover = b_report
            .lock()
            .unwrap()
            .first_handled
            .map(|at| at.saturating_duration_since(cut_at));
        let dropped = served_a.handle().stats().unhandled;
        let acked_after = served_a.handle().stats().outside.unwrap().acked;
        let (rows, distinct, applied) = file.counts();
        let late = file.rows_after("A", "B");
        eprintln!(
            "cut owner ({}): {queued_at_cut} in its mailbox at the cut; it handled \
             {handled_after_cut} more (the last {last_after_cut:?} after the cut), dropped \
             {dropped}, stopped serving: {a_stopped} ({ended_after:?} after the cut); the standby handled its \
             first {failover:?} after the cut; acked by A {acked_after}; rows A {}, B {}, of A \
             after B's first {late}; rows {rows}, distinct {distinct}, applied {applied} of {n}",
            backend.name(),
            file.rows_of("A"),
            file.rows_of("B"),
        );
        assert!(
            dropped > 0,
            "the cut-off owner dropped nothing: it went on handling its mailbox \
             ({handled_after_cut} handled after the cut, {queued_at_cut} queued then)"
        );
        assert!(file.rows_of("B") > 0, "the standby wrote nothing");
        assert_eq!(
            late, 0,
            "the old owner committed {late} rows after the new owner's first commit"
        );
        assert_eq!(
            (rows, distinct, applied),
            (n, n, n),
            "rows, distinct ids and applied ids differ from the {n} confirmed writes"
        );
        assert!(
            a_stopped,
            "the old owner still serves 20 s after losing its place"
        );
        served_a.stop();
        served_b.stop();
        drop(db);
        drop(queues);
    });
}

#[test]
fn an_owner_partitioned_without_knowing_it_cannot_commit_after_the_takeover() {
    per_backend("partitioned owner", |backend| {
        let n = size(2000);
        let queues = Queues::new("fence-silent");
        let file = DbFile::new("fence-silent");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        let rest = send_in_two(&db, n, 10);
        let proxy = Proxy::start();
        let rt_a = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        // A long heartbeat: behind the silent proxy the owner does not
        // notice its loss through the heartbeat during the scenario; a short
        // confirm timeout: its broker round trips give up after a second.
        let owner = connect(
            Broker::builder(proxy.url.clone())
                .heartbeat(Duration::from_secs(60))
                .confirm_timeout(Duration::from_secs(1))
                .prefetch(256),
        );
        let latch = Arc::new(Latch::default());
        let (a, a_report) = Observed::new(owner_db(&file.0, "A"));
        let served_a = owner.serve(&rt_a, &queues.name, a.latched(&latch)).unwrap();
        let rt_b = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let standby = connect(builder());
        let (b, b_report) = Observed::new(owner_db(&file.0, "B"));
        let served_b = standby
            .serve(&rt_b, &queues.name, b.slow(Duration::from_millis(10), 300))
            .unwrap();
        // The owner waits in its first idle (committed, not acknowledged)
        // while the rest of the stream fills its prefetch.
        latch.wait_reached();
        rest();
        wait_until("the owner with a full mailbox", || {
            served_a.handle().len() >= 200
        });
        let queued = served_a.handle().len();
        proxy.silence();
        let silenced_at = Instant::now();
        wait_until("a row of the standby", || file.rows_of("B") > 0);
        let b_before = b_report.lock().unwrap().handled;
        latch.open();
        let a_stopped = holds_within(Duration::from_secs(20), || !served_a.is_serving());
        let ended_after = silenced_at.elapsed();
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let a_end = a_report.lock().unwrap().clone();
        let failover = b_report
            .lock()
            .unwrap()
            .first_handled
            .map(|at| at.saturating_duration_since(silenced_at));
        let (rows, distinct, applied) = file.counts();
        let late = file.rows_after("A", "B");
        eprintln!(
            "partitioned owner ({}): {queued} in its mailbox when the network went silent; the \
             standby handled its first {failover:?} after, and {b_before} before the old owner \
             resumed; the old owner then handled {} (the last {:?} after resuming), had {} \
             commits rejected, superseded: {}, stopped serving: {a_stopped} ({ended_after:?} \
             after the partition); rows A {}, B {}, of A after B's first {late}; rows {rows}, distinct \
             {distinct}, applied {applied} of {n}",
            backend.name(),
            a_end.handled_after_latch,
            a_end
                .last_handled
                .zip(a_end.latch_opened)
                .map(|(last, opened)| last.saturating_duration_since(opened)),
            a_end.rejected_commits,
            a_end.superseded,
            file.rows_of("A"),
            file.rows_of("B"),
        );
        assert!(
            b_before > 0,
            "the standby handled nothing before the old owner resumed"
        );
        assert!(
            a_end.handled_after_latch > 0,
            "the old owner handled nothing after it resumed: the fence was not tried"
        );
        assert_eq!(
            late, 0,
            "the old owner committed {late} rows after the new owner's first commit"
        );
        assert!(
            a_end.rejected_commits >= 1 && a_end.superseded,
            "the old owner's commit was not rejected, or it did not stop: {a_end:?}"
        );
        let b_epoch = b_report.lock().unwrap().epoch;
        assert!(
            a_end.epoch.is_some() && b_epoch > a_end.epoch,
            "the new owner's epoch {b_epoch:?} is not above the old one's {:?}",
            a_end.epoch
        );
        assert_eq!(
            (rows, distinct, applied),
            (n, n, n),
            "rows, distinct ids and applied ids differ from the {n} confirmed writes"
        );
        assert!(
            a_stopped,
            "the old owner still serves 20 s after losing its place"
        );
        served_a.stop();
        served_b.stop();
        drop(db);
        drop(queues);
    });
}

/// A manager whose effects cannot be fenced (a counter): records when it
/// handled each message, and sleeps in each.
struct Tally {
    handled: Arc<Mutex<Vec<Instant>>>,
    delay: Duration,
}

impl Manager for Tally {
    type Msg = u64;
    fn handle(&mut self, _n: u64, _ctx: &mut Context<'_, u64>) {
        std::thread::sleep(self.delay);
        self.handled.lock().unwrap().push(Instant::now());
    }
}

#[test]
fn a_zombie_that_cannot_be_fenced_acts_only_on_what_it_held_until_its_heartbeat_fails() {
    per_backend("unfenced zombie", |backend| {
        let n = size(1000);
        let queues = Queues::new("fence-zombie");
        let sender = connect(builder());
        let counts = sender.remote_handle::<u64>(&queues.name).unwrap();
        counts.tell_all(0..n).unwrap();
        let proxy = Proxy::start();
        let rt_a = Runtime::builder().backend(backend).build().unwrap();
        let heartbeat = Duration::from_secs(2);
        let owner = connect(
            Broker::builder(proxy.url.clone())
                .heartbeat(heartbeat)
                .prefetch(256)
                // Reconnecting off: it stops at once when its heartbeat
                // fails (reconnecting, it would keep its manager).
                .reconnect(false),
        );
        let by_a = Arc::new(Mutex::new(Vec::new()));
        let served_a = owner
            .serve(
                &rt_a,
                &queues.name,
                Tally {
                    handled: Arc::clone(&by_a),
                    // Its mailbox takes about 10 s to drain: longer than
                    // its heartbeat check (about twice the interval).
                    delay: Duration::from_millis(40),
                },
            )
            .unwrap();
        let rt_b = Runtime::builder().backend(backend).build().unwrap();
        let standby = connect(builder());
        let by_b = Arc::new(Mutex::new(Vec::new()));
        let served_b = standby
            .serve(
                &rt_b,
                &queues.name,
                Tally {
                    handled: Arc::clone(&by_b),
                    delay: Duration::ZERO,
                },
            )
            .unwrap();
        wait_until("the owner with a full mailbox", || {
            !by_a.lock().unwrap().is_empty() && served_a.handle().len() >= 200
        });
        // What it held: delivered and not acknowledged.
        let held = {
            let outside = served_a.handle().stats().outside.unwrap();
            outside.delivered - outside.acked
        };
        let handled_before = by_a.lock().unwrap().len() as u64;
        proxy.silence();
        let silenced_at = Instant::now();
        let a_stopped = holds_within(Duration::from_secs(30), || !served_a.is_serving());
        let stopped_after = silenced_at.elapsed();
        counts.join_timeout(Duration::from_secs(40)).unwrap();
        let a_all = by_a.lock().unwrap().clone();
        let after = a_all.len() as u64 - handled_before;
        let last_after = a_all
            .last()
            .map(|at| at.saturating_duration_since(silenced_at));
        let b_first = by_b
            .lock()
            .unwrap()
            .first()
            .map(|at| at.saturating_duration_since(silenced_at));
        let b_total = by_b.lock().unwrap().len() as u64;
        let dropped = served_a.handle().stats().unhandled;
        eprintln!(
            "unfenced zombie ({}, heartbeat {heartbeat:?}): held {held} when the network went \
             silent; the standby handled its first {b_first:?} after; the zombie handled {after} \
             more (the last {last_after:?} after), dropped {dropped}, stopped serving: \
             {a_stopped} ({stopped_after:?} after); handled twice: {} of {n}",
            backend.name(),
            (a_all.len() as u64 + b_total).saturating_sub(n),
        );
        assert!(
            after <= held,
            "the zombie handled {after} messages after the partition, more than the {held} it held"
        );
        assert!(
            a_stopped,
            "the zombie still serves 30 s after the partition"
        );
        assert!(
            dropped > 0,
            "the zombie did not stop at once when its heartbeat failed: it drained its mailbox"
        );
        served_a.stop();
        served_b.stop();
        drop(counts);
        drop(queues);
    });
}

// ---------------------------------------------------------------------------
// Case 3: a frozen owner holds SQLite's write lock.

#[test]
fn a_standby_locked_out_by_a_frozen_owners_transaction_loses_no_write() {
    per_backend("locked out standby", |backend| {
        let n = size(1500);
        let queues = Queues::new("fence-locked");
        let file = DbFile::new("fence-locked");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        db.tell_all((0..n).map(insert)).unwrap();
        let a = ChildProcess::start("stall", &queues.name, &file, backend);
        a.expect("serving");
        let rt = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let standby = connect(builder());
        let (b, b_report) = Observed::new(owner_db(&file.0, "B"));
        let served_b = standby.serve(&rt, &queues.name, b).unwrap();
        // Inside its transaction, SQLite's write lock held.
        a.expect("stalled");
        a.signal("-STOP");
        let stopped_at = Instant::now();
        // The standby takes over, and its first write meets the lock (it
        // returns after SQLite's busy timeout, 5 s).
        wait_until("a write of the standby", || {
            served_b.handle().stats().handled >= 1
        });
        let met_lock_after = stopped_at.elapsed();
        let at_kill = b_report.lock().unwrap().clone();
        let acked_while_locked = served_b.handle().stats().outside.unwrap().acked;
        a.signal("-KILL");
        let killed_at = Instant::now();
        drop(a);
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let joined_after = killed_at.elapsed();
        let b_end = b_report.lock().unwrap().clone();
        let (rows, distinct, applied) = file.counts();
        eprintln!(
            "locked out standby ({}): its first write returned {met_lock_after:?} after the \
             SIGSTOP, holding {} writes, {acked_while_locked} acknowledged while locked out; \
             all confirmed {joined_after:?} after the SIGKILL, after {} retries; rows A {}, B \
             {}; rows {rows}, distinct {distinct}, applied {applied} of {n}",
            backend.name(),
            at_kill.held,
            b_end.retries,
            file.rows_of("A"),
            file.rows_of("B"),
        );
        assert_eq!(
            (rows, distinct, applied),
            (n, n, n),
            "{} of {n} confirmed writes lost",
            n.saturating_sub(distinct)
        );
        assert_eq!(
            acked_while_locked, 0,
            "the standby acknowledged writes while the database was locked"
        );
        assert!(
            at_kill.held > 0 && b_end.retries > 0,
            "the standby never met the lock: {at_kill:?}"
        );
        served_b.stop();
        drop(db);
        drop(queues);
    });
}

/// With reconnecting on (the default), an owner partitioned without knowing
/// it steps down when the broker does not confirm it (its batch in hand
/// rolled back, its claim dropped), keeps its manager, subscribes again as
/// a standby once the network heals, and, made active again when the new
/// owner stops, claims the database anew and serves on: every write
/// applied once, nothing of the old owner committed after the new owner's
/// first commit until it claimed again.
#[test]
fn an_owner_that_stepped_down_reconnects_and_serves_again_with_a_new_claim() {
    per_backend("stepped-down owner", |backend| {
        let n = size(2000);
        let queues = Queues::new("fence-again");
        let file = DbFile::new("fence-again");
        let sender = connect(builder());
        let db = sender
            .remote_handle::<RemoteDatabaseMsg>(&queues.name)
            .unwrap();
        let rest = send_in_two(&db, n, 10);
        let proxy = Proxy::start();
        let rt_a = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let owner = connect(
            Broker::builder(proxy.url.clone())
                .heartbeat(Duration::from_secs(60))
                .confirm_timeout(Duration::from_secs(1))
                .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
                .prefetch(256),
        );
        let latch = Arc::new(Latch::default());
        let (a, a_report) = Observed::new(owner_db(&file.0, "A"));
        let served_a = owner.serve(&rt_a, &queues.name, a.latched(&latch)).unwrap();
        let rt_b = Runtime::builder()
            .backend(backend)
            .max_batch(16)
            .build()
            .unwrap();
        let standby = connect(builder());
        let (b, b_report) = Observed::new(owner_db(&file.0, "B"));
        let served_b = standby
            .serve(&rt_b, &queues.name, b.slow(Duration::from_millis(5), 300))
            .unwrap();
        latch.wait_reached();
        rest();
        wait_until("the owner with a full mailbox", || {
            served_a.handle().len() >= 200
        });
        proxy.silence();
        wait_until("a row of the standby", || file.rows_of("B") > 0);
        latch.open();
        // The old owner's commit is rejected, the broker does not confirm it
        // (a second), and it steps down; its manager keeps running.
        wait_until("the old owner stepped down", || {
            a_report.lock().unwrap().superseded
        });
        wait_until("the old owner noticed its loss", || !served_a.is_serving());
        let late = file.rows_after("A", "B");
        assert!(
            !served_a.handle().has_exited(),
            "the old owner's manager stopped: with reconnecting on it stays, to serve again"
        );
        proxy.restore();
        wait_until("the old owner serves again (as a standby)", || {
            served_a.is_serving()
        });
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let a_rows_before = file.rows_of("A");
        let b_epoch = b_report.lock().unwrap().epoch;
        // The new owner stops: the old one is made active and claims anew.
        served_b.stop();
        let more = 300;
        db.tell_all((n..n + more).map(insert)).unwrap();
        db.join_timeout(Duration::from_secs(40)).unwrap();
        let a_end = a_report.lock().unwrap().clone();
        let (rows, distinct, applied) = file.counts();
        let a_rows_after = file.rows_of("A") - a_rows_before;
        eprintln!(
            "stepped-down owner ({}): {late} rows of A after B's first while partitioned; \
             A's epochs: last {:?} (B's {b_epoch:?}); A wrote {a_rows_after} rows after B \
             stopped; {} commits rejected; rows {rows}, distinct {distinct}, applied {applied} \
             of {}",
            backend.name(),
            a_end.epoch,
            a_end.rejected_commits,
            n + more,
        );
        assert_eq!(
            late, 0,
            "the old owner committed {late} rows after the new owner's first commit"
        );
        assert_eq!(
            a_rows_after, more,
            "the old owner, active again, did not write what was sent after the new owner stopped"
        );
        assert!(
            a_end.epoch > b_epoch,
            "the old owner did not claim anew: its epoch {:?}, the new owner's {b_epoch:?}",
            a_end.epoch
        );
        assert_eq!(
            (rows, distinct, applied),
            (n + more, n + more, n + more),
            "rows, distinct ids and applied ids differ from the confirmed writes"
        );
        assert!(owner.reconnects() >= 1, "the old owner never reconnected");
        served_a.stop();
        drop(db);
        drop(queues);
    });
}
