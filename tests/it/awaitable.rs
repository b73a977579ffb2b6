//! The awaitable calls (`custody::future`): each promise of the blocking
//! calls, kept by their `_async` twins on three executors (tokio's
//! current-thread and multi-thread runtimes, futures-lite's `block_on`) and
//! both backends; cancellation (a dropped future) and shutdown while futures
//! wait.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use custody::resources::Counter;
use custody::{
    AskError, Backend, Capacity, Context, Handle, JoinError, Manager, Reply, Runtime, SendError,
};

use crate::support::{Msg, Probe, blocked_probe, quiet_panics, runtime, within};

/// Where a scenario's future is driven.
#[derive(Clone, Copy, Debug)]
enum Executor {
    TokioCurrentThread,
    TokioMultiThread,
    FuturesLite,
}

const EXECUTORS: [Executor; 3] = [
    Executor::TokioCurrentThread,
    Executor::TokioMultiThread,
    Executor::FuturesLite,
];

impl Executor {
    fn block_on<F: Future>(self, future: F) -> F::Output {
        match self {
            Executor::TokioCurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("tokio runtime")
                .block_on(future),
            Executor::TokioMultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("tokio runtime")
                .block_on(future),
            Executor::FuturesLite => futures_lite::future::block_on(future),
        }
    }
}

/// Runs `scenario` once per executor, each run bounded in time.
fn on_every_executor(backend: Backend, scenario: fn(Backend, Executor)) {
    for executor in EXECUTORS {
        within(&format!("{executor:?} on {backend}"), move || {
            scenario(backend, executor)
        });
    }
}

/// Polls every future to completion, concurrently, on whatever executor
/// runs it (futures-lite has no join of many).
async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(outputs.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    })
    .await
}

/// A waker that counts its wake-ups, for polling a future by hand.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
    (Arc::clone(&count), Waker::from(count))
}

/// Polls `future` once by hand.
fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut TaskContext::from_waker(waker))
}

fn bounded_runtime(backend: Backend, capacity: usize) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .capacity(Capacity::bounded(capacity).unwrap())
        .build()
        .unwrap()
}

fn waits_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("{what} did not happen within a minute");
}

// ---------------------------------------------------------------------------

fn ask_call_and_join_async_answer(backend: Backend) {
    on_every_executor(backend, |backend, executor| {
        let rt = runtime(backend);
        let (probe, _log) = Probe::new();
        let handle = rt.spawn("probe", probe).unwrap();
        let owner = rt.own("owner", Vec::<u32>::new()).unwrap();
        let counter = Counter::new().spawn(&rt, "counter").unwrap();
        executor.block_on(async {
            handle.tell_async(Msg::Add(40)).await.unwrap();
            handle.tell_async(Msg::Add(2)).await.unwrap();
            assert_eq!(handle.ask_async(Msg::Get).await.unwrap(), 42);
            owner.call_async(|v| v.push(7)).await.unwrap();
            assert_eq!(owner.call_async(|v| v.clone()).await.unwrap(), vec![7]);
            counter.add_async(5).await.unwrap();
            counter.join_async().await.unwrap();
            assert_eq!(counter.get_async().await.unwrap(), 5);
            handle.join_async().await.unwrap();
        });
        let report = executor.block_on(rt.shutdown_async());
        assert!(report.is_complete());
        assert_eq!(report.total_unhandled(), 0);
    });
}

