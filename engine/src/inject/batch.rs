//! Running a table of independent system calls in one go.
//!
//! One injected call costs two ptrace stops (syscall entry and exit), each
//! a context switch and, on a virtual machine, an inter-processor
//! interrupt: 20-50 us a call here. The dump of a process reads ~70 things
//! only the task can tell (62 of them signal actions) and a restore sets as
//! many, so a process cost milliseconds in stops alone. A batch costs one
//! round trip: a small runner (below, 74 bytes, no stack, no memory of the
//! task touched) is written into the last page of the scratch mapping
//! (`Injector::map_batch_scratch`: scratch, table, runner, made and removed
//! with the scratch); it runs the table's calls in order, stores each
//! result in the table and stops at an `int3`. The mapping is made
//! executable and read-only; making the scratch and the table writable is
//! the first entry of the first batch (`State::unprotected`), not a call
//! of its own: until then, the engine writes there through
//! /proc/PID/mem, and a call run one by one makes them writable first.
//!
//! That breakpoint raises SIGTRAP with force_sig(), which resets the
//! action of a blocked or ignored SIGTRAP to SIG_DFL and unblocks it. So
//! the runner only runs with SIGTRAP unblocked (every other signal stays
//! blocked, as for any injected call), and only in a task where SIGTRAP is
//! neither ignored nor pending: then force_sig() changes nothing, the
//! signal reaches the engine as a signal-delivery stop, and the engine
//! drops it. That is checked before every batch (a restore sets actions
//! and queues signals as it goes). Anything else (SIGTRAP ignored or
//! pending, a seccomp filter that would not let the mapping or a call
//! through, a mapping refused, a scratch area without the runner,
//! `CRUST_INJECT_BATCH=0`) runs the same calls one by one, with the same
//! results.
//!
//! A signal that still gets through while the runner runs (a SIGTRAP
//! sent from outside) is taken at its delivery stop, held, and queued
//! again to the thread with an injected rt_tgsigqueueinfo (same siginfo)
//! once the runner is done, while every signal is blocked. A SIGSTOP,
//! which no mask blocks, would stop the next injected call if queued
//! again: it is held by the injector and sent again when the injector is
//! done, as for calls one by one (`Injector::next_syscall_stop`).

use libc::pid_t;

use super::{failed, Injector, SPIN};
use crate::error::{Error, Result};
use crate::sys::Stop;

/// The runner, x86_64 machine code. In: r12 = table, r13 = number of
/// entries. Each entry is 8 quadwords: nr, six arguments, and a word that
/// is 1 for a call whose failure stops the runner (0 otherwise) and that
/// receives the call's result. Out: r13 = 0 if every entry ran, else r12
/// points at the entry that failed, whose result is in rax, not stored
/// (the first entry may be the mprotect that makes the table writable).
///
/// ```text
///  0: test r13, r13          4d 85 ed
///  3: je   done              74 44
///  5: loop: mov rbx, [r12+56] 49 8b 5c 24 38
///  a: mov rax, [r12]         49 8b 04 24
///  e: mov rdi, [r12+8]       49 8b 7c 24 08
/// 13: mov rsi, [r12+16]      49 8b 74 24 10
/// 18: mov rdx, [r12+24]      49 8b 54 24 18
/// 1d: mov r10, [r12+32]      4d 8b 54 24 20
/// 22: mov r8, [r12+40]       4d 8b 44 24 28
/// 27: mov r9, [r12+48]       4d 8b 4c 24 30
/// 2c: syscall                0f 05
/// 2e: test rbx, rbx          48 85 db
/// 31: je   store             74 08
/// 33: cmp rax, -4095         48 3d 01 f0 ff ff
/// 39: jae  done              73 0e
/// 3b: store: mov [r12+56], rax 49 89 44 24 38
/// 40: add r12, 64            49 83 c4 40
/// 44: dec r13                49 ff cd
/// 47: jne  loop              75 bc
/// 49: done: int3             cc
/// ```
const RUNNER: [u8; 74] = [
    0x4d, 0x85, 0xed, 0x74, 0x44, 0x49, 0x8b, 0x5c, 0x24, 0x38, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b,
    0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54,
    0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x48, 0x85,
    0xdb, 0x74, 0x08, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x0e, 0x49, 0x89, 0x44, 0x24, 0x38,
    0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xcd, 0x75, 0xbc, 0xcc,
];
/// Offset of the runner's `syscall` (the instruction pointer a seccomp
/// filter sees, as for the gadget).
const RUNNER_SYSCALL: u64 = 0x2c;
/// Offset just past the `int3`: rip at the runner's own stop.
const RUNNER_END: u64 = RUNNER.len() as u64;

