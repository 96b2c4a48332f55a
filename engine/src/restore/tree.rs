//! Process trees: every process is created from inside its parent, so that
//! its parent, session and process group come from the kernel's own fork
//! rules, before any process is turned into its dumped self.
//!
//! The root is the stub the engine forks (with the original pid). Then,
//! parents before children (the image's order), each child is forked by a
//! clone3 with set_tid (its pid) and exit_signal SIGCHLD injected into its
//! parent's stub, while the parent is traced with PTRACE_O_TRACEFORK: the
//! child is traced from birth (PTRACE_O_EXITKILL inherited: a dying
//! engine takes it along) and starts in a ptrace stop, a copy of its
//! parent's stub. Every stub blocks every signal, so nothing runs a
//! handler meanwhile.
//!
//! Sessions: a process whose session is its own calls setsid, after it
//! forked the children that stay in the session it had before (they
//! inherit it) and before the others. Process groups, once every process
//! exists: leaders first (setpgid(0, 0)), then each other member joins its
//! group (setpgid(0, G)), which the kernel allows within one session; a
//! group whose leader is gone is led meanwhile by a helper forked with its
//! pid from a member of its session, which then exits and is reaped by
//! that member (a group lives as long as it has members). Then
//! stopped processes are stopped (SIGSTOP, a group stop taken under
//! ptrace: detached at the end, the kernel stops them again), and zombies
//! exit with their status (exit_group, or their signal with the default
//! action and no core dump); the engine, as their tracer, waits for them,
//! which hands them to their parents unreaped. The SIGCHLD those send the
//! parents is taken back before the parents' own pending signals are
//! queued (see [`flush_sigchld`]).

use std::time::{Duration, Instant};

use libc::pid_t;
use nix::errno::Errno;

use super::Stub;
use crate::error::{Error, Result};
use crate::image::messages::TaskEntry;
use crate::inject::Injector;
use crate::sys::{Stop, Tracee};

const CLONE_ARGS_SIZE: u64 = 88;
const SCRATCH: u64 = 4096;

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Checks the tree image: the root first with the inventory's pid, every
/// parent before its children, pids unique and positive, zombies without
/// children.
pub(crate) fn validate(tasks: &[TaskEntry], root: pid_t) -> std::result::Result<(), String> {
    let Some(first) = tasks.first() else {
        return Err("empty process tree".into());
    };
    if first.pid != root || first.zombie {
        return Err("process tree root differs from the inventory".into());
    }
    for (i, t) in tasks.iter().enumerate() {
        if t.pid <= 0 || tasks[..i].iter().any(|o| o.pid == t.pid) {
            return Err(format!("process tree: bad or repeated pid {}", t.pid));
        }
        if i > 0 && !tasks[..i].iter().any(|p| p.pid == t.ppid && !p.zombie) {
            return Err(format!(
                "process tree: the parent {} of {} does not come before it",
                t.ppid, t.pid
            ));
        }
        if t.zombie && t.threads != [t.pid] {
            return Err(format!("process tree: zombie {} lists threads", t.pid));
        }
    }
    Ok(())
}

