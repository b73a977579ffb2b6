//! Misbehaving user code and call sites: an ask back right after a reply, a
//! shutdown (or a `Runtime` drop) from inside a handler, a batch limit of one,
//! a panic outside `handle`, a daemon used while the runtime drains. Every
//! promise of design sections 3 and 3b must hold all the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use custody::{
    AskError, Backend, Context, Handle, JoinError, Manager, ManagerState, PanicPolicy, Reply,
    Runtime, ShutdownReport,
};

use crate::support::{LIMIT, Latch, quiet_panics, runtime, within};

backend_tests!(
    a_manager_that_got_its_answer_can_be_asked_back_at_once,
    a_manager_that_got_its_answer_within_a_timeout_can_be_asked_back_at_once,
    a_cycle_through_a_timed_ask_is_reported_at_once,
    shutdown_from_a_handler_returns_at_once_and_completes_after_the_handler,
    a_second_shutdown_waits_for_the_one_a_handler_started,
    a_runtime_dropped_in_a_handler_shuts_down_gracefully,
    join_returns_only_after_idle_ran_with_max_batch_one,
    join_returns_only_after_stopped_ran_when_a_panic_stops_the_manager,
    join_after_many_producers_finds_every_handled_message_idled,
    a_panic_in_next_wake_is_caught_and_the_manager_keeps_answering,
    a_panic_dropping_the_old_instance_on_restart_is_caught_and_the_fresh_one_serves,
    a_panic_dropping_a_message_discarded_by_a_stop_policy_is_caught_and_join_ends,
    a_panic_dropping_a_message_discarded_by_shutdown_now_is_caught_and_reported,
    a_panic_dropping_the_manager_as_it_stops_is_caught_and_counted,
    a_daemon_keeps_serving_managers_that_drain_during_shutdown,
);