/// The resources' awaitable calls: the printer's and (with SQLite) the
/// database's, answered as their blocking twins are.
fn resources_answer_their_awaited_calls(backend: Backend) {
    on_every_executor(backend, |backend, executor| {
        let rt = runtime(backend);
        let out = custody::resources::SharedBuffer::new();
        let printer = custody::resources::Printer::new(out.clone())
            .spawn(&rt, "printer")
            .unwrap();
        executor.block_on(async {
            printer.print_async("one").await.unwrap();
            printer.print_async("two").await.unwrap();
            printer.flush_async().await.unwrap();
            assert_eq!(out.lines(), ["one", "two"]);
            assert_eq!(printer.stats_async().await.unwrap().lines, 2);
            printer.join_async().await.unwrap();
        });
        #[cfg(feature = "sqlite")]
        {
            use custody::resources::Database;
            use custody::sql_values;
            let db = Database::in_memory()
                .init_sql("CREATE TABLE t (n INTEGER)")
                .spawn(&rt, "db")
                .unwrap();
            executor.block_on(async {
                assert_eq!(
                    db.execute_async("INSERT INTO t VALUES (?1)", sql_values![1])
                        .await
                        .unwrap(),
                    1
                );
                let two = db
                    .write_async(|conn| conn.execute("INSERT INTO t VALUES (2)", []))
                    .await
                    .unwrap();
                assert_eq!(two, 1);
                let failed = db
                    .write_async(|conn| conn.execute("INSERT INTO missing VALUES (3)", []))
                    .await;
                assert!(failed.is_err(), "a failing write fails alone");
                let sum = db
                    .call_async(|conn| {
                        conn.query_row("SELECT sum(n) FROM t", [], |r| r.get::<_, i64>(0))
                    })
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(sum, 3);
                let stats = db.stats_async().await.unwrap();
                assert_eq!(stats.failed_writes, 1);
                db.join_async().await.unwrap();
            });
        }
    });
}

fn tell_async_waits_for_room_and_every_accepted_message_is_handled_once(backend: Backend) {
    on_every_executor(backend, |backend, executor| {
        const ASYNC_SENDERS: u64 = 40;
        const THREADS: u64 = 2;
        const PER_THREAD: u64 = 50;
        let rt = bounded_runtime(backend, 2);
        let (probe, log) = Probe::new();
        let (handle, latch) = blocked_probe(&rt, "probe", probe);
        // Threads blocked in `tell` beside the async senders.
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let handle = handle.clone();
                thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        handle.tell(Msg::Add(1_000)).unwrap();
                    }
                })
            })
            .collect();
        let opener = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            latch.open();
        });
        let sends: Vec<Pin<Box<dyn Future<Output = _> + Send>>> = (1..=ASYNC_SENDERS)
            .map(|n| Box::pin(handle.tell_async(Msg::Add(n))) as Pin<Box<_>>)
            .collect();
        let results = executor.block_on(join_all(sends));
        assert!(results.iter().all(Result::is_ok), "every send was accepted");
        for t in threads {
            t.join().unwrap();
        }
        opener.join().unwrap();
        handle.join().unwrap();
        let expected = ASYNC_SENDERS * (ASYNC_SENDERS + 1) / 2 + THREADS * PER_THREAD * 1_000;
        assert_eq!(handle.ask(Msg::Get).unwrap(), expected);
        drop(log);
    });
}

fn a_dropped_tell_async_was_not_accepted_and_join_does_not_wait_for_it(backend: Backend) {
    let rt = bounded_runtime(backend, 1);
    let (probe, _log) = Probe::new();
    let (handle, latch) = blocked_probe(&rt, "probe", probe);
    handle.tell(Msg::Add(1)).unwrap(); // the one slot is taken
    let (_, waker) = counting_waker();
    let mut send = handle.tell_async(Msg::Add(100));
    assert!(poll_once(&mut send, &waker).is_pending());
    assert_eq!(handle.unfinished(), 3, "blocker, queued add, waiting send");
    drop(send);
    assert_eq!(
        handle.unfinished(),
        2,
        "the dropped send is no longer counted"
    );
    latch.open();
    within("join", {
        let handle = handle.clone();
        move || handle.join()
    })
    .unwrap();
    assert_eq!(
        handle.ask(Msg::Get).unwrap(),
        1,
        "the dropped message was never handled"
    );
}

