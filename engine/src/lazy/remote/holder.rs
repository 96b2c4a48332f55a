//! The holder: the dumped task's memory kept alive after the task is
//! killed, in a twin process that shares its address space.
//!
//! While the task is frozen, an injected `clone(CLONE_VM)` makes
//! a new process (new pid, own descriptor table and signal handlers) that
//! shares the task's `mm`. With PTRACE_O_TRACECLONE set on the task for that
//! one call, the kernel attaches the twin to us and stops it before it runs
//! a single instruction; we give it PTRACE_O_EXITKILL (it dies when the
//! serving crust dies, whatever the reason) and inject `close_range(0, ~0,
//! 0)` in it so it holds none of the task's descriptors (a pipe's reader
//! sees EOF when the task dies, files are released), and `setsid()` so it
//! leaves the task's process group and session (whose ids may be the
//! task's pid, which would stay in use as long as the twin is in them).
//! The task is then
//! killed as by any dump: its pid is free at once, while the `mm` lives on
//! in the twin, which never runs user code; pages are read from it with
//! process_vm_readv, at random, as fast as from the task itself.
//!
//! Creating the twin copies nothing (no page tables, unlike fork), so the
//! frozen time does not grow with memory. A task that exits while another
//! process shares its `mm` writes to that memory on its way out: 0 to its
//! `clear_child_tid` address (glibc registers one for every thread) and
//! the owner-died bit on robust futexes it holds. Before the kill, the
//! engine injects `set_tid_address(NULL)` and `set_robust_list(NULL)` so the
//! memory stays exactly as dumped (both are put back if the dump fails
//! after all). The twin itself was cloned without CLONE_CHILD_CLEARTID and
//! has no robust list: its death writes nothing.

use libc::pid_t;
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::inject::{Guard, Injector};
use crate::sys::sched::{
    sched_getattr, sched_setattr, SchedAttr, SCHED_DEADLINE, SCHED_FLAG_RESET_ON_FORK,
};
use crate::sys::{Regs, Stop, Tracee};

/// The process holding the lazy pages.
#[derive(Debug)]
pub struct Twin {
    /// The twin's pid (not the task's).
    pub pid: pid_t,
    /// The dumped task's pid: the pid the images and clients speak of.
    pub task: pid_t,
    alive: bool,
}

fn ptrace(
    req: libc::c_uint,
    pid: pid_t,
    addr: usize,
    data: usize,
) -> std::result::Result<i64, Errno> {
    // SAFETY: raw ptrace requests with integer arguments, or (GETEVENTMSG)
    // a pointer to a live u64 of ours.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    Errno::result(r)
}

fn set_options(pid: pid_t, opts: i32) -> Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts as usize)
        .map(drop)
        .map_err(|e| Error::sys("PTRACE_SETOPTIONS", pid, e))
}

/// What `clone` gets: CLONE_VM (share the address space) and no exit
/// signal, so that while the task lives its own wait() never sees the twin
/// (only __WALL/__WCLONE would); once the task is dead the twin's new
/// parent gets SIGCHLD as usual (reparenting resets the exit signal). The
/// kernel reports it to us as PTRACE_EVENT_CLONE.
const CLONE_FLAGS: u64 = libc::CLONE_VM as u64;

impl Twin {
    /// Makes the twin of `task`, which must be in a burst (`inj`: signals
    /// blocked, at a clean stop; `base` its registers template, `gadget` a
    /// syscall instruction, `guard` its seccomp check). The twin is
    /// stopped, traced by the calling thread, holds no descriptor, and
    /// dies with this process. On failure a twin already made is killed
    /// and reaped in the task (see `reap_in_task`).
    pub fn spawn(
        task: pid_t,
        base: Regs,
        gadget: u64,
        guard: Option<Guard>,
        inj: &mut Injector,
    ) -> Result<Twin> {
        let args = [CLONE_FLAGS, 0, 0, 0, 0, 0];
        if let Some(g) = &guard {
            g(libc::SYS_clone, &args, gadget)?;
        }
        let tracee = Tracee { pid: task };
        set_options(
            task,
            libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE,
        )?;
        // The kernel refuses (EAGAIN) to clone a SCHED_DEADLINE task unless
        // reset-on-fork is set: set it for this one call, so the twin starts
        // as SCHED_OTHER, then give the task back its exact attributes.
        let deadline = deadline_without_reset_on_fork(task)?;
        if let Some(attr) = &deadline {
            let with_reset = SchedAttr {
                flags: attr.flags | SCHED_FLAG_RESET_ON_FORK,
                ..*attr
            };
            sched_setattr(task, &with_reset)?;
        }
        let mut made = None;
        let forked = clone_in(&tracee, base, gadget, &args, &mut made);
        // The task's options as Frozen set them, whatever happened.
        let reset = set_options(task, libc::PTRACE_O_TRACESYSGOOD);
        let sched = deadline.as_ref().map_or(Ok(()), |a| sched_setattr(task, a));
        let twin = forked.and_then(|child| {
            reset?;
            sched?;
            let mut twin = Twin {
                pid: child,
                task,
                alive: true,
            };
            twin.settle(gadget, guard)?;
            Ok(twin)
        });
        if twin.is_err() {
            if let Some(c) = made {
                reap_in_task(c, inj);
            }
        }
        twin
    }

    /// The dump failed and the task lives on: kills the twin and reaps it
    /// in the task (`inj`, the task's burst), which must not be left with
    /// a zombie child.
    pub fn discard(mut self, inj: &mut Injector) {
        self.alive = false;
        reap_in_task(self.pid, inj);
    }

