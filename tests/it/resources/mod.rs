//! The ready-made resources (Counter, Printer, Database), each test run on
//! every backend by `each_backend`.

mod counter;
#[cfg(feature = "sqlite")]
mod database;
mod printer;

use std::panic;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use custody::{Backend, Runtime};

/// How long one scenario may run before the test declares it hung.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `scenario` once per backend, each run on its own thread and bounded
/// by [`LIMIT`]: a hang fails the test instead of stalling the suite.
pub fn each_backend(test: &str, scenario: fn(Backend)) {
    for backend in Backend::ALL {
        let what = format!("{test} [{backend}]");
        let (done_tx, done_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name(what.clone())
            .spawn(move || {
                scenario(backend);
                let _ = done_tx.send(());
            })
            .expect("spawning the scenario thread");
        match done_rx.recv_timeout(LIMIT) {
            Ok(()) => worker.join().expect("the scenario finished"),
            Err(RecvTimeoutError::Disconnected) => match worker.join() {
                Err(payload) => panic::resume_unwind(payload),
                Ok(()) => panic!("{what}: the scenario thread ended without reporting"),
            },
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what}: did not finish within {LIMIT:?}; something hangs")
            }
        }
    }
}

/// A runtime whose managers use `backend`.
pub fn runtime(backend: Backend) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .build()
        .expect("a valid runtime configuration")
}