fn a_woken_send_dropped_unused_passes_its_wake_up_on(backend: Backend) {
    let rt = bounded_runtime(backend, 1);
    let (probe, _log) = Probe::new();
    let (handle, latch) = blocked_probe(&rt, "probe", probe);
    // The second send outlives this frame, inside a bounded wait.
    let handle: &'static Handle<Msg> = Box::leak(Box::new(handle));
    handle.tell(Msg::Add(1)).unwrap(); // fills the one slot
    let (first_woken, first_waker) = counting_waker();
    let mut first = handle.tell_async(Msg::Add(10));
    assert!(poll_once(&mut first, &first_waker).is_pending());
    let (second_woken, second_waker) = counting_waker();
    let mut second = handle.tell_async(Msg::Add(100));
    assert!(poll_once(&mut second, &second_waker).is_pending());
    // The manager takes the queued add out: one slot, one wake-up, for the
    // first in line.
    latch.open();
    waits_until("the first sender's wake-up", || {
        first_woken.0.load(Ordering::SeqCst) > 0
    });
    // It never uses it: the second must get it, or it would wait forever
    // for a slot that is free (an executor polls only what was woken).
    assert_eq!(second_woken.0.load(Ordering::SeqCst), 0);
    drop(first);
    waits_until("the wake-up passed on to the second sender", || {
        second_woken.0.load(Ordering::SeqCst) > 0
    });
    assert!(matches!(
        poll_once(&mut second, &second_waker),
        Poll::Ready(Ok(()))
    ));
    handle.join().unwrap();
    assert_eq!(handle.ask(Msg::Get).unwrap(), 101);
}

/// A waker is the executor's code, run on the manager thread when a slot
/// frees: one that panics does not end the manager.
fn a_waker_that_panics_on_the_manager_thread_does_not_end_it(backend: Backend) {
    struct Panics(AtomicUsize);
    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("a waker that panics");
        }
    }
    quiet_panics();
    let rt = bounded_runtime(backend, 1);
    let (probe, _log) = Probe::new();
    let (handle, latch) = blocked_probe(&rt, "probe", probe);
    handle.tell(Msg::Add(1)).unwrap(); // the one slot is taken
    let panics = Arc::new(Panics(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&panics));
    let mut send = handle.tell_async(Msg::Add(10));
    assert!(poll_once(&mut send, &waker).is_pending());
    latch.open();
    waits_until("the panicking wake-up", || {
        panics.0.load(Ordering::SeqCst) > 0
    });
    let (_, fine) = counting_waker();
    assert!(matches!(poll_once(&mut send, &fine), Poll::Ready(Ok(()))));
    let h = handle.clone();
    within("join", move || h.join()).unwrap();
    assert_eq!(handle.ask(Msg::Get).unwrap(), 11, "the manager carried on");
}