/// Polls `done` until it holds (the enclosing `within` bounds the wait).
fn poll_until(mut done: impl FnMut() -> bool) {
    while !done() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Panics listing the first few problems, if there are any.
fn assert_no_problems(what: &str, tries: usize, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems over {tries} tries, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
}

// ---------------------------------------------------------------------------
// 1. An ask back is no deadlock once the asker's wait has ended (or will end).
// ---------------------------------------------------------------------------

enum Pair {
    /// To X: ask Y `Ping(round)`, answer with what came back.
    Start(u64, Reply<Result<u64, AskError>>),
    /// To Y: answer `round + 1` and ask X `Echo(round)` (in the order the
    /// peer is set up for), then report the outcome of that ask.
    Ping(u64, Reply<u64>),
    /// To X: answer `round * 10`.
    Echo(u64, Reply<u64>),
}

struct Peer {
    other: Arc<OnceLock<Handle<Pair>>>,
    /// How X asks Y: `None` for a plain ask.
    timeout: Option<Duration>,
    /// Whether Y answers before asking back (else after).
    reply_first: bool,
    /// Where Y reports the outcome of its ask back.
    outcomes: mpsc::Sender<(u64, Result<u64, AskError>)>,
}

impl Manager for Peer {
    type Msg = Pair;

    fn handle(&mut self, msg: Pair, _ctx: &mut Context<'_, Pair>) {
        let other = self.other.get().expect("peers wired");
        match msg {
            Pair::Start(round, reply) => {
                let got = match self.timeout {
                    None => other.ask(|r| Pair::Ping(round, r)),
                    Some(t) => other.ask_timeout(|r| Pair::Ping(round, r), t),
                };
                reply.send(got);
            }
            Pair::Ping(round, reply) => {
                let outcome = if self.reply_first {
                    reply.send(round + 1);
                    other.ask(|r| Pair::Echo(round, r))
                } else {
                    let outcome = other.ask(|r| Pair::Echo(round, r));
                    reply.send(round + 1);
                    outcome
                };
                let _ = self.outcomes.send((round, outcome));
            }
            Pair::Echo(round, reply) => reply.send(round * 10),
        }
    }
}

/// X asks Y, Y asks X back, `rounds` times; returns what went wrong.
fn ask_back(
    backend: Backend,
    rounds: u64,
    timeout: Option<Duration>,
    reply_first: bool,
) -> Vec<String> {
    let rt = runtime(backend);
    let (outcomes, from_y) = mpsc::channel();
    let to_y = Arc::new(OnceLock::new());
    let to_x = Arc::new(OnceLock::new());
    let peer = |other: &Arc<OnceLock<Handle<Pair>>>| Peer {
        other: Arc::clone(other),
        timeout,
        reply_first,
        outcomes: outcomes.clone(),
    };
    let x = rt.spawn("x", peer(&to_y)).unwrap();
    let y = rt.spawn("y", peer(&to_x)).unwrap();
    let _ = to_x.set(x.clone());
    let _ = to_y.set(y);
    let mut problems = Vec::new();
    for round in 0..rounds {
        let x_got = x.ask(|r| Pair::Start(round, r)).expect("x answers");
        // Answering first, y is answered back; asking back first, y closes
        // a real cycle (x waits on y, if only until its timeout) and is told
        // at once, then answers x.
        if x_got != Ok(round + 1) {
            problems.push(format!("round {round}: x's ask of y got {x_got:?}"));
        }
        let y_expected = if reply_first {
            Ok(round * 10)
        } else {
            Err(AskError::Deadlock {
                cycle: vec!["y".to_owned(), "x".to_owned(), "y".to_owned()],
            })
        };
        let (y_round, y_got) = from_y.recv().expect("y reports its ask back");
        assert_eq!(y_round, round);
        if y_got != y_expected {
            problems.push(format!("round {round}: y's ask back of x got {y_got:?}"));
        }
    }
    problems
}

/// Y answers X, then asks X back in the same handler: X has its answer and is
/// free to answer, so this is no cycle (design 3b: "deadlock detection
/// reports a cycle only when one exists").
fn a_manager_that_got_its_answer_can_be_asked_back_at_once(backend: Backend) {
    within("answer, then ask back", move || {
        let problems = ask_back(backend, 200, None, true);
        assert_no_problems("ask back after answering", 200, &problems);
    });
}

/// The same with X waiting through `ask_timeout` (a long one, never reached).
fn a_manager_that_got_its_answer_within_a_timeout_can_be_asked_back_at_once(backend: Backend) {
    within("answer, then ask back, with a timeout", move || {
        let problems = ask_back(backend, 200, Some(LIMIT), true);
        assert_no_problems("ask back after answering an ask_timeout", 200, &problems);
    });
}

/// X waits on Y with an `ask_timeout`; Y asks X back before answering. The
/// cycle is real while it lasts (only X's timeout would end it), so Y is told
/// at once rather than after X's timeout, and then answers X in time.
fn a_cycle_through_a_timed_ask_is_reported_at_once(backend: Backend) {
    within("ask back a manager whose ask has a timeout", move || {
        let problems = ask_back(backend, 20, Some(LIMIT), false);
        assert_no_problems("ask back during a bounded wait", 20, &problems);
    });
}

// ---------------------------------------------------------------------------
// 2. A shutdown asked for from inside a handler, or a Runtime dropped there.
// ---------------------------------------------------------------------------

/// How many `Add(1)`s each worker has queued at shutdown.
const QUEUED: u64 = 50;

enum Work {
    Add(u64),
    /// Signals that the worker reached it, then blocks until the latch opens.
    Block(mpsc::Sender<()>, mpsc::Receiver<()>),
    /// Calls `Runtime::shutdown` here, in the handler, and sends its report.
    ShutDown(Arc<Runtime>, mpsc::Sender<ShutdownReport>),
    /// Keeps the runtime in the worker's state.
    Adopt(Runtime),
    /// Drops the kept runtime here, in the handler, then signals.
    DropRuntime(mpsc::Sender<()>),
}

/// Sums `Add`s and records its lifecycle; may hold the runtime itself.
struct Worker {
    total: u64,
    runtime: Option<Runtime>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Manager for Worker {
    type Msg = Work;

    fn handle(&mut self, msg: Work, _ctx: &mut Context<'_, Work>) {
        match msg {
            Work::Add(n) => self.total += n,
            Work::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
            Work::ShutDown(rt, done) => {
                let report = rt.shutdown();
                self.log
                    .lock()
                    .unwrap()
                    .push("shutdown returned".to_owned());
                let _ = done.send(report);
            }
            Work::Adopt(rt) => self.runtime = Some(rt),
            Work::DropRuntime(done) => {
                drop(self.runtime.take());
                self.log.lock().unwrap().push("runtime dropped".to_owned());
                let _ = done.send(());
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Work>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("stopped with {}", self.total));
    }
}

type WorkLog = Arc<Mutex<Vec<String>>>;

fn spawn_worker(rt: &Runtime, name: &str) -> (Handle<Work>, WorkLog) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handle = rt
        .spawn(
            name,
            Worker {
                total: 0,
                runtime: None,
                log: Arc::clone(&log),
            },
        )
        .unwrap();
    (handle, log)
}

/// Blocks a worker; returns once it is inside the blocking message.
fn block_worker(h: &Handle<Work>) -> Latch {
    let (latch, wait) = Latch::new();
    let (reached, is_reached) = mpsc::channel();
    h.tell(Work::Block(reached, wait))
        .unwrap_or_else(|_| panic!("{} refused the blocking message", h.name()));
    is_reached
        .recv_timeout(LIMIT)
        .expect("worker reached the blocking message");
    latch
}

fn queue_adds(h: &Handle<Work>) {
    for _ in 0..QUEUED {
        h.tell(Work::Add(1)).unwrap();
    }
}

/// Three workers with queued work: `early` (spawned first, blocked on the
/// returned latch), `middle` (blocked on the second latch, to be given the
/// message that acts from inside a handler, then its own queued work) and
/// `late` (spawned last, work queued).
struct Three {
    early: (Handle<Work>, WorkLog),
    middle: (Handle<Work>, WorkLog),
    late: (Handle<Work>, WorkLog),
}

impl Three {
    fn spawn(rt: &Runtime, middle_name: &str) -> (Three, Latch, Latch) {
        let early = spawn_worker(rt, "early");
        let early_latch = block_worker(&early.0);
        queue_adds(&early.0);
        let middle = spawn_worker(rt, middle_name);
        let middle_latch = block_worker(&middle.0);
        let late = spawn_worker(rt, "late");
        queue_adds(&late.0);
        (
            Three {
                early,
                middle,
                late,
            },
            early_latch,
            middle_latch,
        )
    }

    fn all(&self) -> [&(Handle<Work>, WorkLog); 3] {
        [&self.early, &self.middle, &self.late]
    }

    /// Every worker handled all its queued work and then ran `stopped`.
    fn assert_drained(&self, when: &str) {
        for (h, log) in self.all() {
            let log = log.lock().unwrap().clone();
            assert_eq!(
                log.last(),
                Some(&format!("stopped with {QUEUED}")),
                "{when}: {} has not drained and stopped: {log:?}",
                h.name()
            );
        }
    }
}

/// Called from a manager thread, `shutdown` starts the graceful shutdown and
/// returns at once; the shutdown completes once the handler returns, and
/// `wait` from another thread returns a truthful report.
fn shutdown_from_a_handler_returns_at_once_and_completes_after_the_handler(backend: Backend) {
    within("shutdown from a handler, then wait", move || {
        let rt = Arc::new(runtime(backend));
        let (three, early_latch, killer_latch) = Three::spawn(&rt, "killer");
        let killer = &three.middle.0;
        let (done, inner) = mpsc::channel();
        killer
            .tell(Work::ShutDown(Arc::clone(&rt), done))
            .unwrap_or_else(|_| panic!("killer refused"));
        queue_adds(killer);
        killer_latch.open();
        let inner = inner.recv().unwrap_or_else(|_| {
            panic!("shutdown() called from a handler did not return: the handler unwound")
        });
        assert!(!inner.is_complete(), "asked from inside: in progress");
        assert!(inner.managers.is_empty());
        early_latch.open();
        let report = rt.wait();
        assert_eq!(report.total_unhandled(), 0, "{report}");
        let names: Vec<&str> = report.managers.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["early", "killer", "late"]);
        three.assert_drained("when wait() returned");
        assert_eq!(killer.stats().panicked, 0);
        for (h, _) in three.all() {
            poll_until(|| h.has_exited());
            assert_eq!(h.stats().state, ManagerState::Stopped);
            assert_eq!(h.join(), Ok(()));
        }
        assert_eq!(rt.shutdown(), report, "a later shutdown reports the same");
    });
}

/// While a shutdown started in a handler is still draining, a `shutdown`
/// from another thread waits for it and reports the truth.
fn a_second_shutdown_waits_for_the_one_a_handler_started(backend: Backend) {
    within("second shutdown after one from a handler", move || {
        let rt = Arc::new(runtime(backend));
        let (three, early_latch, killer_latch) = Three::spawn(&rt, "killer");
        let killer = &three.middle.0;
        let (done, inner) = mpsc::channel();
        killer
            .tell(Work::ShutDown(Arc::clone(&rt), done))
            .unwrap_or_else(|_| panic!("killer refused"));
        queue_adds(killer);
        killer_latch.open();
        // Whatever the first call did (returned, or panicked), it is over.
        let _ = inner.recv();
        // `early` is still blocked with its work queued; it is let go a
        // moment after the second shutdown has started.
        let opener = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            early_latch.open();
        });
        let report = rt.shutdown();
        three.assert_drained("when the second shutdown() returned");
        assert_eq!(report.total_unhandled(), 0, "{report}");
        opener.join().unwrap();
    });
}

