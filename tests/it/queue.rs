//! Behaviour of `JoinableQueue`, checked against Python 3.13's
//! `queue.Queue` semantics.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, LazyLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::bounded as within;
use custody::queue::JoinableQueue;
use custody::queue::{GetError, JoinTimeoutError, PutError, Task, TaskDoneError};

/// Generous bound for anything that must happen "eventually".
const LIMIT: Duration = Duration::from_secs(30);
/// How long to watch a thread that must stay blocked.
const SETTLE: Duration = Duration::from_millis(100);
/// Timeout used by the tests that exercise timeouts.
const SHORT: Duration = Duration::from_millis(50);

#[test]
fn items_come_out_in_fifo_order() {
    let queue = JoinableQueue::new(0);
    for i in 0..100 {
        queue.put(i).unwrap();
    }
    let out: Vec<i32> = (0..100).map(|_| queue.get().unwrap()).collect();
    assert_eq!(out, (0..100).collect::<Vec<_>>());
}

#[test]
fn maxsize_zero_means_unbounded() {
    let queue = JoinableQueue::new(0);
    for i in 0..10_000 {
        queue.put_nowait(i).unwrap();
    }
    assert!(!queue.full());
    assert_eq!(queue.qsize(), 10_000);
    assert_eq!(queue.maxsize(), 0);
}

#[test]
fn size_queries_follow_contents() {
    let queue = JoinableQueue::new(2);
    assert!(queue.empty());
    assert!(!queue.full());
    queue.put('a').unwrap();
    assert_eq!(queue.qsize(), 1);
    assert!(!queue.empty());
    queue.put('b').unwrap();
    assert!(queue.full());
    assert_eq!(queue.get_nowait(), Ok('a'));
    assert!(!queue.full());
    assert_eq!(queue.maxsize(), 2);
}

#[test]
fn put_nowait_on_full_queue_returns_item_in_full_error() {
    let queue = JoinableQueue::new(1);
    queue.put_nowait(String::from("first")).unwrap();
    let err = queue.put_nowait(String::from("second")).unwrap_err();
    assert!(err.is_full());
    assert_eq!(err.into_inner(), "second");
    assert_eq!(queue.qsize(), 1);
    assert_eq!(queue.unfinished_tasks(), 1);
}

#[test]
fn get_nowait_on_empty_queue_is_empty_error() {
    let queue = JoinableQueue::<u8>::new(0);
    assert_eq!(queue.get_nowait(), Err(GetError::Empty));
}

#[test]
fn put_blocks_while_full_until_an_item_is_taken() {
    within(|| {
        let queue = JoinableQueue::new(1);
        queue.put(1).unwrap();
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                queue.put(2).unwrap();
                done.store(true, Ordering::SeqCst);
            });
            thread::sleep(SETTLE);
            assert!(!done.load(Ordering::SeqCst), "put returned on a full queue");
            assert_eq!(queue.get(), Ok(1));
        });
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(queue.get_nowait(), Ok(2));
    });
}

#[test]
fn get_blocks_while_empty_until_an_item_is_put() {
    within(|| {
        let queue = JoinableQueue::new(0);
        let got = AtomicBool::new(false);
        thread::scope(|s| {
            let getter = s.spawn(|| {
                let item = queue.get();
                got.store(true, Ordering::SeqCst);
                item
            });
            thread::sleep(SETTLE);
            assert!(
                !got.load(Ordering::SeqCst),
                "get returned on an empty queue"
            );
            queue.put("x").unwrap();
            assert_eq!(getter.join().unwrap(), Ok("x"));
        });
    });
}

#[test]
fn put_timeout_waits_at_least_the_timeout_then_returns_full_with_item() {
    let queue = JoinableQueue::new(1);
    queue.put(1).unwrap();
    let start = Instant::now();
    let err = queue.put_timeout(2, SHORT).unwrap_err();
    assert!(
        start.elapsed() >= SHORT,
        "gave up after {:?}",
        start.elapsed()
    );
    assert!(matches!(err, PutError::Full(2)));
    // The queue is unchanged.
    assert_eq!(queue.qsize(), 1);
    assert_eq!(queue.unfinished_tasks(), 1);
    assert_eq!(queue.get_nowait(), Ok(1));
}

