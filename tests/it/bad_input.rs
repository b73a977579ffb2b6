//! Promise 7: bad input gets a typed error, never a panic.

use custody::{Backend, BuildError, Capacity, CapacityError, Runtime, SpawnError};

use crate::support::{Probe, runtime, within};

backend_tests!(
    a_duplicate_name_is_refused_while_the_first_runs,
    a_name_is_free_again_once_its_manager_has_exited,
    an_empty_or_nul_name_is_refused,
    a_hand_built_zero_capacity_is_refused_at_spawn,
);

#[test]
fn zero_and_oversized_capacities_are_refused() {
    assert_eq!(Capacity::bounded(0), Err(CapacityError::Zero));
    assert_eq!(
        Capacity::bounded(Capacity::MAX + 1),
        Err(CapacityError::TooLarge {
            requested: Capacity::MAX + 1,
            max: Capacity::MAX
        })
    );
    assert_eq!(Capacity::bounded(1), Ok(Capacity::Bounded(1)));
    assert_eq!(
        Capacity::bounded(Capacity::MAX),
        Ok(Capacity::Bounded(Capacity::MAX))
    );
    assert_eq!(
        CapacityError::Zero.to_string(),
        "a mailbox capacity of zero is not allowed: use Capacity::Unbounded or at least 1"
    );
}

#[test]
fn a_bad_builder_is_refused() {
    assert!(matches!(
        Runtime::builder().capacity(Capacity::Bounded(0)).build(),
        Err(BuildError::Capacity(CapacityError::Zero))
    ));
    assert!(matches!(
        Runtime::builder().thread_name_prefix("a\0b").build(),
        Err(BuildError::ThreadName(_))
    ));
    assert!(matches!(
        Runtime::builder().stack_size(100).build(),
        Err(BuildError::StackSize(100))
    ));
    // Too small to unwind a handler's panic with a backtrace.
    assert!(matches!(
        Runtime::builder().stack_size(32 * 1024).build(),
        Err(BuildError::StackSize(32768))
    ));
}

/// On the smallest stack allowed, a handler's panic is caught like any
/// other (the panic hook's backtrace, when asked for, fits too).
#[test]
fn a_manager_on_the_smallest_stack_survives_a_handler_panic() {
    struct Panicky(std::sync::Arc<std::sync::atomic::AtomicU32>);
    impl custody::Manager for Panicky {
        type Msg = u32;
        fn handle(&mut self, n: u32, _ctx: &mut custody::Context<'_, u32>) {
            assert_ne!(n, 1, "a handler panic on the smallest stack");
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let rt = Runtime::builder().stack_size(64 * 1024).build().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let h = rt.spawn("small-stack", Panicky(done.clone())).unwrap();
    h.tell(1).unwrap();
    h.tell(2).unwrap();
    h.join().unwrap();
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(h.stats().panicked, 1);
    assert!(!h.has_exited());
}

fn a_duplicate_name_is_refused_while_the_first_runs(backend: Backend) {
    within("duplicate", move || {
        let rt = runtime(backend);
        let (a, _) = Probe::new();
        let (b, _) = Probe::new();
        rt.spawn("twin", a).unwrap();
        let err = rt.spawn("twin", b).unwrap_err();
        assert!(matches!(err, SpawnError::DuplicateName(ref n) if n == "twin"));
        assert_eq!(err.to_string(), "a manager named `twin` is already running");
        assert!(matches!(
            rt.own("twin", 1),
            Err(SpawnError::DuplicateName(_))
        ));
    });
}

fn a_name_is_free_again_once_its_manager_has_exited(backend: Backend) {
    within("name reuse", move || {
        let rt = runtime(backend);
        let (a, _) = Probe::new();
        let first = rt.spawn("phoenix", a).unwrap();
        first.stop();
        while !first.has_exited() {
            std::thread::yield_now();
        }
        let (b, _) = Probe::new();
        let second = rt.spawn("phoenix", b).unwrap();
        second.tell(crate::support::Msg::Add(1)).unwrap();
        assert_eq!(second.ask(crate::support::Msg::Get).unwrap(), 1);
        assert_eq!(rt.stats().managers.len(), 1);
    });
}

fn an_empty_or_nul_name_is_refused(backend: Backend) {
    within("names", move || {
        let rt = runtime(backend);
        assert!(matches!(rt.own("", ()), Err(SpawnError::InvalidName(_))));
        assert!(matches!(
            rt.own("a\0b", ()),
            Err(SpawnError::InvalidName(_))
        ));
    });
}

fn a_hand_built_zero_capacity_is_refused_at_spawn(backend: Backend) {
    within("zero capacity spawn", move || {
        let rt = runtime(backend);
        let err = rt
            .manager("zero")
            .capacity(Capacity::Bounded(0))
            .own(())
            .unwrap_err();
        assert!(matches!(err, SpawnError::Capacity(CapacityError::Zero)));
        let err = rt
            .manager("huge")
            .capacity(Capacity::Bounded(usize::MAX))
            .own(())
            .unwrap_err();
        assert!(matches!(
            err,
            SpawnError::Capacity(CapacityError::TooLarge { .. })
        ));
    });
}
