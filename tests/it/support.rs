//! A probe manager and bounded-time helpers shared by the tests.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use custody::{AskError, Backend, Context, Handle, Manager, Reply, Runtime};

/// Longest any scenario may take before the test fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `f` on its own thread and returns its result, failing the test if it
/// takes longer than [`LIMIT`] (a hang becomes a failure).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(v) => {
            worker.join().expect("scenario thread");
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: scenario ended without a result"),
        },
    }
}

/// [`within`] for scenarios that need no name of their own.
pub fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within("scenario", f)
}

/// The example binary that `cargo test` builds next to the test binaries
/// (with the features the example needs: run the tests with those).
#[allow(dead_code)] // used only by feature-gated modules
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; run it with default features",
        path.display()
    );
    path
}

pub fn runtime(backend: Backend) -> Runtime {
    Runtime::builder()
        .backend(backend)
        .build()
        .expect("valid runtime")
}

/// A latch the probe blocks on until the test opens it.
pub struct Latch {
    open: mpsc::Sender<()>,
}

impl Latch {
    pub fn new() -> (Latch, mpsc::Receiver<()>) {
        let (open, wait) = mpsc::channel();
        (Latch { open }, wait)
    }

    pub fn open(self) {
        let _ = self.open.send(());
    }
}

/// What a probe records as it goes.
#[derive(Default)]
pub struct Log {
    pub events: Vec<String>,
    pub threads: Vec<ThreadId>,
    /// The probe's total when it stopped.
    pub total: u64,
}

pub enum Msg {
    Add(u64),
    Get(Reply<u64>),
    /// Blocks the manager until the latch opens (or 30 s pass).
    Block(mpsc::Receiver<()>),
    /// Signals that the manager has reached this message, then blocks.
    BlockAndSignal(mpsc::Sender<()>, mpsc::Receiver<()>),
    Panic(&'static str),
    PanicAsked(Reply<u64>, &'static str),
    DropReply(Reply<u64>),
    AskSelf(Reply<Result<u64, AskError>>),
    Sleep(Duration),
}

/// A manager that sums `Add`s and records each call it gets.
pub struct Probe {
    pub total: u64,
    pub log: Arc<Mutex<Log>>,
}

impl Probe {
    pub fn new() -> (Probe, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        (
            Probe {
                total: 0,
                log: Arc::clone(&log),
            },
            log,
        )
    }

    fn note(&self, event: &str) {
        let mut log = self.log.lock().unwrap();
        log.events.push(event.to_owned());
        log.threads.push(thread::current().id());
    }
}

impl Manager for Probe {
    type Msg = Msg;

    fn handle(&mut self, msg: Msg, ctx: &mut Context<'_, Msg>) {
        self.log
            .lock()
            .unwrap()
            .threads
            .push(thread::current().id());
        match msg {
            Msg::Add(n) => self.total += n,
            Msg::Get(reply) => reply.send(self.total),
            Msg::Block(wait) => {
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
            Msg::BlockAndSignal(reached, wait) => {
                let _ = reached.send(());
                let _ = wait.recv_timeout(Duration::from_secs(30));
            }
            Msg::Panic(text) => panic!("{text}"),
            Msg::PanicAsked(_reply, text) => panic!("{text}"),
            Msg::DropReply(reply) => drop(reply),
            Msg::AskSelf(reply) => reply.send(ctx.handle().ask(Msg::Get)),
            Msg::Sleep(d) => thread::sleep(d),
        }
    }

    fn started(&mut self, _ctx: &mut Context<'_, Msg>) {
        self.note("started");
    }

    fn idle(&mut self, _ctx: &mut Context<'_, Msg>) {
        self.note("idle");
    }

    fn stopped(&mut self, _ctx: &mut Context<'_, Msg>) {
        self.log.lock().unwrap().total = self.total;
        self.note("stopped");
    }
}

/// Spawns a probe and blocks it on a latch; returns once the manager is
/// inside the blocking message, so later sends queue up behind it.
pub fn blocked_probe(rt: &Runtime, name: &str, probe: Probe) -> (Handle<Msg>, Latch) {
    let handle = rt.spawn(name, probe).expect("spawn");
    let latch = block(&handle);
    (handle, latch)
}

/// Blocks a running probe; returns once it is inside the blocking message.
pub fn block(handle: &Handle<Msg>) -> Latch {
    let (latch, wait) = Latch::new();
    let (reached_tx, reached_rx) = mpsc::channel();
    handle
        .tell(Msg::BlockAndSignal(reached_tx, wait))
        .unwrap_or_else(|_| panic!("probe refused the blocking message"));
    reached_rx
        .recv_timeout(LIMIT)
        .expect("probe reached the blocking message");
    latch
}

/// Silences the default panic hook's output for the panics tests provoke.
pub fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.starts_with("probe:") {
                default(info);
            }
        }));
    });
}
