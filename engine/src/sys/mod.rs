//! Thin wrappers over the kernel interfaces the engine uses. Everything
//! `unsafe` about talking to the kernel lives here and in `inject`.

pub mod cpu_latency;
pub mod ptrace;
pub mod sched;
pub mod settle;
pub mod shm;
pub mod syscalls;
pub mod uffd;
pub mod unix_sock;

pub use ptrace::{Regs, Stop, Tracee};
