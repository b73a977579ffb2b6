//! Reconnecting (feature `amqp`), against a real RabbitMQ broker: the URL
//! comes from `CUSTODY_AMQP_URL`, or guest@127.0.0.1:5672. An unreachable
//! broker fails these tests; it never skips them.
//!
//! A TCP proxy of the tests' own stands between one client and the broker
//! (the proxy of `tests/broker_faults.rs`, grown to take any number of
//! connections): `cut` shuts every connection through it and refuses new
//! ones, as a network outage would, until `restore`. Each scenario checks
//! that the cut hit a live connection, that messages went through before and
//! after it, and prints how long the client took to resume.
//!
//! - An owner without a standby that is cut off reconnects and serves on
//!   with the same manager: no confirmed message is lost (a plain manager
//!   handles some twice: those it had in hand when cut off, which the broker
//!   delivers again), and a `join_timeout` across the outage tells the truth.
//! - A producer cut off in the middle of a stream of `tell_all`s resumes
//!   once the proxy is back; every confirmed message is handled, in the
//!   order sent, and a
//!   `join_timeout` in progress across the cut ends truthfully, also for
//!   done records the owner sent while the producer was cut off.
//! - `Served::stop` during an outage returns while the outage lasts.
//! - With reconnecting off, a lost connection is final, and every call
//!   fails at once with a typed error; so is a broker the application
//!   closed.
//! - An ask across a cut ends: with its answer when the owner is cut off
//!   (the request is delivered again after the reconnect), with a typed
//!   error when the asker is (its answer was to come on the lost
//!   connection), never a hang; the handle then asks on.
//!
//! Set `CUSTODY_RECONNECT_LOG` to a level (`debug`, `info`, ...) to print
//! custody's log lines. Every scenario runs inside `within` (60 s), once per
//! backend, uses queue names of its own and deletes its queues at the end.

#![cfg(feature = "amqp")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{Queues, builder, connect, within};
use custody::broker::{
    Broker, BrokerError, BrokerState, RemoteAskError, RemoteJoinError, RemoteReply, RemoteSendError,
};
use custody::{Backend, Context, Manager, Runtime};
use serde::{Deserialize, Serialize};

/// Runs the scenario once per backend, each inside `within`.
fn per_backend(scenario: impl Fn(Backend) + Send + Sync + Clone + 'static) {
    log();
    for backend in Backend::ALL {
        let scenario = scenario.clone();
        within(move || scenario(backend));
    }
}

/// Prints custody's log lines at the level in `CUSTODY_RECONNECT_LOG`, if set.
fn log() {
    common::log_from("CUSTODY_RECONNECT_LOG");
}

