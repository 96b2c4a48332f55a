//! Running system calls inside a ptrace-stopped task.
//!
//! One call: registers are set for it, rip is pointed at a `syscall`
//! instruction already present in an executable mapping (the vDSO has
//! several), and the task is run from syscall entry to syscall exit.
//! Arguments that need memory live in a scratch mapping that is itself
//! created and removed by injected calls.
//!
//! Many independent calls can also run in one go ([`Injector::batch`],
//! `batch.rs`): a 74-byte runner written into a page after the scratch
//! area runs a table of calls and stops at a breakpoint, one round trip
//! instead of two stops per call. No byte of the task's own memory is
//! ever written for either.

mod batch;
mod step;

pub use batch::{Call, RUNNER_FOOTPRINT};

use std::sync::atomic::{AtomicU64, Ordering};

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::syscalls::{iov, process_vm_read, process_vm_write};
use crate::sys::{Regs, Stop, Tracee};

/// Finds the address of a `syscall` (0f 05) instruction in `[start, end)` of
/// the task's memory.
pub fn find_syscall_gadget(pid: pid_t, start: u64, end: u64) -> Result<u64> {
    let mut buf = vec![0u8; (end - start) as usize];
    let n = process_vm_read(
        pid,
        &[iov(buf.as_mut_ptr() as _, buf.len())],
        &[iov(start as _, buf.len())],
    )
    .map_err(|e| Error::sys("process_vm_readv(vdso)", pid, e))?;
    buf.truncate(n);
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| start + off as u64)
        .ok_or_else(|| {
            Error::task(
                pid,
                format!("no syscall instruction in {start:#x}-{end:#x}"),
            )
        })
}

/// Finds a `syscall` instruction in any of `ranges` (executable mappings),
/// read through /proc/PID/mem, which reads with FOLL_FORCE and so also
/// sees execute-only pages.
pub fn find_syscall_gadget_in(pid: pid_t, ranges: impl Iterator<Item = (u64, u64)>) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{pid}/mem");
    let mem = std::fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
    for (start, end) in ranges {
        let mut buf = vec![0u8; (end - start) as usize];
        let Ok(n) = mem.read_at(&mut buf, start) else {
            continue;
        };
        if let Some(off) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(start + off as u64);
        }
    }
    Err(Error::unsupported(
        pid,
        "no [vdso] and no syscall instruction in any executable mapping to inject syscalls from",
    ))
}

/// A mapping inside the task used to pass syscall arguments.
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    pub addr: u64,
    pub len: u64,
}

static ONE_BY_ONE: AtomicU64 = AtomicU64::new(0);
static STEPPED: AtomicU64 = AtomicU64::new(0);
static BATCHED: AtomicU64 = AtomicU64::new(0);
static RUNS: AtomicU64 = AtomicU64::new(0);
static HELD: AtomicU64 = AtomicU64::new(0);

/// How many calls this process injected: one at a time, and in batches
/// (`crust -v` prints them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub one_by_one: u64,
    /// Of those, run in one stop (step.rs).
    pub stepped: u64,
    pub batched: u64,
    pub batch_runs: u64,
    /// Signals that got through while the runner ran, queued again.
    pub held: u64,
}

pub fn counts() -> Counts {
    Counts {
        one_by_one: ONE_BY_ONE.load(Ordering::Relaxed),
        stepped: STEPPED.load(Ordering::Relaxed),
        batched: BATCHED.load(Ordering::Relaxed),
        batch_runs: RUNS.load(Ordering::Relaxed),
        held: HELD.load(Ordering::Relaxed),
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls injected one by one ({} in one stop), {} in {} batches ({} signals held)",
            self.one_by_one, self.stepped, self.batched, self.batch_runs, self.held
        )
    }
}

