//! The seed's threading objects, with Python's semantics.

mod barrier;
mod event;
mod semaphore;
mod timer;
