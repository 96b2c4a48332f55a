//! The threads of a multi-threaded process, beside its leader.
//!
//! Each thread is created from inside the restored leader by an injected
//! clone3 with set_tid (its own tid) while the leader is traced with
//! PTRACE_O_TRACECLONE: the new thread is attached at birth (inheriting
//! PTRACE_O_EXITKILL, so an engine that dies takes the half-made process
//! with it) and starts in a ptrace stop. Its per-thread state is then set
//! by calls injected into the thread itself, its registers last, and it is
//! parked in the signal path like the leader: released with it, a thread
//! stopped inside a syscall restarts it as the kernel would.

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{Core, ThreadCore};
use crate::inject::Injector;
use crate::regs::from_image;
use crate::sys::{Regs, Stop, Tracee};

const CLONE_ARGS_SIZE: usize = 88;

/// Threads being restored: killed (with their whole process) and reaped
/// if dropped before `release`. Declared after the leader's stub so it is
/// dropped first: the leader's exit is reported only once every traced
/// thread has been reaped.
#[derive(Default)]
pub(crate) struct Threads {
    pub tracees: Vec<Tracee>,
    released: bool,
}

impl Drop for Threads {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        for t in &self.tracees {
            // kill(2) of a thread id takes its whole half-made process (a
            // tgkill would need the group's id: with the thread's own, it
            // found nothing, and the reaping below waited for ever).
            // SAFETY: kill and reap a thread we created and trace.
            unsafe {
                libc::kill(t.pid, libc::SIGKILL);
            }
        }
        for t in &self.tracees {
            // SAFETY: waitpid on our own tracee; the status is not needed.
            unsafe { libc::waitpid(t.pid, std::ptr::null_mut(), libc::__WALL) };
        }
    }
}

impl Threads {
    /// Lets every thread go (each parked in the signal path).
    pub fn release(&mut self) -> Result<()> {
        self.released = true;
        let mut out = Ok(());
        for t in &self.tracees {
            if let Err(e) = t.detach() {
                out = Err(e);
            }
        }
        out
    }
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Creates every thread of `core.threads` from inside the leader (`inj`,
/// which must hold its scratch area) and sets its per-thread state but for
/// credentials and registers. The leader must still be privileged
/// (clone3's set_tid needs CAP_SYS_ADMIN).
pub(crate) fn create(inj: &mut Injector, leader: &Tracee, core: &Core) -> Result<Threads> {
    let mut threads = Threads::default();
    if core.threads.is_empty() {
        return Ok(threads);
    }
    let pid = inj.pid();
    leader.set_options(
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE,
    )?;
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    for t in &core.threads {
        let tid = t.tid;
        let set_tid = inj.put(CLONE_ARGS_SIZE as u64, &(tid as u32).to_le_bytes())?;
        // flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls, set_tid, set_tid_size, cgroup. No stack: the
        // thread never runs on the one it starts with (its registers are
        // set before it runs).
        // clear_child_tid is set by the clone itself (CLONE_CHILD_CLEARTID).
        let (flags, ctid) = match t.clear_child_tid {
            0 => (flags, 0),
            a => (flags | libc::CLONE_CHILD_CLEARTID as u64, a),
        };
        let args = le(&[flags, 0, ctid, 0, 0, 0, 0, 0, set_tid, 1, 0]);
        let p = inj.put(0, &args)?;
        let got = inj.call(
            "clone3(CLONE_THREAD, set_tid)",
            libc::SYS_clone3,
            &[p, CLONE_ARGS_SIZE as u64],
        )?;
        let tracee = Tracee { pid: got as pid_t };
        if got as pid_t != tid {
            threads.tracees.push(tracee);
            return Err(Error::task(
                pid,
                format!("thread {tid} was created as {got}"),
            ));
        }
        loop {
            match tracee.wait_spin(std::time::Duration::from_micros(200))? {
                Stop::Event { .. } => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(Error::task(pid, format!("new thread {tid} died")))
                }
                _ => tracee.cont(0)?,
            }
        }
        threads.tracees.push(tracee);
    }
    leader.set_options(libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL)?;
    let scratch = inj.scratch_for_threads()?;
    for (t, tracee) in core.threads.iter().zip(&threads.tracees) {
        let base = tracee.regs()?;
        let mut ti = Injector::new(tracee, base, gadget_of(&base));
        ti.share_scratch(scratch);
        set_state(&mut ti, pid, t, &core.comm)?;
    }
    Ok(threads)
}

/// A new thread's registers are the leader's at its injected clone3: rip
/// is just past the gadget's `syscall`.
fn gadget_of(r: &Regs) -> u64 {
    r.rip - 2
}

/// Only what differs from a thread just cloned from the leader: it has the
/// leader's name, no altstack (cleared by a CLONE_VM clone), no robust
/// list, no rseq, and its clear_child_tid from the clone.
fn set_state(inj: &mut Injector, pid: pid_t, t: &ThreadCore, leader_comm: &str) -> Result<()> {
    if t.comm != leader_comm {
        let p = inj.put_cstr(0, &t.comm)?;
        inj.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, p],
        )?;
    }
    if let Some(a) = &t.altstack {
        let p = inj.put(0, &le(&[a.sp, a.flags as u32 as u64, a.size]))?;
        inj.call("sigaltstack", libc::SYS_sigaltstack, &[p, 0])?;
    }
    if t.robust_list_head != 0 {
        inj.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[t.robust_list_head, t.robust_list_len],
        )?;
    }
    if let Some(r) = &t.rseq {
        inj.call(
            "rseq",
            libc::SYS_rseq,
            &[r.ptr, r.len as u64, 0, r.signature as u64],
        )?;
    }
    // From the thread itself, so that the kernel takes any si_code.
    for s in &t.pending {
        if s.siginfo.len() != 128 {
            return Err(Error::task(
                t.tid,
                format!(
                    "pending signal {} has a {}-byte siginfo",
                    s.signo,
                    s.siginfo.len()
                ),
            ));
        }
        let p = inj.put(0, &s.siginfo)?;
        inj.call(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            &[pid as u64, t.tid as u64, s.signo as u64, p],
        )?;
    }
    Ok(())
}