/// The error for a stop an injected call did not expect: the task exited
/// or was killed `during` it, or stopped otherwise `at` some point of it.
fn stop_error(pid: pid_t, stop: Stop, during: &str, at: &str) -> Error {
    Error::task(
        pid,
        match stop {
            Stop::Exited(c) => format!("exited with {c} during {during}"),
            Stop::Killed(s) => format!("killed by signal {s} during {during}"),
            other => format!("unexpected stop {other:?} {at}"),
        },
    )
}

/// Whether a raw syscall result is an error (-4095..-1).
pub fn failed(r: i64) -> bool {
    (-4095..0).contains(&r)
}

/// Checked before every injected call with (nr, args, rip): an error
/// stops the call from running (the dump uses it to refuse calls the
/// task's seccomp filters would not let through).
pub type Guard = std::rc::Rc<dyn Fn(i64, &[u64; 6], u64) -> Result<()>>;

/// How long the engine polls for the stops of an injected call before
/// sleeping (see [`Tracee::wait_spin`]).
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

pub struct Injector<'t> {
    tracee: &'t Tracee,
    guard: Option<Guard>,
    /// Register template: the task's own registers, so that segment
    /// registers and flags stay sane while it runs injected calls.
    base: Regs,
    gadget: u64,
    scratch: Option<Scratch>,
    /// Bytes mapped after the scratch area (the batch runner's), removed
    /// with it.
    scratch_extra: u64,
    batch: batch::State,
    /// A SIGSTOP was taken and suppressed during an injected call; it is
    /// sent again on drop.
    sigstop_held: bool,
}

/// What a syscall interrupted by a signal leaves in rax at its exit stop,
/// before the signal path turns it into a restart or EINTR: ERESTARTSYS,
/// ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK.
const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];

/// How many times in a row one injected call may be interrupted.
const MAX_RESTARTS: u32 = 100;

impl Drop for Injector<'_> {
    /// Sends a held SIGSTOP again: it takes effect once the engine lets
    /// the task go, as it would have without us (job control stops the
    /// whole thread group whichever thread it is sent to; nothing the
    /// task can observe names SIGSTOP's sender).
    fn drop(&mut self) {
        if self.sigstop_held {
            send_sigstop(self.tracee.pid);
        }
    }
}

/// Sends SIGSTOP to `tid` (a held one, see [`Injector::take_held_sigstop`]).
pub fn send_sigstop(tid: pid_t) {
    // SAFETY: tkill(2) with a constant signal; a task gone meanwhile
    // makes it fail harmlessly.
    unsafe { libc::syscall(libc::SYS_tkill, tid, libc::SIGSTOP) };
}

impl<'t> Injector<'t> {
    pub fn new(tracee: &'t Tracee, base: Regs, gadget: u64) -> Self {
        Injector {
            tracee,
            guard: None,
            base,
            gadget,
            scratch: None,
            scratch_extra: 0,
            batch: batch::State::default(),
            sigstop_held: false,
        }
    }

    pub fn pid(&self) -> pid_t {
        self.tracee.pid
    }

    /// Sets the check every later injected call must pass.
    pub fn set_guard(&mut self, guard: Option<Guard>) {
        self.guard = guard;
    }

    /// Moves the gadget (after the mapping holding it was moved).
    pub fn set_gadget(&mut self, gadget: u64) {
        self.gadget = gadget;
    }

