//! Task state that is neither memory nor files: signals, rseq, robust
//! futexes, credentials-free process attributes.

use super::creds::{PR_GET_DUMPABLE, PR_GET_MDWE, PR_GET_NO_NEW_PRIVS, PR_GET_SECUREBITS};
use crate::error::{Error, Result};
use crate::image::messages::{
    AltStack, Attrs, Core, Itimer, PendingSignal, PosixTimer, Rlimit, Rseq, Sched, SigAction,
    ThreadCore,
};
use crate::inject::{Call, Injector};
use crate::proc;
use crate::sys::sched;
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
    /// mlockall(MCL_FUTURE[|MCL_ONFAULT]) in force (see `probe_lock_future`).
    pub lock_future: u32,
    /// PR_GET_MEMORY_MERGE (KSM merge-any), for the memory layout of the task image.
    pub ksm_merge_any: bool,
    /// The prctl-only credentials, for [`super::creds::collect`].
    pub prctl_creds: super::creds::PrctlCreds,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Where each injected read of [`collect_injected`] leaves its answer in
/// the scratch area.
mod slot {
    /// The action of signal N at N * 32.
    pub const SIGACTION: u64 = 0;
    pub const ALTSTACK: u64 = 65 * 32;
    pub const TID_ADDRESS: u64 = ALTSTACK + 32;
    pub const PDEATHSIG: u64 = TID_ADDRESS + 8;
    pub const SUBREAPER: u64 = PDEATHSIG + 8;
    pub const TSC: u64 = SUBREAPER + 8;
    pub const XCOMP_PERM: u64 = TSC + 8;
    /// Interval timer i (ITIMER_REAL, _VIRTUAL, _PROF) at + i * 32.
    pub const ITIMERS: u64 = XCOMP_PERM + 8;
    /// POSIX timer i at + i * 32.
    pub const TIMERS: u64 = ITIMERS + 3 * 32;
}

const ITIMERS: [i32; 3] = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF];

