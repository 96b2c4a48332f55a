//! `crust dump`: freeze → check → collect → write → kill (or resume).
//!
//! Until the images are complete nothing irreversible happens: any error
//! drops the `Frozen` guard, which puts the registers and signal mask back
//! and detaches, so the task runs on as if never touched.

mod files;
mod mem;
mod task;

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{Inventory, PsTree, TaskEntry};
use crate::image::{ImageDir, Kind, FORMAT_VERSION};
use crate::inject::{find_syscall_gadget, Injector};
use crate::proc;
use crate::sys::{Regs, Stop, Tracee};

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Resume the task after dumping instead of killing it.
    pub leave_running: bool,
}

/// What a dump did, for the log and `--display-stats`.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub phases: crate::phases::Phases,
    pub frozen_ms: f64,
    pub pages_written: u64,
    pub bytes_written: u64,
}

/// A task held in a ptrace stop. Dropping it resumes the task unharmed.
pub(crate) struct Frozen {
    pub tracee: Tracee,
    pub regs: Regs,
    pub sigmask: u64,
    regs_dirty: bool,
    mask_dirty: bool,
    released: bool,
}

impl Frozen {
    fn freeze(pid: pid_t) -> Result<Frozen> {
        let tracee = Tracee::seize(pid, false)?;
        let mut f = Frozen {
            tracee,
            regs: zeroed_regs(),
            sigmask: 0,
            regs_dirty: false,
            mask_dirty: false,
            released: false,
        };
        f.tracee.interrupt()?;
        f.regs = f.tracee.regs()?;
        f.sigmask = f.tracee.sigmask()?;
        Ok(f)
    }

    /// Blocks every signal while we inject, so none is delivered (and lost
    /// to us) in the middle; the original mask is restored on release.
    fn block_signals(&mut self) -> Result<()> {
        self.mask_dirty = true;
        self.tracee.set_sigmask(!0)
    }

    fn injector(&mut self, gadget: u64) -> Injector<'_> {
        self.regs_dirty = true;
        Injector::new(&self.tracee, self.regs, gadget)
    }

    fn resume(&mut self) -> Result<()> {
        self.released = true;
        if self.mask_dirty {
            self.tracee.set_sigmask(self.sigmask)?;
        }
        if self.regs_dirty {
            // Injection left the task at a syscall-exit stop: put its own
            // registers back and leave through the signal path, so that an
            // interrupted syscall restarts as the kernel would have done.
            self.tracee.set_regs(&self.regs)?;
            self.tracee.trap_in_signal_path()?;
        }
        self.tracee.detach()
    }

    /// The point of no return: the images are complete, the task goes.
    fn kill(&mut self) -> Result<()> {
        self.released = true;
        let pid = self.tracee.pid;
        // SAFETY: plain kill(2) of the task we hold.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(Error::sys("kill", pid, nix::errno::Errno::last()));
        }
        loop {
            match self.tracee.wait()? {
                Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
                _ => {
                    let _ = self.tracee.cont(0);
                }
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.resume() {
                eprintln!("crust: could not resume pid {}: {e}", self.tracee.pid);
            }
        }
    }
}

pub(crate) fn zeroed_regs() -> Regs {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Dumps the single-threaded task `pid` into `dir`.
pub fn dump(pid: pid_t, dir: &Path, opts: &DumpOptions) -> Result<DumpStats> {
    let images = ImageDir::create(dir)?;
    let start = Instant::now();
    let mut phases = crate::phases::Phases::default();
    let mut frozen = Frozen::freeze(pid)?;
    phases.mark("freeze");

    // Refuse what we cannot restore before touching anything.
    let threads = proc::task::task_ids(pid)?;
    if threads.len() != 1 {
        return Err(Error::unsupported(
            pid,
            format!(
                "{} threads (only single-threaded tasks are supported yet)",
                threads.len()
            ),
        ));
    }
    let vmas = proc::maps::read_smaps(pid)?;
    mem::check_vmas(pid, &vmas)?;
    let fd_plan = files::plan(pid)?;

    frozen.block_signals()?;
    let vdso = vmas.iter().find(|v| v.path == "[vdso]").ok_or_else(|| {
        Error::unsupported(pid, "no [vdso] mapping to run injected syscalls from")
    })?;
    let gadget = find_syscall_gadget(pid, vdso.start, vdso.end)?;
    let xstate = frozen.tracee.xstate()?;
    let regs = frozen.regs;
    let mut core = {
        let mut inj = frozen.injector(gadget);
        task::collect_injected(&mut inj)?
    };
    task::collect_external(&frozen.tracee, &mut core)?;
    core.core.regs = Some(crate::regs::to_image(&regs));
    core.core.xstate = xstate;
    core.core.sigmask = frozen.sigmask;

    phases.mark("task state");
    // Memory: the layout is read again now that the scratch page is gone.
    let vmas = proc::maps::read_smaps(pid)?;
    mem::check_vmas(pid, &vmas)?;
    let brk = core.brk;
    let (mm, pagemap, mem_stats) = mem::dump(pid, &vmas, &images, brk)?;
    phases.mark("memory");
    let fds = files::dump(pid, &fd_plan)?;

    let stat = proc::stat::read_stat(pid)?;
    images.write(Kind::Core, Some(pid), &core.core)?;
    images.write(Kind::Mm, Some(pid), &mm)?;
    images.write(Kind::Fds, Some(pid), &fds)?;
    images.write(Kind::Pagemap, Some(pid), &pagemap)?;
    let tree = PsTree {
        tasks: vec![TaskEntry {
            pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            threads,
        }],
    };
    images.write(Kind::PsTree, None, &tree)?;
    // The inventory goes last: an image directory without it is incomplete.
    images.write(Kind::Inventory, None, &inventory(pid))?;

    phases.mark("files and images");
    let frozen_ms = start.elapsed().as_secs_f64() * 1e3;
    if opts.leave_running {
        frozen.resume()?;
    } else {
        frozen.kill()?;
    }
    phases.mark("release");
    Ok(DumpStats {
        phases,
        frozen_ms,
        pages_written: mem_stats.pages,
        bytes_written: mem_stats.pages * 4096,
    })
}

fn inventory(pid: pid_t) -> Inventory {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Inventory {
        format_version: FORMAT_VERSION,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        root_pid: pid,
        kind: "dump".into(),
        created_unix_secs: created,
        kernel,
    }
}
