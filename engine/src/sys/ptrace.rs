//! ptrace: seizing, stopping and inspecting one task.

use std::mem::MaybeUninit;

use libc::{c_void, pid_t};
use nix::errno::Errno;

use crate::error::{Error, Result};

/// The general-purpose registers, as the kernel's `user_regs_struct`.
pub type Regs = libc::user_regs_struct;

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NT_X86_XSTATE: usize = 0x202;
/// Big enough for every xsave layout up to AMX.
const XSTATE_BUF: usize = 16 * 1024;

/// Why a waited-for tracee stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT asked for, or a group stop.
    Event {
        sig: i32,
    },
    /// A syscall-entry or -exit stop (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// A signal is about to be delivered.
    Signal(i32),
    /// Another ptrace event (exec, fork...), by number.
    OtherEvent(i32),
    Exited(i32),
    Killed(i32),
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// A task we are attached to with PTRACE_SEIZE.
#[derive(Debug)]
pub struct Tracee {
    pub pid: pid_t,
}

fn ptrace_raw(
    req: libc::c_uint,
    pid: pid_t,
    addr: usize,
    data: usize,
) -> std::result::Result<i64, Errno> {
    // SAFETY: raw ptrace request; the callers pass addr/data that are either
    // integers or pointers to live buffers of the size the request expects.
    let r = unsafe { libc::ptrace(req, pid, addr as *mut c_void, data as *mut c_void) };
    Errno::result(r)
}

impl Tracee {
    /// Attaches without stopping the task. `exit_kill` makes the kernel kill
    /// the task if the engine dies: right for a task being restored, never
    /// for one being dumped.
    pub fn seize(pid: pid_t, exit_kill: bool) -> Result<Tracee> {
        let mut opts = libc::PTRACE_O_TRACESYSGOOD;
        if exit_kill {
            opts |= libc::PTRACE_O_EXITKILL;
        }
        ptrace_raw(libc::PTRACE_SEIZE, pid, 0, opts as usize)
            .map_err(|e| Error::sys("PTRACE_SEIZE", pid, e))?;
        Ok(Tracee { pid })
    }

    /// Sets the ptrace options (PTRACE_SETOPTIONS), replacing the ones
    /// given at seize.
    pub fn set_options(&self, opts: i32) -> Result<()> {
        ptrace_raw(libc::PTRACE_SETOPTIONS, self.pid, 0, opts as usize)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_SETOPTIONS", self.pid, e))
    }

    /// Stops the task with PTRACE_INTERRUPT and waits for that stop. A
    /// signal that is being delivered meanwhile is passed on, as it would
    /// have been without us, and the interrupt asked for again: the
    /// kernel drops a pending STOP trap at any trap, a signal-delivery
    /// stop included, so without it a task that keeps receiving signals
    /// (a fast timer) could go on between its handler and such stops
    /// forever (seen: a pre-dump hung, 1 in ~60-1500 of a 1 ms timer).
    /// Returns the stop's signal: SIGTRAP, or the stop signal (SIGSTOP...)
    /// of a group stop the task is in.
    pub fn interrupt(&self) -> Result<i32> {
        self.ask_trap()?;
        self.settle(None)
    }

    /// PTRACE_INTERRUPT: a PTRACE_EVENT_STOP asked for, taken at the
    /// task's next trap.
    fn ask_trap(&self) -> Result<()> {
        ptrace_raw(libc::PTRACE_INTERRUPT, self.pid, 0, 0)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_INTERRUPT", self.pid, e))
    }

    /// As [`Tracee::interrupt`], for a task just seized, in two halves:
    /// this one asks for the stop without waiting for it, and returns the
    /// stop already taken, if any; [`Tracee::settle_stop`] waits. A task
    /// that was in a group stop is already in a trap (PTRACE_SEIZE
    /// re-traps a stopped task before it returns), and a PTRACE_INTERRUPT
    /// on top would leave a second trap pending, taken at the first
    /// injected call. Many tasks asked first and each waited for after
    /// stop in parallel.
    pub fn ask_stop_seized(&self) -> Result<Option<Stop>> {
        let mut status = 0;
        // SAFETY: plain waitpid on our tracee with a valid status pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | libc::WNOHANG) };
        let taken = (r == self.pid).then(|| decode_status(status));
        if !matches!(taken, Some(Stop::Event { .. })) {
            self.ask_trap()?;
        }
        Ok(taken)
    }