fn a_dropped_ask_async_may_still_be_handled_and_its_answer_is_dropped(backend: Backend) {
    let rt = runtime(backend);
    let owner = rt.own("owner", Vec::<u32>::new()).unwrap();
    let (release, wait) = mpsc::channel::<()>();
    owner
        .cast(move |_| {
            let _ = wait.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    let token = Arc::new(());
    let answer = Arc::clone(&token);
    let (_, waker) = counting_waker();
    let mut call = owner.call_async(move |v| {
        v.push(1);
        answer
    });
    assert!(
        poll_once(&mut call, &waker).is_pending(),
        "sent, not answered"
    );
    drop(call);
    release.send(()).unwrap();
    owner.join().unwrap();
    assert_eq!(
        owner.call(|v| v.clone()).unwrap(),
        vec![1],
        "it was handled"
    );
    assert_eq!(Arc::strong_count(&token), 1, "its answer was dropped");
}

fn futures_resolve_when_the_manager_panics_or_drops_the_reply(backend: Backend) {
    quiet_panics();
    on_every_executor(backend, |backend, executor| {
        let rt = runtime(backend);
        let (probe, _log) = Probe::new();
        let handle = rt.spawn("probe", probe).unwrap();
        executor.block_on(async {
            let panicked = handle
                .ask_async(|reply| Msg::PanicAsked(reply, "boom"))
                .await;
            assert!(
                matches!(&panicked, Err(AskError::Panicked { message, .. }) if message == "boom"),
                "{panicked:?}"
            );
            let dropped = handle.ask_async(Msg::DropReply).await;
            assert!(
                matches!(dropped, Err(AskError::NoReply { .. })),
                "{dropped:?}"
            );
            // The manager resumed: it still answers.
            assert_eq!(handle.ask_async(Msg::Get).await.unwrap(), 0);
        });
    });
}

fn waiting_futures_resolve_when_the_runtime_stops_at_once(backend: Backend) {
    on_every_executor(backend, |backend, executor| {
        let rt = bounded_runtime(backend, 1);
        let (probe, _log) = Probe::new();
        let (handle, latch) = blocked_probe(&rt, "probe", probe);
        let (_, waker) = counting_waker();
        // Queued behind the blocker: an ask, whose request fills the slot ...
        let mut ask = handle.ask_async(Msg::Get);
        assert!(poll_once(&mut ask, &waker).is_pending());
        // ... and a send waiting for room, and a join.
        let mut send = handle.tell_async(Msg::Add(5));
        assert!(poll_once(&mut send, &waker).is_pending());
        let mut join = handle.join_async();
        assert!(poll_once(&mut join, &waker).is_pending());
        // Stop at once while the blocker is still in hand, then let it end.
        let rt = Arc::new(rt);
        let stopper = thread::spawn({
            let rt = Arc::clone(&rt);
            move || rt.shutdown_now()
        });
        waits_until("the immediate stop", || handle.is_stopped());
        latch.open();
        let landed = executor.block_on(async {
            let asked = ask.await;
            assert!(matches!(asked, Err(AskError::Stopped { .. })), "{asked:?}");
            // Counted in before the stop, it may still land while the stop
            // discards the queue (then it is accepted, and counted among the
            // unhandled), or find the channel gone (then it comes back).
            let landed = match send.await {
                Err(SendError::Stopped(Msg::Add(5))) => false,
                Err(other) => panic!("expected the message back, got {other}"),
                Ok(()) => true,
            };
            let joined = join.await;
            assert!(
                matches!(joined, Err(JoinError::Stopped { .. })),
                "{joined:?}"
            );
            landed
        });
        let report = stopper.join().unwrap();
        assert!(report.is_complete());
        let probe = report.managers.iter().find(|m| m.name == "probe").unwrap();
        assert_eq!(
            probe.unhandled,
            if landed { 2 } else { 1 },
            "the discarded ask, and the send if it landed"
        );
    });
}

fn shutdown_async_drains_every_accepted_message(backend: Backend) {
    on_every_executor(backend, |backend, executor| {
        let rt = runtime(backend);
        let counter = Counter::new().spawn(&rt, "counter").unwrap();
        let total = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&total);
        let slow = rt.own("slow", ()).unwrap();
        for _ in 0..1_000 {
            counter.add(1).unwrap();
        }
        for _ in 0..20 {
            let seen = Arc::clone(&seen);
            slow.cast(move |_| {
                thread::sleep(Duration::from_micros(200));
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap();
        }
        let report = executor.block_on(rt.shutdown_async());
        assert!(report.is_complete());
        assert_eq!(report.total_unhandled(), 0);
        assert_eq!(
            total.load(Ordering::SeqCst),
            20,
            "every cast ran before it resolved"
        );
        assert!(counter.add(1).is_err(), "the runtime is shut down");
        // Dropping it now has nothing left to wait for.
        drop(rt);
    });
}

/// A panic under the `Restart` policy (the asker of the panicking message
/// gets `Panicked`, the queued asks the fresh instance's answers) and under
/// `Stop` (the queued asks get `Stopped`): every awaiting future resolves.
fn awaiting_futures_resolve_across_a_restart_and_a_stop(backend: Backend) {
    quiet_panics();
    on_every_executor(backend, |backend, executor| {
        let rt = runtime(backend);
        let restarting = rt
            .manager("restarting")
            .backend(backend)
            .on_panic(custody::PanicPolicy::Restart {
                max_restarts: 10,
                within: Duration::from_secs(60),
            })
            .spawn_with(|| Probe::new().0)
            .unwrap();
        let stopping = rt
            .manager("stopping")
            .backend(backend)
            .on_panic(custody::PanicPolicy::Stop)
            .spawn(Probe::new().0)
            .unwrap();
        for (handle, after_panic) in [(&restarting, "answered"), (&stopping, "stopped")] {
            let latch = crate::support::block(handle);
            handle.tell(Msg::Add(5)).unwrap();
            let (_, waker) = counting_waker();
            let mut panicking = handle.ask_async(|reply| Msg::PanicAsked(reply, "boom"));
            assert!(poll_once(&mut panicking, &waker).is_pending());
            let mut queued = handle.ask_async(Msg::Get);
            assert!(poll_once(&mut queued, &waker).is_pending());
            latch.open();
            executor.block_on(async {
                let panicked = panicking.await;
                assert!(
                    matches!(panicked, Err(AskError::Panicked { .. })),
                    "{panicked:?}"
                );
                match (queued.await, after_panic) {
                    // The fresh instance starts from zero.
                    (Ok(0), "answered") | (Err(AskError::Stopped { .. }), "stopped") => {}
                    (other, expected) => panic!("expected {expected}, got {other:?}"),
                }
            });
        }
    });
}

// --- wait-for graph -------------------------------------------------------

/// A manager that awaits (on its own thread) an ask to `other`, which asks
/// it back: a cycle.
enum Pair {
    /// Await an ask to the other manager, which asks back.
    AwaitOther(Reply<Result<Result<u64, AskError>, AskError>>),
    /// Ask the first manager (blocking) and answer with what came back.
    AskBack(Reply<Result<u64, AskError>>),
    /// Answer at once.
    Get(Reply<u64>),
    /// Poll an ask to the other manager once, drop it, then have the other
    /// ask back: no cycle is left behind.
    PollOnceThenDrop(Reply<Result<u64, AskError>>),
    /// Block until released.
    Block(mpsc::Receiver<()>),
    /// Ask the other manager (blocking) for an `AskBack`.
    AskOtherBlocking(Reply<Result<Result<u64, AskError>, AskError>>),
    /// Nothing: fills a bounded mailbox.
    Noop,
}

struct Peer {
    other: Arc<Mutex<Option<Handle<Pair>>>>,
}

impl Manager for Peer {
    type Msg = Pair;
    fn handle(&mut self, msg: Pair, _ctx: &mut Context<'_, Pair>) {
        let other = self.other.lock().unwrap().clone().expect("wired");
        match msg {
            Pair::AwaitOther(reply) => {
                let asked = futures_lite::future::block_on(other.ask_async(Pair::AskBack));
                reply.send(asked);
            }
            Pair::AskBack(reply) => {
                reply.send(other.ask(Pair::Get));
            }
            Pair::Get(reply) => reply.send(1),
            Pair::PollOnceThenDrop(reply) => {
                let (_, waker) = counting_waker();
                let mut ask = other.ask_async(Pair::Get);
                let polled = poll_once(&mut ask, &waker);
                drop(ask);
                reply.send(if polled.is_pending() {
                    Ok(0)
                } else {
                    Err(AskError::NoReply {
                        manager: "the other was not busy".to_owned(),
                    })
                });
            }
            Pair::Block(wait) => {
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
            Pair::AskOtherBlocking(reply) => reply.send(other.ask(Pair::AskBack)),
            Pair::Noop => {}
        }
    }
}

fn pair(backend: Backend) -> (Runtime, Handle<Pair>, Handle<Pair>) {
    pair_with(backend, Capacity::Unbounded)
}

/// `a` unbounded, `b` with the given capacity.
fn pair_with(backend: Backend, b_capacity: Capacity) -> (Runtime, Handle<Pair>, Handle<Pair>) {
    let rt = runtime(backend);
    let a_other = Arc::new(Mutex::new(None));
    let b_other = Arc::new(Mutex::new(None));
    let a = rt
        .spawn(
            "a",
            Peer {
                other: Arc::clone(&a_other),
            },
        )
        .unwrap();
    let b = rt
        .manager("b")
        .capacity(b_capacity)
        .spawn(Peer {
            other: Arc::clone(&b_other),
        })
        .unwrap();
    *a_other.lock().unwrap() = Some(b.clone());
    *b_other.lock().unwrap() = Some(a.clone());
    (rt, a, b)
}

fn an_awaited_ask_on_a_manager_thread_is_in_the_wait_for_graph(backend: Backend) {
    let (_rt, a, _b) = pair(backend);
    let outcome = within("a's ask", move || a.ask(Pair::AwaitOther)).unwrap();
    // b asked a back while a awaited b: b's ask closes the cycle and fails.
    match outcome {
        Ok(Err(AskError::Deadlock { cycle })) => {
            assert_eq!(cycle.first().map(String::as_str), Some("b"));
            assert!(cycle.iter().any(|n| n == "a"), "{cycle:?}");
        }
        other => panic!("expected b's ask back to be a deadlock, got {other:?}"),
    }
}

/// An ask from a manager into a full bounded mailbox waits for room, then
/// for the answer: the wait for the answer is still in the graph after the
/// wait for room ended, so the target asking back is a deadlock, not a hang.
/// Blocking and awaited.
fn an_ask_that_waited_for_room_is_still_in_the_wait_for_graph(backend: Backend) {
    for awaited in [false, true] {
        // All of it bounded, the runtime's drop included: with the wait
        // missing from the graph the two managers wait on each other forever.
        within(&format!("awaited {awaited}"), move || {
            let (rt, a, b) = pair_with(backend, Capacity::bounded(1).unwrap());
            let (release, wait) = mpsc::channel();
            b.tell(Pair::Block(wait)).unwrap();
            b.tell(Pair::Noop).unwrap(); // b's one slot is taken
            let a2 = a.clone();
            let asking = thread::spawn(move || {
                if awaited {
                    a2.ask(Pair::AwaitOther)
                } else {
                    a2.ask(Pair::AskOtherBlocking)
                }
            });
            // a's request is counted in at b and waits for room.
            waits_until("a waiting for room at b", || b.unfinished() == 3);
            release.send(()).unwrap();
            let outcome = asking.join().unwrap().unwrap();
            assert!(
                matches!(outcome, Ok(Err(AskError::Deadlock { .. }))),
                "awaited {awaited}: expected b's ask back to be a deadlock, got {outcome:?}"
            );
            drop(rt);
        });
    }
}

fn a_dropped_awaited_ask_leaves_no_wait_behind(backend: Backend) {
    let (_rt, a, b) = pair(backend);
    // b is busy, so a's ask stays pending when a drops it.
    let (release, wait) = mpsc::channel();
    b.tell(Pair::Block(wait)).unwrap();
    let a2 = a.clone();
    let asked = within("a's handler", move || a2.ask(Pair::PollOnceThenDrop)).unwrap();
    assert!(asked.is_ok(), "{asked:?}");
    release.send(()).unwrap();
    // Now b asks a while nothing waits: an answer, not a deadlock.
    let back = within("b asks a", move || b.ask(Pair::AskBack)).unwrap();
    assert_eq!(back.unwrap(), 1);
}

/// Joins itself from inside a handler, awaiting.
struct SelfJoiner;

impl Manager for SelfJoiner {
    type Msg = Reply<Result<(), JoinError>>;
    fn handle(&mut self, reply: Self::Msg, ctx: &mut Context<'_, Self::Msg>) {
        let me = ctx.handle().clone();
        reply.send(futures_lite::future::block_on(me.join_async()));
    }
}

fn an_awaited_join_of_itself_is_a_deadlock_not_a_hang(backend: Backend) {
    let rt = runtime(backend);
    let joiner = rt.spawn("joiner", SelfJoiner).unwrap();
    let joined = within("self join", move || joiner.ask(|reply| reply)).unwrap();
    assert!(
        matches!(joined, Err(JoinError::Deadlock { .. })),
        "{joined:?}"
    );
}

fn shutdown_async_from_a_manager_resolves_with_a_report_in_progress(backend: Backend) {
    let rt = Arc::new(runtime(backend));
    let rt_for_manager = Arc::clone(&rt);
    let owner = rt.own("owner", ()).unwrap();
    let report = within("shutdown from a manager", move || {
        owner.call(move |_| futures_lite::future::block_on(rt_for_manager.shutdown_async()))
    })
    .unwrap();
    assert!(!report.is_complete(), "it cannot wait for its own thread");
    let finished = within("wait", move || rt.wait());
    assert!(finished.is_complete());
}

// --- stress ---------------------------------------------------------------

/// Many async senders into a small bounded mailbox, beside blocked threads,
/// a third of the async sends cancelled at random points by a timeout:
/// exactly the sends reported accepted are handled, each once.
fn cancelled_sends_are_never_handled_and_accepted_ones_always_are(backend: Backend) {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 300;
    let rt = bounded_runtime(backend, 4);
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let record = Arc::clone(&seen);
    let owner = rt.own("ids", Vec::<u64>::new()).unwrap();
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let reported = Arc::clone(&accepted);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let blocking = {
        let owner = owner.clone();
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || {
            for i in 0..PER_TASK {
                let id = 1_000_000 + i;
                owner.cast(move |ids| ids.push(id)).unwrap();
                accepted.lock().unwrap().insert(id);
            }
        })
    };
    within("stress", move || {
        tokio.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let owner = owner.clone();
                    let accepted = Arc::clone(&accepted);
                    tokio::spawn(async move {
                        for i in 0..PER_TASK {
                            let id = t * PER_TASK + i;
                            let send = owner.handle().tell_async(custody::Job::new(
                                move |ids: &mut Vec<u64>| ids.push(id),
                            ));
                            if i % 3 == 0 {
                                // Cancelled wherever it happens to be.
                                if let Ok(sent) =
                                    tokio::time::timeout(Duration::from_micros(1), send).await
                                {
                                    sent.unwrap();
                                    accepted.lock().unwrap().insert(id);
                                }
                            } else {
                                send.await.unwrap();
                                accepted.lock().unwrap().insert(id);
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        blocking.join().unwrap();
        owner.join().unwrap();
        let handled = owner.call(|ids| ids.clone()).unwrap();
        record.lock().unwrap().extend(handled);
    });
    let handled = seen.lock().unwrap().clone();
    let unique: BTreeSet<u64> = handled.iter().copied().collect();
    assert_eq!(unique.len(), handled.len(), "a message was handled twice");
    assert_eq!(
        unique,
        *reported.lock().unwrap(),
        "handled and accepted differ: a cancelled send was handled, or an accepted one lost"
    );
}

backend_tests!(
    ask_call_and_join_async_answer,
    resources_answer_their_awaited_calls,
    tell_async_waits_for_room_and_every_accepted_message_is_handled_once,
    a_dropped_tell_async_was_not_accepted_and_join_does_not_wait_for_it,
    a_woken_send_dropped_unused_passes_its_wake_up_on,
    a_waker_that_panics_on_the_manager_thread_does_not_end_it,
    a_dropped_ask_async_may_still_be_handled_and_its_answer_is_dropped,
    futures_resolve_when_the_manager_panics_or_drops_the_reply,
    waiting_futures_resolve_when_the_runtime_stops_at_once,
    shutdown_async_drains_every_accepted_message,
    awaiting_futures_resolve_across_a_restart_and_a_stop,
    an_awaited_ask_on_a_manager_thread_is_in_the_wait_for_graph,
    an_ask_that_waited_for_room_is_still_in_the_wait_for_graph,
    a_dropped_awaited_ask_leaves_no_wait_behind,
    an_awaited_join_of_itself_is_a_deadlock_not_a_hang,
    shutdown_async_from_a_manager_resolves_with_a_report_in_progress,
    cancelled_sends_are_never_handled_and_accepted_ones_always_are,
);