/// State only the task itself can tell, read with injected syscalls: every
/// read in one batch (signal actions, altstack, brk, prctl and arch_prctl
/// state, membarrier registrations, timers, the prctl-only credentials),
/// each answering into its own slot of the scratch area, read back at once.
pub(crate) fn collect_injected(inj: &mut Injector) -> Result<Collected> {
    let pid = inj.pid();
    let locked_before = locked_kb(pid)?;
    let timers = posix_timers(pid)?;
    let len = (slot::TIMERS + 32 * timers.len() as u64).next_multiple_of(4096);
    let buf = inj.map_batch_scratch(None, len)?.addr;
    let lock_future = probe_lock_future(pid, buf, locked_before)?;
    let at = |off: u64| buf + off;
    let prctl = |name, op: u64, arg: u64| Call::checked(name, libc::SYS_prctl, &[op, arg, 0, 0, 0]);
    let signals: Vec<i32> = (1..=64).filter(|&s| !is_fixed_signal(s)).collect();
    let mut calls: Vec<Call> = signals
        .iter()
        .map(|&sig| {
            let act = at(slot::SIGACTION + 32 * sig as u64);
            Call::checked(
                "rt_sigaction",
                libc::SYS_rt_sigaction,
                &[sig as u64, 0, act, 8],
            )
        })
        .collect();
    let index = |calls: &mut Vec<Call>, c: Call| {
        calls.push(c);
        calls.len() - 1
    };
    let altstack = at(slot::ALTSTACK);
    index(
        &mut calls,
        Call::checked("sigaltstack", libc::SYS_sigaltstack, &[0, altstack]),
    );
    let brk = index(&mut calls, Call::checked("brk", libc::SYS_brk, &[0]));
    let tid_address = at(slot::TID_ADDRESS);
    let op = libc::PR_GET_TID_ADDRESS as u64;
    index(
        &mut calls,
        prctl("prctl(PR_GET_TID_ADDRESS)", op, tid_address),
    );
    let personality = Call::checked("personality", libc::SYS_personality, &[0xffff_ffff]);
    let personality = index(&mut calls, personality);
    let op = libc::PR_GET_PDEATHSIG as u64;
    index(
        &mut calls,
        prctl("prctl(PR_GET_PDEATHSIG)", op, at(slot::PDEATHSIG)),
    );
    let thp = index(
        &mut calls,
        prctl("prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE, 0),
    );
    let mce = index(
        &mut calls,
        prctl("prctl(PR_MCE_KILL_GET)", PR_MCE_KILL_GET, 0),
    );
    let subreaper = at(slot::SUBREAPER);
    index(
        &mut calls,
        prctl(
            "prctl(PR_GET_CHILD_SUBREAPER)",
            PR_GET_CHILD_SUBREAPER,
            subreaper,
        ),
    );
    index(
        &mut calls,
        prctl("prctl(PR_GET_TSC)", PR_GET_TSC, at(slot::TSC)),
    );
    let cpuid = Call::raw(
        "arch_prctl(ARCH_GET_CPUID)",
        libc::SYS_arch_prctl,
        &[ARCH_GET_CPUID, 0],
    );
    let cpuid = index(&mut calls, cpuid);
    let xcomp = [ARCH_GET_XCOMP_PERM, at(slot::XCOMP_PERM)];
    let xcomp = index(
        &mut calls,
        Call::raw(
            "arch_prctl(ARCH_GET_XCOMP_PERM)",
            libc::SYS_arch_prctl,
            &xcomp,
        ),
    );
    let registrations = [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0];
    let membarrier = index(
        &mut calls,
        Call::raw("membarrier", libc::SYS_membarrier, &registrations),
    );
    for (i, which) in ITIMERS.iter().enumerate() {
        let out = at(slot::ITIMERS + 32 * i as u64);
        index(
            &mut calls,
            Call::checked("getitimer", libc::SYS_getitimer, &[*which as u64, out]),
        );
    }
    for (i, t) in timers.iter().enumerate() {
        let out = at(slot::TIMERS + 32 * i as u64);
        let c = Call::checked(
            "timer_gettime",
            libc::SYS_timer_gettime,
            &[t.id as u64, out],
        );
        index(&mut calls, c);
    }
    let securebits = index(
        &mut calls,
        prctl("prctl(PR_GET_SECUREBITS)", PR_GET_SECUREBITS, 0),
    );
    let nnp = index(
        &mut calls,
        prctl("prctl(PR_GET_NO_NEW_PRIVS)", PR_GET_NO_NEW_PRIVS, 0),
    );
    let dumpable = index(
        &mut calls,
        prctl("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0),
    );
    let mdwe = Call::raw(
        "prctl(PR_GET_MDWE)",
        libc::SYS_prctl,
        &[PR_GET_MDWE, 0, 0, 0, 0],
    );
    let mdwe = index(&mut calls, mdwe);
    let merge = [PR_GET_MEMORY_MERGE, 0, 0, 0, 0];
    let merge = Call::raw("prctl(PR_GET_MEMORY_MERGE)", libc::SYS_prctl, &merge);
    let merge = index(&mut calls, merge);
    let r = inj.batch(&calls)?;
    let b = inj.get(0, len as usize)?;
    let word = |off: u64| u64_at(&b, off as usize);

    let mut core = Core::default();
    for &sig in &signals {
        let off = slot::SIGACTION + 32 * sig as u64;
        let act = SigAction {
            sig,
            handler: word(off),
            flags: word(off + 8),
            restorer: word(off + 16),
            mask: word(off + 24),
        };
        if act.handler != 0 || act.flags != 0 || act.mask != 0 {
            core.sigactions.push(act);
        }
    }
    let flags = word(slot::ALTSTACK + 8) as u32 as i32;
    if flags & libc::SS_DISABLE == 0 {
        core.altstack = Some(AltStack {
            sp: word(slot::ALTSTACK),
            flags: flags & !libc::SS_ONSTACK,
            size: word(slot::ALTSTACK + 16),
        });
    }
    core.clear_child_tid = word(slot::TID_ADDRESS);
    core.personality = r[personality] as u32;
    core.pdeath_signal = word(slot::PDEATHSIG) as u32 as i32;
    let mut a = Attrs {
        thp_disable: r[thp] as u32,
        mce_kill: r[mce] as i32,
        child_subreaper: word(slot::SUBREAPER) as u32 != 0,
        tsc: word(slot::TSC) as u32 as i32,
        ..Default::default()
    };
    // ENODEV: no CPUID faulting on this CPU, so cpuid always works.
    a.cpuid = match r[cpuid] {
        r if r >= 0 => r as i32,
        r if r == -(libc::ENODEV as i64) => 1,
        r => {
            return Err(Error::task(
                pid,
                format!("arch_prctl(ARCH_GET_CPUID) failed: errno {}", -r),
            ))
        }
    };
    // EINVAL before 5.16: no dynamically permitted xfeatures at all.
    a.xcomp_perm = match r[xcomp] {
        0 => word(slot::XCOMP_PERM),
        r if r == -(libc::EINVAL as i64) => 0,
        r => {
            return Err(Error::task(
                pid,
                format!("arch_prctl(ARCH_GET_XCOMP_PERM) failed: errno {}", -r),
            ))
        }
    };
    a.membarrier = membarrier_registrations(inj, r[membarrier])?;
    for (i, which) in ITIMERS.iter().enumerate() {
        let off = slot::ITIMERS + 32 * i as u64;
        let us = |o: u64| word(off + o) * 1_000_000 + word(off + o + 8);
        let t = Itimer {
            which: *which,
            interval_us: us(0),
            value_us: us(16),
        };
        // An expired ITIMER_REAL whose SIGALRM is still queued reads 0
        // with its interval: the kernel re-arms it when the signal is
        // taken, so the interval alone is state too.
        if t.value_us != 0 || t.interval_us != 0 {
            a.itimers.push(t);
        }
    }
    for (i, mut t) in timers.into_iter().enumerate() {
        let off = slot::TIMERS + 32 * i as u64;
        let ns = |o: u64| word(off + o) * 1_000_000_000 + word(off + o + 8);
        t.interval_ns = ns(0);
        t.remaining_ns = ns(16);
        a.posix_timers.push(t);
    }
    core.attrs = Some(a);
    // EINVAL: a kernel without MDWE, where nothing can be set either.
    let mdwe = match r[mdwe] {
        r if r == -(libc::EINVAL as i64) => 0,
        r if r < 0 => {
            return Err(Error::task(
                pid,
                format!("injected prctl(PR_GET_MDWE) failed: {}", -r),
            ))
        }
        r => r as u64,
    };
    let prctl_creds = super::creds::PrctlCreds {
        securebits: r[securebits] as u32,
        no_new_privs: r[nnp] != 0,
        dumpable: r[dumpable] as u64,
        mdwe,
    };
    // KSM merge-any (6.4+; EINVAL before, or without CONFIG_KSM, where
    // nothing can have set it). /proc/PID/ksm_stat does not show it on 6.12
    // (the dump read it there and lost it: prctl_memory_merge failed).
    let ksm_merge_any = match r[merge] {
        r if r == -(libc::EINVAL as i64) => false,
        r if r < 0 => {
            return Err(Error::task(
                pid,
                format!("injected prctl(PR_GET_MEMORY_MERGE) failed: {}", -r),
            ))
        }
        r => r != 0,
    };
    inj.unmap_scratch()?;
    Ok(Collected {
        core,
        brk: r[brk] as u64,
        lock_future,
        ksm_merge_any,
        prctl_creds,
    })
}

/// The state of one non-leader thread: read with ptrace and from /proc,
/// and (altstack, clear_child_tid) with a burst of calls injected into
/// that thread itself.
pub(crate) fn collect_thread(f: &mut super::Frozen, gadget: u64) -> Result<ThreadCore> {
    let tid = f.tracee.pid;
    let mut t = ThreadCore {
        tid,
        regs: Some(crate::regs::to_image(&f.regs)),
        xstate: f.tracee.xstate()?,
        sigmask: f.sigmask,
        ..Default::default()
    };
    for info in f.tracee.pending_signals(false)? {
        let signo = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        t.pending.push(PendingSignal {
            shared: false,
            signo,
            siginfo: info.to_vec(),
        });
    }
    let rseq = f.tracee.rseq_config()?;
    if rseq.rseq_abi_pointer != 0 {
        t.rseq = Some(Rseq {
            ptr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            signature: rseq.signature,
        });
    }
    (t.robust_list_head, t.robust_list_len) = get_robust_list(tid)?;
    t.comm = proc::task::read_comm(tid)?;
    t.sched = Some(sched_of(tid)?);
    t.timer_slack_ns = proc_number(tid, "timerslack_ns")?;
    // One batch: altstack at 0, clear_child_tid at 32, pdeath signal at
    // 40; securebits and no_new_privs are results.
    let (altstack, ctid, own) = f.burst(gadget, |inj| {
        let buf = inj.map_batch_scratch(None, 4096)?.addr;
        let prctl =
            |name, op: u64, arg: u64| Call::checked(name, libc::SYS_prctl, &[op, arg, 0, 0, 0]);
        let r = inj.batch(&[
            Call::checked("sigaltstack", libc::SYS_sigaltstack, &[0, buf]),
            prctl(
                "prctl(PR_GET_TID_ADDRESS)",
                libc::PR_GET_TID_ADDRESS as u64,
                buf + 32,
            ),
            prctl(
                "prctl(PR_GET_PDEATHSIG)",
                libc::PR_GET_PDEATHSIG as u64,
                buf + 40,
            ),
            prctl("prctl(PR_GET_SECUREBITS)", PR_GET_SECUREBITS, 0),
            prctl("prctl(PR_GET_NO_NEW_PRIVS)", PR_GET_NO_NEW_PRIVS, 0),
        ])?;
        let b = inj.get(0, 48)?;
        let flags = u64_at(&b, 8) as u32 as i32;
        let altstack = (flags & libc::SS_DISABLE == 0).then(|| AltStack {
            sp: u64_at(&b, 0),
            flags: flags & !libc::SS_ONSTACK,
            size: u64_at(&b, 16),
        });
        let ctid = u64_at(&b, 32);
        let pdeath = u64_at(&b, 40) as u32 as i32;
        let own = (r[3] as u32, r[4] != 0);
        inj.unmap_scratch()?;
        Ok((altstack, ctid, (pdeath, own)))
    })?;
    t.altstack = altstack;
    t.clear_child_tid = ctid;
    t.pdeath_signal = own.0;
    t.creds = Some(super::creds::thread_creds(tid, own.1)?);
    Ok(t)
}

/// VmLck of /proc/PID/status (mm->locked_vm), in kB.
fn locked_kb(pid: i32) -> Result<u64> {
    let text = read_proc(pid, "status")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error::task(pid, "no VmLck in /proc/PID/status"))
}

/// mlockall(MCL_FUTURE) lives in the mm's default VMA flags, which /proc
/// does not show; but every new mapping gets them. The scratch page just
/// mapped by an injected mmap is such a mapping: it is counted in VmLck
/// exactly when MCL_FUTURE is in force, and mmap populated it unless
/// MCL_ONFAULT is in force too. (Reading its VmFlags in smaps would say the
/// same, but smaps walks every page table of the task: ~14 ms per GiB of
/// memory, inside a burst of injected calls.) Must run before anything
/// touches the scratch page.
fn probe_lock_future(pid: i32, scratch: u64, locked_before_kb: u64) -> Result<u32> {
    if locked_kb(pid)? <= locked_before_kb {
        return Ok(0);
    }
    let populated = proc::pagemap::PagemapReader::open(pid)?
        .entry(scratch)?
        .present();
    Ok(match populated {
        true => libc::MCL_FUTURE as u32,
        false => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32,
    })
}

const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_GET_MEMORY_MERGE: u64 = 68;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_MCE_KILL_GET: u64 = 34;
const PR_GET_TSC: u64 = 25;
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: u64 = 1 << 3;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: u64 = 1 << 5;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: u64 = 1 << 7;

/// The task's membarrier registrations, as the REGISTER_* command bits.
/// Kernels before 6.3 have no GET_REGISTRATIONS: there each private
/// expedited barrier is tried (it fails with EPERM unless registered, and
/// is harmless otherwise); a GLOBAL_EXPEDITED registration cannot be seen
/// that way (the global barrier works without it) and is not restored.
/// `r`: what MEMBARRIER_CMD_GET_REGISTRATIONS gave.
fn membarrier_registrations(inj: &mut Injector, r: i64) -> Result<u32> {
    let pid = inj.pid();
    if r >= 0 {
        return Ok(r as u32);
    }
    if r != -(libc::EINVAL as i64) {
        return Err(Error::task(
            pid,
            format!(
                "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS) failed: errno {}",
                -r
            ),
        ));
    }
    let mut regs = 0;
    for cmd in [
        MEMBARRIER_CMD_PRIVATE_EXPEDITED,
        MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
        MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
    ] {
        // The REGISTER_ command is the barrier's bit shifted once.
        if inj.raw(libc::SYS_membarrier, &[cmd, 0, 0])? == 0 {
            regs |= (cmd << 1) as u32;
        }
    }
    Ok(regs)
}

/// The task state only the tracer can read (ptrace requests): pending
/// signals, rseq. The rest: [`collect_outside`].
pub(crate) fn collect_traced(tracee: &Tracee, c: &mut Collected) -> Result<()> {
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
    Ok(())
}

/// The rest of the task state read from outside the stopped task: /proc
/// and calls any thread of the engine may make (no ptrace request), so a
/// tree's finishing threads read it rather than the tracer.
pub(crate) fn collect_outside(pid: i32, core: &mut Core) -> Result<()> {
    let (head, len) = get_robust_list(pid)?;
    core.robust_list_head = head;
    core.robust_list_len = len;
    // /proc/PID/limits read once for all of them (it was read once per
    // limit: 16 times per process).
    let limits = super::creds::limits_text(pid)?;
    for resource in 0..RLIMITS {
        let (cur, max) = super::creds::limit_of(pid, &limits, resource)?;
        core.rlimits.push(Rlimit { resource, cur, max });
    }
    let status = proc::status::read_status(pid)?;
    core.comm = status.name.clone();
    core.umask = status
        .umask
        .ok_or_else(|| Error::task(pid, "no Umask in /proc/PID/status"))?;
    // refuse::task_state has refused a chroot and a removed cwd.
    collect_attrs_external(pid, core)?;
    core.cwd = proc::read_link(format!("/proc/{pid}/cwd"))?;
    Ok(())
}

/// What [`refuse_attrs`] compares of the engine itself, read once (none of
/// it changes while the engine runs; a tree's members are checked two or
/// three times each).
struct OwnState {
    speculation: Vec<String>,
    oom_score_adj: i32,
    cap_resource: bool,
}

fn own_state() -> Result<&'static OwnState> {
    static OWN: std::sync::OnceLock<OwnState> = std::sync::OnceLock::new();
    if let Some(own) = OWN.get() {
        return Ok(own);
    }
    let me = std::process::id() as i32;
    let status = read_proc(me, "status")?;
    let own = OwnState {
        speculation: crate::speculation::lines(&status)
            .into_iter()
            .map(String::from)
            .collect(),
        oom_score_adj: proc_number(me, "oom_score_adj")?,
        cap_resource: proc::parse_status(&status)
            .map_err(|e| Error::task(me, format!("status: {e}")))?
            .has_cap_eff(proc::status::cap::SYS_RESOURCE),
    };
    Ok(OWN.get_or_init(|| own))
}

