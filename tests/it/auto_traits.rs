//! Handles are `Send + Sync`; errors are `Error + Send + Sync + 'static`.

use std::error::Error;

use custody::{
    AskError, BuildError, CapacityError, Handle, JoinError, Owner, Reply, Runtime, SendError,
    SendTimeoutError, SpawnError, TrySendError,
};

fn send_sync<T: Send + Sync>() {}
fn error<T: Error + Send + Sync + 'static>() {}

/// A message type that is `Send` but neither `Sync` nor `Debug`.
struct NotSyncNotDebug(std::cell::Cell<u8>);

/// A message type without `Debug`.
#[allow(dead_code)]
struct NotDebug(u8);

#[test]
fn handles_and_runtime_are_send_and_sync() {
    send_sync::<Handle<NotSyncNotDebug>>();
    send_sync::<Owner<std::cell::Cell<u8>>>();
    send_sync::<Runtime>();
    fn send<T: Send>() {}
    send::<Reply<NotSyncNotDebug>>();
}

/// The awaitable calls' futures can be spawned on a multi-thread executor
/// (`Send`) and polled without pinning (`Unpin`), whatever the message type.
#[test]
fn futures_are_send_and_unpin_for_any_message() {
    fn send_unpin<T: Send + Unpin>(_: &T) {}
    #[allow(dead_code)]
    struct NotUnpin(std::marker::PhantomPinned, std::cell::Cell<u8>);
    struct Sink;
    impl custody::Manager for Sink {
        type Msg = NotUnpin;
        fn handle(&mut self, _msg: NotUnpin, _ctx: &mut custody::Context<'_, NotUnpin>) {}
    }
    let rt = Runtime::new();
    let handle = rt.spawn("not-unpin", Sink).unwrap();
    send_unpin(&handle.tell_async(NotUnpin(
        std::marker::PhantomPinned,
        std::cell::Cell::new(0),
    )));
    send_unpin(&handle.join_async());
    let owner = rt.own("owner", std::cell::Cell::new(0u8)).unwrap();
    send_unpin(&owner.call_async(|c| c.get()));
    send_unpin(&rt.shutdown_async());
}

#[test]
fn errors_are_errors_even_for_messages_without_debug() {
    error::<SendError<NotDebug>>();
    error::<TrySendError<NotDebug>>();
    error::<SendTimeoutError<NotDebug>>();
    error::<AskError>();
    error::<JoinError>();
    error::<SpawnError>();
    error::<BuildError>();
    error::<CapacityError>();
    let e = SendError::Stopped(NotSyncNotDebug(std::cell::Cell::new(1)));
    assert_eq!(format!("{e:?}"), "Stopped(..)");
    assert_eq!(e.to_string(), "sending on a stopped manager");
    assert_eq!(e.into_inner().0.get(), 1);
    assert_eq!(
        format!(
            "{:?}",
            TrySendError::Full(NotSyncNotDebug(Default::default()))
        ),
        "Full(..)"
    );
}

#[test]
fn handles_print_their_name_not_their_internals() {
    let rt = Runtime::new();
    let owner = rt.own("db", ()).unwrap();
    assert_eq!(
        format!("{:?}", owner.handle()),
        "Handle { name: \"db\", .. }"
    );
    assert_eq!(format!("{owner:?}"), "Owner { name: \"db\", .. }");
}