    /// Runs one system call and returns the raw result (negative errno on
    /// failure).
    pub fn raw(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let pid = self.tracee.pid;
        // The call may change what a frozen pass kept of /proc.
        crate::proc::memo::invalidate(pid);
        let mut regs = self.base;
        regs.rax = nr as u64;
        // -1: no syscall is being restarted, so the kernel's restart logic,
        // which runs as the task leaves its current stop, leaves rip alone.
        regs.orig_rax = u64::MAX;
        regs.rip = self.gadget;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        if let Some(guard) = &self.guard {
            guard(nr, &a, self.gadget)?;
        }
        regs.rdi = a[0];
        regs.rsi = a[1];
        regs.rdx = a[2];
        regs.r10 = a[3];
        regs.r8 = a[4];
        regs.r9 = a[5];
        // A batch scratch area is made writable before anything runs one
        // by one (the call may write its results there).
        if self.batch.unprotected.is_some() {
            self.protect_now()?;
        }
        ONE_BY_ONE.fetch_add(1, Ordering::Relaxed);
        if batch::call_changes_sigtrap(nr, &a) {
            self.batch.sigtrap_free = None;
        }
        // In one stop where the task allows it (step.rs).
        if let Some(out) = self.step_call(&regs)? {
            return Ok(out);
        }
        let mut restarts = 0;
        loop {
            self.tracee.set_regs(&regs)?;
            for phase in ["entry", "exit"] {
                let stop = self.next_syscall_stop(phase == "exit")?;
                if stop != Stop::Syscall {
                    let during = format!("injected syscall {nr}");
                    let at = format!("at syscall {phase} of injected syscall {nr}");
                    return Err(stop_error(pid, stop, &during, &at));
                }
            }
            let out = self.tracee.regs()?.rax as i64;
            // Interrupted by a signal (a SIGSTOP: every other one is
            // blocked): the kernel would restart it on the signal path,
            // which a syscall-exit stop does not reach. The signal is held
            // at its delivery stop on the way to the call's next run.
            if !RESTART_CODES.contains(&out) {
                return Ok(out);
            }
            restarts += 1;
            if restarts > MAX_RESTARTS {
                return Err(Error::task(
                    pid,
                    format!("injected syscall {nr} was interrupted {MAX_RESTARTS} times in a row"),
                ));
            }
        }
    }

    /// Resumes to the next syscall stop. A SIGSTOP on the way (the only
    /// signal that gets through the mask injected calls run with, besides
    /// SIGKILL) is held: suppressed at its delivery stop and sent again
    /// when the injector is done (`Drop`), so that it neither fails the
    /// call nor is lost. An injected clone of a thread traced with
    /// PTRACE_O_TRACECLONE stops once more before its exit (a fork with
    /// PTRACE_O_TRACEFORK, the same); `at_exit` takes that stop too.
    fn next_syscall_stop(&mut self, at_exit: bool) -> Result<Stop> {
        loop {
            self.tracee.resume_to_syscall()?;
            match self.tracee.wait_spin(SPIN)? {
                Stop::Signal(libc::SIGSTOP) => self.hold_sigstop(),
                Stop::OtherEvent(libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK) if at_exit => {
                }
                other => return Ok(other),
            }
        }
    }

    /// Whether a SIGSTOP was held, which the caller then sends again
    /// itself ([`send_sigstop`]) instead of the drop: once the task is
    /// parked, so that it does not stop on the way.
    pub fn take_held_sigstop(&mut self) -> bool {
        std::mem::take(&mut self.sigstop_held)
    }

    /// Notes a SIGSTOP taken at its delivery stop, to send again on drop.
    pub(crate) fn hold_sigstop(&mut self) {
        HELD.fetch_add(1, Ordering::Relaxed);
        self.sigstop_held = true;
    }

    /// Runs one system call; a negative result becomes an error naming it.
    pub fn call(&mut self, name: &'static str, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.raw(nr, args)?;
        if failed(r) {
            return Err(self.injected_error(name, args, r));
        }
        Ok(r as u64)
    }

    fn injected_error(&self, name: &'static str, args: &[u64], r: i64) -> Error {
        let args = args
            .iter()
            .map(|a| format!("{a:#x}"))
            .collect::<Vec<_>>()
            .join(", ");
        Error::Injected {
            name,
            args,
            pid: self.tracee.pid,
            errno: Errno::from_raw(-r as i32),
        }
    }

    /// Creates a pipe in the task (`pipe2` with `flags`, through the scratch
    /// area) and returns its (read, write) descriptor numbers there.
    pub fn pipe2(&mut self, flags: i32) -> Result<(u64, u64)> {
        let buf = self.scratch()?.addr;
        self.call("pipe2", libc::SYS_pipe2, &[buf, flags as u64])?;
        let b = self.get(0, 8)?;
        let fd = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as u64;
        Ok((fd(0), fd(4)))
    }

