//! The `Counter` manager, on every backend.

use std::thread;

use super::{each_backend, runtime};
use custody::resources::{Counter, CounterHandle, CounterMsg};
use custody::{AskError, Backend};

const THREADS: i64 = 8;
const ADDS: i64 = 5_000;

#[test]
fn many_threads_adding_get_the_exact_sum() {
    each_backend("many_threads_adding_get_the_exact_sum", |backend| {
        let rt = runtime(backend);
        let counter = Counter::new().spawn(&rt, "counter").unwrap();
        let adders: Vec<_> = (0..THREADS)
            .map(|t| {
                let counter = counter.clone();
                thread::spawn(move || {
                    for i in 0..ADDS {
                        // Some negative operands, so subtraction is exercised too.
                        let n = if i % 10 == 0 { -t } else { t + i };
                        counter.add(n).unwrap();
                    }
                })
            })
            .collect();
        for adder in adders {
            adder.join().unwrap();
        }
        let expected: i64 = (0..THREADS)
            .flat_map(|t| (0..ADDS).map(move |i| if i % 10 == 0 { -t } else { t + i }))
            .sum();
        assert_eq!(counter.get().unwrap(), expected);
        assert_eq!(counter.handle().stats().panicked, 0);
    });
}

#[test]
fn reset_goes_back_to_zero_and_later_adds_count() {
    each_backend("reset_goes_back_to_zero_and_later_adds_count", |backend| {
        let rt = runtime(backend);
        let counter = Counter::starting_at(100).spawn(&rt, "counter").unwrap();
        assert_eq!(counter.get().unwrap(), 100);
        counter.add(5).unwrap();
        counter.reset().unwrap();
        assert_eq!(counter.get().unwrap(), 0);
        counter.add(-3).unwrap();
        counter.add(10).unwrap();
        assert_eq!(counter.get().unwrap(), 7);
    });
}

#[test]
fn resets_from_other_threads_are_ordered_per_sender() {
    each_backend(
        "resets_from_other_threads_are_ordered_per_sender",
        |backend| {
            let rt = runtime(backend);
            let counter = Counter::new().spawn(&rt, "counter").unwrap();
            let other = counter.clone();
            thread::spawn(move || {
                for _ in 0..1_000 {
                    other.add(1).unwrap();
                }
                other.reset().unwrap();
                other.add(2).unwrap();
            })
            .join()
            .unwrap();
            // Every message of the other thread was queued before this ask.
            assert_eq!(counter.get().unwrap(), 2);
        },
    );
}

#[test]
fn adds_wrap_instead_of_panicking() {
    each_backend("adds_wrap_instead_of_panicking", |backend| {
        let rt = runtime(backend);
        let counter = Counter::starting_at(i64::MAX)
            .spawn(&rt, "counter")
            .unwrap();
        counter.add(1).unwrap();
        assert_eq!(counter.get().unwrap(), i64::MIN);
        assert_eq!(counter.handle().stats().panicked, 0);
    });
}

#[test]
fn a_counter_spawned_with_options_works_through_from() {
    each_backend(
        "a_counter_spawned_with_options_works_through_from",
        |backend| {
            let rt = runtime(backend);
            let other = match backend {
                Backend::Crossbeam => Backend::Flume,
                Backend::Flume => Backend::Crossbeam,
            };
            let handle = rt
                .manager("counter")
                .backend(other)
                .spawn(Counter::new())
                .unwrap();
            let counter = CounterHandle::from(handle);
            assert_eq!(counter.handle().backend(), other);
            counter.handle().tell(CounterMsg::Add(4)).unwrap();
            counter.add(4).unwrap();
            assert_eq!(counter.get().unwrap(), 8);
        },
    );
}

#[test]
fn a_stopped_counter_refuses_messages() {
    each_backend("a_stopped_counter_refuses_messages", |backend| {
        let rt = runtime(backend);
        let counter = Counter::new().spawn(&rt, "counter").unwrap();
        counter.add(1).unwrap();
        rt.shutdown();
        assert!(counter.handle().has_exited());
        assert!(matches!(
            counter.add(1).unwrap_err().into_inner(),
            CounterMsg::Add(1)
        ));
        assert!(matches!(counter.get(), Err(AskError::Stopped { .. })));
    });
}

#[test]
fn handles_and_messages_are_send_and_sync() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<CounterHandle>();
    send_sync::<Counter>();
    send::<CounterMsg>();
}
