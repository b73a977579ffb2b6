//! flume behind the mailbox seam.

use std::time::Instant;

use flume::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError};

use super::{Capacity, RecvFailure, SendFailure};

pub(super) fn channel<T>(capacity: Capacity) -> (Sender<T>, Receiver<T>) {
    match capacity {
        Capacity::Unbounded => flume::unbounded(),
        Capacity::Bounded(n) => flume::bounded(n),
    }
}

#[inline]
pub(super) fn send<T>(
    tx: &Sender<T>,
    msg: T,
    deadline: Option<Instant>,
) -> Result<(), SendFailure<T>> {
    match deadline {
        None => tx.send(msg).map_err(|e| SendFailure::Disconnected(e.0)),
        Some(at) => tx.send_deadline(msg, at).map_err(|e| match e {
            SendTimeoutError::Timeout(m) => SendFailure::Timeout(m),
            SendTimeoutError::Disconnected(m) => SendFailure::Disconnected(m),
        }),
    }
}

#[inline]
pub(super) fn try_send<T>(tx: &Sender<T>, msg: T) -> Result<(), SendFailure<T>> {
    tx.try_send(msg).map_err(|e| match e {
        TrySendError::Full(m) => SendFailure::Full(m),
        TrySendError::Disconnected(m) => SendFailure::Disconnected(m),
    })
}

#[inline]
pub(super) fn recv<T>(rx: &Receiver<T>, deadline: Option<Instant>) -> Result<T, RecvFailure> {
    match deadline {
        None => rx.recv().map_err(|_| RecvFailure::Disconnected),
        Some(at) => rx.recv_deadline(at).map_err(|e| match e {
            RecvTimeoutError::Timeout => RecvFailure::Timeout,
            RecvTimeoutError::Disconnected => RecvFailure::Disconnected,
        }),
    }
}

#[inline]
pub(super) fn try_recv<T>(rx: &Receiver<T>) -> Result<T, RecvFailure> {
    rx.try_recv().map_err(|e| match e {
        TryRecvError::Empty => RecvFailure::Empty,
        TryRecvError::Disconnected => RecvFailure::Disconnected,
    })
}
