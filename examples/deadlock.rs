//! Seed program: the tutorial's "Deadlock" section (a `Lock` acquired twice,
//! and `RLock`).
//!
//! Lesson: a thread that waits for something only it can give waits
//! forever. The seed takes the same lock twice; its second `acquire` hangs.
//! The same mistake with managers is a manager asking itself (a handler
//! calling a helper that asks its own manager), or two managers asking each
//! other. The runtime sees the cycle in the graph of who is waiting on whom
//! and fails the ask at once with `AskError::Deadlock`, naming the cycle,
//! instead of hanging.
//!
//! 1. The seed's program, made safe to run: the second acquire is a
//!    `try_lock`, which answers `WouldBlock` where `lock` would hang. Then the
//!    `RLock` situation (a helper used both with and without the lock held)
//!    and the usual Rust fix: the helper takes the locked value, not the lock.
//! 2. A manager whose handler asks its own manager: `Deadlock`, at once.
//! 3. Two managers, each asking the other while handling an ask: `Deadlock`
//!    at once for the one that would close the cycle.
//!
//! Afterwards both kinds of manager are still running and answer as usual.
//!
//! Run: `cargo run --example deadlock`
//! Exits 0 only if the second acquire would have blocked and both asks
//! failed with `Deadlock` within a second (in practice, microseconds).

mod common;

use std::process::ExitCode;
use std::sync::{Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use custody::{AskError, Context, Handle, Manager, Reply, Runtime};
use tracing::{Level, info};

/// "At once": far longer than the detection takes, far shorter than a hang.
const AT_ONCE: Duration = Duration::from_secs(1);

/// Part 1: the seed's program. Returns whether the second acquire would
/// have blocked.
fn lock_twice() -> bool {
    let l = Mutex::new(());
    println!("before first acquire");
    let _first = l.lock().unwrap_or_else(PoisonError::into_inner);
    println!("before second acquire");
    // `l.lock()` here would never return: this thread holds the lock and is
    // the only one that could release it. (std does not even promise a hang:
    // locking a Mutex twice on one thread may deadlock or panic.) `try_lock`
    // asks the same question without waiting for the answer.
    match l.try_lock() {
        Err(TryLockError::WouldBlock) => {
            println!(
                "second acquire: WouldBlock -- this thread already holds the lock; \
                 a blocking lock() would wait for itself forever"
            );
            true
        }
        Ok(_) => {
            println!("acquired lock twice");
            false
        }
        Err(TryLockError::Poisoned(_)) => {
            println!("the lock was poisoned");
            false
        }
    }
}

/// Part 1, continued: the design issue `RLock` answers. `apply_fee` is
/// needed both by code that holds the lock and by code that does not. If it
/// took the lock itself, calling it from `deposit` would take it twice.
/// Rust's usual answer (std has no stable reentrant lock) is to pass the
/// locked value: a `&mut i64` can only come from someone holding the lock.
fn apply_fee(balance: &mut i64) {
    *balance -= 1;
}

fn deposit(account: &Mutex<i64>, amount: i64) -> i64 {
    let mut balance = account.lock().unwrap_or_else(PoisonError::into_inner);
    *balance += amount;
    apply_fee(&mut balance); // no second acquire
    *balance
}

fn month_end(account: &Mutex<i64>) -> i64 {
    let mut balance = account.lock().unwrap_or_else(PoisonError::into_inner);
    apply_fee(&mut balance);
    *balance
}

/// Part 2: an account manager with a helper that asks its own manager.
enum AccountMsg {
    Balance(Reply<i64>),
    /// Deposit, then report the balance by asking ourselves: the mistake.
    DepositAndReport(i64, Reply<Result<i64, AskError>>),
}

struct Account {
    balance: i64,
}

impl Manager for Account {
    type Msg = AccountMsg;

    fn handle(&mut self, msg: AccountMsg, ctx: &mut Context<'_, AccountMsg>) {
        match msg {
            AccountMsg::Balance(reply) => reply.send(self.balance),
            AccountMsg::DepositAndReport(amount, reply) => {
                self.balance += amount;
                // The mistake: this manager is busy with this very message,
                // so it could never answer. Without detection, a hang. The
                // fix is to read `self.balance`, which is right here.
                reply.send(ctx.handle().ask(AccountMsg::Balance));
            }
        }
    }
}

/// Part 3: two managers that ask each other.
enum PeerMsg {
    /// Learn the other manager's address.
    Meet(Handle<PeerMsg>),
    /// Answer by asking the other manager the same question.
    AskAround(Reply<Result<String, AskError>>),
    /// A plain question, to show the manager still answers.
    Name(Reply<String>),
}

struct Peer {
    other: Option<Handle<PeerMsg>>,
}

impl Manager for Peer {
    type Msg = PeerMsg;

    fn handle(&mut self, msg: PeerMsg, ctx: &mut Context<'_, PeerMsg>) {
        match msg {
            PeerMsg::Meet(other) => self.other = Some(other),
            PeerMsg::AskAround(reply) => {
                let answer = match &self.other {
                    None => Ok(format!("{} knows nobody", ctx.name())),
                    Some(other) => {
                        info!("{} asks {}", ctx.name(), other.name());
                        other.ask(PeerMsg::AskAround).and_then(|inner| inner)
                    }
                };
                reply.send(answer);
            }
            PeerMsg::Name(reply) => reply.send(ctx.name().to_owned()),
        }
    }
}

/// Checks an ask's outcome: a `Deadlock` with the expected cycle, in time.
fn expect_deadlock<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, AskError>,
    took: Duration,
    cycle_ok: impl Fn(&[String]) -> bool,
    failures: &mut Vec<String>,
) {
    match outcome {
        Err(AskError::Deadlock { cycle }) => {
            info!(
                "{what}: AskError::Deadlock after {took:.1?}, cycle {}",
                cycle.join(" -> ")
            );
            if !cycle_ok(&cycle) {
                failures.push(format!("{what}: unexpected cycle {cycle:?}"));
            }
            if took > AT_ONCE {
                failures.push(format!("{what}: took {took:?}"));
            }
        }
        other => failures.push(format!("{what}: expected Deadlock, got {other:?}")),
    }
}