/// A broker through `proxy`, retrying often so the scenarios stay short.
fn proxied(proxy: &Proxy) -> Broker {
    connect(
        Broker::builder(proxy.url.clone())
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
}

/// Waits until `cond` holds (the scenario's `within` bounds the wait).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    let mut warned = false;
    while !cond() {
        if !warned && started.elapsed() > Duration::from_secs(20) {
            eprintln!("still waiting until {what}");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a manager handled, and when.
type Handled = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Records each number it handles.
struct Recorder(Handled);

impl Manager for Recorder {
    type Msg = u64;
    fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
        self.0.lock().unwrap().push((n, Instant::now()));
    }
}

fn count(handled: &Handled) -> usize {
    handled.lock().unwrap().len()
}

/// How many times each number was handled.
fn tally(handled: &Handled) -> BTreeMap<u64, usize> {
    let mut times = BTreeMap::new();
    for (n, _) in handled.lock().unwrap().iter() {
        *times.entry(*n).or_default() += 1;
    }
    times
}

/// The numbers of `confirmed` that were not handled.
fn missing(handled: &Handled, confirmed: &BTreeSet<u64>) -> Vec<u64> {
    let times = tally(handled);
    confirmed
        .iter()
        .copied()
        .filter(|n| !times.contains_key(n))
        .collect()
}

/// When the first number handled after `at` was handled, if one was.
fn first_handled_after(handled: &Handled, at: Instant) -> Option<Instant> {
    handled
        .lock()
        .unwrap()
        .iter()
        .map(|(_, when)| *when)
        .filter(|when| *when > at)
        .min()
}

/// (a) An owner without a standby, cut off: it reconnects, subscribes again
/// and serves on with the same manager.
#[test]
fn an_owner_cut_off_without_a_standby_reconnects_and_serves_on() {
    per_backend(|backend| {
        let queues = Queues::new("owner-cut");
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let owner = proxied(&proxy);
        let handled = Handled::default();
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&handled)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<u64>(&queues.name).unwrap();
        let mut confirmed = BTreeSet::new();

        jobs.tell_all(0..300).unwrap();
        confirmed.extend(0..300);
        wait_until("the owner handled 50 messages", || count(&handled) >= 50);
        let before_cut = count(&handled);
        let open = proxy.cut();
        let cut_at = Instant::now();
        assert!(open >= 1, "the proxy had no open connection to cut");
        wait_until("the owner noticed the cut", || {
            owner.state() != BrokerState::Connected && !served.is_serving()
        });
        let noticed = cut_at.elapsed();

        // Sent while the owner is cut off; a join across the outage.
        jobs.tell_all(300..600).unwrap();
        confirmed.extend(300..600);
        let joiner = {
            let jobs = jobs.clone();
            std::thread::spawn(move || {
                let result = jobs.join_timeout(Duration::from_secs(40));
                (result, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            proxy.refused() > 0,
            "the owner did not try to reconnect during the outage"
        );
        assert!(
            owner.state() != BrokerState::Connected,
            "the owner reconnected through a proxy that was down"
        );
        proxy.restore();
        let restored_at = Instant::now();
        wait_until("the owner serves again", || served.is_serving());
        let serving_again = restored_at.elapsed();

        let (joined, joined_at) = joiner.join().unwrap();
        joined.unwrap();
        let seen: BTreeSet<u64> = handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, when)| *when <= joined_at)
            .map(|(n, _)| *n)
            .collect();
        let unhandled: Vec<u64> = confirmed.difference(&seen).copied().collect();
        assert!(
            unhandled.is_empty(),
            "join returned Ok with {} confirmed messages not handled: {unhandled:?}",
            unhandled.len()
        );

        jobs.tell_all(600..700).unwrap();
        confirmed.extend(600..700);
        jobs.join_timeout(Duration::from_secs(20)).unwrap();
        let lost = missing(&handled, &confirmed);
        assert!(
            lost.is_empty(),
            "{} confirmed messages lost: {lost:?}",
            lost.len()
        );
        let first_after = first_handled_after(&handled, restored_at)
            .expect("nothing was handled after the proxy came back");
        assert!(before_cut > 0, "nothing was handled before the cut");
        assert!(owner.reconnects() >= 1, "the owner never reconnected");
        assert!(
            proxy.accepted() >= 2,
            "no second connection went through the proxy"
        );
        assert!(served.is_serving());
        let duplicates = tally(&handled).values().filter(|&&t| t > 1).count();
        println!(
            "[{backend:?}] owner cut off: noticed after {noticed:?}; after the proxy came back: \
             subscribed again after {serving_again:?}, first message handled after {:?}; \
             {} reconnects, {} connection attempts refused during the outage; \
             {} of {} messages handled twice (those in hand at the cut)",
            first_after - restored_at,
            owner.reconnects(),
            proxy.refused(),
            duplicates,
            confirmed.len(),
        );
        served.stop();
        drop(jobs);
        drop(queues);
    });
}

/// (b) A producer cut off in the middle of a stream of `tell_all`s: it
/// resumes once the proxy is back, and every confirmed message is handled.
/// The owner starts only during the outage, so a `join_timeout` started
/// before the cut is still waiting across it, for done records sent while
/// the producer was cut off.
#[test]
fn a_producer_cut_off_mid_stream_resumes_and_every_confirmed_message_is_handled() {
    per_backend(|backend| {
        const TOTAL: u64 = 2000;
        const CHUNK: u64 = 20;
        let queues = Queues::new("producer-cut");
        let proxy = Proxy::start();
        let producer = proxied(&proxy);
        let jobs = producer.remote_handle::<u64>(&queues.name).unwrap();
        // Each confirmed number and when its `tell_all` returned.
        let confirmed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
        let refused: Arc<Mutex<Vec<String>>> = Arc::default();
        let streamer = {
            let jobs = jobs.clone();
            let confirmed = Arc::clone(&confirmed);
            let refused = Arc::clone(&refused);
            std::thread::spawn(move || {
                let mut next = 0;
                while next < TOTAL {
                    let chunk: Vec<u64> = (next..next + CHUNK).collect();
                    next += CHUNK;
                    let not_confirmed: BTreeSet<u64> = match jobs.tell_all(chunk.clone()) {
                        Ok(()) => BTreeSet::new(),
                        Err(e) => {
                            refused
                                .lock()
                                .unwrap()
                                .extend(e.refused.iter().map(|r| format!("{r}")));
                            e.into_inner().into_iter().collect()
                        }
                    };
                    let now = Instant::now();
                    confirmed.lock().unwrap().extend(
                        chunk
                            .into_iter()
                            .filter(|n| !not_confirmed.contains(n))
                            .map(|n| (n, now)),
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        wait_until("200 messages confirmed", || {
            confirmed.lock().unwrap().len() >= 200
        });
        let joiner = {
            let jobs = jobs.clone();
            std::thread::spawn(move || {
                let result = jobs.join_timeout(Duration::from_secs(45));
                (result, Instant::now())
            })
        };
        let before_cut = confirmed.lock().unwrap().len();
        let open = proxy.cut();
        let cut_at = Instant::now();
        assert!(open >= 1, "the proxy had no open connection to cut");
        assert!(
            !joiner.is_finished(),
            "the join ended before the cut, with no owner running"
        );

        // The owner starts during the outage: the done records of what it
        // handles now wait in the producer's done queue.
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let owner = connect(builder());
        let handled = Handled::default();
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&handled)))
            .unwrap();
        wait_until(
            "the owner handled what was confirmed before the cut",
            || count(&handled) >= before_cut,
        );
        assert!(
            producer.state() != BrokerState::Connected,
            "the producer did not notice the cut"
        );
        // A join without a deadline does not wait for a new connection.
        let unbounded = jobs.join();
        assert!(
            matches!(unbounded, Err(RemoteJoinError::Disconnected { .. })),
            "a join without a deadline during the outage ended with {unbounded:?}"
        );
        // An outage of half a second at least, the stream waiting.
        std::thread::sleep(Duration::from_millis(500).saturating_sub(cut_at.elapsed()));
        let confirmed_during_outage = confirmed.lock().unwrap().len() - before_cut;
        proxy.restore();
        let restored_at = Instant::now();
        wait_until("a message confirmed after the proxy came back", || {
            confirmed
                .lock()
                .unwrap()
                .iter()
                .any(|(_, when)| *when > restored_at)
        });
        let resumed = restored_at.elapsed();
        streamer.join().unwrap();

        let (joined, joined_at) = joiner.join().unwrap();
        joined.unwrap();
        let seen: BTreeSet<u64> = handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, when)| *when <= joined_at)
            .map(|(n, _)| *n)
            .collect();
        let unhandled: Vec<u64> = confirmed
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, when)| *when <= joined_at && !seen.contains(n))
            .map(|(n, _)| *n)
            .collect();
        assert!(
            unhandled.is_empty(),
            "the join across the cut returned Ok with {} confirmed messages not handled: {unhandled:?}",
            unhandled.len()
        );
        jobs.join_timeout(Duration::from_secs(20)).unwrap();
        let all: BTreeSet<u64> = confirmed.lock().unwrap().iter().map(|(n, _)| *n).collect();
        let lost = missing(&handled, &all);
        assert!(
            lost.is_empty(),
            "{} confirmed messages lost: {lost:?}",
            lost.len()
        );
        let refused = refused.lock().unwrap().clone();
        assert!(
            refused.is_empty(),
            "{} messages refused across a short outage: {:?}",
            refused.len(),
            &refused[..refused.len().min(5)]
        );
        assert_eq!(all.len() as u64, TOTAL);
        // In the order sent: a message sent again after the cut may be
        // handled twice, but its first handling is in its place.
        let mut firsts = Vec::new();
        let mut seen_once = BTreeSet::new();
        for (n, _) in handled.lock().unwrap().iter() {
            if seen_once.insert(*n) {
                firsts.push(*n);
            }
        }
        let out_of_order: Vec<_> = firsts.windows(2).filter(|w| w[0] > w[1]).collect();
        assert!(
            out_of_order.is_empty(),
            "handled out of the order sent: {out_of_order:?}"
        );
        assert!(producer.reconnects() >= 1, "the producer never reconnected");
        let after = confirmed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, when)| *when > restored_at)
            .count();
        assert!(after > 0, "nothing was confirmed after the proxy came back");
        let duplicates = tally(&handled).values().filter(|&&t| t > 1).count();
        println!(
            "[{backend:?}] producer cut off after {before_cut} confirmed: outage of {:?}, \
             {confirmed_during_outage} confirmed during it; first confirm {resumed:?} after \
             the proxy came back, {after} after; {} reconnects; {duplicates} of {TOTAL} \
             handled twice (publishes cut before their confirm, sent again)",
            restored_at - cut_at,
            producer.reconnects(),
        );
        served.stop();
        drop(jobs);
        drop(queues);
    });
}