const PAGE: u64 = 4096;
const ENTRY: u64 = 64;
/// The table's size: 128 calls per run.
const TABLE: u64 = 2 * PAGE;
pub(super) const SIGTRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);
/// si_code of a signal the kernel raised (int3 gives it).
const SI_KERNEL: i32 = 0x80;

/// One system call of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub name: &'static str,
    pub nr: i64,
    pub args: [u64; 6],
    /// A failure stops the batch and becomes an error naming the call;
    /// otherwise the result, -errno included, is the caller's to judge.
    pub checked: bool,
}

impl Call {
    /// A call whose failure stops the batch with an error naming it.
    pub fn checked(name: &'static str, nr: i64, args: &[u64]) -> Call {
        Call::new(name, nr, args, true)
    }

    /// A call whose raw result (negative errno on failure) the caller
    /// judges.
    pub fn raw(name: &'static str, nr: i64, args: &[u64]) -> Call {
        Call::new(name, nr, args, false)
    }

    fn new(name: &'static str, nr: i64, args: &[u64], checked: bool) -> Call {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        Call {
            name,
            nr,
            args: a,
            checked,
        }
    }
}

/// The runner's part of a scratch mapping: the table, then the code page.
#[derive(Debug, Clone, Copy)]
pub(super) struct Area {
    table: u64,
    code: u64,
}

/// What [`Injector::map_batch_scratch`] adds after the scratch area.
pub const RUNNER_FOOTPRINT: u64 = TABLE + PAGE;

#[derive(Debug, Default)]
pub(super) struct State {
    /// Where the runner is, while the scratch mapping holds it.
    pub(super) area: Option<Area>,
    /// The thread group, for queueing held signals again.
    tgid: pid_t,
    /// Whether SIGTRAP was neither ignored nor pending when last read
    /// (/proc/TID/status); forgotten by any injected call that could
    /// change that (`call_changes_sigtrap`). Only the task changes its
    /// actions, and a SIGTRAP sent from outside since is taken and queued
    /// again like any signal that gets through (`run_to_breakpoint`).
    pub(super) sigtrap_free: Option<bool>,
    /// Signals taken while the runner ran, to queue again.
    held: Vec<[u8; 128]>,
    /// The scratch area and the table, mapped read-only with the runner
    /// (`map_batch_scratch`) and not made writable yet: (address, length)
    /// for the mprotect that does it, the first batch's first entry (or a
    /// call of its own before any call run one by one).
    pub(super) unprotected: Option<(u64, u64)>,
}

/// The mprotect that makes `(addr, len)` of a batch scratch mapping
/// writable (see [`State::unprotected`]).
fn protect_call((addr, len): (u64, u64)) -> Call {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    Call::checked("mprotect", libc::SYS_mprotect, &[addr, len, rw])
}

/// `CRUST_INJECT_BATCH=0` runs every batch one call at a time (to compare
/// both ways, and as a way out should a kernel misbehave).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CRUST_INJECT_BATCH").is_none_or(|v| v != "0"))
}

/// (Tgid, whether SIGTRAP is pending, privately or shared, or ignored)
/// from /proc/TID/status.
fn sigtrap_state(tid: pid_t) -> Result<(pid_t, bool)> {
    // Fresh: a signal sent from outside since an earlier read counts.
    let st = crate::proc::status::read_status_fresh(tid)?;
    let busy = (st.sig_pnd | st.shd_pnd | st.sig_ign) & SIGTRAP_BIT != 0;
    Ok((st.tgid, busy))
}