    /// The second half of [`Tracee::ask_stop_seized`]: waits for the stop
    /// asked for (`taken`: what that returned).
    pub fn settle_stop(&self, taken: Option<Stop>) -> Result<i32> {
        match taken {
            Some(Stop::Event { sig }) => Ok(sig),
            other => self.settle(other),
        }
    }

    /// Waits for the Event stop asked for; `first`: a stop already waited.
    fn settle(&self, mut first: Option<Stop>) -> Result<i32> {
        loop {
            let stop = match first.take() {
                Some(s) => s,
                None => self.wait()?,
            };
            match stop {
                Stop::Event { sig } => return Ok(sig),
                Stop::Signal(sig) => self.trap_after(sig)?,
                Stop::Syscall | Stop::OtherEvent(_) => self.cont(0)?,
                Stop::Exited(code) => {
                    return Err(Error::task(
                        self.pid,
                        format!("exited with {code} while being stopped"),
                    ))
                }
                Stop::Killed(sig) => {
                    return Err(Error::task(
                        self.pid,
                        format!("killed by signal {sig} while being stopped"),
                    ))
                }
            }
        }
    }

    pub fn wait(&self) -> Result<Stop> {
        let mut status = 0;
        loop {
            // SAFETY: plain waitpid on our tracee with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r == -1 {
                let e = Errno::last();
                if e == Errno::EINTR {
                    continue;
                }
                return Err(Error::sys("waitpid", self.pid, e));
            }
            break;
        }
        Ok(decode_status(status))
    }

    /// As [`Tracee::wait`], but polls (waitpid with WNOHANG) for up to
    /// `spin` before sleeping. For the stops of an injected syscall, which
    /// come within microseconds: a tracer that sleeps lets its CPU go idle,
    /// and every stop then pays for waking it (on a virtual machine a
    /// halt and an inter-processor interrupt, tens of microseconds each).
    pub fn wait_spin(&self, spin: std::time::Duration) -> Result<Stop> {
        let start = std::time::Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: plain waitpid on our tracee with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL | libc::WNOHANG) };
            match r {
                // Yielding, not spinning: on a busy machine the tracee
                // may be waiting for this very CPU.
                // SAFETY: sched_yield takes no arguments.
                0 if start.elapsed() < spin => unsafe {
                    libc::sched_yield();
                },
                0 => return self.wait(),
                -1 => {
                    let e = Errno::last();
                    if e != Errno::EINTR {
                        return Err(Error::sys("waitpid", self.pid, e));
                    }
                }
                _ => return Ok(decode_status(status)),
            }
        }
    }

    pub fn cont(&self, sig: i32) -> Result<()> {
        ptrace_raw(libc::PTRACE_CONT, self.pid, 0, sig as usize)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_CONT", self.pid, e))
    }

    /// Runs one instruction (PTRACE_SINGLESTEP); a `syscall` is reported
    /// at its exit, before the next one (see inject/step.rs).
    pub fn step(&self) -> Result<()> {
        ptrace_raw(libc::PTRACE_SINGLESTEP, self.pid, 0, 0)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_SINGLESTEP", self.pid, e))
    }

    /// Asks for a PTRACE_EVENT_STOP and resumes with `sig`: from a
    /// signal-delivery stop, the signal is passed on (or, blocked, queued
    /// again by the kernel with its siginfo: ptrace_signal()), and the task
    /// stops in its signal path before it runs anything. Wait for that
    /// stop.
    pub fn trap_after(&self, sig: i32) -> Result<()> {
        self.ask_trap()?;
        self.cont(sig)
    }

    /// Resumes until the next syscall entry or exit.
    pub fn resume_to_syscall(&self) -> Result<()> {
        ptrace_raw(libc::PTRACE_SYSCALL, self.pid, 0, 0)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_SYSCALL", self.pid, e))
    }

    pub fn detach(&self) -> Result<()> {
        ptrace_raw(libc::PTRACE_DETACH, self.pid, 0, 0)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_DETACH", self.pid, e))
    }

    /// Moves the task from whatever stop it is in to a PTRACE_EVENT_STOP
    /// taken inside the kernel's get_signal(). Detaching from there, the
    /// task leaves through the signal path, where the kernel applies its
    /// own syscall-restart rules to the registers we set (ERESTARTNOHAND
    /// becomes EINTR if a handler runs, a restart otherwise, and so on),
    /// just as if it had never been stopped. Leaving from a syscall-exit
    /// stop would skip them.
    pub fn trap_in_signal_path(&self) -> Result<()> {
        self.trap_after(0)?;
        loop {
            match self.wait()? {
                Stop::Event { .. } => return Ok(()),
                Stop::Syscall | Stop::OtherEvent(_) => self.cont(0)?,
                // As in `interrupt`: that stop took the trap asked for.
                Stop::Signal(sig) => self.trap_after(sig)?,
                Stop::Exited(c) => {
                    return Err(Error::task(
                        self.pid,
                        format!("exited with {c} on its way out"),
                    ))
                }
                Stop::Killed(s) => {
                    return Err(Error::task(
                        self.pid,
                        format!("killed by signal {s} on its way out"),
                    ))
                }
            }
        }
    }

    pub fn regs(&self) -> Result<Regs> {
        let mut regs = MaybeUninit::<Regs>::zeroed();
        ptrace_raw(
            libc::PTRACE_GETREGS,
            self.pid,
            0,
            regs.as_mut_ptr() as usize,
        )
        .map_err(|e| Error::sys("PTRACE_GETREGS", self.pid, e))?;
        // SAFETY: the kernel filled the whole struct; it was zeroed before anyway.
        Ok(unsafe { regs.assume_init() })
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        ptrace_raw(
            libc::PTRACE_SETREGS,
            self.pid,
            0,
            regs as *const Regs as usize,
        )
        .map(drop)
        .map_err(|e| Error::sys("PTRACE_SETREGS", self.pid, e))
    }

    /// The full FPU/SSE/AVX state in the kernel's xsave layout.
    pub fn xstate(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; XSTATE_BUF];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut c_void,
            iov_len: buf.len(),
        };
        ptrace_raw(
            libc::PTRACE_GETREGSET,
            self.pid,
            NT_X86_XSTATE,
            &mut iov as *mut _ as usize,
        )
        .map_err(|e| Error::sys("PTRACE_GETREGSET(NT_X86_XSTATE)", self.pid, e))?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        let mut iov = libc::iovec {
            iov_base: xstate.as_ptr() as *mut c_void,
            iov_len: xstate.len(),
        };
        ptrace_raw(
            libc::PTRACE_SETREGSET,
            self.pid,
            NT_X86_XSTATE,
            &mut iov as *mut _ as usize,
        )
        .map(drop)
        .map_err(|e| Error::sys("PTRACE_SETREGSET(NT_X86_XSTATE)", self.pid, e))
    }

    pub fn sigmask(&self) -> Result<u64> {
        let mut mask = 0u64;
        ptrace_raw(
            PTRACE_GETSIGMASK,
            self.pid,
            8,
            &mut mask as *mut u64 as usize,
        )
        .map_err(|e| Error::sys("PTRACE_GETSIGMASK", self.pid, e))?;
        Ok(mask)
    }

    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        ptrace_raw(PTRACE_SETSIGMASK, self.pid, 8, &mask as *const u64 as usize)
            .map(drop)
            .map_err(|e| Error::sys("PTRACE_SETSIGMASK", self.pid, e))
    }

    /// The siginfo of the signal the task is stopped to deliver
    /// (PTRACE_GETSIGINFO at a signal-delivery stop), raw.
    pub fn siginfo(&self) -> Result<[u8; 128]> {
        let mut info = [0u8; 128];
        ptrace_raw(
            libc::PTRACE_GETSIGINFO,
            self.pid,
            0,
            info.as_mut_ptr() as usize,
        )
        .map_err(|e| Error::sys("PTRACE_GETSIGINFO", self.pid, e))?;
        Ok(info)
    }

    /// Queued signals, without dequeuing them: the task-private queue or
    /// the process-wide one. Each entry is a raw 128-byte siginfo.
    pub fn pending_signals(&self, shared: bool) -> Result<Vec<[u8; 128]>> {
        let mut out = Vec::new();
        loop {
            let mut buf = [[0u8; 128]; 32];
            let args = PeekSiginfoArgs {
                off: out.len() as u64,
                flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
                nr: buf.len() as i32,
            };
            let n = ptrace_raw(
                PTRACE_PEEKSIGINFO,
                self.pid,
                &args as *const _ as usize,
                buf.as_mut_ptr() as usize,
            )
            .map_err(|e| Error::sys("PTRACE_PEEKSIGINFO", self.pid, e))?;
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        Ok(out)
    }

    pub fn rseq_config(&self) -> Result<RseqConfig> {
        let mut conf = RseqConfig::default();
        ptrace_raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            self.pid,
            std::mem::size_of::<RseqConfig>(),
            &mut conf as *mut _ as usize,
        )
        .map_err(|e| Error::sys("PTRACE_GET_RSEQ_CONFIGURATION", self.pid, e))?;
        Ok(conf)
    }
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;

