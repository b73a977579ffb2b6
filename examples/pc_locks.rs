//! Seed program: `pc_locks.py` (the tutorial's "Producer-Consumer Using
//! Lock").
//!
//! Lesson: a one-message pipeline between a producer and a consumer can be
//! built from two locks, but it takes care: the consumer must copy the
//! message out before it lets the producer in again, and a sentinel value has
//! to tell the consumer to stop. A manager with a bounded mailbox is the same
//! pipeline with none of that.
//!
//! 1. The seed's `Pipeline`: one message slot, a producer lock and a consumer
//!    lock (taken at the start, so the consumer waits for the first message).
//!    The seed releases each lock from the other thread, which Rust's `Mutex`
//!    cannot do (a guard is released by the thread that locked it). So each
//!    "lock" here is what Python's `Lock` really is, a binary semaphore, built
//!    from a `Mutex<bool>` and a `Condvar`. The sentinel is `None`.
//! 2. The manager way: the consumer is a manager with a mailbox of capacity
//!    one. The producer's `tell` waits while the mailbox is full (the
//!    producer lock), the manager waits while it is empty (the consumer lock),
//!    messages are handled one at a time in the order sent, and no sentinel
//!    is needed: `join` waits until everything sent has been stored. (The
//!    manager holds the message it is storing outside its mailbox, so one
//!    more message can wait in the mailbox meanwhile.)
//!
//! As in the seed, the `DEBUG` lines show each step of the locking.
//!
//! Run: `cargo run --example pc_locks [MESSAGES]` (default 10)
//! Exits 0 only if, in both parts, the consumer stored every message the
//! producer sent, once each, in order.

mod common;

use std::process::ExitCode;
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use custody::{Capacity, Context, Manager, Reply, Runtime, TrySendError};
use tracing::{Level, debug, info};

/// Python's `threading.Lock` as the seed uses it: `release` may come from
/// any thread, not only the one that acquired it.
struct BinarySemaphore {
    free: Mutex<bool>,
    changed: Condvar,
}

impl BinarySemaphore {
    fn new(free: bool) -> BinarySemaphore {
        BinarySemaphore {
            free: Mutex::new(free),
            changed: Condvar::new(),
        }
    }

    /// Waits until the semaphore is free, then takes it.
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while !*free {
            free = self
                .changed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free = false;
    }

    /// Frees the semaphore, waking a thread waiting to take it.
    fn release(&self) {
        *self.free.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_one();
    }
}

/// A message, or `None`: the seed's `SENTINEL`, "no more messages".
type Message = Option<u32>;

/// "Class to allow a single element pipeline between producer and consumer."
struct Pipeline {
    /// The slot. Its own mutex only makes it shareable; the two semaphores
    /// decide who may use it.
    message: Mutex<Message>,
    producer_lock: BinarySemaphore,
    consumer_lock: BinarySemaphore,
}

impl Pipeline {
    fn new() -> Pipeline {
        Pipeline {
            message: Mutex::new(None),
            producer_lock: BinarySemaphore::new(true),
            // Taken from the start: the consumer waits for the first message.
            consumer_lock: BinarySemaphore::new(false),
        }
    }

    fn get_message(&self, name: &str) -> Message {
        debug!("{name}:about to acquire getlock");
        self.consumer_lock.acquire();
        debug!("{name}:have getlock");
        // Copy the message out before releasing the producer: once released,
        // the producer may overwrite the slot with the next message.
        let message = *self.message.lock().unwrap_or_else(PoisonError::into_inner);
        debug!("{name}:about to release setlock");
        self.producer_lock.release();
        debug!("{name}:setlock released");
        message
    }

    fn set_message(&self, message: Message, name: &str) {
        debug!("{name}:about to acquire setlock");
        self.producer_lock.acquire();
        debug!("{name}:have setlock");
        *self.message.lock().unwrap_or_else(PoisonError::into_inner) = message;
        debug!("{name}:about to release getlock");
        self.consumer_lock.release();
        debug!("{name}:getlock released");
    }
}

/// `random.randint(1, 101)`, from a small xorshift generator.
struct Random(u64);

impl Random {
    fn from_clock() -> Random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64);
        Random(nanos | 1)
    }

    fn randint_1_101(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 101) as u32 + 1
    }
}