    /// First stop of the auto-attached twin: EXITKILL, then close its
    /// copy of the task's descriptors.
    fn settle(&mut self, gadget: u64, guard: Option<Guard>) -> Result<()> {
        let t = Tracee { pid: self.pid };
        match t.wait()? {
            Stop::Exited(c) => {
                self.alive = false;
                return Err(Error::task(self.pid, format!("twin exited with {c}")));
            }
            Stop::Killed(s) => {
                self.alive = false;
                return Err(Error::task(self.pid, format!("twin killed by signal {s}")));
            }
            _ => {}
        }
        set_options(
            self.pid,
            libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL,
        )?;
        let regs = t.regs()?;
        let mut inj = Injector::new(&t, regs, gadget);
        inj.set_guard(guard);
        inj.call(
            "close_range",
            libc::SYS_close_range,
            &[0, u32::MAX as u64, 0],
        )?;
        // Out of the task's session and process group: a group or session
        // whose id is the task's pid keeps that pid in use (a restore with
        // the same pid would get EEXIST) as long as any member lives.
        inj.call("setsid", libc::SYS_setsid, &[])?;
        Ok(())
    }

    /// Once the task is dead: unmaps `ranges` from the held memory (the
    /// task's memfd mappings and SysV attachments, never lazy: the twin
    /// would otherwise keep a removed segment alive and attached, and a
    /// same-host restore would find it still there).
    pub fn unmap(
        &mut self,
        gadget: u64,
        guard: Option<Guard>,
        ranges: &[(u64, u64)],
    ) -> Result<()> {
        let t = Tracee { pid: self.pid };
        let regs = t.regs()?;
        let mut inj = Injector::new(&t, regs, gadget);
        inj.set_guard(guard);
        for &(start, end) in ranges {
            inj.call("munmap", libc::SYS_munmap, &[start, end - start])?;
        }
        Ok(())
    }

    /// Reads [vaddr, vaddr + buf.len()) of the held memory.
    pub fn read(&self, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        super::server::read_held(self.pid, self.task, vaddr, buf)
    }
}

/// A twin made in a task that lives on: killed, reaped by us (its
/// tracer), then by the task, its real parent. Cloned without an exit
/// signal, it is never reaped for the task otherwise (the kernel does so
/// only for a parent that ignores SIGCHLD), and it would stay a zombie
/// child of the task, which a wait(__WALL) of the task would find.
fn reap_in_task(child: pid_t, inj: &mut Injector) {
    // SAFETY: kill and reap (as its tracer) the twin we made; ECHILD if
    // that was done already.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(child, &mut st, libc::__WALL);
    }
    let flags = (libc::__WALL | libc::WNOHANG) as u64;
    let _ = inj.call("wait4", libc::SYS_wait4, &[child as u64, 0, flags, 0]);
}

/// Runs `clone` in the task from syscall entry through the fork event to
/// syscall exit; returns the child's pid (also put in `made` as soon as
/// it is known).
fn clone_in(
    t: &Tracee,
    base: Regs,
    gadget: u64,
    args: &[u64; 6],
    made: &mut Option<pid_t>,
) -> Result<pid_t> {
    let pid = t.pid;
    let mut regs = base;
    regs.rax = libc::SYS_clone as u64;
    regs.orig_rax = u64::MAX;
    regs.rip = gadget;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    t.set_regs(&regs)?;
    let mut child = None;
    let mut entered = false;
    loop {
        let stop = t.resume_to_syscall().and_then(|_| t.wait());
        let stop = match stop {
            Ok(s) => s,
            Err(e) => {
                kill_stray(child);
                return Err(e);
            }
        };
        match stop {
            Stop::Syscall if !entered => entered = true,
            Stop::Syscall => break,
            Stop::OtherEvent(e) if e == libc::PTRACE_EVENT_CLONE => {
                let mut msg: u64 = 0;
                ptrace(
                    libc::PTRACE_GETEVENTMSG,
                    pid,
                    0,
                    &mut msg as *mut u64 as usize,
                )
                .map_err(|e| Error::sys("PTRACE_GETEVENTMSG", pid, e))?;
                child = Some(msg as pid_t);
                *made = child;
            }
            other => {
                kill_stray(child);
                return Err(Error::task(
                    pid,
                    format!("unexpected stop {other:?} during the injected clone"),
                ));
            }
        }
    }
    let r = match t.regs() {
        Ok(regs) => regs.rax as i64,
        Err(e) => {
            kill_stray(child);
            return Err(e);
        }
    };
    if (-4095..0).contains(&r) {
        kill_stray(child);
        return Err(Error::Injected {
            name: "clone(CLONE_VM) of the lazy pages' holder",
            args: format!("{:#x}", args[0]),
            pid,
            errno: Errno::from_raw(-r as i32),
        });
    }
    child.ok_or_else(|| Error::task(pid, format!("clone returned {r} without a fork event")))
}

/// A child the clone made before the injection failed: it must not run.
fn kill_stray(child: Option<pid_t>) {
    if let Some(c) = child {
        // SAFETY: kill and reap (as its tracer) the stopped child we made.
        unsafe {
            libc::kill(c, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(c, &mut st, libc::__WALL);
        }
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        if !self.alive {
            return;
        }
        // Not waited for: tearing down a large address space takes the
        // kernel a while (~0.4 s per GiB here), and the source must not
        // linger for it. Its parent reaps it.
        // SAFETY: kill(2) of the twin we made.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
    }
}

/// The task's scheduling attributes if it is a SCHED_DEADLINE task without
/// reset-on-fork (one the kernel will not let clone).
fn deadline_without_reset_on_fork(task: pid_t) -> Result<Option<SchedAttr>> {
    let attr = sched_getattr(task)?;
    Ok(
        (attr.policy == SCHED_DEADLINE && attr.flags & SCHED_FLAG_RESET_ON_FORK == 0)
            .then_some(attr),
    )
}