/// The `Runtime` kept in a manager's state and dropped in its handler: the
/// drop starts a graceful shutdown that completes once the handler returns.
fn a_runtime_dropped_in_a_handler_shuts_down_gracefully(backend: Backend) {
    within("runtime dropped in a handler", move || {
        let rt = runtime(backend);
        let (three, early_latch, holder_latch) = Three::spawn(&rt, "holder");
        let holder = &three.middle.0;
        holder
            .tell(Work::Adopt(rt))
            .unwrap_or_else(|_| panic!("holder refused the runtime"));
        let (done, dropped) = mpsc::channel();
        holder
            .tell(Work::DropRuntime(done))
            .unwrap_or_else(|_| panic!("holder refused"));
        queue_adds(holder);
        holder_latch.open();
        dropped.recv().unwrap_or_else(|_| {
            panic!("dropping the Runtime in a handler did not return: the handler unwound")
        });
        early_latch.open();
        for (h, _) in three.all() {
            poll_until(|| h.has_exited());
            assert_eq!(h.join(), Ok(()), "{}", h.name());
            assert_eq!(h.stats().unhandled, 0, "{}", h.name());
        }
        three.assert_drained("once every worker exited");
        assert_eq!(holder.stats().panicked, 0);
    });
}

// ---------------------------------------------------------------------------
// 3. `join` returns only after the batch's `idle` (or `stopped`) ran.
// ---------------------------------------------------------------------------