/// Creates every process of `tasks` but the root (`root`, the stub with
/// `tasks[0].pid`) from inside its parent, puts each in its session and
/// process group, stops the stopped ones and makes the zombies exit.
/// Returns the stubs in the order of `tasks` (the root first); a zombie's
/// is already released. On error, every stub made is killed and reaped.
/// `shared_scratch` (address, length): a batch scratch area the root maps
/// there and every member inherits and keeps, for restore_one to take over.
pub(crate) fn create(
    root: Stub,
    tasks: &[TaskEntry],
    gadget: u64,
    shared_scratch: Option<(u64, u64)>,
    wait: Duration,
) -> Result<Vec<Stub>> {
    let mut stubs: Vec<Option<Stub>> = tasks.iter().map(|_| None).collect();
    stubs[0] = Some(root);
    let deadline = Instant::now() + wait;
    let find = |pid: pid_t| tasks.iter().position(|t| t.pid == pid);
    // The root's session and group outside the tree are the engine's.
    let root_pgid = crate::proc::stat::read_stat(tasks[0].pid)?.pgrp;
    for i in 0..tasks.len() {
        let t = &tasks[i];
        let kids: Vec<usize> = (1..tasks.len())
            .filter(|&j| tasks[j].ppid == t.pid)
            .collect();
        if t.zombie && !kids.is_empty() {
            return Err(Error::task(t.pid, "a zombie with children"));
        }
        // Children that keep the session this process has before setsid.
        let (early, late): (Vec<usize>, Vec<usize>) = kids.iter().partition(|&&j| {
            let k = &tasks[j];
            t.sid == t.pid && k.sid != k.pid && k.sid != t.sid
        });
        let tracee = Tracee { pid: t.pid };
        let base = tracee.regs()?;
        let mut inj = Injector::new(&tracee, base, gadget);
        // The root makes the scratch area every member inherits and keeps
        // (restore_one takes it over): one mapping and one copy of the
        // batch runner for the whole tree.
        let kept = match shared_scratch {
            Some((at, len)) if i == 0 => {
                inj.map_batch_scratch(Some(at), len)?;
                true
            }
            Some((at, len)) => inj.adopt_batch_scratch(at, len)?,
            None => false,
        };
        if !kept && (!kids.is_empty() || t.sid == t.pid) {
            inj.map_scratch(None, SCRATCH)?;
        }
        let mut made = Vec::new();
        for &j in &early {
            made.push((j, fork_child(&mut inj, &tracee, tasks[j].pid, deadline)?));
        }
        if t.sid == t.pid {
            inj.call("setsid", libc::SYS_setsid, &[])?;
        }
        for &j in &late {
            made.push((j, fork_child(&mut inj, &tracee, tasks[j].pid, deadline)?));
        }
        if !kept {
            inj.unmap_scratch()?;
        }
        drop(inj);
        for (j, s) in made {
            stubs[j] = Some(s);
        }
    }
    if stubs.iter().any(|s| s.is_none()) {
        return Err(Error::task(
            tasks[0].pid,
            "not every process of the tree was created",
        ));
    }
    let mut stubs: Vec<Stub> = stubs.into_iter().flatten().collect();
    // Groups whose leader is gone: a helper forked with the group's pid
    // (from a member of the same session) leads it while the members join.
    let mut helpers: Vec<(pid_t, Stub)> = Vec::new();
    for t in tasks.iter().filter(|t| t.pgid != t.pid) {
        let outside = t.pgid == tasks[0].pgid && tasks[0].pgid != tasks[0].pid;
        if find(t.pgid).is_some() || outside || helpers.iter().any(|h| h.1.tracee.pid == t.pgid) {
            continue;
        }
        let host = tasks
            .iter()
            .find(|m| m.sid == t.sid)
            .map(|m| m.pid)
            .unwrap_or(t.pid);
        let helper = injected(host, gadget, |inj| {
            fork_child(inj, &Tracee { pid: host }, t.pgid, deadline)
        })?;
        injected(t.pgid, gadget, |inj| {
            inj.call("setpgid", libc::SYS_setpgid, &[0, 0])
        })?;
        helpers.push((host, helper));
    }
    // Process groups: leaders first, then the members join.
    for t in tasks.iter().filter(|t| t.pgid == t.pid && t.sid != t.pid) {
        injected(t.pid, gadget, |inj| {
            inj.call("setpgid", libc::SYS_setpgid, &[0, 0])
        })?;
    }
    for t in tasks.iter().filter(|t| t.pgid != t.pid) {
        let target = match find(t.pgid) {
            Some(_) => t.pgid,
            None if helpers.iter().any(|h| h.1.tracee.pid == t.pgid) => t.pgid,
            // The root's own group outside the tree: the engine's.
            None if t.pgid == tasks[0].pgid => root_pgid,
            None => {
                return Err(Error::unsupported(
                    t.pid,
                    format!("process group {} has no leader in the tree", t.pgid),
                ))
            }
        };
        if crate::proc::stat::read_stat(t.pid)?.pgrp != target {
            injected(t.pid, gadget, |inj| {
                inj.call("setpgid", libc::SYS_setpgid, &[0, target as u64])
            })?;
        }
    }
    // The helpers go: each exits, and its host reaps it (the group lives
    // on while it has members).
    for (host, mut helper) in helpers {
        end_helper(&mut helper, host, gadget)?;
    }
    for (t, s) in tasks.iter().zip(&stubs) {
        if t.stopped {
            stop(&s.tracee)?;
        }
    }
    for (t, s) in tasks.iter().zip(stubs.iter_mut()) {
        if t.zombie {
            make_zombie(s, t, gadget)?;
        }
    }
    Ok(stubs)
}