#[test]
fn put_timeout_succeeds_when_room_appears_in_time() {
    within(|| {
        let queue = JoinableQueue::new(1);
        queue.put(1).unwrap();
        thread::scope(|s| {
            let putter = s.spawn(|| queue.put_timeout(2, LIMIT));
            thread::sleep(SETTLE);
            assert_eq!(queue.get(), Ok(1));
            assert!(putter.join().unwrap().is_ok());
        });
        assert_eq!(queue.get_nowait(), Ok(2));
    });
}

#[test]
fn get_timeout_waits_at_least_the_timeout_then_returns_empty() {
    let queue = JoinableQueue::<u8>::new(0);
    let start = Instant::now();
    assert_eq!(queue.get_timeout(SHORT), Err(GetError::Empty));
    assert!(
        start.elapsed() >= SHORT,
        "gave up after {:?}",
        start.elapsed()
    );
}

#[test]
fn get_timeout_returns_item_put_during_the_wait() {
    within(|| {
        let queue = JoinableQueue::new(0);
        thread::scope(|s| {
            let getter = s.spawn(|| queue.get_timeout(LIMIT));
            thread::sleep(SETTLE);
            queue.put(9).unwrap();
            assert_eq!(getter.join().unwrap(), Ok(9));
        });
    });
}

#[test]
fn zero_timeouts_behave_like_nowait() {
    let queue = JoinableQueue::new(1);
    assert_eq!(queue.get_timeout(Duration::ZERO), Err(GetError::Empty));
    queue.put_timeout(1, Duration::ZERO).unwrap();
    assert!(queue.put_timeout(2, Duration::ZERO).unwrap_err().is_full());
    assert_eq!(queue.get_timeout(Duration::ZERO), Ok(1));
}

#[test]
fn huge_timeouts_do_not_overflow() {
    let queue = JoinableQueue::new(1);
    queue.put_timeout(1, Duration::MAX).unwrap();
    assert_eq!(queue.get_timeout(Duration::MAX), Ok(1));
    queue.task_done().unwrap();
    queue.join_timeout(Duration::MAX).unwrap();
}

#[test]
fn timed_out_getter_steals_nothing() {
    within(|| {
        let queue = JoinableQueue::new(0);
        thread::scope(|s| {
            let getters: Vec<_> = (0..4)
                .map(|_| s.spawn(|| queue.get_timeout(SHORT)))
                .collect();
            for getter in getters {
                assert_eq!(getter.join().unwrap(), Err(GetError::Empty));
            }
        });
        queue.put(42).unwrap();
        thread::sleep(SETTLE);
        assert_eq!(
            queue.qsize(),
            1,
            "an item put after the getters timed out vanished"
        );
        assert_eq!(queue.get_nowait(), Ok(42));
    });
}

#[test]
fn timed_out_putter_leaves_no_item_behind() {
    within(|| {
        let queue = JoinableQueue::new(1);
        queue.put(1).unwrap();
        thread::scope(|s| {
            let putter = s.spawn(|| queue.put_timeout(2, SHORT));
            assert!(matches!(putter.join().unwrap(), Err(PutError::Full(2))));
        });
        assert_eq!(queue.get_nowait(), Ok(1));
        thread::sleep(SETTLE);
        assert_eq!(queue.get_nowait(), Err(GetError::Empty));
        assert_eq!(queue.unfinished_tasks(), 1);
    });
}

#[test]
fn unfinished_tasks_rises_on_put_and_falls_on_task_done() {
    let queue = JoinableQueue::new(0);
    assert_eq!(queue.unfinished_tasks(), 0);
    queue.put(1).unwrap();
    queue.put_nowait(2).unwrap();
    queue.put_timeout(3, SHORT).unwrap();
    assert_eq!(queue.unfinished_tasks(), 3);
    // Getting does not change the count; task_done does.
    queue.get().unwrap();
    assert_eq!(queue.unfinished_tasks(), 3);
    queue.task_done().unwrap();
    assert_eq!(queue.unfinished_tasks(), 2);
    // Failed puts do not count.
    let full = JoinableQueue::new(1);
    full.put(1).unwrap();
    let _ = full.put_nowait(2);
    let _ = full.put_timeout(3, Duration::ZERO);
    assert_eq!(full.unfinished_tasks(), 1);
}

