//! zdtm test protocol library.
//!
//! Every zdtm test program follows the same life cycle:
//!
//! 1. [`init`] parses `--pidfile=PATH --outfile=PATH` (plus free-form
//!    `--key=value` options), installs the SIGTERM handler and daemonises:
//!    the original process forks, the child becomes a session leader and
//!    continues, the parent waits for the child to report readiness.
//! 2. The child sets up the state under test and calls [`ready`]; the
//!    parent then writes the child's pid to the pidfile and exits.
//! 3. The child blocks quiescently in [`wait_for_sigterm`] while the runner
//!    checkpoints and restores it, then sends SIGTERM.
//! 4. The child verifies its state and reports with [`pass`], [`fail`] or
//!    [`finish`], which write `PASS` / `FAIL: reason` to the outfile.
//!
//! [`run`] wraps the whole cycle for tests that have a setup step and a
//! check step.
//!
//! Tests that change their memory between the dumps of an iterative
//! (pre-dump) flavor follow the step protocol of the [`steps`] module
//! ([`init_steps`], [`wait_event`], [`poll_event`], [`step_done`],
//! [`run_steps`]).  The remaining modules hold helpers shared by many tests:
//! deterministic memory patterns ([`pattern`]), `/proc/self/maps`
//! parsing ([`maps`]), raw memory mappings ([`mem`]), other procfs
//! readers ([`procfs`]) and a per-test temporary directory ([`TempDir`]).

/// Logs one line to stderr, prefixed with the test name and pid.
///
/// The line is written with a single `write(2)` so that lines of
/// concurrently running tests do not interleave in the shared log.
#[macro_export]
macro_rules! test_msg {
    ($($arg:tt)*) => {
        $crate::log(format_args!($($arg)*))
    };
}

/// Returns `Err(format!(...))` from the enclosing function (whose error
/// type must be `String`) when the condition is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Returns `Err` from the enclosing function when the two values differ,
/// naming the description and both values.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(format!(
                        "{}: got {:?}, expected {:?}",
                        format_args!($($arg)+),
                        l,
                        r
                    ));
                }
            }
        }
    };
}

pub mod args;
pub mod maps;
pub mod mem;
pub mod pattern;
pub mod procfs;
mod proto;
pub mod rng;
pub mod steps;
mod tempdir;

pub use args::Args;
pub use proto::{
    fail, finish, hold_outfile, init, log, pass, ready, ready_fd, run, sigterm_flag,
    sigterm_received, test_name, wait_for_sigterm,
};
pub use steps::{
    init_steps, next_event, poll_event, run_steps, step_done, step_path, step_signal, wait_event,
    write_step_file, Event, STEP_FILE_SUFFIX,
};
pub use tempdir::TempDir;

/// The result type of test setup and check steps: the error is the reason
/// reported as `FAIL: reason`.
pub type TestResult<T = ()> = Result<T, String>;

/// Formats `ctx: <strerror(errno)>` for the last OS error.
pub fn os_err(ctx: &str) -> String {
    format!("{ctx}: {}", std::io::Error::last_os_error())
}

/// The current `errno` value.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