enum Rec {
    Add(u64),
    Panic,
    Block(mpsc::Sender<()>, mpsc::Receiver<()>),
}

/// Records each handled `Add` and each hook, in order.
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    /// How long `stopped` works before it is done (a commit at stop).
    stop_work: Duration,
}

impl Manager for Recorder {
    type Msg = Rec;

    fn handle(&mut self, msg: Rec, _ctx: &mut Context<'_, Rec>) {
        match msg {
            Rec::Add(n) => self.log.lock().unwrap().push(format!("handle {n}")),
            Rec::Panic => panic!("probe: told to panic"),
            Rec::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    fn idle(&mut self, _ctx: &mut Context<'_, Rec>) {
        self.log.lock().unwrap().push("idle".to_owned());
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Rec>) {
        thread::sleep(self.stop_work);
        self.log.lock().unwrap().push("stopped".to_owned());
    }
}

fn block_recorder(h: &Handle<Rec>) -> Latch {
    let (latch, wait) = Latch::new();
    let (reached, is_reached) = mpsc::channel();
    h.tell(Rec::Block(reached, wait))
        .unwrap_or_else(|_| panic!("recorder refused the blocking message"));
    is_reached
        .recv_timeout(LIMIT)
        .expect("recorder reached the blocking message");
    latch
}

/// With one message per batch, a queued message, then `stop` and `join`:
/// `join` returns only once `idle` ran after that message.
fn join_returns_only_after_idle_ran_with_max_batch_one(backend: Backend) {
    within("join after stop with max_batch(1)", move || {
        let rt = runtime(backend);
        let mut problems = Vec::new();
        for round in 0..20 {
            let log = Arc::new(Mutex::new(Vec::new()));
            let h = rt
                .manager(format!("batch-of-one-{round}"))
                .max_batch(1)
                .spawn(Recorder {
                    log: Arc::clone(&log),
                    stop_work: Duration::ZERO,
                })
                .unwrap();
            let latch = block_recorder(&h);
            h.tell(Rec::Add(round)).unwrap();
            h.stop();
            latch.open();
            let joined = h.join();
            let events = log.lock().unwrap().clone();
            let last_handle = events.iter().rposition(|e| e.starts_with("handle"));
            let last_idle = events.iter().rposition(|e| e == "idle");
            if joined != Ok(()) || last_handle.is_none() || last_idle < last_handle {
                problems.push(format!(
                    "round {round}: join gave {joined:?} with {events:?}"
                ));
            }
        }
        assert_no_problems("join before idle", 20, &problems);
    });
}

/// Under `PanicPolicy::Stop`, a panicking message stops the manager: `join`
/// (Ok with nothing else queued, `Stopped` with messages discarded) returns
/// only once `stopped` ran.
fn join_returns_only_after_stopped_ran_when_a_panic_stops_the_manager(backend: Backend) {
    quiet_panics();
    within("join after a panic stopped the manager", move || {
        let rt = runtime(backend);
        let mut problems = Vec::new();
        for round in 0..20u64 {
            let log = Arc::new(Mutex::new(Vec::new()));
            let h = rt
                .manager(format!("stops-on-panic-{round}"))
                .on_panic(PanicPolicy::Stop)
                .spawn(Recorder {
                    log: Arc::clone(&log),
                    stop_work: Duration::from_millis(10),
                })
                .unwrap();
            let latch = block_recorder(&h);
            h.tell(Rec::Panic).unwrap();
            // Every other round, a message waits behind the panic and is
            // discarded.
            let discarded = round % 2;
            if discarded == 1 {
                h.tell(Rec::Add(round)).unwrap();
            }
            latch.open();
            let joined = h.join();
            let events = log.lock().unwrap().clone();
            let expected = if discarded == 0 {
                Ok(())
            } else {
                Err(JoinError::Stopped {
                    manager: h.name().to_owned(),
                    unhandled: 1,
                })
            };
            if joined != expected || !events.contains(&"stopped".to_owned()) {
                problems.push(format!(
                    "round {round}: join gave {joined:?} with {events:?}"
                ));
            }
        }
        assert_no_problems("join before stopped", 20, &problems);
    });
}

/// Counts handled messages, and in `idle` how many were handled by then.
struct Committer {
    handled: u64,
    committed: Arc<AtomicU64>,
}

impl Manager for Committer {
    type Msg = ();

    fn handle(&mut self, _msg: (), _ctx: &mut Context<'_, ()>) {
        self.handled += 1;
    }

    fn idle(&mut self, _ctx: &mut Context<'_, ()>) {
        self.committed.store(self.handled, SeqCst);
    }
}

/// Many producers, small batches: after each round of sends, `join` returns
/// only once every handled message was idled ("committed"); the last round
/// of each manager ends with `stop` before the `join`.
fn join_after_many_producers_finds_every_handled_message_idled(backend: Backend) {
    const MANAGERS: u64 = 40;
    const ROUNDS: u64 = 5;
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 25;
    within("join after many producers", move || {
        let rt = runtime(backend);
        let mut problems = Vec::new();
        for life in 0..MANAGERS {
            let committed = Arc::new(AtomicU64::new(0));
            let h = rt
                .manager(format!("committer-{life}"))
                .max_batch(2)
                .spawn(Committer {
                    handled: 0,
                    committed: Arc::clone(&committed),
                })
                .unwrap();
            let start = Arc::new(Barrier::new(PRODUCERS as usize));
            for round in 1..=ROUNDS {
                thread::scope(|s| {
                    for _ in 0..PRODUCERS {
                        let (h, start) = (h.clone(), Arc::clone(&start));
                        s.spawn(move || {
                            start.wait();
                            for _ in 0..EACH {
                                h.tell(()).unwrap();
                            }
                        });
                    }
                });
                if round == ROUNDS {
                    h.stop();
                }
                let joined = h.join();
                let expected = round * PRODUCERS * EACH;
                let seen = committed.load(SeqCst);
                if joined != Ok(()) || seen != expected {
                    problems.push(format!(
                        "manager {life} round {round}: join gave {joined:?} with {seen} of \
                         {expected} handled messages idled"
                    ));
                }
            }
        }
        assert_no_problems(
            "join before idle under load",
            (MANAGERS * ROUNDS) as usize,
            &problems,
        );
    });
}

// ---------------------------------------------------------------------------
// 4. A panic outside `handle`: in `next_wake`, in a `Drop`.
// ---------------------------------------------------------------------------

/// A message whose `Drop` panics unless it was handled.
struct Bomb {
    armed: bool,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        // Never while unwinding: a second panic would abort the test binary.
        if self.armed && !thread::panicking() {
            panic!("probe: a discarded message panicked on drop");
        }
    }
}

enum Frag {
    Add(u64),
    Get(Reply<u64>),
    /// Answers, then `next_wake` panics the next time it is asked.
    ArmNextWake(Reply<()>),
    /// This instance panics when it is dropped.
    ArmDrop,
    Panic,
    PanicAsked(Reply<u64>),
    Block(mpsc::Sender<()>, mpsc::Receiver<()>),
    Bomb(Bomb),
}

/// A manager whose `next_wake` or `Drop` can be told to panic.
#[derive(Default)]
struct Fragile {
    total: u64,
    wake_bomb: AtomicBool,
    drop_bomb: bool,
}

impl Drop for Fragile {
    fn drop(&mut self) {
        if self.drop_bomb && !thread::panicking() {
            panic!("probe: the manager panicked on drop");
        }
    }
}

impl Manager for Fragile {
    type Msg = Frag;

