//! Tests against a real RabbitMQ broker (feature `amqp`): the URL comes from
//! `CUSTODY_AMQP_URL`, or guest@127.0.0.1:5672. An unreachable broker fails
//! these tests; it never skips them.
//!
//! Every test uses queue names of its own (process id, counter, clock) and
//! deletes its queues at the end, and runs inside `within`, which fails it
//! after 60 s instead of hanging.

#![cfg(feature = "amqp")]

#[path = "../common/mod.rs"]
mod common;

mod ask;
mod awaitable;
#[cfg(feature = "sqlite")]
mod database;
mod kill;
mod processes;
mod tell;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "sqlite")]
use common::unique_name;
use common::{Queues, builder, connect, within};
use custody::broker::{
    Broker, BrokerError, RemoteAskError, RemoteJoinError, RemoteReply, RemoteSendError,
};
use custody::{Context, Manager, Runtime};
use serde::{Deserialize, Serialize};

/// Records what it handles; panics on `Poison` every time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Job {
    Work(u64),
    Poison,
}

#[derive(Default)]
struct Log {
    handled: Vec<u64>,
    poison_attempts: u32,
    idles: u32,
}

struct Recorder(Arc<Mutex<Log>>);

impl Manager for Recorder {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        let mut log = self.0.lock().unwrap();
        match job {
            Job::Work(n) => log.handled.push(n),
            Job::Poison => {
                log.poison_attempts += 1;
                drop(log);
                panic!("poison job");
            }
        }
    }
    fn idle(&mut self, _ctx: &mut Context<'_, Job>) {
        self.0.lock().unwrap().idles += 1;
    }
}

fn handled(log: &Arc<Mutex<Log>>) -> Vec<u64> {
    log.lock().unwrap().handled.clone()
}

/// A sum that answers asks; `Hold` keeps its reply unanswered, `Forget`
/// drops it, `Boom` panics.
#[derive(Serialize, Deserialize)]
enum Calc {
    Add(u64),
    Total(RemoteReply<u64>),
    Hold(RemoteReply<u64>),
    Forget(RemoteReply<u64>),
    Boom(RemoteReply<u64>),
}

/// Kills the child process when dropped, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Handles one job a millisecond, so that a stop lands mid-stream.
struct Slow(Arc<Mutex<Log>>, Arc<AtomicU64>);

impl Manager for Slow {
    type Msg = Job;
    fn handle(&mut self, job: Job, _ctx: &mut Context<'_, Job>) {
        std::thread::sleep(Duration::from_millis(1));
        if let Job::Work(n) = job {
            self.0.lock().unwrap().handled.push(n);
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
}