/// Whether a call could make the runner's breakpoint change the task: set
/// SIGTRAP's action (ignored, force_sig() would reset it), queue a SIGTRAP
/// (the breakpoint's would merge with it), change the signal mask, or
/// install a seccomp filter (the guard judged the calls without it).
fn changes_sigtrap(c: &Call) -> bool {
    call_changes_sigtrap(c.nr, &c.args)
}

pub(super) fn call_changes_sigtrap(nr: i64, args: &[u64; 6]) -> bool {
    let trap = libc::SIGTRAP as u64;
    match nr {
        libc::SYS_rt_sigaction => args[0] == trap && args[1] != 0,
        libc::SYS_rt_sigprocmask | libc::SYS_seccomp => true,
        libc::SYS_prctl => args[0] == libc::PR_SET_SECCOMP as u64,
        libc::SYS_kill | libc::SYS_tkill | libc::SYS_rt_sigqueueinfo => args[1] == trap,
        libc::SYS_tgkill | libc::SYS_rt_tgsigqueueinfo => args[2] == trap,
        _ => false,
    }
}

impl Injector<'_> {
    /// Maps a scratch area of `len` bytes (at `at` if given, which must
    /// have [`RUNNER_FOOTPRINT`] more bytes free after it) with the batch
    /// runner after it. Executable and never writable by the task
    /// (PR_SET_MDWE allows that), the runner's page goes in through
    /// /proc/PID/mem, which writes through the protection as a debugger's
    /// breakpoints do. Where that cannot be (a seccomp filter refusing the
    /// calls, a mapping refused), a plain scratch area, and batches run
    /// one call at a time.
    pub fn map_batch_scratch(&mut self, at: Option<u64>, len: u64) -> Result<super::Scratch> {
        let total = len + RUNNER_FOOTPRINT;
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let mut flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        if at.is_some() {
            flags |= libc::MAP_FIXED_NOREPLACE as u64;
        }
        let mmap = [at.unwrap_or(0), total, rx, flags, u64::MAX, 0];
        let protect = protect_call((0, len + TABLE));
        if !enabled()
            || !self.guard_ok(libc::SYS_mmap, &mmap)
            || !self.guard_ok(protect.nr, &protect.args)
        {
            return self.map_scratch(at, len);
        }
        let addr = self.raw(libc::SYS_mmap, &mmap)?;
        if failed(addr) {
            return self.map_scratch(at, len);
        }
        let addr = addr as u64;
        // Writable at the first call: see State::unprotected.
        self.batch.unprotected = Some((addr, len + TABLE));
        self.scratch = Some(super::Scratch { addr, len });
        self.scratch_extra = RUNNER_FOOTPRINT;
        let area = Area {
            table: addr + len,
            code: addr + len + TABLE,
        };
        if self.write_through_protection(area.code, &RUNNER).is_ok() {
            self.batch.area = Some(area);
        }
        Ok(super::Scratch { addr, len })
    }

    /// Takes over a scratch area made by [`Injector::map_batch_scratch`]
    /// in a parent of this task before it forked it (`addr`, `len` as
    /// given there): the copy this task inherited, with its runner. False
    /// (nothing taken) if the runner is not there as written.
    pub fn adopt_batch_scratch(&mut self, addr: u64, len: u64) -> Result<bool> {
        let code = addr + len + TABLE;
        match self.read_mem(code, RUNNER.len()) {
            Ok(b) if b == RUNNER => {}
            _ => return Ok(false),
        }
        self.scratch = Some(super::Scratch { addr, len });
        self.scratch_extra = RUNNER_FOOTPRINT;
        self.batch.area = Some(Area {
            table: addr + len,
            code,
        });
        // Writable already: the parent's fork was an injected call, and
        // any call makes a new batch scratch area writable first.
        Ok(true)
    }

    /// Makes the scratch area and the table writable now, if they are not
    /// yet (one call of its own: before a call run one by one, which may
    /// write its results there).
    pub(super) fn protect_now(&mut self) -> Result<()> {
        if let Some(range) = self.batch.unprotected.take() {
            let c = protect_call(range);
            let r = self.raw(c.nr, &c.args)?;
            if failed(r) {
                self.batch.unprotected = Some(range);
                return Err(self.injected_error(c.name, &c.args, r));
            }
        }
        Ok(())
    }

    /// Runs `calls` in order and returns each one's raw result: in one go
    /// where the task allows it (see the module's comment), else one by
    /// one. A `checked` call that fails stops there with an error naming
    /// it; the calls after it do not run.
    pub fn batch(&mut self, calls: &[Call]) -> Result<Vec<i64>> {
        // A call that could change what the runner's breakpoint does runs
        // on its own, and the runner is judged again after it.
        if let Some(i) = calls.iter().position(changes_sigtrap) {
            let mut out = self.batch(&calls[..i])?;
            out.extend(self.one_by_one(&calls[i..=i])?);
            out.extend(self.batch(&calls[i + 1..])?);
            return Ok(out);
        }
        if calls.len() < 2 || !self.runner_usable(calls)? {
            return self.one_by_one(calls);
        }
        let mut out = Vec::with_capacity(calls.len());
        // The first run may take the mprotect as its first entry.
        let per_run = (TABLE / ENTRY) as usize - 1;
        for chunk in calls.chunks(per_run) {
            let (results, failed_at) = self.run_chunk(chunk)?;
            out.extend_from_slice(&results);
            if let Some(i) = failed_at {
                let c = &chunk[i];
                return Err(self.injected_error(c.name, &c.args, results[i]));
            }
        }
        Ok(out)
    }

    /// As [`Injector::batch`], but only through the runner: None (and
    /// nothing run) where it cannot be used. For calls that move the
    /// gadget one-by-one calls run from (mremap of the vDSO).
    pub fn try_batch(&mut self, calls: &[Call]) -> Result<Option<Vec<i64>>> {
        if calls.iter().any(changes_sigtrap) || !self.runner_usable(calls)? {
            return Ok(None);
        }
        self.batch(calls).map(Some)
    }

    fn one_by_one(&mut self, calls: &[Call]) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(calls.len());
        for c in calls {
            let r = self.raw(c.nr, &c.args)?;
            if c.checked && failed(r) {
                return Err(self.injected_error(c.name, &c.args, r));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Whether the runner is mapped, SIGTRAP is neither ignored nor
    /// pending now, and the task's seccomp filters (the guard) would let
    /// every call through from the runner's `syscall`.
    fn runner_usable(&mut self, calls: &[Call]) -> Result<bool> {
        let Some(area) = self.batch.area else {
            return Ok(false);
        };
        if !self.sigtrap_free()? {
            return Ok(false);
        }
        let Some(guard) = &self.guard else {
            return Ok(true);
        };
        let ip = area.code + RUNNER_SYSCALL;
        let protect = self.batch.unprotected.map(protect_call);
        Ok(protect
            .iter()
            .chain(calls)
            .all(|c| guard(c.nr, &c.args, ip).is_ok()))
    }

    /// Whether SIGTRAP is neither ignored nor pending (read once, until a
    /// call could change that).
    pub(super) fn sigtrap_free(&mut self) -> Result<bool> {
        if let Some(free) = self.batch.sigtrap_free {
            return Ok(free);
        }
        let (tgid, busy) = sigtrap_state(self.tracee.pid)?;
        self.batch.tgid = tgid;
        self.batch.sigtrap_free = Some(!busy);
        Ok(!busy)
    }

    fn guard_ok(&self, nr: i64, args: &[u64; 6]) -> bool {
        match &self.guard {
            Some(guard) => guard(nr, args, self.gadget).is_ok(),
            None => true,
        }
    }

    /// Writes into the task's memory through /proc/PID/mem, which writes
    /// through the protection of a read-only page as a debugger's
    /// breakpoints do (process_vm_writev does not).
    pub(super) fn write_through_protection(&self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.tracee.pid))?;
        mem.write_all_at(bytes, at)
    }

    /// Runs up to a table's worth of calls: their results (as far as they
    /// ran) and the index of a checked call that failed.
    fn run_chunk(&mut self, calls: &[Call]) -> Result<(Vec<i64>, Option<usize>)> {
        let Some(range) = self.batch.unprotected else {
            return self.run_table(calls);
        };
        // The table is not writable yet: its first entry makes it so
        // (written meanwhile through /proc/PID/mem: Injector::write_mem).
        // Should the run fail, whether the mprotect ran is not known: it
        // is done again (changing nothing the second time) before any
        // other call.
        let mut with = Vec::with_capacity(calls.len() + 1);
        with.push(protect_call(range));
        with.extend_from_slice(calls);
        let (results, failed_at) = self.run_table(&with)?;
        if failed_at == Some(0) {
            let c = &with[0];
            return Err(self.injected_error(c.name, &c.args, results[0]));
        }
        self.batch.unprotected = None;
        Ok((results[1..].to_vec(), failed_at.map(|i| i - 1)))
    }

    /// Runs up to a table's worth of calls (see [`Injector::run_chunk`]).
    fn run_table(&mut self, calls: &[Call]) -> Result<(Vec<i64>, Option<usize>)> {
        let area = self
            .batch
            .area
            .ok_or_else(|| Error::task(self.tracee.pid, "no batch runner mapped"))?;
        let mask = self.tracee.sigmask()?;
        // The calls may change what a frozen pass kept of /proc.
        crate::proc::memo::invalidate(self.tracee.pid);
        let mut table = Vec::with_capacity(calls.len() * ENTRY as usize);
        for c in calls {
            table.extend_from_slice(&(c.nr as u64).to_le_bytes());
            for a in c.args {
                table.extend_from_slice(&a.to_le_bytes());
            }
            table.extend_from_slice(&u64::from(c.checked).to_le_bytes());
        }
        self.write_mem(area.table, &table)?;
        let mut regs = self.base;
        regs.rip = area.code;
        regs.r12 = area.table;
        regs.r13 = calls.len() as u64;
        // As for one call: no syscall is being restarted.
        regs.orig_rax = u64::MAX;
        self.tracee.set_regs(&regs)?;
        // Every signal blocked but SIGTRAP (SIGKILL and SIGSTOP cannot be).
        self.tracee.set_sigmask(!SIGTRAP_BIT)?;
        super::RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::BATCHED.fetch_add(calls.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let ran = self.run_to_breakpoint(area.code + RUNNER_END);
        let blocked = self.tracee.set_sigmask(mask);
        let end = ran?;
        blocked?;
        let table = self.read_mem(area.table, table.len())?;
        let mut results: Vec<i64> = table
            .chunks_exact(ENTRY as usize)
            .map(|e| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&e[56..64]);
                i64::from_le_bytes(w)
            })
            .collect();
        self.queue_held_signals(area)?;
        if end.r13 == 0 {
            return Ok((results, None));
        }
        // A checked call that failed: its result is in rax, not stored.
        let at = end.r12.wrapping_sub(area.table) / ENTRY;
        if let Some(r) = results.get_mut(at as usize) {
            *r = end.rax as i64;
        }
        match calls.get(at as usize) {
            Some(c) if c.checked && failed(results[at as usize]) => {
                Ok((results[..=at as usize].to_vec(), Some(at as usize)))
            }
            _ => Err(Error::task(
                self.tracee.pid,
                format!(
                    "the batch of injected calls stopped at entry {at} of {} without a failure",
                    calls.len()
                ),
            )),
        }
    }

    /// Lets the runner go and waits for its breakpoint: the registers
    /// there. A signal that gets through meanwhile is held (see the
    /// module's comment).
    fn run_to_breakpoint(&mut self, end: u64) -> Result<crate::sys::Regs> {
        let pid = self.tracee.pid;
        self.tracee.cont(0)?;
        loop {
            match self.tracee.wait_spin(SPIN)? {
                Stop::Signal(sig) => {
                    let info = self.tracee.siginfo()?;
                    let code = i32::from_le_bytes([info[8], info[9], info[10], info[11]]);
                    let mut regs = self.tracee.regs()?;
                    if sig == libc::SIGTRAP && code == SI_KERNEL && regs.rip == end {
                        return Ok(regs);
                    }
                    if sig == libc::SIGSTOP {
                        // Queued again it would stop the next call one by
                        // one: held until the injector is done instead.
                        self.hold_sigstop();
                    } else {
                        self.batch.held.push(info);
                        super::HELD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Past the breakpoint already: its own trap is still
                    // queued or merged into this one; take it again.
                    if regs.rip == end {
                        regs.rip = end - 1;
                        self.tracee.set_regs(&regs)?;
                    }
                    self.tracee.cont(0)?;
                }
                other => {
                    let during = "a batch of injected calls";
                    let at = format!("during {during}");
                    return Err(super::stop_error(pid, other, during, &at));
                }
            }
        }
    }

    /// Queues again, to this thread, the signals taken while the runner
    /// ran (every signal is blocked again by now).
    fn queue_held_signals(&mut self, area: Area) -> Result<()> {
        let tid = self.tracee.pid;
        for info in std::mem::take(&mut self.batch.held) {
            let sig = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
            self.write_mem(area.table, &info)?;
            self.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[self.batch.tgid as u64, tid as u64, sig as u64, area.table],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_layout() {
        assert_eq!(&RUNNER[RUNNER_SYSCALL as usize..][..2], &[0x0f, 0x05]);
        assert_eq!(RUNNER[RUNNER.len() - 1], 0xcc);
        // jumps land where the listing says
        assert_eq!(3 + 2 + RUNNER[4] as usize, 0x49);
        assert_eq!(0x39 + 2 + RUNNER[0x3a] as usize, 0x49);
        assert_eq!(0x31 + 2 + RUNNER[0x32] as usize, 0x3b);
        assert_eq!(&RUNNER[0x3b..0x40], &[0x49, 0x89, 0x44, 0x24, 0x38]);
        assert_eq!((0x47 + 2) as i64 + RUNNER[0x48] as i8 as i64, 0x05);
    }

    #[test]
    fn calls_that_touch_sigtrap_run_alone() {
        let trap = libc::SIGTRAP as u64;
        let act =
            |sig, new| Call::checked("rt_sigaction", libc::SYS_rt_sigaction, &[sig, new, 0, 8]);
        assert!(changes_sigtrap(&act(trap, 0x1000)));
        assert!(!changes_sigtrap(&act(trap, 0)));
        assert!(!changes_sigtrap(&act(libc::SIGUSR1 as u64, 0x1000)));
        let queue = |sig| Call::checked("q", libc::SYS_rt_tgsigqueueinfo, &[1, 1, sig, 0]);
        assert!(changes_sigtrap(&queue(trap)));
        assert!(!changes_sigtrap(&queue(libc::SIGUSR2 as u64)));
        assert!(changes_sigtrap(&Call::checked(
            "m",
            libc::SYS_rt_sigprocmask,
            &[0, 0, 0, 8]
        )));
        let seccomp = libc::PR_SET_SECCOMP as u64;
        assert!(changes_sigtrap(&Call::checked(
            "p",
            libc::SYS_prctl,
            &[seccomp, 2, 0]
        )));
        assert!(!changes_sigtrap(&Call::checked("brk", libc::SYS_brk, &[0])));
    }

    #[test]
    fn calls_pad_their_arguments() {
        let c = Call::checked("brk", libc::SYS_brk, &[0]);
        assert_eq!(c.args, [0; 6]);
        assert!(c.checked);
        assert!(!Call::raw("x", 1, &[1, 2, 3, 4, 5, 6]).checked);
    }
}