    fn handle(&mut self, msg: Frag, _ctx: &mut Context<'_, Frag>) {
        match msg {
            Frag::Add(n) => self.total += n,
            Frag::Get(reply) => reply.send(self.total),
            Frag::ArmNextWake(reply) => {
                self.wake_bomb.store(true, SeqCst);
                reply.send(());
            }
            Frag::ArmDrop => self.drop_bomb = true,
            Frag::Panic => panic!("probe: told to panic"),
            Frag::PanicAsked(_reply) => panic!("probe: asked to panic"),
            Frag::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
            Frag::Bomb(mut bomb) => bomb.armed = false,
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.wake_bomb.swap(false, SeqCst) {
            // A wake time computed as `now + a huge delay` overflows.
            let at = Instant::now()
                .checked_add(Duration::MAX)
                .expect("probe: next_wake overflowed");
            return Some(at);
        }
        None
    }
}

fn block_fragile(h: &Handle<Frag>) -> Latch {
    let (latch, wait) = Latch::new();
    let (reached, is_reached) = mpsc::channel();
    h.tell(Frag::Block(reached, wait))
        .unwrap_or_else(|_| panic!("fragile refused the blocking message"));
    is_reached
        .recv_timeout(LIMIT)
        .expect("fragile reached the blocking message");
    latch
}

/// Waits until the manager has counted `panics` panics. A manager that was
/// never stopped but refuses a tell has lost its thread: fail at once.
fn await_panics(h: &Handle<Frag>, panics: u64) {
    poll_until(|| {
        if h.tell(Frag::Add(0)).is_err() {
            panic!(
                "{} refuses messages though nobody stopped it (its thread is gone): {:?}",
                h.name(),
                h.stats()
            );
        }
        h.stats().panicked >= panics
    });
}

/// Stops the manager; its thread exits and `join` ends.
fn stop_and_see_it_exit(h: &Handle<Frag>) {
    h.stop();
    assert_eq!(h.join(), Ok(()));
    poll_until(|| h.has_exited());
    assert_eq!(h.stats().state, ManagerState::Stopped);
}

/// A panic in `next_wake` is caught and counted; under `Resume` the manager
/// keeps answering.
fn a_panic_in_next_wake_is_caught_and_the_manager_keeps_answering(backend: Backend) {
    quiet_panics();
    within("panic in next_wake", move || {
        let rt = runtime(backend);
        let h = rt.spawn("wakeful", Fragile::default()).unwrap();
        h.tell(Frag::Add(5)).unwrap();
        for panics in 1..=3 {
            // Answered; the loop asks next_wake before its next wait.
            h.ask(Frag::ArmNextWake).unwrap();
            await_panics(&h, panics);
            assert_eq!(h.ask(Frag::Get), Ok(5));
        }
        assert_eq!(h.stats().panicked, 3);
        stop_and_see_it_exit(&h);
    });
}

/// Under `Restart`, the broken instance panics when it is dropped for the
/// fresh one: the panic is caught and counted, and the fresh one serves.
fn a_panic_dropping_the_old_instance_on_restart_is_caught_and_the_fresh_one_serves(
    backend: Backend,
) {
    quiet_panics();
    within("panic dropping the old instance on restart", move || {
        let rt = runtime(backend);
        let h = rt
            .manager("restarted")
            .on_panic(PanicPolicy::Restart {
                max_restarts: 5,
                within: Duration::from_secs(60),
            })
            .spawn_with(Fragile::default)
            .unwrap();
        h.tell(Frag::Add(5)).unwrap();
        h.tell(Frag::ArmDrop).unwrap();
        match h.ask(Frag::PanicAsked) {
            Err(AskError::Panicked { .. }) => {}
            other => panic!("expected Panicked, got {other:?}"),
        }
        // The handler's panic, then the old instance's on drop.
        await_panics(&h, 2);
        assert_eq!(h.ask(Frag::Get), Ok(0), "the fresh instance answers");
        assert_eq!(h.stats().restarts, 1);
        stop_and_see_it_exit(&h);
    });
}

/// Under `Stop`, the queued messages are discarded; their `Drop` panics. The
/// panics are caught and counted, `join` and a queued `ask` end, and the
/// manager exits.
fn a_panic_dropping_a_message_discarded_by_a_stop_policy_is_caught_and_join_ends(backend: Backend) {
    const BOMBS: u64 = 3;
    quiet_panics();
    within(
        "join after discarded messages panicked on drop (Stop policy)",
        move || {
            let rt = runtime(backend);
            let h = rt
                .manager("stopper")
                .on_panic(PanicPolicy::Stop)
                .spawn(Fragile::default())
                .unwrap();
            let latch = block_fragile(&h);
            h.tell(Frag::Panic).unwrap();
            for _ in 0..BOMBS {
                h.tell(Frag::Bomb(Bomb { armed: true })).unwrap();
            }
            thread::scope(|s| {
                let asker = s.spawn(|| h.ask(Frag::Get));
                poll_until(|| h.len() as u64 == 1 + BOMBS + 1);
                latch.open();
                let joined = h.join();
                assert_eq!(
                    joined,
                    Err(JoinError::Stopped {
                        manager: "stopper".to_owned(),
                        unhandled: BOMBS + 1,
                    })
                );
                assert_eq!(
                    asker.join().unwrap(),
                    Err(AskError::Stopped {
                        manager: "stopper".to_owned()
                    })
                );
            });
            poll_until(|| h.has_exited());
            assert!(
                h.stats().panicked >= 2,
                "the handler's panic and a drop's: {:?}",
                h.stats()
            );
        },
    );
}

/// `shutdown_now` discards the queued messages; their `Drop` panics. The
/// report still counts them, and the manager exits.
fn a_panic_dropping_a_message_discarded_by_shutdown_now_is_caught_and_reported(backend: Backend) {
    const BOMBS: u64 = 3;
    quiet_panics();
    within("shutdown_now with messages that panic on drop", move || {
        let rt = runtime(backend);
        let h = rt.spawn("discarder", Fragile::default()).unwrap();
        let latch = block_fragile(&h);
        for _ in 0..BOMBS {
            h.tell(Frag::Bomb(Bomb { armed: true })).unwrap();
        }
        let report = thread::scope(|s| {
            let stopping = s.spawn(|| rt.shutdown_now());
            poll_until(|| h.stats().state == ManagerState::Aborting);
            latch.open();
            stopping.join().unwrap()
        });
        assert_eq!(report.total_unhandled(), BOMBS, "{report}");
        assert_eq!(
            h.join(),
            Err(JoinError::Stopped {
                manager: "discarder".to_owned(),
                unhandled: BOMBS,
            })
        );
        poll_until(|| h.has_exited());
        assert!(h.stats().panicked >= 1, "{:?}", h.stats());
    });
}

/// The manager panics when it is dropped as its thread ends: the panic is
/// caught and counted.
fn a_panic_dropping_the_manager_as_it_stops_is_caught_and_counted(backend: Backend) {
    quiet_panics();
    within("panic dropping the manager", move || {
        let rt = runtime(backend);
        let h = rt.spawn("fragile", Fragile::default()).unwrap();
        h.tell(Frag::ArmDrop).unwrap();
        stop_and_see_it_exit(&h);
        // Once shutdown has joined the thread, its counters are final.
        rt.shutdown();
        assert_eq!(
            rt.stats().get("fragile").unwrap().panicked,
            1,
            "the panic in the manager's Drop is counted: {:?}",
            h.stats()
        );
    });
}

// ---------------------------------------------------------------------------
// 10. Daemons keep serving until the non-daemon managers have drained.
// ---------------------------------------------------------------------------

enum Line {
    Text(String),
    Count(Reply<u64>),
}

/// A daemon that keeps the lines it is told.
struct Logger {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Manager for Logger {
    type Msg = Line;