/// Makes a group's helper exit, then reaps it from inside `host`, its
/// parent (the engine, its tracer, hands it over first).
fn end_helper(helper: &mut Stub, host: pid_t, gadget: u64) -> Result<()> {
    let t = &helper.tracee;
    let mut regs = t.regs()?;
    regs.rax = libc::SYS_exit_group as u64;
    regs.orig_rax = u64::MAX;
    regs.rdi = 0;
    regs.rip = gadget;
    t.set_regs(&regs)?;
    t.cont(0)?;
    loop {
        match t.wait()? {
            Stop::Exited(_) | Stop::Killed(_) => break,
            Stop::Signal(sig) => t.cont(sig)?,
            _ => t.cont(0)?,
        }
    }
    helper.released = true;
    let pid = t.pid;
    injected(host, gadget, |inj| {
        inj.call(
            "wait4(group helper)",
            libc::SYS_wait4,
            &[pid as u64, 0, libc::__WALL as u64, 0],
        )
    })?;
    Ok(())
}

/// Runs `f` with an injector (and a scratch page) in the stub `pid`.
fn injected<T>(pid: pid_t, gadget: u64, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<T> {
    let tracee = Tracee { pid };
    let base = tracee.regs()?;
    let mut inj = Injector::new(&tracee, base, gadget);
    inj.map_scratch(None, SCRATCH)?;
    let out = f(&mut inj);
    inj.unmap_scratch()?;
    out
}

/// Forks the child `pid` from inside `parent` (clone3 with set_tid), and
/// waits for its first stop. Waits while the pid is still held (the
/// dumped process's zombie, until its new parent reaps it).
fn fork_child(inj: &mut Injector, parent: &Tracee, pid: pid_t, deadline: Instant) -> Result<Stub> {
    parent.set_options(
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK,
    )?;
    let set_tid = inj.put(CLONE_ARGS_SIZE, &(pid as u32).to_le_bytes())?;
    // flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    // tls, set_tid, set_tid_size, cgroup: a plain fork.
    let args = le(&[0, 0, 0, 0, libc::SIGCHLD as u64, 0, 0, 0, set_tid, 1, 0]);
    let p = inj.put(0, &args)?;
    let got = loop {
        let r = inj.raw(libc::SYS_clone3, &[p, CLONE_ARGS_SIZE])?;
        if r == -(libc::EEXIST as i64) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        break r;
    };
    parent.set_options(libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL)?;
    if got < 0 {
        let errno = Errno::from_raw(-got as i32);
        return Err(match errno {
            Errno::EEXIST => Error::task(pid, format!("pid {pid} is still taken")),
            e => Error::sys("clone3(set_tid) in the parent", pid, e),
        });
    }
    let stub = Stub {
        tracee: Tracee { pid: got as pid_t },
        released: false,
    };
    if got as pid_t != pid {
        return Err(Error::task(pid, format!("was created as {got}")));
    }
    loop {
        match stub.tracee.wait_spin(Duration::from_micros(200))? {
            Stop::Event { .. } => break,
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(Error::task(pid, "the new process died"));
            }
            _ => stub.tracee.cont(0)?,
        }
    }
    Ok(stub)
}

/// Puts a new process in a group stop by SIGSTOP, taken under ptrace: it
/// stays in a ptrace stop (injection works as usual), and the kernel stops
/// it again when it is detached (the group stop is still in effect).
fn stop(t: &Tracee) -> Result<()> {
    tgkill(t.pid, libc::SIGSTOP)?;
    t.cont(0)?;
    loop {
        match t.wait()? {
            Stop::Signal(libc::SIGSTOP) => t.cont(libc::SIGSTOP)?,
            Stop::Event { sig: libc::SIGSTOP } => return Ok(()),
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(Error::task(t.pid, "died while being stopped"))
            }
            Stop::Signal(s) => {
                return Err(Error::task(
                    t.pid,
                    format!("unexpected signal {s} while being stopped"),
                ))
            }
            _ => t.cont(0)?,
        }
    }
}