/// Each thread's own scheduling attributes, affinity and timer slack,
/// set from outside once every thread exists.
pub(crate) fn restore_sched(core: &Core) -> Result<()> {
    for t in &core.threads {
        if let Some(s) = &t.sched {
            super::task::restore_sched(t.tid, s)?;
        }
        super::task::restore_timer_slack(t.tid, t.timer_slack_ns)?;
    }
    Ok(())
}

/// Gives each thread its credentials, its own or the process's (a raw
/// setresuid and the like change only the calling thread), and its parent
/// death signal, with calls injected into it.
/// `scratch`: the leader's, still mapped.
pub(crate) fn restore_creds(
    pid: pid_t,
    threads: &Threads,
    core: &Core,
    scratch: crate::inject::Scratch,
) -> Result<()> {
    if threads.tracees.is_empty() {
        return Ok(());
    }
    // Securebits are per thread too but not in /proc/PID/status.
    let plain = core.creds.as_ref().is_some_and(|c| c.securebits == 0);
    let leader = creds_lines(pid, pid).filter(|_| plain);
    let process = core
        .creds
        .as_ref()
        .ok_or_else(|| Error::task(pid, "the image holds no credentials"))?;
    for (t, tracee) in core.threads.iter().zip(&threads.tracees) {
        let base = tracee.regs()?;
        let mut ti = Injector::new(tracee, base, gadget_of(&base));
        ti.share_scratch(scratch);
        // Already the leader's (the common case: a root process restored
        // by root): only the parent death signal may be missing.
        if t.creds.is_none() && leader.is_some() && creds_lines(pid, tracee.pid) == leader {
            super::creds::set_pdeath_signal(&mut ti, t.pdeath_signal)?;
            continue;
        }
        let c = t.creds.as_ref().unwrap_or(process);
        super::creds::restore_creds(&mut ti, c, t.pdeath_signal)?;
    }
    Ok(())
}

/// The credential lines of /proc/PID/task/TID/status (ids, groups,
/// capability sets, no_new_privs, seccomp mode).
fn creds_lines(pid: pid_t, tid: pid_t) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    const KEYS: [&str; 10] = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
        "Seccomp:",
    ];
    Some(
        text.lines()
            .filter(|l| KEYS.iter().any(|k| l.starts_with(k)))
            .map(str::to_string)
            .collect(),
    )
}

/// Sets each thread's own registers, xstate and mask and parks it in the
/// signal path, ready to be released.
pub(crate) fn finish(threads: &Threads, core: &Core) -> Result<()> {
    for (t, tracee) in core.threads.iter().zip(&threads.tracees) {
        let base = tracee.regs()?;
        let regs = t
            .regs
            .as_ref()
            .ok_or_else(|| Error::task(t.tid, "no registers"))?;
        tracee.set_regs(&from_image(regs, base))?;
        tracee.set_xstate(&t.xstate)?;
        tracee.set_sigmask(t.sigmask)?;
        tracee.trap_in_signal_path()?;
    }
    Ok(())
}
