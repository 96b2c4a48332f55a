//! Task state that is neither memory nor files: signals, rseq, robust
//! futexes, credentials-free process attributes.

use crate::error::{Error, Result};
use crate::image::messages::{AltStack, Core, PendingSignal, Rlimit, Rseq, SigAction};
use crate::inject::Injector;
use crate::proc;
use crate::sys::syscalls::get_robust_list;
use crate::sys::Tracee;

/// Signals whose action cannot be read or changed.
pub(crate) fn is_fixed_signal(sig: i32) -> bool {
    sig == libc::SIGKILL || sig == libc::SIGSTOP
}

/// Number of resources prlimit knows (RLIMIT_NLIMITS).
pub(crate) const RLIMITS: u32 = 16;

pub(crate) struct Collected {
    pub core: Core,
    pub brk: u64,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// State only the task itself can tell: read with injected syscalls.
pub(crate) fn collect_injected(inj: &mut Injector) -> Result<Collected> {
    let scratch = inj.map_scratch(None, 4096)?;
    let buf = scratch.addr;
    let mut core = Core::default();
    for sig in 1..=64 {
        if is_fixed_signal(sig) {
            continue;
        }
        inj.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, 0, buf, 8],
        )?;
        let b = inj.get(0, 32)?;
        let act = SigAction {
            sig,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 8),
            restorer: u64_at(&b, 16),
            mask: u64_at(&b, 24),
        };
        if act.handler != 0 || act.flags != 0 || act.mask != 0 {
            core.sigactions.push(act);
        }
    }
    inj.call("sigaltstack", libc::SYS_sigaltstack, &[0, buf])?;
    let b = inj.get(0, 24)?;
    let flags = u64_at(&b, 8) as u32 as i32;
    if flags & libc::SS_DISABLE == 0 {
        core.altstack = Some(AltStack {
            sp: u64_at(&b, 0),
            flags: flags & !libc::SS_ONSTACK,
            size: u64_at(&b, 16),
        });
    }
    let brk = inj.call("brk", libc::SYS_brk, &[0])?;
    inj.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, buf],
    )?;
    core.clear_child_tid = u64_at(&inj.get(0, 8)?, 0);
    core.personality = inj.call("personality", libc::SYS_personality, &[0xffff_ffff])? as u32;
    inj.call(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, buf],
    )?;
    core.pdeath_signal = u64_at(&inj.get(0, 8)?, 0) as u32 as i32;
    inj.unmap_scratch()?;
    Ok(Collected { core, brk })
}

/// State readable from outside: ptrace requests, /proc, prlimit.
pub(crate) fn collect_external(tracee: &Tracee, c: &mut Collected) -> Result<()> {
    let pid = tracee.pid;
    let core = &mut c.core;
    for shared in [false, true] {
        for info in tracee.pending_signals(shared)? {
            let signo = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
            core.pending.push(PendingSignal {
                shared,
                signo,
                siginfo: info.to_vec(),
            });
        }
    }
    let rseq = tracee.rseq_config()?;
    if rseq.rseq_abi_pointer != 0 {
        core.rseq = Some(Rseq {
            ptr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        });
    }
    let (head, len) = get_robust_list(pid)?;
    core.robust_list_head = head;
    core.robust_list_len = len;
    for resource in 0..RLIMITS {
        let (cur, max) = super::creds::rlimit(pid, resource)?;
        core.rlimits.push(Rlimit { resource, cur, max });
    }
    let status = proc::status::read_status(pid)?;
    core.comm = status.name.clone();
    core.umask = status
        .umask
        .ok_or_else(|| Error::task(pid, "no Umask in /proc/PID/status"))?;
    let root = proc::read_link(format!("/proc/{pid}/root"))?;
    if root != "/" {
        return Err(Error::unsupported(
            pid,
            format!("root directory {root} (chroot)"),
        ));
    }
    core.cwd = proc::read_link(format!("/proc/{pid}/cwd"))?;
    if core.cwd.ends_with(" (deleted)") {
        return Err(Error::unsupported(
            pid,
            format!("working directory was removed: {}", core.cwd),
        ));
    }
    Ok(())
}