fn tgkill(pid: pid_t, sig: i32) -> Result<()> {
    // SAFETY: tgkill of a process we created and trace.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, sig) };
    Errno::result(r)
        .map(drop)
        .map_err(|e| Error::sys("tgkill", pid, e))
}

/// Makes the new process `s` exit with the zombie's status; its tracer's
/// wait hands it to its parent, which has not reaped it.
fn make_zombie(s: &mut Stub, t: &TaskEntry, gadget: u64) -> Result<()> {
    let status = t.exit_status;
    let tracee = &s.tracee;
    if libc::WIFEXITED(status) {
        let mut regs = tracee.regs()?;
        regs.rax = libc::SYS_exit_group as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = libc::WEXITSTATUS(status) as u64;
        regs.rip = gadget;
        tracee.set_regs(&regs)?;
        tracee.cont(0)?;
    } else if libc::WIFSIGNALED(status) && status & 0x80 == 0 {
        let sig = libc::WTERMSIG(status);
        // The default action, no core dump (not dumpable), not blocked.
        injected(t.pid, gadget, |inj| {
            inj.call(
                "prctl(PR_SET_DUMPABLE)",
                libc::SYS_prctl,
                &[libc::PR_SET_DUMPABLE as u64, 0],
            )?;
            if sig != libc::SIGKILL {
                let act = inj.put(0, &[0u8; 32])?;
                inj.call(
                    "rt_sigaction",
                    libc::SYS_rt_sigaction,
                    &[sig as u64, act, 0, 8],
                )?;
            }
            Ok(())
        })?;
        tracee.set_sigmask(0)?;
        tgkill(t.pid, sig)?;
        tracee.cont(0)?;
    } else {
        return Err(Error::unsupported(
            t.pid,
            format!("zombie with wait status {status:#x}"),
        ));
    }
    loop {
        match tracee.wait()? {
            Stop::Exited(c) if libc::WIFEXITED(status) && c == libc::WEXITSTATUS(status) => break,
            Stop::Killed(k) if libc::WIFSIGNALED(status) && k == libc::WTERMSIG(status) => break,
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(Error::task(t.pid, "the zombie exited with another status"))
            }
            Stop::Signal(sig) => tracee.cont(sig)?,
            _ => tracee.cont(0)?,
        }
    }
    // Its parent's now, as a zombie (or reaped by init with the parent).
    s.released = true;
    Ok(())
}

/// Takes back the SIGCHLD the tree's making sent this process (its
/// children's stops and exits), before its own pending signals are queued
/// again. Every signal is blocked in the stub, so none was delivered.
pub(crate) fn flush_sigchld(inj: &mut Injector) -> Result<()> {
    // Most members have none pending (no child, no group helper): /proc
    // tells, for less than an injected call.
    if !sigchld_pending(inj.pid())? {
        return Ok(());
    }
    let set = inj.put(0, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
    let zero = inj.put(8, &[0u8; 16])?;
    loop {
        let r = inj.raw(libc::SYS_rt_sigtimedwait, &[set, 0, zero, 8])?;
        if r < 0 {
            return match r {
                r if r == -(libc::EAGAIN as i64) => Ok(()),
                r => Err(Error::sys(
                    "rt_sigtimedwait(SIGCHLD)",
                    inj.pid(),
                    Errno::from_raw(-r as i32),
                )),
            };
        }
    }
}

/// Whether SIGCHLD is pending for the stub `pid` (SigPnd or ShdPnd).
fn sigchld_pending(pid: pid_t) -> Result<bool> {
    let st = crate::proc::status::read_status_fresh(pid)?;
    Ok((st.sig_pnd | st.shd_pnd) & (1u64 << (libc::SIGCHLD - 1)) != 0)
}