#[test]
fn task_done_more_times_than_puts_is_an_error_and_keeps_counter() {
    let queue = JoinableQueue::new(0);
    assert_eq!(queue.task_done(), Err(TaskDoneError));
    assert_eq!(queue.unfinished_tasks(), 0);
    queue.put(1).unwrap();
    queue.task_done().unwrap();
    assert_eq!(queue.task_done(), Err(TaskDoneError));
    assert_eq!(queue.unfinished_tasks(), 0);
    // The queue still works normally afterwards.
    queue.put(2).unwrap();
    assert_eq!(queue.unfinished_tasks(), 1);
}

#[test]
fn join_returns_at_once_without_unfinished_tasks() {
    within(|| {
        let queue = JoinableQueue::<u8>::new(0);
        queue.join();
        queue.join_timeout(Duration::ZERO).unwrap();
    });
}

#[test]
fn join_releases_every_joiner_when_count_reaches_zero() {
    within(|| {
        let queue = JoinableQueue::new(0);
        queue.put(1).unwrap();
        queue.put(2).unwrap();
        let released = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    queue.join();
                    released.fetch_add(1, Ordering::SeqCst);
                });
            }
            queue.get().unwrap();
            queue.task_done().unwrap();
            thread::sleep(SETTLE);
            assert_eq!(
                released.load(Ordering::SeqCst),
                0,
                "join returned with a task unfinished"
            );
            queue.get().unwrap();
            queue.task_done().unwrap();
        });
        assert_eq!(released.load(Ordering::SeqCst), 8);
    });
}

/// Races the last `task_done` against joiners arriving at the same time,
/// many times over: a lost wake-up would hang a joiner.
#[test]
fn join_never_misses_the_last_task_done() {
    within(|| {
        let queue = JoinableQueue::new(0);
        for round in 0..1_000 {
            queue.put(round).unwrap();
            thread::scope(|s| {
                s.spawn(|| queue.join());
                s.spawn(|| queue.join_timeout(LIMIT).unwrap());
                s.spawn(|| {
                    queue.get().unwrap();
                    queue.task_done().unwrap();
                });
            });
            assert_eq!(queue.unfinished_tasks(), 0);
        }
    });
}

#[test]
fn join_timeout_waits_at_least_the_timeout_then_fails() {
    let queue = JoinableQueue::new(0);
    queue.put(1).unwrap();
    let start = Instant::now();
    assert_eq!(queue.join_timeout(SHORT), Err(JoinTimeoutError));
    assert!(
        start.elapsed() >= SHORT,
        "gave up after {:?}",
        start.elapsed()
    );
    queue.get().unwrap();
    queue.task_done().unwrap();
    assert_eq!(queue.join_timeout(SHORT), Ok(()));
}

#[test]
fn join_timeout_succeeds_when_tasks_finish_in_time() {
    within(|| {
        let queue = JoinableQueue::new(0);
        queue.put(1).unwrap();
        thread::scope(|s| {
            let joiner = s.spawn(|| queue.join_timeout(LIMIT));
            thread::sleep(SETTLE);
            queue.get_guarded().unwrap().done();
            assert_eq!(joiner.join().unwrap(), Ok(()));
        });
    });
}

#[test]
fn put_after_shutdown_fails_with_item_back() {
    let queue = JoinableQueue::new(0);
    queue.shutdown(false);
    assert!(queue.is_shutdown());
    assert!(matches!(queue.put(1), Err(PutError::ShutDown(1))));
    assert!(matches!(queue.put_nowait(2), Err(PutError::ShutDown(2))));
    assert!(matches!(
        queue.put_timeout(3, SHORT),
        Err(PutError::ShutDown(3))
    ));
    assert_eq!(queue.qsize(), 0);
    assert_eq!(queue.unfinished_tasks(), 0);
}