fn main() -> ExitCode {
    common::init_logging(Level::INFO);
    let mut failures = Vec::new();

    println!("== 1. a Lock acquired twice ==");
    if !lock_twice() {
        failures.push("the second acquire did not report WouldBlock".to_owned());
    }
    let account = Mutex::new(100);
    let after_deposit = deposit(&account, 10);
    let after_month = month_end(&account);
    println!(
        "the RLock situation without an RLock: deposit -> {after_deposit}, month end -> {after_month}"
    );
    if (after_deposit, after_month) != (109, 108) {
        failures.push(format!(
            "the fee helper gave {after_deposit} and {after_month}, not 109 and 108"
        ));
    }

    let rt = Runtime::new();

    println!();
    println!("== 2. a manager asking itself ==");
    let account = rt
        .spawn("account", Account { balance: 100 })
        .expect("spawn the account");
    let begin = Instant::now();
    let outcome = account.ask(|reply| AccountMsg::DepositAndReport(10, reply));
    let took = begin.elapsed();
    match outcome {
        Ok(inner) => expect_deadlock(
            "account asking itself",
            inner,
            took,
            |c| c == ["account", "account"],
            &mut failures,
        ),
        Err(error) => failures.push(format!("asking the account failed: {error}")),
    }
    match account.ask(AccountMsg::Balance) {
        Ok(balance) => info!("the account still answers: balance {balance}"),
        Err(error) => failures.push(format!("the account stopped answering: {error}")),
    }

    println!();
    println!("== 3. two managers asking each other ==");
    let left = rt.spawn("left", Peer { other: None }).expect("spawn left");
    let right = rt
        .spawn("right", Peer { other: None })
        .expect("spawn right");
    left.tell(PeerMsg::Meet(right.clone()))
        .expect("left is running");
    right
        .tell(PeerMsg::Meet(left.clone()))
        .expect("right is running");
    // Wait until both know each other, so that the ask below goes around.
    left.join().and(right.join()).expect("join the peers");
    let begin = Instant::now();
    let outcome = left.ask(PeerMsg::AskAround);
    let took = begin.elapsed();
    match outcome {
        Ok(inner) => expect_deadlock(
            "left and right asking each other",
            inner,
            took,
            |c| c == ["right", "left", "right"],
            &mut failures,
        ),
        Err(error) => failures.push(format!("asking left failed: {error}")),
    }
    for peer in [&left, &right] {
        match peer.ask(PeerMsg::Name) {
            Ok(name) => info!("{name} still answers"),
            Err(error) => failures.push(format!("{} stopped answering: {error}", peer.name())),
        }
    }

    // The peers hold each other's handles; stopping them ends their threads.
    let report = rt.shutdown();
    if report.total_unhandled() != 0 {
        failures.push(format!("shutdown left messages unhandled:\n{report}"));
    }

    common::verdict(failures)
}