/// (c) `Served::stop` while the owner is cut off returns, the outage still
/// lasting; what it had not acknowledged goes to the next owner.
#[test]
fn stopping_an_owner_during_an_outage_returns() {
    per_backend(|backend| {
        let queues = Queues::new("stop-in-outage");
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let owner = proxied(&proxy);
        let handled = Handled::default();
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&handled)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<u64>(&queues.name).unwrap();
        jobs.tell_all(0..300).unwrap();
        wait_until("the owner handled 20 messages", || count(&handled) >= 20);
        let open = proxy.cut();
        assert!(open >= 1, "the proxy had no open connection to cut");
        wait_until("the owner noticed the cut", || {
            owner.state() != BrokerState::Connected && !served.is_serving()
        });
        let started = Instant::now();
        served.stop();
        let took = started.elapsed();
        assert!(proxy.is_down(), "the stop outlived the outage");
        let state = owner.state();
        assert!(
            matches!(state, BrokerState::Lost | BrokerState::Reconnecting),
            "the owner's broker is {state:?} during the outage"
        );
        println!("[{backend:?}] Served::stop during an outage returned after {took:?}");

        // Nothing of what it had not acknowledged is lost: the next owner
        // gets it.
        proxy.restore();
        let next_handled = Handled::default();
        let next = connect(builder())
            .serve(&rt, &queues.name, Recorder(Arc::clone(&next_handled)))
            .unwrap();
        jobs.join_timeout(Duration::from_secs(20)).unwrap();
        let mut all = tally(&handled);
        for (n, times) in tally(&next_handled) {
            *all.entry(n).or_default() += times;
        }
        let lost: Vec<u64> = (0..300).filter(|n| !all.contains_key(n)).collect();
        assert!(lost.is_empty(), "{} messages lost: {lost:?}", lost.len());
        next.stop();
        drop(jobs);
        drop(queues);
    });
}