    fn handle(&mut self, msg: Line, _ctx: &mut Context<'_, Line>) {
        let mut lines = self.lines.lock().unwrap();
        match msg {
            Line::Text(text) => lines.push(text),
            Line::Count(reply) => reply.send(lines.len() as u64),
        }
    }
}

enum Job {
    Item(u64),
    Block(mpsc::Sender<()>, mpsc::Receiver<()>),
}

#[derive(Default)]
struct Chatter {
    handled: u64,
    /// Tells to the logger that were refused.
    refused: Vec<String>,
    /// What the logger said when asked for its count in `stopped`.
    count_at_stop: Option<Result<u64, AskError>>,
}

/// A worker that tells the logger about each item, and about its stop.
struct Chatty {
    logger: Handle<Line>,
    record: Arc<Mutex<Chatter>>,
}

impl Chatty {
    fn log(&self, text: String) {
        if let Err(refused) = self.logger.tell(Line::Text(text)) {
            let Line::Text(text) = refused.into_inner() else {
                unreachable!()
            };
            self.record.lock().unwrap().refused.push(text);
        }
    }
}

impl Manager for Chatty {
    type Msg = Job;

    fn handle(&mut self, msg: Job, _ctx: &mut Context<'_, Job>) {
        match msg {
            Job::Item(i) => {
                self.record.lock().unwrap().handled += 1;
                self.log(format!("item {i}"));
            }
            Job::Block(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Job>) {
        self.log("stopped".to_owned());
        let count = self.logger.ask(Line::Count);
        self.record.lock().unwrap().count_at_stop = Some(count);
    }
}

/// A worker drains during shutdown, telling a daemon logger about each
/// message and about its stop: every tell is accepted and handled (the
/// logger answers an ask from the worker's `stopped` hook with the full
/// count), and the daemon is stopped afterwards without being waited for.
fn a_daemon_keeps_serving_managers_that_drain_during_shutdown(backend: Backend) {
    within("daemon during shutdown", move || {
        let rt = runtime(backend);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = rt
            .spawn_daemon(
                "logger",
                Logger {
                    lines: Arc::clone(&lines),
                },
            )
            .unwrap();
        let record = Arc::new(Mutex::new(Chatter::default()));
        let worker = rt
            .spawn(
                "chatty",
                Chatty {
                    logger: logger.clone(),
                    record: Arc::clone(&record),
                },
            )
            .unwrap();
        let (latch, wait) = Latch::new();
        let (reached, is_reached) = mpsc::channel();
        worker
            .tell(Job::Block(reached, wait))
            .unwrap_or_else(|_| panic!("worker refused the blocking message"));
        is_reached.recv_timeout(LIMIT).unwrap();
        let mut accepted = 0;
        while accepted < 10 {
            worker.tell(Job::Item(accepted)).unwrap();
            accepted += 1;
        }
        let report = thread::scope(|s| {
            let shutting = s.spawn(|| rt.shutdown());
            // Queue work until the first phase of the shutdown refuses
            // outsiders: the worker then drains all of it during shutdown.
            while worker.tell(Job::Item(accepted)).is_ok() {
                accepted += 1;
                thread::yield_now();
            }
            latch.open();
            shutting.join().unwrap()
        });
        let record = record.lock().unwrap();
        assert!(
            record.refused.is_empty(),
            "{} of the worker's tells to the daemon were refused, first: {:?}",
            record.refused.len(),
            &record.refused[..record.refused.len().min(3)]
        );
        assert_eq!(record.handled, accepted);
        assert_eq!(record.count_at_stop, Some(Ok(accepted + 1)));
        let mut expected: Vec<String> = (0..accepted).map(|i| format!("item {i}")).collect();
        expected.push("stopped".to_owned());
        assert_eq!(*lines.lock().unwrap(), expected);
        let chatty = report.managers.iter().find(|m| m.name == "chatty").unwrap();
        assert_eq!(chatty.unhandled, 0, "{report}");
        assert!(logger.is_stopped(), "the daemon is stopped after shutdown");
        poll_until(|| logger.has_exited());
    });
}