#[test]
fn shutdown_wins_over_full() {
    let queue = JoinableQueue::new(1);
    queue.put(1).unwrap();
    queue.shutdown(false);
    assert!(queue.put_nowait(2).unwrap_err().is_shut_down());
    let start = Instant::now();
    assert!(queue.put_timeout(3, LIMIT).unwrap_err().is_shut_down());
    // It did not wait for room.
    assert!(start.elapsed() < LIMIT);
}

#[test]
fn gets_drain_remaining_items_in_order_after_shutdown_then_fail() {
    let queue = JoinableQueue::new(0);
    for i in 0..5 {
        queue.put(i).unwrap();
    }
    queue.shutdown(false);
    assert_eq!(queue.get(), Ok(0));
    assert_eq!(queue.get_nowait(), Ok(1));
    assert_eq!(queue.get_timeout(SHORT), Ok(2));
    assert_eq!(*queue.get_guarded().unwrap(), 3);
    assert_eq!(queue.get(), Ok(4));
    assert_eq!(queue.get(), Err(GetError::ShutDown));
    // ShutDown, not Empty, for the non-blocking variants too.
    assert_eq!(queue.get_nowait(), Err(GetError::ShutDown));
    assert_eq!(queue.get_timeout(SHORT), Err(GetError::ShutDown));
    assert!(matches!(
        queue.get_guarded_nowait(),
        Err(GetError::ShutDown)
    ));
    // Graceful shutdown keeps the task count.
    assert_eq!(queue.unfinished_tasks(), 4);
}

#[test]
fn shutdown_wakes_blocked_putters_and_returns_their_items() {
    within(|| {
        let queue = JoinableQueue::new(1);
        queue.put(0).unwrap();
        let waiting = Barrier::new(5);
        thread::scope(|s| {
            let putters: Vec<_> = (1..=4)
                .map(|i| {
                    let (queue, waiting) = (&queue, &waiting);
                    s.spawn(move || {
                        waiting.wait();
                        if i % 2 == 0 {
                            queue.put(i)
                        } else {
                            queue.put_timeout(i, LIMIT)
                        }
                    })
                })
                .collect();
            waiting.wait();
            thread::sleep(SETTLE);
            queue.shutdown(false);
            let mut returned: Vec<i32> = putters
                .into_iter()
                .map(|p| {
                    let err = p.join().unwrap().unwrap_err();
                    assert!(err.is_shut_down());
                    err.into_inner()
                })
                .collect();
            returned.sort_unstable();
            assert_eq!(returned, [1, 2, 3, 4]);
        });
        assert_eq!(queue.get(), Ok(0));
        assert_eq!(queue.get(), Err(GetError::ShutDown));
    });
}

#[test]
fn shutdown_wakes_blocked_getters_with_shut_down() {
    within(|| {
        let queue = JoinableQueue::<u32>::new(0);
        let waiting = Barrier::new(5);
        thread::scope(|s| {
            let getters: Vec<_> = (0..4)
                .map(|i| {
                    let (queue, waiting) = (&queue, &waiting);
                    s.spawn(move || {
                        waiting.wait();
                        match i {
                            0 => queue.get(),
                            1 => queue.get_timeout(LIMIT),
                            2 => queue.get_guarded().map(Task::into_inner),
                            _ => queue.get_guarded_timeout(LIMIT).map(Task::into_inner),
                        }
                    })
                })
                .collect();
            waiting.wait();
            thread::sleep(SETTLE);
            queue.shutdown(false);
            for getter in getters {
                assert_eq!(getter.join().unwrap(), Err(GetError::ShutDown));
            }
        });
    });
}

#[test]
fn immediate_shutdown_discards_items_and_reduces_unfinished_tasks() {
    let drops = Arc::new(());
    let queue = JoinableQueue::new(0);
    for _ in 0..5 {
        queue.put(Arc::clone(&drops)).unwrap();
    }
    let taken = queue.get().unwrap();
    queue.shutdown(true);
    assert_eq!(queue.qsize(), 0);
    // Four discarded; the taken one is still unfinished.
    assert_eq!(queue.unfinished_tasks(), 1);
    // The discarded items were dropped.
    assert_eq!(Arc::strong_count(&drops), 2);
    assert_eq!(queue.get_nowait(), Err(GetError::ShutDown));
    drop(taken);
    queue.task_done().unwrap();
    assert_eq!(queue.unfinished_tasks(), 0);
}

