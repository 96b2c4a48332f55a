//! zdtm-runner: the conformance harness that drives `crust`.
//!
//! The `zdtm` binary (see `main.rs`) is a thin shell over this library so
//! that the integration tests in `tests/` can exercise the pieces (visible
//! state capture in particular) directly.
//!
//! Module map:
//! - [`cli`]: the command line (clap derive).
//! - [`session`]: the `list` and `run` commands: selection, parallel jobs,
//!   summary and exit status.
//! - [`manifest`]: `zdtm-tests/meta/NAME.toml`, the tests and their metadata.
//! - [`select`]: which tests run: globs, `-x`, `--shard`.
//! - [`host`]: kernel features and capabilities, for `needs_kernel`/`needs_caps`.
//! - [`flavors`]: `flavors/*.toml`, the ways a test is checkpointed.
//! - [`locate`]: where the manifest, flavors, test binaries and crust live.
//! - [`run`]: one (test, flavor) run, step by step.
//! - [`driver`]: invoking `crust pre-dump` / `crust dump` / `crust restore`.
//! - [`procs`]: child processes: waiting with timeouts, killing, the
//!   subreaper, the interrupt handler and the final sweep.
//! - [`freeze`]: stopping a task with ptrace while its state is read.
//! - [`state`]: the visible state of a task and its comparison.
//! - [`tree`]: the test's process tree (every descendant's place and state).
//! - [`report`]: result lines and the summary counts.
//! - [`events`]: the events the runs emit and the reporters consume; the
//!   replay command of a run.
//! - [`reporters`]: the terminal (result lines, progress line, summary
//!   table), `--junit` and `--json`.
//! - [`error`]: setup errors (exit status 2).
//!
//! The crate also builds `zdtm-dummy` (`src/bin/zdtm_dummy.rs`), the
//! smallest program following the test protocol, used by the tests in
//! `tests/` and as a smoke test: `zdtm run --bin target/release/zdtm-dummy`.

pub mod cli;
pub mod driver;
pub mod error;
pub mod events;
pub mod flavors;
pub mod freeze;
pub mod host;
pub mod locate;
pub mod manifest;
pub mod netns;
pub mod procs;
pub mod report;
pub mod reporters;
pub mod run;
pub mod select;
pub mod session;
pub mod state;
pub mod tree;