/// "Pretend we're getting a message from the network."
fn producer(pipeline: &Pipeline, messages: usize, random: &mut Random) -> Vec<u32> {
    let mut sent = Vec::new();
    for _ in 0..messages {
        let message = random.randint_1_101();
        info!("Producer got message: {message}");
        pipeline.set_message(Some(message), "Producer");
        sent.push(message);
    }
    // Send a sentinel message to tell the consumer we're done.
    pipeline.set_message(None, "Producer");
    sent
}

/// "Pretend we're saving a number in the database."
fn consumer(pipeline: &Pipeline) -> Vec<u32> {
    let mut stored = Vec::new();
    while let Some(message) = pipeline.get_message("Consumer") {
        info!("Consumer storing message: {message}");
        stored.push(message);
    }
    stored
}

fn with_locks(messages: usize, random: &mut Random) -> (Vec<u32>, Vec<u32>) {
    let pipeline = Pipeline::new();
    thread::scope(|s| {
        let pipeline = &pipeline;
        let producer = s.spawn(move || producer(pipeline, messages, random));
        let consumer = s.spawn(move || consumer(pipeline));
        (
            producer.join().expect("the producer panicked"),
            consumer.join().expect("the consumer panicked"),
        )
    })
}

/// Part 2: the consumer as a manager.
enum ConsumerMsg {
    Store(u32),
    /// Everything stored so far, for the check.
    Stored(Reply<Vec<u32>>),
}

struct Consumer {
    database: Vec<u32>,
}

impl Manager for Consumer {
    type Msg = ConsumerMsg;

    fn handle(&mut self, msg: ConsumerMsg, ctx: &mut Context<'_, ConsumerMsg>) {
        match msg {
            ConsumerMsg::Store(message) => {
                info!(
                    "Consumer storing message: {message} (queue size={})",
                    ctx.handle().len()
                );
                self.database.push(message);
            }
            ConsumerMsg::Stored(reply) => reply.send(self.database.clone()),
        }
    }
}

fn with_a_manager(
    messages: usize,
    random: &mut Random,
) -> Result<(Vec<u32>, Vec<u32>), Box<dyn std::error::Error>> {
    let rt = Runtime::new();
    let consumer = rt
        .manager("consumer")
        .capacity(Capacity::bounded(1)?)
        .spawn(Consumer {
            database: Vec::new(),
        })?;
    let sent = thread::scope(|s| {
        let consumer = &consumer;
        s.spawn(move || {
            let mut sent = Vec::new();
            for _ in 0..messages {
                let message = random.randint_1_101();
                info!("Producer got message: {message}");
                debug!("Producer:about to add {message} to queue");
                // `tell` alone would do; trying first shows when it waits.
                match consumer.try_tell(ConsumerMsg::Store(message)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(msg)) => {
                        debug!("Producer:queue full, waiting");
                        consumer.tell(msg).map_err(|_| "the consumer stopped")?;
                    }
                    Err(TrySendError::Stopped(_)) => return Err("the consumer stopped"),
                }
                debug!("Producer:added {message} to queue");
                sent.push(message);
            }
            Ok(sent)
        })
        .join()
        .expect("the producer panicked")
    })?;
    consumer.join()?; // every message sent has been stored
    let stored = consumer.ask(ConsumerMsg::Stored)?;
    rt.shutdown();
    Ok((sent, stored))
}

fn check(part: &str, sent: &[u32], stored: &[u32], failures: &mut Vec<String>) {
    if sent == stored {
        println!(
            "{part}: all {} messages stored once each, in the order sent",
            sent.len()
        );
    } else {
        failures.push(format!("{part}: sent {sent:?} but stored {stored:?}"));
    }
}

fn main() -> ExitCode {
    common::init_logging(Level::DEBUG);
    let messages = match common::positive_arg::<usize>("messages", 10) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
    };
    let mut random = Random::from_clock();
    let mut failures = Vec::new();

    println!("== 1. pc_locks.py: a one-message pipeline and two locks ==");
    let (sent, stored) = with_locks(messages, &mut random);
    check("two locks", &sent, &stored, &mut failures);

    println!();
    println!("== 2. the same pipeline as one manager's mailbox of capacity 1 ==");
    match with_a_manager(messages, &mut random) {
        Ok((sent, stored)) => check("manager", &sent, &stored, &mut failures),
        Err(error) => failures.push(format!("the manager part failed: {error}")),
    }

    common::verdict(failures)
}