#[test]
fn immediate_shutdown_releases_joiners_waiting_only_on_discarded_items() {
    within(|| {
        let queue = JoinableQueue::new(0);
        for i in 0..3 {
            queue.put(i).unwrap();
        }
        let waiting = Barrier::new(4);
        thread::scope(|s| {
            let joiners: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        waiting.wait();
                        queue.join();
                    })
                })
                .collect();
            waiting.wait();
            thread::sleep(SETTLE);
            queue.shutdown(true);
            for joiner in joiners {
                joiner.join().unwrap();
            }
        });
        assert_eq!(queue.unfinished_tasks(), 0);
    });
}

#[test]
fn immediate_shutdown_keeps_join_waiting_for_taken_items() {
    within(|| {
        let queue = JoinableQueue::new(0);
        for i in 0..3 {
            queue.put(i).unwrap();
        }
        let task = queue.get_guarded().unwrap();
        let joined = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                queue.join();
                joined.store(true, Ordering::SeqCst);
            });
            thread::sleep(SETTLE);
            queue.shutdown(true);
            thread::sleep(SETTLE);
            assert!(
                !joined.load(Ordering::SeqCst),
                "join returned while a taken item was not done"
            );
            assert_eq!(queue.unfinished_tasks(), 1);
            task.done();
        });
        assert!(joined.load(Ordering::SeqCst));
    });
}

#[test]
fn immediate_shutdown_floors_unfinished_tasks_at_zero() {
    let queue = JoinableQueue::new(0);
    for i in 0..3 {
        queue.put(i).unwrap();
    }
    // Marked done without being taken: 1 unfinished, 3 queued.
    queue.task_done().unwrap();
    queue.task_done().unwrap();
    queue.shutdown(true);
    assert_eq!(queue.unfinished_tasks(), 0);
    assert_eq!(queue.task_done(), Err(TaskDoneError));
}

#[test]
fn shutdown_is_one_way_and_may_be_repeated() {
    let queue = JoinableQueue::new(0);
    for i in 0..3 {
        queue.put(i).unwrap();
    }
    queue.shutdown(false);
    queue.shutdown(false);
    assert!(queue.is_shutdown());
    assert_eq!(queue.qsize(), 3);
    assert_eq!(queue.get(), Ok(0));
    // Immediate after graceful discards the rest.
    queue.shutdown(true);
    assert_eq!(queue.qsize(), 0);
    assert_eq!(queue.unfinished_tasks(), 1);
    assert_eq!(queue.get(), Err(GetError::ShutDown));
    // Graceful after immediate does not reopen anything.
    queue.shutdown(false);
    queue.shutdown(true);
    assert!(queue.is_shutdown());
    assert!(queue.put(9).unwrap_err().is_shut_down());
    assert_eq!(queue.unfinished_tasks(), 1);
}

#[test]
fn task_done_and_join_still_work_after_shutdown() {
    within(|| {
        let queue = JoinableQueue::new(0);
        queue.put(1).unwrap();
        queue.shutdown(false);
        assert_eq!(queue.get(), Ok(1));
        queue.task_done().unwrap();
        queue.join();
    });
}

#[test]
fn guarded_task_calls_task_done_on_drop() {
    let queue = JoinableQueue::new(0);
    queue.put(String::from("a")).unwrap();
    queue.put(String::from("b")).unwrap();
    {
        let mut task = queue.get_guarded().unwrap();
        task.push('!');
        assert_eq!(&*task, "a!");
        assert!(std::ptr::eq(task.queue(), &queue));
        assert_eq!(queue.unfinished_tasks(), 2);
    }
    assert_eq!(queue.unfinished_tasks(), 1);
    let task = queue.get_guarded_nowait().unwrap();
    assert_eq!(task.into_inner(), "b");
    assert_eq!(queue.unfinished_tasks(), 0);
}

#[test]
fn guarded_task_done_marks_exactly_one_task() {
    let queue = JoinableQueue::new(0);
    for i in 0..3 {
        queue.put(i).unwrap();
    }
    queue.get_guarded().unwrap().done();
    assert_eq!(queue.unfinished_tasks(), 2);
    queue.get_guarded_timeout(SHORT).unwrap().done();
    assert_eq!(queue.unfinished_tasks(), 1);
}

