//! crust: transparent checkpoint/restore of live Linux processes.
//!
//! Layers, bottom up: `sys` (raw kernel interfaces: ptrace, syscalls),
//! `proc` (parsers for /proc), `image` (the on-disk format), `inject`
//! (running system calls inside a stopped task), then the flows `dump` and
//! `restore`, and `check` (kernel feature probes).

pub mod check;
pub mod error;
pub mod image;
pub mod inject;
pub mod lazy;
pub mod pageio;
pub mod pageserver;
pub mod proc;
pub mod sys;

pub use error::{Error, Result};
pub mod dump;
pub mod phases;
pub mod ranges;
pub mod regs;
pub mod restore;
pub(crate) mod speculation;
pub mod track;