/// The asks of the ask scenarios.
#[derive(Serialize, Deserialize)]
enum Calc {
    Double(u64, RemoteReply<u64>),
}

/// A gate a manager waits at until it is opened.
#[derive(Clone, Default)]
struct Latch(Arc<(Mutex<bool>, Condvar)>);

impl Latch {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
    }

    fn set(&self, is_open: bool) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = is_open;
        changed.notify_all();
    }

    fn open(&self) {
        self.set(true);
    }

    fn close(&self) {
        self.set(false);
    }
}

/// Answers twice the number once its latch is open; counts what it got.
struct Doubler {
    latch: Latch,
    got: Arc<AtomicU64>,
}

impl Manager for Doubler {
    type Msg = Calc;
    fn handle(&mut self, msg: Calc, _ctx: &mut Context<'_, Calc>) {
        let Calc::Double(n, reply) = msg;
        self.got.fetch_add(1, Ordering::SeqCst);
        self.latch.wait();
        reply.send(2 * n);
    }
}

/// (d) Asks whose owner is cut off while it holds them end with their
/// answers once it is back; none hangs.
#[test]
fn asks_whose_owner_is_cut_off_are_answered_after_it_reconnects() {
    per_backend(|backend| {
        let queues = Queues::new("ask-owner-cut");
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let owner = proxied(&proxy);
        let latch = Latch::default();
        let got = Arc::new(AtomicU64::new(0));
        let served = owner
            .serve(
                &rt,
                &queues.name,
                Doubler {
                    latch: latch.clone(),
                    got: Arc::clone(&got),
                },
            )
            .unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        // Answered before the cut: the owner serves.
        latch.open();
        assert_eq!(
            calc.ask_timeout(|r| Calc::Double(1, r), Duration::from_secs(20))
                .unwrap(),
            2
        );
        // Held by the owner from now on, until the cut.
        latch.close();
        let before = got.load(Ordering::SeqCst);
        let askers: Vec<_> = (0..4u64)
            .map(|t| {
                let calc = calc.clone();
                std::thread::spawn(move || {
                    (0..3u64)
                        .map(|i| {
                            let n = 10 * t + i;
                            (n, calc.ask(|r| Calc::Double(n, r)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        wait_until("the owner holds an ask", || {
            got.load(Ordering::SeqCst) > before
        });
        let open = proxy.cut();
        assert!(open >= 1, "the proxy had no open connection to cut");
        wait_until("the owner noticed the cut", || !served.is_serving());
        // What it holds is handled, but not answered: the broker delivers it
        // again after the reconnect.
        latch.open();
        std::thread::sleep(Duration::from_millis(200));
        proxy.restore();
        let restored_at = Instant::now();
        let answers: Vec<(u64, Result<u64, RemoteAskError>)> =
            askers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let took = restored_at.elapsed();
        let wrong: Vec<_> = answers
            .iter()
            .filter(|(n, answer)| !matches!(answer, Ok(v) if *v == 2 * n))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} asks without their answer: {wrong:?}",
            wrong.len(),
            answers.len()
        );
        assert!(owner.reconnects() >= 1, "the owner never reconnected");
        println!(
            "[{backend:?}] {} asks held by an owner cut off: all answered, the last {took:?} \
             after the proxy came back",
            answers.len()
        );
        served.stop();
        drop(calc);
        drop(queues);
    });
}

/// (d) An ask whose asker is cut off after its request went out ends with a
/// typed error (its answer was to come on the lost connection), never a
/// hang; the handle asks on once the proxy is back.
#[test]
fn an_ask_whose_asker_is_cut_off_ends_with_a_typed_error_and_the_handle_asks_on() {
    per_backend(|backend| {
        let queues = Queues::new("ask-asker-cut");
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let latch = Latch::default();
        let got = Arc::new(AtomicU64::new(0));
        let served = connect(builder())
            .serve(
                &rt,
                &queues.name,
                Doubler {
                    latch: latch.clone(),
                    got: Arc::clone(&got),
                },
            )
            .unwrap();
        let asker = proxied(&proxy);
        let calc = asker.remote_handle::<Calc>(&queues.name).unwrap();
        let pending = {
            let calc = calc.clone();
            std::thread::spawn(move || calc.ask(|r| Calc::Double(21, r)))
        };
        wait_until("the owner holds the ask", || {
            got.load(Ordering::SeqCst) >= 1
        });
        let open = proxy.cut();
        assert!(open >= 1, "the proxy had no open connection to cut");
        let cut_at = Instant::now();
        let ended = pending.join().unwrap();
        let ended_after = cut_at.elapsed();
        assert!(
            matches!(ended, Err(RemoteAskError::Disconnected { .. })),
            "the ask across the cut ended with {ended:?}"
        );
        latch.open();
        // During the outage, an ask with a deadline waits for the
        // connection; without one coming, it is not sent.
        let during = calc.ask_timeout(|r| Calc::Double(5, r), Duration::from_millis(300));
        assert!(
            matches!(during, Err(RemoteAskError::Unreachable { .. })),
            "an ask during the outage ended with {during:?}"
        );
        proxy.restore();
        let restored_at = Instant::now();
        let answer = calc
            .ask_timeout(|r| Calc::Double(50, r), Duration::from_secs(20))
            .unwrap();
        let resumed = restored_at.elapsed();
        assert_eq!(answer, 100);
        assert!(asker.reconnects() >= 1, "the asker never reconnected");
        println!(
            "[{backend:?}] ask cut off: ended {ended_after:?} after the cut with {}; \
             the next ask answered {resumed:?} after the proxy came back",
            ended.unwrap_err()
        );
        // A tell during an outage waits for the connection until its own
        // deadline: not sent, and it says so.
        proxy.cut();
        wait_until("the asker noticed the second cut", || {
            asker.state() != BrokerState::Connected
        });
        let told = calc.tell_timeout(
            Calc::Double(7, RemoteReply::placeholder()),
            Duration::from_millis(300),
        );
        assert!(
            matches!(told, Err(RemoteSendError::Unreachable { .. })),
            "a tell during the outage ended with {told:?}"
        );
        proxy.restore();
        served.stop();
        drop(calc);
        drop(queues);
    });
}

/// With reconnecting off, a lost connection is final: the broker stays
/// `Lost`, the owner stops serving (a standby would take over), and calls
/// fail at once with typed errors. `Broker::close` is final too.
#[test]
fn with_reconnecting_off_a_lost_connection_is_final_and_calls_fail_with_typed_errors() {
    per_backend(|backend| {
        let queues = Queues::new("no-reconnect");
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let broker = connect(Broker::builder(proxy.url.clone()).reconnect(false));
        let handled = Handled::default();
        let served = broker
            .serve(&rt, &queues.name, Recorder(Arc::clone(&handled)))
            .unwrap();
        let jobs = broker.remote_handle::<u64>(&queues.name).unwrap();
        jobs.tell_all(0..50).unwrap();
        jobs.join_timeout(Duration::from_secs(20)).unwrap();
        let open = proxy.cut();
        assert!(open >= 1, "the proxy had no open connection to cut");
        proxy.restore();
        wait_until("the broker noticed the cut", || {
            broker.state() == BrokerState::Lost
        });
        wait_until("the serving ended", || !served.is_serving());
        let told = jobs.tell_timeout(50, Duration::from_secs(5));
        assert!(
            matches!(told, Err(RemoteSendError::Unreachable { .. })),
            "a tell after the loss ended with {told:?}"
        );
        let asked = broker
            .remote_handle::<u64>(&queues.name)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(
                asked,
                BrokerError::Disconnected {
                    reconnecting: false,
                    ..
                }
            ),
            "a new handle after the loss: {asked:?}"
        );
        assert_eq!(broker.state(), BrokerState::Lost);
        assert_eq!(broker.reconnects(), 0);
        assert_eq!(count(&handled), 50);
        served.stop();

        let other = connect(builder());
        let handle = other.remote_handle::<u64>(&queues.name).unwrap();
        other.close();
        assert_eq!(other.state(), BrokerState::Closed);
        let told = handle.tell(1);
        assert!(
            matches!(told, Err(RemoteSendError::Unreachable { .. })),
            "a tell after close ended with {told:?}"
        );
        let joined = handle.join_timeout(Duration::from_secs(5));
        assert!(joined.is_ok(), "nothing was outstanding: {joined:?}");
        assert!(matches!(
            other.remote_handle::<u64>(&queues.name),
            Err(BrokerError::Closed)
        ));
        drop(queues);
    });
}

/// Records each number; holds its first message at a latch.
struct HeldRecorder {
    handled: Handled,
    latch: Latch,
    first: bool,
}

impl Manager for HeldRecorder {
    type Msg = u64;
    fn handle(&mut self, n: u64, _ctx: &mut Context<'_, u64>) {
        self.handled.lock().unwrap().push((n, Instant::now()));
        if std::mem::take(&mut self.first) {
            self.latch.wait();
        }
    }
}

/// (g) Deliveries of a lost channel still queued in the manager's mailbox
/// are not handled after the owner subscribed again: the broker delivers
/// them again on the new channel, so handling the old copies too would
/// handle them twice. Only the message in hand at the cut is handled twice.
#[test]
fn queued_deliveries_of_a_lost_channel_are_not_handled_twice() {
    per_backend(|backend| {
        let queues = Queues::new("stale");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<u64>(&queues.name).unwrap();
        let n = 300;
        jobs.tell_all(0..n).unwrap();
        let proxy = Proxy::start();
        let rt = Runtime::builder().backend(backend).build().unwrap();
        let owner = proxied(&proxy);
        let handled = Handled::default();
        let latch = Latch::default();
        let served = owner
            .serve(
                &rt,
                &queues.name,
                HeldRecorder {
                    handled: Arc::clone(&handled),
                    latch: latch.clone(),
                    first: true,
                },
            )
            .unwrap();
        wait_until(
            "the owner holds its first message, its mailbox filled",
            || count(&handled) == 1 && served.handle().len() >= 100,
        );
        let queued_at_cut = served.handle().len();
        assert!(proxy.cut() >= 1, "the proxy had no open connection to cut");
        wait_until("the owner noticed the cut", || !served.is_serving());
        proxy.restore();
        wait_until("the owner serves again", || served.is_serving());
        latch.open();
        jobs.join_timeout(Duration::from_secs(40)).unwrap();
        let times = tally(&handled);
        let in_hand = handled.lock().unwrap()[0].0;
        let twice: Vec<u64> = times
            .iter()
            .filter(|&(&n, &t)| t > 1 && n != in_hand)
            .map(|(&n, _)| n)
            .collect();
        let stats = served.handle().stats().outside.unwrap();
        println!(
            "[{backend:?}] {queued_at_cut} queued at the cut; {} handled twice besides the one \
             in hand; stale deliveries dropped: {}; redelivered: {}",
            twice.len(),
            stats.stale,
            stats.redelivered,
        );
        let lost: Vec<u64> = (0..n).filter(|k| !times.contains_key(k)).collect();
        assert!(lost.is_empty(), "not handled: {lost:?}");
        assert!(
            twice.is_empty(),
            "{} deliveries of the lost channel were handled besides their redelivery: {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        );
        assert!(
            stats.stale >= queued_at_cut as u64,
            "{} stale deliveries dropped, {queued_at_cut} were queued at the cut",
            stats.stale
        );
        served.stop();
        drop(jobs);
        drop(queues);
    });
}
