//! Seed programs: `pc_queue.py` and `pc_queue_direct.py` (the tutorial's
//! "Producer-Consumer Using Queue").
//!
//! Lesson: a bounded, thread-safe queue plus an `Event` replaces the
//! two-lock pipeline. The producer puts messages until the event is set. The
//! seed's consumer keeps going until the event is set *and* the queue is
//! empty, and warns of the gap in that check: the producer may put one more
//! message just after the consumer found the queue empty (the consumer has
//! left, and `join` then waits forever for that message), or the consumer
//! may block in `get()` after the producer stopped. Python 3.13's
//! `Queue.shutdown()` closes both, and `JoinableQueue::shutdown` does the
//! same here: once the producer is done the queue is shut down, and the
//! consumer, which ends only on `ShutDown`, drains what is left first.
//!
//! Run: `cargo run --example pc_queue`
//! Exits 0 only if every produced message was consumed exactly once, in order,
//! and every task was marked done.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use custody::queue::GetError;
use custody::queue::JoinableQueue;
use custody::sync::Event;
use tracing::{Level, info};

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let pipeline = Arc::new(JoinableQueue::new(10));
    let event = Arc::new(Event::new());

    let producer = {
        let (queue, event) = (Arc::clone(&pipeline), Arc::clone(&event));
        thread::spawn(move || {
            // "Pretend we're getting a number from the network."
            let mut produced = Vec::new();
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while !event.is_set() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let message = seed % 101 + 1;
                // The network is not instant.
                thread::sleep(Duration::from_millis(2));
                if queue
                    .put_timeout(message, Duration::from_millis(50))
                    .is_ok()
                {
                    info!("Producer got message: {message}");
                    produced.push(message);
                }
            }
            info!("Producer received event. Exiting");
            produced
        })
    };

    let consumer = {
        let queue = Arc::clone(&pipeline);
        thread::spawn(move || {
            // "Pretend we're saving a number in the database."
            let mut consumed = Vec::new();
            // Not `while !event.is_set() || !queue.empty()`: the producer may
            // put one last message after that check found the queue empty,
            // and `join` below would wait for it forever. The consumer drains
            // until the queue is shut down (after the producer has stopped)
            // and empty.
            loop {
                match queue.get_guarded() {
                    Ok(task) => {
                        info!(
                            "Consumer storing message: {} (size={})",
                            *task,
                            queue.qsize()
                        );
                        consumed.push(*task);
                        // Dropping the guard marks the task done.
                    }
                    Err(GetError::ShutDown) => break,
                    Err(GetError::Empty) => unreachable!("a blocking get never reports Empty"),
                }
            }
            info!("Consumer: the queue is shut down and drained. Exiting");
            consumed
        })
    };

    thread::sleep(Duration::from_millis(100));
    info!("Main: about to set event");
    event.set();
    let produced = producer.join().expect("producer thread");
    // The producer is done: no more puts. Let the consumer drain, then stop.
    pipeline.shutdown(false);
    let consumed = consumer.join().expect("consumer thread");
    pipeline.join();

    info!(
        "produced {} messages, consumed {}, unfinished tasks {}",
        produced.len(),
        consumed.len(),
        pipeline.unfinished_tasks()
    );
    if !produced.is_empty() && produced == consumed && pipeline.unfinished_tasks() == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("check failed: produced {produced:?}, consumed {consumed:?}");
        ExitCode::FAILURE
    }
}