#[test]
fn guarded_item_is_dropped_before_its_task_is_marked_done() {
    struct Probe;
    static QUEUE: LazyLock<JoinableQueue<Probe>> = LazyLock::new(|| JoinableQueue::new(0));
    static SEEN_AT_DROP: AtomicUsize = AtomicUsize::new(usize::MAX);
    impl Drop for Probe {
        fn drop(&mut self) {
            SEEN_AT_DROP.store(QUEUE.unfinished_tasks(), Ordering::SeqCst);
        }
    }
    QUEUE.put(Probe).unwrap();
    QUEUE.get_guarded().unwrap().done();
    assert_eq!(SEEN_AT_DROP.load(Ordering::SeqCst), 1);
    assert_eq!(QUEUE.unfinished_tasks(), 0);
}

#[test]
fn guarded_gets_report_errors_like_plain_gets() {
    let queue = JoinableQueue::<u8>::new(0);
    assert!(matches!(queue.get_guarded_nowait(), Err(GetError::Empty)));
    let start = Instant::now();
    assert!(matches!(
        queue.get_guarded_timeout(SHORT),
        Err(GetError::Empty)
    ));
    assert!(start.elapsed() >= SHORT);
    queue.shutdown(false);
    assert!(matches!(queue.get_guarded(), Err(GetError::ShutDown)));
}

#[test]
fn guard_does_nothing_if_task_done_was_also_called_by_hand() {
    let queue = JoinableQueue::new(0);
    queue.put(1).unwrap();
    let task = queue.get_guarded().unwrap();
    queue.task_done().unwrap();
    drop(task);
    assert_eq!(queue.unfinished_tasks(), 0);
}

#[test]
fn join_waits_for_guarded_tasks() {
    within(|| {
        let queue = JoinableQueue::new(0);
        let processed = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while let Ok(task) = queue.get_guarded() {
                        thread::sleep(Duration::from_millis(*task % 3));
                        processed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            for i in 0..200_u64 {
                queue.put(i).unwrap();
            }
            queue.join();
            assert_eq!(processed.load(Ordering::SeqCst), 200);
            queue.shutdown(false);
        });
    });
}

#[test]
fn works_through_an_arc_with_spawned_threads() {
    within(|| {
        let queue = Arc::new(JoinableQueue::new(8));
        let consumer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let mut sum = 0_u64;
                while let Ok(n) = queue.get() {
                    sum += n;
                    queue.task_done().unwrap();
                }
                sum
            })
        };
        for n in 1..=1000 {
            queue.put(n).unwrap();
        }
        queue.join();
        queue.shutdown(false);
        assert_eq!(consumer.join().unwrap(), 500_500);
    });
}

