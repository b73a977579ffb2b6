//! A `RemoteHandle`'s awaitable calls never block the thread that polls
//! them: on a one-thread executor, another task runs while they wait.

use super::*;

#[derive(Debug, Serialize, Deserialize)]
enum Door {
    /// Answers 1 once the test's other task has opened the door, 0 if it
    /// never did within 30 s.
    WaitForOpen(RemoteReply<u64>),
    Count(u64),
    Total(RemoteReply<u64>),
}

struct Doorman {
    open: Mutex<mpsc::Receiver<()>>,
    total: u64,
}

impl Manager for Doorman {
    type Msg = Door;
    fn handle(&mut self, msg: Door, _ctx: &mut Context<'_, Door>) {
        match msg {
            Door::WaitForOpen(reply) => {
                let opened = self
                    .open
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30))
                    .is_ok();
                reply.send(u64::from(opened));
            }
            Door::Count(n) => self.total += n,
            Door::Total(reply) => reply.send(self.total),
        }
    }
}

#[test]
fn awaited_remote_calls_leave_a_one_thread_executor_free() {
    within(|| {
        let queues = Queues::new("awaitable");
        let rt = Runtime::new();
        let owner = connect(builder());
        let (open, opened) = mpsc::channel();
        let served = owner
            .serve(
                &rt,
                &queues.name,
                Doorman {
                    open: Mutex::new(opened),
                    total: 0,
                },
            )
            .unwrap();
        let sender = connect(builder());
        let door = sender.remote_handle::<Door>(&queues.name).unwrap();
        let executor = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        executor.block_on(async {
            for n in 1..=10 {
                door.tell_async(Door::Count(n)).await.unwrap();
            }
            door.tell_all_async((11..=20).map(Door::Count))
                .await
                .unwrap();
            door.join_async().await.unwrap();
            assert_eq!(door.ask_async(Door::Total).await.unwrap(), 210);
            // The manager answers only after the other task has run: if the
            // ask held the executor's one thread, that task could not.
            let asked = door.ask_async(Door::WaitForOpen);
            let opener = async {
                tokio::task::yield_now().await;
                open.send(()).unwrap();
            };
            let (answer, ()) = tokio::join!(asked, opener);
            assert_eq!(
                answer.unwrap(),
                1,
                "the other task ran while the ask waited"
            );
        });
        // And on another executor.
        let total = futures_lite::future::block_on(
            door.ask_timeout_async(Door::Total, Duration::from_secs(10)),
        );
        assert_eq!(total.unwrap(), 210);
        served.stop();
        drop(door);
        drop(queues);
    });
}
