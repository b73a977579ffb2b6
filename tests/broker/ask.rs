//! Remote asks: answers after the batch is committed, timeouts, panics.

use super::*;

#[derive(Default)]
pub(crate) struct Sum {
    total: u64,
    held: Vec<RemoteReply<u64>>,
    committed: Arc<Mutex<u64>>,
}

impl Manager for Sum {
    type Msg = Calc;
    fn handle(&mut self, msg: Calc, _ctx: &mut Context<'_, Calc>) {
        match msg {
            Calc::Add(n) => self.total += n,
            Calc::Total(reply) => reply.send(self.total),
            Calc::Hold(reply) => self.held.push(reply),
            Calc::Forget(reply) => drop(reply),
            Calc::Boom(_reply) => panic!("boom"),
        }
    }
    fn idle(&mut self, _ctx: &mut Context<'_, Calc>) {
        *self.committed.lock().unwrap() = self.total;
    }
}

#[test]
fn remote_asks_round_trip_and_answer_after_the_batch_is_committed() {
    within(|| {
        let queues = Queues::new("ask");
        let rt = Runtime::new();
        let owner = connect(builder());
        let committed = Arc::new(Mutex::new(0));
        let sum = Sum {
            committed: Arc::clone(&committed),
            ..Sum::default()
        };
        let served = owner.serve(&rt, &queues.name, sum).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        calc.tell_all((1..=10).map(Calc::Add)).unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 55);
        // Answered means committed: `idle` ran before the answer left.
        assert_eq!(*committed.lock().unwrap(), 55);
        calc.tell(Calc::Add(45)).unwrap();
        let started = Instant::now();
        const N: u32 = 50;
        for _ in 0..N {
            let total = calc
                .ask_timeout(Calc::Total, Duration::from_secs(10))
                .unwrap();
            assert_eq!(total, 100);
        }
        eprintln!("remote ask: {:?} a round trip", started.elapsed() / N);
        // A reply dropped unanswered ends the ask at once.
        assert!(matches!(
            calc.ask(Calc::Forget),
            Err(RemoteAskError::NoReply { .. })
        ));
        calc.join().unwrap();
        served.stop();
        drop(calc);
        drop(queues);
    });
}

#[test]
fn an_unanswered_remote_ask_times_out_with_a_typed_error() {
    within(|| {
        let queues = Queues::new("ask-timeout");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner.serve(&rt, &queues.name, Sum::default()).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        let started = Instant::now();
        let err = calc
            .ask_timeout(Calc::Hold, Duration::from_millis(300))
            .unwrap_err();
        let waited = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // The handle still works after a timeout.
        assert_eq!(calc.ask(Calc::Total).unwrap(), 0);
        served.stop();
        drop(calc);
        drop(queues);
    });
}

#[test]
fn a_remote_ask_whose_handler_panics_ends_in_an_error() {
    within(|| {
        let queues = Queues::new("ask-panic");
        let rt = Runtime::new();
        let owner = connect(builder());
        let served = owner.serve(&rt, &queues.name, Sum::default()).unwrap();
        let sender = connect(builder());
        let calc = sender.remote_handle::<Calc>(&queues.name).unwrap();
        let err = calc
            .ask_timeout(Calc::Boom, Duration::from_secs(30))
            .unwrap_err();
        match &err {
            RemoteAskError::DeadLettered { reason, .. } => {
                assert!(reason.contains("boom"), "{reason}")
            }
            other => panic!("expected DeadLettered, got {other:?}"),
        }
        // The owner goes on serving.
        calc.tell(Calc::Add(3)).unwrap();
        assert_eq!(calc.ask(Calc::Total).unwrap(), 3);
        assert!(matches!(
            calc.join(),
            Err(RemoteJoinError::DeadLettered { .. })
        ));
        served.stop();
        assert_eq!(owner.take_dead_letters(&queues.name, 10).unwrap().len(), 1);
        drop(calc);
        drop(queues);
    });
}