fn read_proc(pid: i32, file: &str) -> Result<String> {
    let path = proc::pid_path(pid, file);
    crate::proc::read_small_string(&path).map_err(|e| Error::io("reading", path, e))
}

fn proc_number<T: std::str::FromStr>(pid: i32, file: &str) -> Result<T> {
    let text = read_proc(pid, file)?;
    text.trim()
        .parse()
        .map_err(|_| Error::task(pid, format!("/proc/{pid}/{file} reads {:?}", text.trim())))
}

/// The Speculation* lines of a /proc/PID/status.
fn speculation(pid: i32) -> Result<String> {
    Ok(read_proc(pid, "status")?
        .lines()
        .filter(|l| l.starts_with("Speculation"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Scheduling attributes and CPU affinity of one task (a process's leader
/// or any of its threads), read from outside.
fn sched_of(tid: i32) -> Result<Sched> {
    let s = sched::sched_getattr(tid)?;
    Ok(Sched {
        policy: s.policy,
        flags: s.flags & (sched::SCHED_FLAG_RESET_ON_FORK | sched::SCHED_FLAG_DL),
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: s.util_min,
        util_max: s.util_max,
        affinity: sched::getaffinity(tid)?,
    })
}

/// Scheduling, affinity, OOM score, timer slack and speculation control:
/// read from outside.
fn collect_attrs_external(pid: i32, core: &mut Core) -> Result<()> {
    let a = core.attrs.get_or_insert_with(Attrs::default);
    a.sched = Some(sched_of(pid)?);
    a.oom_score_adj = proc_number(pid, "oom_score_adj")?;
    a.timer_slack_ns = proc_number(pid, "timerslack_ns")?;
    a.speculation = speculation(pid)?;
    Ok(())
}

/// PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE: what PR_SET_IO_FLUSHER sets.
const PF_IO_FLUSHER: u32 = 0x0008_0000 | 0x0010_0000;

/// Process attributes that cannot be restored yet, refused by name from
/// outside (run by pre-dump and dump through `refuse::task_state`).
pub(crate) fn refuse_attrs(pid: i32) -> Result<()> {
    let timers = posix_timers(pid)?;
    if !timers.is_empty() && !can_restore_timer_ids() {
        return Err(Error::unsupported(
            pid,
            format!(
                "{} POSIX timer(s): this kernel cannot recreate them with their ids (no PR_TIMER_CREATE_RESTORE_IDS)",
                timers.len()
            ),
        ));
    }
    let stat = proc::stat::read_stat(pid)?;
    if stat.flags & PF_IO_FLUSHER == PF_IO_FLUSHER {
        return Err(Error::unsupported(
            pid,
            "PR_SET_IO_FLUSHER is set: restoring it needs CAP_SYS_RESOURCE",
        ));
    }
    // The restored task starts from this engine's speculation control
    // (a forked stub inherits it); only per-task states can be set back.
    let own = own_state()?;
    let theirs = read_proc(pid, "status")?;
    let theirs = crate::speculation::lines(&theirs);
    let ours: Vec<&str> = own.speculation.iter().map(String::as_str).collect();
    let bad = crate::speculation::unreachable(&theirs, &ours);
    if !bad.is_empty() {
        return Err(Error::unsupported(
            pid,
            format!(
                "speculation control {:?} is system-wide and differs from the engine's {:?}",
                bad, ours
            ),
        ));
    }
    let adj: i32 = proc_number(pid, "oom_score_adj")?;
    let (ours, cap_resource) = (own.oom_score_adj, own.cap_resource);
    if adj < ours && !cap_resource {
        return Err(Error::unsupported(
            pid,
            format!(
                "oom_score_adj {adj} is below the engine's ({ours}): setting it needs CAP_SYS_RESOURCE"
            ),
        ));
    }
    Ok(())
}

const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_GET: libc::c_ulong = 2;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// Whether this kernel can create a POSIX timer with a chosen id.
fn can_restore_timer_ids() -> bool {
    // SAFETY: a getter prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    r >= 0
}

/// The task's POSIX timers as /proc/PID/timers lists them (no times yet).
/// Refuses what restore could not recreate: a timer signalling another
/// task, or on another process's CPU clock.
pub(crate) fn posix_timers(pid: i32) -> Result<Vec<PosixTimer>> {
    parse_timers(pid, &read_proc(pid, "timers")?)
}

/// Whether `tid` is a thread of process `pid` (thread ids live in the
/// same space as pids: /proc/PID/task/TID exists only for its own).
fn is_thread_of(pid: i32, tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

fn parse_timers(pid: i32, text: &str) -> Result<Vec<PosixTimer>> {
    let bad = |what: String| Error::unsupported(pid, what);
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if key == "ID" {
            let id = value
                .parse()
                .map_err(|_| bad(format!("/proc/{pid}/timers: bad ID {value:?}")))?;
            out.push(PosixTimer {
                id,
                ..Default::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else {
            continue;
        };
        match key {
            "signal" => {
                let (signo, val) = value.split_once('/').unwrap_or((value, "0"));
                t.signo = signo.parse().unwrap_or(-1);
                t.value = u64::from_str_radix(val, 16).unwrap_or(u64::MAX);
                if t.signo < 0 || t.value == u64::MAX {
                    return Err(bad(format!("POSIX timer {}: signal {value:?}", t.id)));
                }
            }
            "notify" => {
                // "signal/pid.N", "signal/tid.N", "none/pid.N"
                let (how, target) = value.split_once('/').unwrap_or((value, ""));
                let (kind, who) = target.split_once('.').unwrap_or((target, ""));
                let base = match how {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    _ => {
                        return Err(bad(format!(
                            "POSIX timer {} with notification {value:?}",
                            t.id
                        )))
                    }
                };
                t.notify = base | if kind == "tid" { SIGEV_THREAD_ID } else { 0 };
                let who = who.parse::<i32>().ok();
                match who {
                    Some(w) if w == pid => {}
                    // A thread of this process: recreated after the threads.
                    Some(w) if kind == "tid" && is_thread_of(pid, w) => t.target_tid = w,
                    _ => {
                        return Err(bad(format!(
                            "POSIX timer {} signals another task ({value:?})",
                            t.id
                        )))
                    }
                }
            }
            "ClockID" => {
                t.clock_id = value
                    .parse()
                    .map_err(|_| bad(format!("POSIX timer {}: clock {value:?}", t.id)))?;
                // CPU clocks encode a pid: ~(clock >> 3); 0 means "self".
                if t.clock_id < 0 && !(t.clock_id >> 3) != 0 {
                    return Err(bad(format!(
                        "POSIX timer {} on the CPU clock of pid {}",
                        t.id,
                        !(t.clock_id >> 3)
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As 6.18 prints them (newest first).
    const TIMERS: &str = "ID: 45\nsignal: 0/0000000000000000\nnotify: none/pid.100\nClockID: -6\n\
ID: 44\nsignal: 12/0000000000000000\nnotify: signal/tid.100\nClockID: 7\n\
ID: 42\nsignal: 10/0000000000001234\nnotify: signal/pid.100\nClockID: 1\n";

    #[test]
    fn timers_parse() {
        let t = parse_timers(100, TIMERS).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].id, t[0].notify, t[0].clock_id), (45, SIGEV_NONE, -6));
        assert_eq!(
            (t[1].signo, t[1].notify),
            (12, SIGEV_SIGNAL | SIGEV_THREAD_ID)
        );
        assert_eq!(
            (t[2].id, t[2].signo, t[2].value, t[2].clock_id),
            (42, 10, 0x1234, 1)
        );
    }

    /// A SIGEV_THREAD_ID timer aimed at one of the process's own threads
    /// is kept with its target; one aimed at a thread of another process
    /// is refused.
    #[test]
    fn timers_aimed_at_own_threads_are_kept() {
        let pid = std::process::id() as i32;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw()).ok();
            done_rx.recv().ok();
        });
        let tid = tid_rx.recv().expect("thread started");
        let text = format!("ID: 1\nsignal: 12/0\nnotify: signal/tid.{tid}\nClockID: 1\n");
        let t = parse_timers(pid, &text);
        done_tx.send(()).ok();
        thread.join().ok();
        let t = t.expect("own thread's timer kept");
        assert_eq!(
            (t[0].target_tid, t[0].notify),
            (tid, SIGEV_SIGNAL | SIGEV_THREAD_ID)
        );
        let e = parse_timers(pid, &text.replace(&format!("tid.{tid}"), "tid.1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("signals another task"), "{e}");
    }

    #[test]
    fn timers_of_others_are_refused() {
        let other = TIMERS.replace("signal/pid.100", "signal/pid.7");
        let e = parse_timers(100, &other).unwrap_err().to_string();
        assert!(e.contains("signals another task"), "{e}");
        // make_process_cpuclock(55, CPUCLOCK_SCHED) = (~55 << 3) | 2
        let clock = (!55i32 << 3) | 2;
        let other = TIMERS.replace("ClockID: -6", &format!("ClockID: {clock}"));
        let e = parse_timers(100, &other).unwrap_err().to_string();
        assert!(e.contains("CPU clock of pid 55"), "{e}");
    }
}