/// `struct seccomp_metadata`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SeccompMetadata {
    filter_off: u64,
    flags: u64,
}

impl Tracee {
    /// The task's seccomp filters, oldest first (PTRACE_SECCOMP_GET_FILTER
    /// index 0 is the first installed), each as raw `struct sock_filter` bytes with the
    /// SECCOMP_FILTER_FLAG_* that PTRACE_SECCOMP_GET_METADATA reports. The
    /// task must be in a ptrace stop; needs CAP_SYS_ADMIN.
    pub fn seccomp_filters(&self) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        for index in 0usize.. {
            let n = match ptrace_raw(PTRACE_SECCOMP_GET_FILTER, self.pid, index, 0) {
                Ok(n) => n as usize,
                Err(Errno::ENOENT) => break,
                Err(e) => return Err(Error::sys("PTRACE_SECCOMP_GET_FILTER", self.pid, e)),
            };
            let mut buf = vec![0u8; n * 8];
            let got = ptrace_raw(
                PTRACE_SECCOMP_GET_FILTER,
                self.pid,
                index,
                buf.as_mut_ptr() as usize,
            )
            .map_err(|e| Error::sys("PTRACE_SECCOMP_GET_FILTER", self.pid, e))?;
            if got as usize != n {
                return Err(Error::task(
                    self.pid,
                    format!("seccomp filter {index} changed size while read"),
                ));
            }
            let mut md = SeccompMetadata {
                filter_off: index as u64,
                flags: 0,
            };
            ptrace_raw(
                PTRACE_SECCOMP_GET_METADATA,
                self.pid,
                std::mem::size_of::<SeccompMetadata>(),
                &mut md as *mut _ as usize,
            )
            .map_err(|e| Error::sys("PTRACE_SECCOMP_GET_METADATA", self.pid, e))?;
            out.push((buf, md.flags));
        }
        Ok(out)
    }
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event == libc::PTRACE_EVENT_STOP {
        Stop::Event { sig }
    } else if event != 0 {
        Stop::OtherEvent(event)
    } else if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else {
        Stop::Signal(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(decode_status(0x0100), Stop::Exited(1));
        assert_eq!(decode_status(0x0009), Stop::Killed(9));
        assert_eq!(
            decode_status((libc::PTRACE_EVENT_STOP << 16) | (libc::SIGTRAP << 8) | 0x7f),
            Stop::Event { sig: libc::SIGTRAP }
        );
        assert_eq!(
            decode_status(((libc::SIGTRAP | 0x80) << 8) | 0x7f),
            Stop::Syscall
        );
        assert_eq!(
            decode_status((libc::SIGUSR1 << 8) | 0x7f),
            Stop::Signal(libc::SIGUSR1)
        );
    }
}
