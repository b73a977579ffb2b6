//! Tells, joins, dead letters and hand-overs between owners.

use super::*;

#[test]
fn tells_from_a_remote_handle_are_handled_in_order_and_joined() {
    within(|| {
        let queues = Queues::new("order");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 200;
        let started = Instant::now();
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let told = started.elapsed();
        jobs.join().unwrap();
        let joined = started.elapsed();
        eprintln!(
            "{N} tells: {:?} a tell (confirmed), {:?} until joined",
            told / N as u32,
            joined
        );
        assert_eq!(jobs.outstanding(), 0);
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert!(log.lock().unwrap().idles >= 1);
        // The done records reach the sender just before the owner's ack goes
        // out, so the acked count may trail `join` by a moment.
        let queue_stats = || {
            served
                .handle()
                .stats()
                .outside
                .expect("served from a queue")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue_stats().acked < N && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queue = queue_stats();
        assert_eq!((queue.delivered, queue.redelivered), (N, 0));
        assert_eq!(queue.acked, N, "every delivery acknowledged");
        assert_eq!(queue.dead_lettered, 0);
        let table = rt.stats().to_string();
        assert!(
            table.contains(&format!("{} (queue): delivered {N}", queues.name)),
            "{table}"
        );
        // Nothing is left unacknowledged: a graceful stop returns nothing.
        served.stop();
        assert!(
            owner
                .take_dead_letters(&queues.name, 10)
                .unwrap()
                .is_empty()
        );
        drop(jobs);
        drop(queues);
    });
}

#[test]
fn an_unreachable_broker_is_a_typed_error_within_seconds() {
    within(|| {
        let closed_port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        for port in [1, closed_port] {
            let started = Instant::now();
            let err = Broker::connect(&format!("amqp://guest:s3cr3t-pw@127.0.0.1:{port}/%2f"))
                .unwrap_err();
            let took = started.elapsed();
            assert!(took < Duration::from_secs(10), "took {took:?}");
            assert!(
                matches!(&err, BrokerError::Unreachable { host, .. } if *host == format!("127.0.0.1:{port}")),
                "{err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(!format!("{err:?}").contains("s3cr3t"));
        }
        // A peer that accepts and never speaks AMQP: the connect timeout ends it.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let started = Instant::now();
        let err = Broker::builder(format!("amqp://guest:s3cr3t-pw@127.0.0.1:{port}/%2f"))
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(err, BrokerError::Unreachable { .. }), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t"));
        drop(silent);
    });
}

#[test]
fn a_message_of_the_wrong_type_is_dead_lettered_while_good_ones_flow() {
    within(|| {
        let queues = Queues::new("wrongtype");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        let strangers = sender.remote_handle::<(String, f64)>(&queues.name).unwrap();
        for n in 0..5 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        strangers.tell(("not a job".to_owned(), 1.5)).unwrap();
        for n in 5..10 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        jobs.join().unwrap();
        match strangers.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 1);
                assert!(dead[0].reason.contains("Job"), "{:?}", dead[0]);
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        assert_eq!(handled(&log), (0..10).collect::<Vec<_>>());
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 10).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0].error.as_deref().expect("an x-custody-error header");
        assert!(error.contains("Job"), "{error}");
        assert!(
            dead[0]
                .id
                .as_deref()
                .unwrap()
                .starts_with(strangers.producer_id())
        );
        drop(queues);
    });
}

#[test]
fn a_poison_message_is_dead_lettered_after_the_delivery_limit() {
    within(|| {
        const LIMIT: u32 = 2;
        let queues = Queues::new("poison");
        let rt = Runtime::new();
        let owner = connect(builder().delivery_limit(LIMIT));
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder().delivery_limit(LIMIT));
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell(Job::Work(0)).unwrap();
        jobs.tell(Job::Work(1)).unwrap();
        jobs.tell(Job::Poison).unwrap();
        for n in 2..6 {
            jobs.tell(Job::Work(n)).unwrap();
        }
        match jobs.join() {
            Err(RemoteJoinError::DeadLettered { dead, .. }) => {
                assert_eq!(dead.len(), 1);
                assert!(dead[0].reason.contains("poison job"), "{:?}", dead[0]);
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        // A second join has nothing more to report.
        jobs.join().unwrap();
        {
            let log = log.lock().unwrap();
            assert_eq!(log.handled, (0..6).collect::<Vec<_>>());
            // The first delivery and LIMIT redeliveries.
            assert_eq!(log.poison_attempts, LIMIT + 1);
        }
        let queue = served
            .handle()
            .stats()
            .outside
            .expect("served from a queue");
        assert_eq!(queue.dead_lettered, 1);
        assert_eq!(queue.redelivered, u64::from(LIMIT));
        assert_eq!(queue.delivered, 6 + u64::from(LIMIT) + 1);
        served.stop();
        let dead = owner.take_dead_letters(&queues.name, 10).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        let error = dead[0].error.as_deref().expect("an x-custody-error header");
        assert!(error.contains("poison job"), "{error}");
        drop(queues);
    });
}

#[test]
fn a_graceful_stop_hands_over_to_the_next_owner_with_nothing_lost_and_order_kept() {
    within(|| {
        let queues = Queues::new("handover");
        let log = Arc::new(Mutex::new(Log::default()));
        let first_count = Arc::new(AtomicU64::new(0));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 300;
        // Queued before any owner runs: the queue is durable.
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let rt = Runtime::new();
        let first = connect(builder().prefetch(16));
        let served = first
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&first_count)),
            )
            .unwrap();
        while first_count.load(Ordering::SeqCst) < 40 {
            std::thread::sleep(Duration::from_millis(1));
        }
        served.stop();
        let by_first = first_count.load(Ordering::SeqCst);
        assert!(by_first < N, "the first owner handled everything");
        // The same name again, on the same runtime: free once the first exited.
        let second = connect(builder().prefetch(16));
        let second_count = Arc::new(AtomicU64::new(0));
        let served = second
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&second_count)),
            )
            .unwrap();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert_eq!(by_first + second_count.load(Ordering::SeqCst), N);
        served.stop();
        drop(queues);
    });
}

