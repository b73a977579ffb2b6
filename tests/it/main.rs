//! The runtime's promises (design section 3), one module each, every test run
//! against both mailbox backends.

/// Expands each listed `fn name(backend: Backend)` into one `#[test]` per backend.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod crossbeam {
            $(
                #[test]
                fn $name() {
                    super::$name(custody::Backend::Crossbeam)
                }
            )*
        }
        mod flume {
            $(
                #[test]
                fn $name() {
                    super::$name(custody::Backend::Flume)
                }
            )*
        }
    };
}

mod support;

mod ask;
mod auto_traits;
mod awaitable;
mod bad_input;
mod deadlock;
mod deadlock_waits;
mod fuzz;
mod graceful;
mod join;
mod misbehaving;
mod nothing_lost;
mod observe;
mod one_thread;
mod panics;
mod queue;
mod resources;
mod schedule;
mod shutdown;
mod stats;
mod stress;
mod supervision;
mod sync;
mod top;