/// Dozens of producers and consumers, mixing every kind of put and get:
/// what comes out is exactly what went in, and `join` sees all of it done.
#[test]
fn stress_many_producers_and_consumers_lose_and_duplicate_nothing() {
    const PRODUCERS: u64 = 24;
    const CONSUMERS: usize = 24;
    const PER_PRODUCER: u64 = 1_000;

    let received = within(|| {
        let queue = JoinableQueue::new(64);
        let received = thread::scope(|s| {
            let consumers: Vec<_> = (0..CONSUMERS)
                .map(|c| {
                    let queue = &queue;
                    s.spawn(move || {
                        let mut got = Vec::new();
                        let mut round = 0_usize;
                        loop {
                            round += 1;
                            let guarded = (c + round) % 4 == 3;
                            let item = match (c + round) % 4 {
                                0 => queue.get(),
                                1 => queue.get_nowait(),
                                2 => queue.get_timeout(Duration::from_millis(1)),
                                // `into_inner` marks the task done.
                                _ => queue.get_guarded().map(Task::into_inner),
                            };
                            match item {
                                Ok(item) => {
                                    got.push(item);
                                    if !guarded {
                                        queue.task_done().unwrap();
                                    }
                                }
                                Err(GetError::Empty) => thread::yield_now(),
                                Err(GetError::ShutDown) => return got,
                            }
                        }
                    })
                })
                .collect();
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let queue = &queue;
                    s.spawn(move || {
                        for i in 0..PER_PRODUCER {
                            let mut item = p * PER_PRODUCER + i;
                            match i % 3 {
                                0 => queue.put(item).unwrap(),
                                1 => loop {
                                    match queue.put_nowait(item) {
                                        Ok(()) => break,
                                        Err(err) => {
                                            assert!(err.is_full());
                                            item = err.into_inner();
                                            thread::yield_now();
                                        }
                                    }
                                },
                                _ => loop {
                                    match queue.put_timeout(item, Duration::from_millis(1)) {
                                        Ok(()) => break,
                                        Err(err) => item = err.into_inner(),
                                    }
                                },
                            }
                        }
                    })
                })
                .collect();
            for producer in producers {
                producer.join().unwrap();
            }
            queue.join();
            assert_eq!(queue.unfinished_tasks(), 0);
            queue.shutdown(false);
            consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect::<Vec<u64>>()
        });
        assert_eq!(queue.qsize(), 0);
        received
    });
    let mut received = received;
    received.sort_unstable();
    let sent: Vec<u64> = (0..PRODUCERS * PER_PRODUCER).collect();
    assert_eq!(received.len(), sent.len(), "items lost or duplicated");
    assert_eq!(received, sent);
}

/// Same traffic on an unbounded queue, ending with an immediate shutdown
/// while consumers are still busy: every item is either received or
/// discarded, never both, and the counters agree.
#[test]
fn stress_immediate_shutdown_accounts_for_every_item() {
    within(|| {
        let queue = JoinableQueue::new(0);
        let received = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    while let Ok(task) = queue.get_guarded() {
                        drop(task);
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            for i in 0..20_000_u32 {
                queue.put(i).unwrap();
            }
            queue.shutdown(true);
            queue.join();
        });
        assert_eq!(queue.unfinished_tasks(), 0);
        assert!(received.load(Ordering::SeqCst) <= 20_000);
        assert_eq!(queue.qsize(), 0);
    });
}

#[test]
fn queue_and_guard_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JoinableQueue<String>>();
    assert_send_sync::<JoinableQueue<Vec<u8>>>();
    assert_send_sync::<Task<'static, String>>();
    // Only `Send` is needed from the items.
    assert_send_sync::<JoinableQueue<std::cell::Cell<u8>>>();
}

#[test]
fn errors_are_std_errors_that_cross_threads() {
    fn assert_error<E: Error + Send + Sync + 'static>() {}
    assert_error::<PutError<String>>();
    assert_error::<GetError>();
    assert_error::<TaskDoneError>();
    assert_error::<JoinTimeoutError>();
}

#[test]
fn error_messages_are_lowercase_without_period() {
    struct NotDebug;
    let messages = [
        PutError::Full(NotDebug).to_string(),
        PutError::ShutDown(NotDebug).to_string(),
        GetError::Empty.to_string(),
        GetError::ShutDown.to_string(),
        TaskDoneError.to_string(),
        JoinTimeoutError.to_string(),
    ];
    for message in messages {
        assert!(!message.is_empty());
        assert_eq!(message, message.to_lowercase(), "{message}");
        assert!(!message.ends_with('.'), "{message}");
    }
    assert_eq!(
        TaskDoneError.to_string(),
        "task_done called more times than items were put"
    );
}

#[test]
fn debug_output_does_not_need_item_debug() {
    struct NotDebug;
    assert_eq!(format!("{:?}", PutError::Full(NotDebug)), "Full(..)");
    assert_eq!(
        format!("{:?}", PutError::ShutDown(NotDebug)),
        "ShutDown(..)"
    );
    let queue = JoinableQueue::new(3);
    queue.put(NotDebug).unwrap();
    let debug = format!("{queue:?}");
    assert!(debug.contains("maxsize: 3"), "{debug}");
    assert!(debug.contains("qsize: 1"), "{debug}");
}

#[test]
fn default_queue_is_unbounded() {
    let queue = JoinableQueue::<u8>::default();
    assert_eq!(queue.maxsize(), 0);
    assert!(!queue.full());
}
