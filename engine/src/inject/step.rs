//! One injected call in one stop instead of two.
//!
//! A call run one by one is taken from its syscall-entry stop to its exit
//! stop (PTRACE_SYSCALL): two stops, each a context switch and, on a
//! virtual machine, an inter-processor interrupt. A single step over the
//! `syscall` instruction stops once: the kernel reports the step at the
//! call's exit (syscall_exit_work(), user_single_step_report()), with a
//! SIGTRAP it forces (si_code TRAP_BRKPT), before the task runs anything
//! else. A dump's process makes and removes its scratch area this way:
//! two stops fewer per process, on the tracer's path, which nothing else
//! can share.
//!
//! force_sig() resets the action of a blocked or ignored SIGTRAP to
//! SIG_DFL: as for the batch runner (batch.rs), the step runs with only
//! SIGTRAP unblocked, and only where SIGTRAP is neither ignored nor
//! pending. And only for calls that change no signal state and make no
//! ptrace event of their own: mmap, munmap, mprotect. Anything else runs
//! with its two stops.
//!
//! A SIGTRAP from outside that is taken first (before the call ran, or
//! into which the kernel merged the step's) is put back as it was: the
//! task is resumed from its delivery stop with the signal while SIGTRAP
//! is blocked, so the kernel queues it again, siginfo and all, and is
//! stopped again in its signal path before it runs anything
//! ([`Tracee::trap_after`]). A call that had not run then runs with
//! its two stops. A SIGSTOP is held as for any call.
//!
//! [`Tracee::trap_after`]: crate::sys::Tracee::trap_after

use super::batch::SIGTRAP_BIT;
use super::{Injector, SPIN};
use crate::error::{Error, Result};
use crate::sys::{Regs, Stop};

/// si_code of the SIGTRAP a single step over a syscall raises.
const TRAP_BRKPT: i32 = 1;
/// Length of the `syscall` instruction: rip once it ran.
const SYSCALL_LEN: u64 = 2;

/// The calls that may run in one stop.
fn steppable(nr: i64) -> bool {
    matches!(nr, libc::SYS_mmap | libc::SYS_munmap | libc::SYS_mprotect)
}

/// `CRUST_INJECT_STEP=0` runs every call with its two stops (to compare
/// both ways, and as a way out should a kernel misbehave).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CRUST_INJECT_STEP").is_none_or(|v| v != "0"))
}

impl Injector<'_> {
    /// Runs the call `regs` sets up (rip at the gadget) by a single step,
    /// where it can: its raw result. None if it did not run to its end
    /// this way (not a call for it, SIGTRAP busy, a SIGTRAP from outside
    /// first, or interrupted): then it is to run with its two stops.
    pub(super) fn step_call(&mut self, regs: &Regs) -> Result<Option<i64>> {
        if !enabled() || !steppable(regs.rax as i64) || !self.sigtrap_free()? {
            return Ok(None);
        }
        let mask = self.tracee.sigmask()?;
        // Every signal blocked but SIGTRAP (SIGKILL and SIGSTOP cannot be).
        self.tracee.set_sigmask(!SIGTRAP_BIT)?;
        let stepped = self.step_over(regs);
        let blocked = self.tracee.set_sigmask(mask);
        let out = stepped?;
        blocked?;
        if out.is_some() {
            super::STEPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(out)
    }

    fn step_over(&mut self, regs: &Regs) -> Result<Option<i64>> {
        let pid = self.tracee.pid;
        let done = regs.rip + SYSCALL_LEN;
        self.tracee.set_regs(regs)?;
        self.tracee.step()?;
        loop {
            let stop = self.tracee.wait_spin(SPIN)?;
            let now = match stop {
                Stop::Signal(libc::SIGTRAP | libc::SIGSTOP) => self.tracee.regs()?,
                other => {
                    let during = "an injected call by a single step";
                    let at = format!("during {during}");
                    return Err(super::stop_error(pid, other, during, &at));
                }
            };
            let ran = now.rip == done;
            if !ran && now.rip != regs.rip {
                return Err(Error::task(
                    pid,
                    format!(
                        "stopped at {:#x} during an injected call by a single step from {:#x}",
                        now.rip, regs.rip
                    ),
                ));
            }
            if stop == Stop::Signal(libc::SIGSTOP) {
                // Taken before the call (the step's SIGTRAP, synchronous,
                // comes first once it ran): held, and the step goes on.
                if ran {
                    return Err(Error::task(
                        pid,
                        "a SIGSTOP came before the single step's SIGTRAP",
                    ));
                }
                self.hold_sigstop();
                self.tracee.step()?;
                continue;
            }
            let info = self.tracee.siginfo()?;
            let code = i32::from_le_bytes([info[8], info[9], info[10], info[11]]);
            if !(ran && code == TRAP_BRKPT) {
                // From outside: queued again as it was, SIGTRAP pending
                // from now on (no batch, no step while it is).
                self.batch.sigtrap_free = Some(false);
                self.tracee.set_sigmask(!0)?;
                self.tracee.trap_after(libc::SIGTRAP)?;
                self.wait_trapped()?;
            }
            if !ran {
                return Ok(None);
            }
            let out = now.rax as i64;
            return Ok((!super::RESTART_CODES.contains(&out)).then_some(out));
        }
    }

    /// Waits for the stop [`crate::sys::Tracee::trap_after`] asked
    /// for (a SIGSTOP on the way is held).
    fn wait_trapped(&mut self) -> Result<()> {
        let pid = self.tracee.pid;
        loop {
            match self.tracee.wait_spin(SPIN)? {
                Stop::Event { .. } => return Ok(()),
                Stop::Signal(libc::SIGSTOP) => {
                    self.hold_sigstop();
                    self.tracee.cont(0)?;
                }
                other => {
                    let during = "a SIGTRAP queued again";
                    let at = format!("after {during}");
                    return Err(super::stop_error(pid, other, during, &at));
                }
            }
        }
    }
}
