//! `async-ask`: one tokio task (a multi-thread runtime with 2 workers) makes
//! `k` sequential round trips to a server on a thread of its own (request,
//! then await the answer); each answer is checked and each round trip timed.
//!
//! The designs:
//! - `tokio-mpsc-oneshot` (the reference): a tokio mpsc channel to a
//!   dedicated thread (`blocking_recv`), the answer back on a tokio oneshot;
//! - `crossbeam-oneshot`: tokio-rusqlite 0.7's own pair, a crossbeam-channel
//!   to the thread and a tokio oneshot back;
//! - `custody-ask-spawn-blocking`: custody's blocking `ask` inside
//!   `spawn_blocking`, the workaround before awaitable handles;
//! - `custody-ask-async`: custody's `ask_async`, awaited in the task (the
//!   default crossbeam-channel mailbox);
//! - `custody-ask-async-flume`: the same with a flume mailbox.

use std::thread;

use custody::{Backend, Runtime};

use crate::ask::{Query, VALUE, Value};
use crate::async_write::{Done, drive, tokio_runtime};
use crate::measure::{Latency, Sample};

/// The workload's name.
pub const NAME: &str = "async-ask";

/// The designs, the reference (`tokio-mpsc-oneshot`) first.
pub const DESIGNS: [&str; 5] = [
    "tokio-mpsc-oneshot",
    "crossbeam-oneshot",
    "custody-ask-spawn-blocking",
    "custody-ask-async",
    "custody-ask-async-flume",
];

/// One asking task only.
pub const THREADS: [usize; 1] = [1];

/// A request to the dedicated thread: the question and where to answer.
type Request = (u64, tokio::sync::oneshot::Sender<u64>);

/// One run of `design`: `k` round trips from one task. Returns their time
/// and latency percentiles.
///
/// # Panics
///
/// On an unknown design, a task count other than 1, or a wrong answer.
pub fn run(design: &str, tasks: usize, k: u64) -> Sample {
    assert_eq!(tasks, 1, "{NAME}: one asking task only");
    let tokio = tokio_runtime();
    let mut done = match design {
        "tokio-mpsc-oneshot" => {
            let (requests, mut inbox) = tokio::sync::mpsc::unbounded_channel::<Request>();
            let server = thread::spawn(move || {
                while let Some((question, answer)) = inbox.blocking_recv() {
                    let _ = answer.send(question ^ VALUE);
                }
            });
            let done = tokio.block_on(drive(1, k, move |_, i| {
                let requests = requests.clone();
                async move {
                    let (answer, reply) = tokio::sync::oneshot::channel();
                    requests.send((i, answer)).expect("server gone");
                    let v = reply.await.expect("server gone");
                    assert_eq!(v, i ^ VALUE, "{NAME}/tokio-mpsc-oneshot");
                }
            }));
            server.join().expect("the server thread panicked");
            done
        }
        "crossbeam-oneshot" => {
            let (requests, inbox) = crossbeam_channel::unbounded::<Request>();
            let server = thread::spawn(move || {
                for (question, answer) in inbox {
                    let _ = answer.send(question ^ VALUE);
                }
            });
            let done = tokio.block_on(drive(1, k, move |_, i| {
                let requests = requests.clone();
                async move {
                    let (answer, reply) = tokio::sync::oneshot::channel();
                    requests.send((i, answer)).expect("server gone");
                    let v = reply.await.expect("server gone");
                    assert_eq!(v, i ^ VALUE, "{NAME}/crossbeam-oneshot");
                }
            }));
            server.join().expect("the server thread panicked");
            done
        }
        "custody-ask-spawn-blocking" => {
            let rt = Runtime::new();
            let value = rt.spawn("value", Value(VALUE)).expect("spawning");
            tokio.block_on(drive(1, k, move |_, _| {
                let value = value.clone();
                async move {
                    let v = tokio::task::spawn_blocking(move || value.ask(Query::Get))
                        .await
                        .expect("the blocking ask panicked")
                        .expect("asking");
                    assert_eq!(v, VALUE, "{NAME}/custody-ask-spawn-blocking");
                }
            }))
        }
        "custody-ask-async" => ask_async(&tokio, Backend::Crossbeam, k),
        "custody-ask-async-flume" => ask_async(&tokio, Backend::Flume, k),
        other => panic!("{NAME}: unknown design `{other}`"),
    };
    Sample {
        elapsed: done.elapsed,
        latency: Latency::of(&mut done.latencies),
    }
}

/// `k` round trips with `ask_async` to a manager on `backend`.
fn ask_async(tokio: &tokio::runtime::Runtime, backend: Backend, k: u64) -> Done {
    let rt = Runtime::builder()
        .backend(backend)
        .build()
        .expect("building the runtime");
    let value = rt.spawn("value", Value(VALUE)).expect("spawning");
    tokio.block_on(drive(1, k, move |_, _| {
        let value = value.clone();
        async move {
            let v = value.ask_async(Query::Get).await.expect("asking");
            assert_eq!(v, VALUE, "{NAME}/ask_async on {}", backend.name());
        }
    }))
}