    /// Maps a read-write scratch area in the task, at `at` if given.
    pub fn map_scratch(&mut self, at: Option<u64>, len: u64) -> Result<Scratch> {
        let mut flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        if at.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE as u64;
        }
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let addr = self.call(
            "mmap",
            libc::SYS_mmap,
            &[at.unwrap_or(0), len, prot, flags, u64::MAX, 0],
        )?;
        let s = Scratch { addr, len };
        self.scratch = Some(s);
        Ok(s)
    }

    /// Removes the scratch area (with the batch runner after it).
    pub fn unmap_scratch(&mut self) -> Result<()> {
        self.batch.area = None;
        // Removed, it needs to be writable no more.
        self.batch.unprotected = None;
        let extra = std::mem::take(&mut self.scratch_extra);
        if let Some(s) = self.scratch.take() {
            self.call("munmap", libc::SYS_munmap, &[s.addr, s.len + extra])?;
        }
        Ok(())
    }

    /// Uses a scratch area another injector (into another thread of the
    /// same process) mapped; it stays that injector's to remove.
    pub fn share_scratch(&mut self, s: Scratch) {
        self.scratch = Some(s);
    }

    /// The scratch area, writable, for injectors into other threads
    /// ([`Injector::share_scratch`]): they write there with
    /// process_vm_writev, which a batch scratch area not made writable yet
    /// would refuse.
    pub fn scratch_for_threads(&mut self) -> Result<Scratch> {
        self.protect_now()?;
        self.scratch()
    }

    pub fn scratch(&self) -> Result<Scratch> {
        self.scratch
            .ok_or_else(|| Error::task(self.tracee.pid, "no scratch mapping"))
    }

    /// Copies `bytes` to scratch offset `off` and returns their address in the task.
    pub fn put(&self, off: u64, bytes: &[u8]) -> Result<u64> {
        let s = self.scratch()?;
        if off + bytes.len() as u64 > s.len {
            return Err(Error::task(
                self.tracee.pid,
                format!("{} bytes do not fit the scratch area", bytes.len()),
            ));
        }
        self.write_mem(s.addr + off, bytes)?;
        Ok(s.addr + off)
    }

    /// Reads `len` bytes at scratch offset `off`.
    pub fn get(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let s = self.scratch()?;
        self.read_mem(s.addr + off, len)
    }

    /// Puts a NUL-terminated string in the scratch area.
    pub fn put_cstr(&self, off: u64, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(off, &b)
    }

    pub fn write_mem(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        let pid = self.tracee.pid;
        if let Some((start, len)) = self.batch.unprotected {
            // A batch scratch area not writable yet (batch::State::
            // unprotected): process_vm_writev would fail there.
            if addr < start + len && start < addr + bytes.len() as u64 {
                return self
                    .write_through_protection(addr, bytes)
                    .map_err(|e| Error::io("writing", format!("/proc/{pid}/mem"), e));
            }
        }
        let n = process_vm_write(
            pid,
            &[iov(bytes.as_ptr() as _, bytes.len())],
            &[iov(addr as _, bytes.len())],
        )
        .map_err(|e| Error::sys("process_vm_writev", pid, e))?;
        if n != bytes.len() {
            return Err(Error::task(
                pid,
                format!("short write of {} bytes at {addr:#x}", bytes.len()),
            ));
        }
        Ok(())
    }

    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let pid = self.tracee.pid;
        let mut buf = vec![0u8; len];
        let n = process_vm_read(
            pid,
            &[iov(buf.as_mut_ptr() as _, len)],
            &[iov(addr as _, len)],
        )
        .map_err(|e| Error::sys("process_vm_readv", pid, e))?;
        if n != len {
            return Err(Error::task(
                pid,
                format!("short read of {len} bytes at {addr:#x}"),
            ));
        }
        Ok(buf)
    }
}