#[test]
fn a_hot_standby_takes_over_when_the_active_owner_stops() {
    within(|| {
        let queues = Queues::new("standby");
        let log = Arc::new(Mutex::new(Log::default()));
        let (active_count, standby_count) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 100;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let rt_a = Runtime::new();
        let rt_b = Runtime::new();
        let a = connect(builder().prefetch(8));
        let b = connect(builder().prefetch(8));
        let served_a = a
            .serve(
                &rt_a,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&active_count)),
            )
            .unwrap();
        let served_b = b
            .serve(
                &rt_b,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&standby_count)),
            )
            .unwrap();
        while active_count.load(Ordering::SeqCst) < 20 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            standby_count.load(Ordering::SeqCst),
            0,
            "two owners at once"
        );
        served_a.stop();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        assert!(standby_count.load(Ordering::SeqCst) > 0);
        served_b.stop();
        drop(queues);
    });
}

#[test]
fn a_runtime_shutdown_ends_the_serving_and_leaves_the_rest_queued_in_order() {
    within(|| {
        let queues = Queues::new("rtshutdown");
        let log = Arc::new(Mutex::new(Log::default()));
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 200;
        for n in 0..N {
            jobs.tell(Job::Work(n)).unwrap();
        }
        let first_count = Arc::new(AtomicU64::new(0));
        let rt = Runtime::new();
        let first = connect(builder().prefetch(16));
        let served = first
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::clone(&first_count)),
            )
            .unwrap();
        while first_count.load(Ordering::SeqCst) < 30 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let report = rt.shutdown();
        assert_eq!(report.total_unhandled(), 0);
        // The next delivery is refused, and the serving ends on its own.
        while served.is_serving() {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(served);
        assert!(first_count.load(Ordering::SeqCst) < N);
        let rt = Runtime::new();
        let second = connect(builder());
        let served = second
            .serve(
                &rt,
                &queues.name,
                Slow(Arc::clone(&log), Arc::new(AtomicU64::new(0))),
            )
            .unwrap();
        jobs.join().unwrap();
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        served.stop();
        drop(queues);
    });
}

#[test]
fn a_tell_to_a_deleted_queue_gives_the_message_back() {
    within(|| {
        let queues = Queues::new("deleted");
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        jobs.tell(Job::Work(1)).unwrap();
        queues.broker.delete_queues(&queues.name).unwrap();
        let err = jobs.tell(Job::Work(2)).unwrap_err();
        assert!(matches!(err, RemoteSendError::Unroutable { .. }), "{err:?}");
        assert!(err.to_string().contains(&queues.name), "{err}");
        assert_eq!(err.into_inner(), Job::Work(2));
        // The first message went with the queue: join does not wait for it
        // forever when asked for a deadline.
        match jobs.join_timeout(Duration::from_millis(100)) {
            Err(RemoteJoinError::Timeout { outstanding: 1, .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(queues);
    });
}

#[test]
fn broker_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Broker>();
    send_sync::<custody::broker::RemoteHandle<Job>>();
    send_sync::<custody::broker::Served<Job>>();
    send_sync::<BrokerError>();
    send_sync::<RemoteSendError<Job>>();
    send_sync::<RemoteJoinError>();
    fn std_error<E: std::error::Error + Send + Sync + 'static>() {}
    std_error::<BrokerError>();
    std_error::<RemoteSendError<Job>>();
    std_error::<RemoteJoinError>();
}

#[test]
fn tell_all_keeps_many_publishes_in_flight_and_the_order() {
    within(|| {
        let queues = Queues::new("tellall");
        let rt = Runtime::new();
        let owner = connect(builder());
        let log = Arc::new(Mutex::new(Log::default()));
        let served = owner
            .serve(&rt, &queues.name, Recorder(Arc::clone(&log)))
            .unwrap();
        let sender = connect(builder());
        let jobs = sender.remote_handle::<Job>(&queues.name).unwrap();
        const N: u64 = 3000;
        let started = Instant::now();
        jobs.tell_all((0..N).map(Job::Work)).unwrap();
        let told = started.elapsed();
        jobs.join().unwrap();
        eprintln!(
            "tell_all of {N}: {:?} a message confirmed, {:?} until joined",
            told / N as u32,
            started.elapsed()
        );
        assert_eq!(handled(&log), (0..N).collect::<Vec<_>>());
        // A deleted queue: every message comes back, in order.
        served.stop();
        queues.broker.delete_queues(&queues.name).unwrap();
        let err = jobs.tell_all((0..3).map(Job::Work)).unwrap_err();
        assert_eq!(err.confirmed, 0);
        assert_eq!(err.into_inner(), (0..3).map(Job::Work).collect::<Vec<_>>());
        assert_eq!(jobs.outstanding(), 0);
        drop(queues);
    });
}
