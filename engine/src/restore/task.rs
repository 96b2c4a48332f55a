//! Per-task state: mm fields, signals, cwd, umask, rseq, robust list...

use crate::error::{Error, Result};
use crate::image::messages::{Attrs, Core, Mm, Sched};
use crate::inject::{Call, Injector};
use crate::sys::sched::{self, SchedAttr};
use crate::sys::syscalls::prlimit;

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PRCTL_MM_MAP_SIZE: usize = 104;
const RLIMIT_NOFILE: u32 = 7;

fn is_fixed_signal(sig: i32) -> bool {
    sig == libc::SIGKILL || sig == libc::SIGSTOP
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The engine's own signal actions (handler, flags, restorer, mask as
/// rt_sigaction gives them) when it forks a restore's first stub: every
/// stub of the restore starts with them (fork copies them; the stubs of a
/// tree are forked from that one before any is restored, and nothing sets
/// an action in a stub before `restore`). `None` for a signal whose action
/// could not be read: it is set in any case.
static STUB_ACTIONS: std::sync::Mutex<Option<[Option<[u64; 4]>; 64]>> = std::sync::Mutex::new(None);

/// Notes the engine's actions, for [`restore`], right before the first
/// stub is forked (the engine sets none of its own afterwards).
pub(crate) fn note_stub_actions() {
    let mut out = [None; 64];
    for sig in 1..=64i32 {
        let mut words = [0u64; 4];
        // SAFETY: rt_sigaction reading our own action for `sig` into a
        // buffer of the kernel's struct sigaction size (4 words), with an
        // 8-byte mask.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                words.as_mut_ptr(),
                8usize,
            )
        };
        if r == 0 {
            out[sig as usize - 1] = Some(words);
        }
    }
    if let Ok(mut g) = STUB_ACTIONS.lock() {
        *g = Some(out);
    }
}

/// Sets brk, code/data/stack/arg/env bounds, auxv and exe in one
/// PR_SET_MM_MAP (the per-field PR_SET_MM calls need CAP_SYS_RESOURCE),
/// and closes `exe_fd`, the executable opened by mem::map_vmas.
pub(crate) fn set_mm(inj: &mut Injector, mm: &Mm, exe_fd: u64) -> Result<()> {
    let auxv = inj.put(2048, &le(&mm.auxv))?;
    let mut map = le(&[
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv,
    ]);
    map.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    debug_assert_eq!(map.len(), PRCTL_MM_MAP_SIZE);
    let p = inj.put(0, &map)?;
    inj.batch(&[
        Call::checked(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            &[PR_SET_MM, PR_SET_MM_MAP, p, PRCTL_MM_MAP_SIZE as u64, 0],
        ),
        Call::checked("close", libc::SYS_close, &[exe_fd]),
    ])?;
    Ok(())
}

/// Lets the stub hold descriptors up to the hard limit while fds are rebuilt.
pub(crate) fn open_fd_limit(pid: i32) -> Result<()> {
    let (_, max) = prlimit(pid, RLIMIT_NOFILE, None)?;
    prlimit(pid, RLIMIT_NOFILE, Some((max, max)))?;
    Ok(())
}

/// Where [`restore`] puts its arguments in the scratch area.
mod slot {
    pub const CWD: u64 = 0;
    pub const COMM: u64 = 8192;
    /// The action of signal N at + N * 32.
    pub const SIGACTION: u64 = 8448;
    pub const ALTSTACK: u64 = SIGACTION + 65 * 32;
    /// Pending signals (128-byte siginfos), in batches of their own.
    pub const SIGINFO: u64 = 0;
}

/// The task's own state but memory, files and credentials, in one batch of
/// injected calls (the pending signals in batches after it).
pub(crate) fn restore(inj: &mut Injector, core: &Core) -> Result<()> {
    let pid = inj.pid();
    let mut calls = Vec::new();
    if core.cwd.len() as u64 >= slot::COMM {
        return Err(Error::task(pid, format!("cwd of {} bytes", core.cwd.len())));
    }
    let p = inj.put_cstr(slot::CWD, &core.cwd)?;
    calls.push(Call::checked("chdir", libc::SYS_chdir, &[p]));
    calls.push(Call::checked(
        "umask",
        libc::SYS_umask,
        &[core.umask as u64],
    ));
    if core.comm.len() as u64 >= slot::SIGACTION - slot::COMM {
        return Err(Error::task(
            pid,
            format!("comm of {} bytes", core.comm.len()),
        ));
    }
    let p = inj.put_cstr(slot::COMM, &core.comm)?;
    calls.push(Call::checked(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, p],
    ));

    // Every action is set, defaults included: the stub inherited the
    // engine's (the Rust runtime ignores SIGPIPE, for one). One the stub
    // holds already (the same four words) is not set again: ~60 injected
    // calls per process, for most of them a default the engine has too.
    let stub = STUB_ACTIONS.lock().ok().and_then(|g| *g);
    for sig in 1..=64i32 {
        if is_fixed_signal(sig) {
            continue;
        }
        let act = core.sigactions.iter().find(|a| a.sig == sig);
        let words = act.map_or([0; 4], |a| [a.handler, a.flags, a.restorer, a.mask]);
        if stub.is_some_and(|s: [Option<[u64; 4]>; 64]| s[sig as usize - 1] == Some(words)) {
            continue;
        }
        let p = inj.put(slot::SIGACTION + 32 * sig as u64, &le(&words))?;
        calls.push(Call::checked(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, p, 0, 8],
        ));
    }
    let ss = match &core.altstack {
        Some(a) => le(&[a.sp, a.flags as u32 as u64, a.size]),
        None => le(&[0, libc::SS_DISABLE as u64, 0]),
    };
    let p = inj.put(slot::ALTSTACK, &ss)?;
    calls.push(Call::checked("sigaltstack", libc::SYS_sigaltstack, &[p, 0]));

    if core.robust_list_head != 0 {
        calls.push(Call::checked(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[core.robust_list_head, core.robust_list_len],
        ));
    }
    calls.push(Call::checked(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[core.clear_child_tid],
    ));
    if let Some(r) = &core.rseq {
        calls.push(Call::checked(
            "rseq",
            libc::SYS_rseq,
            &[r.ptr, r.len as u64, 0, r.signature as u64],
        ));
    }
    calls.push(Call::checked(
        "personality",
        libc::SYS_personality,
        &[core.personality as u64],
    ));
    calls.push(Call::checked(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, core.pdeath_signal as u64],
    ));
    inj.batch(&calls)?;

    // The session and process group were made with the tree (tree.rs).
    // Queued from inside the task itself, so the kernel accepts siginfo
    // with any si_code (it refuses forged kernel codes from others).
    let room = inj.scratch()?.len / 128;
    for chunk in core.pending.chunks(room as usize) {
        let mut calls = Vec::with_capacity(chunk.len());
        for (i, s) in chunk.iter().enumerate() {
            if s.siginfo.len() != 128 {
                return Err(Error::task(
                    pid,
                    format!(
                        "pending signal {} has a {}-byte siginfo",
                        s.signo,
                        s.siginfo.len()
                    ),
                ));
            }
            let p = inj.put(slot::SIGINFO + 128 * i as u64, &s.siginfo)?;
            calls.push(match s.shared {
                true => Call::checked(
                    "rt_sigqueueinfo",
                    libc::SYS_rt_sigqueueinfo,
                    &[pid as u64, s.signo as u64, p],
                ),
                false => Call::checked(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    &[pid as u64, pid as u64, s.signo as u64, p],
                ),
            });
        }
        inj.batch(&calls)?;
    }
    Ok(())
}

pub(crate) fn restore_rlimits(pid: i32, core: &Core) -> Result<()> {
    for r in &core.rlimits {
        prlimit(pid, r.resource, Some((r.cur, r.max))).map_err(|e| match e {
            Error::Sys { errno: nix::errno::Errno::EPERM, .. } => Error::task(pid, format!("cannot set rlimit {} to {}/{}: the hard limit is above this engine's own (no CAP_SYS_RESOURCE)", r.resource, r.cur, r.max)),
            e => e,
        })?;
    }
    Ok(())
}

const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_MCE_KILL: u64 = 33;
const PR_MCE_KILL_CLEAR: u64 = 0;
const PR_MCE_KILL_SET: u64 = 1;
const PR_MCE_KILL_DEFAULT: i32 = 2;
const PR_SET_TSC: u64 = 26;
const ARCH_SET_CPUID: u64 = 0x1012;
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;

fn write_proc(pid: i32, file: &str, value: String) -> Result<()> {
    let path = crate::proc::pid_path(pid, file);
    std::fs::write(&path, value).map_err(|e| Error::io("writing", path, e))
}

fn read_proc(pid: i32, file: &str) -> Result<String> {
    let path = crate::proc::pid_path(pid, file);
    std::fs::read_to_string(&path).map_err(|e| Error::io("reading", path, e))
}

/// Scheduling attributes and affinity of one task (the leader or one of
/// its threads: each has its own), set from outside.
pub(crate) fn restore_sched(tid: i32, s: &Sched) -> Result<()> {
    // Affinity first: a deadline task's mask cannot shrink afterwards.
    if !s.affinity.is_empty() {
        sched::setaffinity(tid, &s.affinity)?;
    }
    let clamps = !(s.util_min == 0 && (s.util_max == 1024 || s.util_max == 0));
    let attr = SchedAttr {
        size: sched::SCHED_ATTR_SIZE,
        policy: s.policy,
        flags: s.flags
            | if clamps {
                sched::SCHED_FLAG_UTIL_CLAMP
            } else {
                0
            },
        nice: s.nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: s.util_min,
        util_max: s.util_max,
    };
    sched::sched_setattr(tid, &attr)?;
    // sched_setattr sets nice for SCHED_OTHER and SCHED_BATCH only,
    // but a SCHED_IDLE (or real-time) task has one too.
    sched::set_nice(tid, s.nice)
}

/// A thread's timer slack (per task, like its scheduling), after its
/// policy: a real-time policy resets the slack.
pub(crate) fn restore_timer_slack(tid: i32, ns: u64) -> Result<()> {
    write_proc(tid, "timerslack_ns", ns.to_string())
}

/// Scheduling, affinity, OOM score and timer slack, set from outside on
/// the stub's pid (after its threads exist: a deadline task cannot clone,
/// and a thread must not keep what it inherited).
pub(crate) fn restore_attrs_external(pid: i32, a: &Attrs) -> Result<()> {
    if let Some(s) = &a.sched {
        restore_sched(pid, s)?;
    }
    // After the policy: a real-time policy resets the slack.
    write_proc(pid, "timerslack_ns", a.timer_slack_ns.to_string())?;
    write_proc(pid, "oom_score_adj", a.oom_score_adj.to_string()).map_err(|e| {
        Error::task(
            pid,
            format!("cannot set oom_score_adj to {}: {e}", a.oom_score_adj),
        )
    })?;
    Ok(())
}

const PR_SET_SPECULATION_CTRL: u64 = 53;

/// Per-task speculation control set back with prctl, then the whole
/// state (system-wide parts too) checked against the dump's.
fn restore_speculation(inj: &mut Injector, a: &Attrs) -> Result<()> {
    let pid = inj.pid();
    for line in a.speculation.lines() {
        if let Some((which, value)) = crate::speculation::settable(line) {
            inj.call(
                "prctl(PR_SET_SPECULATION_CTRL)",
                libc::SYS_prctl,
                &[PR_SET_SPECULATION_CTRL, which, value, 0, 0],
            )?;
        }
    }
    let status = read_proc(pid, "status")?;
    let now = crate::speculation::lines(&status).join("\n");
    if now != a.speculation {
        return Err(Error::task(
            pid,
            format!(
                "speculation control is {now:?} here but was {:?} at dump",
                a.speculation
            ),
        ));
    }
    Ok(())
}

/// prctl and arch_prctl state, membarrier registrations and interval
/// timers, by injected calls.
pub(crate) fn restore_attrs_injected(inj: &mut Injector, a: &Attrs) -> Result<()> {
    let prctl = |name, args: [u64; 3]| {
        Call::checked(name, libc::SYS_prctl, &[args[0], args[1], args[2], 0, 0])
    };
    let mut calls = vec![
        prctl(
            "prctl(PR_SET_THP_DISABLE)",
            [
                PR_SET_THP_DISABLE,
                (a.thp_disable & 1) as u64,
                (a.thp_disable & !1) as u64,
            ],
        ),
        prctl(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            [PR_SET_CHILD_SUBREAPER, a.child_subreaper as u64, 0],
        ),
    ];
    let mce = if a.mce_kill == PR_MCE_KILL_DEFAULT {
        [PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0]
    } else {
        [PR_MCE_KILL, PR_MCE_KILL_SET, a.mce_kill as u64]
    };
    calls.push(prctl("prctl(PR_MCE_KILL)", mce));
    if a.tsc != 0 {
        calls.push(prctl("prctl(PR_SET_TSC)", [PR_SET_TSC, a.tsc as u64, 0]));
    }
    if a.cpuid == 0 {
        calls.push(Call::checked(
            "arch_prctl(ARCH_SET_CPUID)",
            libc::SYS_arch_prctl,
            &[ARCH_SET_CPUID, 0],
        ));
    }
    // The extended features the task may already use, read in the same
    // batch (into the scratch area's first word).
    let buf = inj.scratch()?.addr;
    if a.xcomp_perm != 0 {
        calls.push(Call::checked(
            "arch_prctl(ARCH_GET_XCOMP_PERM)",
            libc::SYS_arch_prctl,
            &[ARCH_GET_XCOMP_PERM, buf],
        ));
    }
    inj.batch(&calls)?;
    let have = if a.xcomp_perm == 0 {
        0
    } else {
        let b = inj.get(0, 8)?;
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    };
    for bit in 0..64u64 {
        if (a.xcomp_perm & !have) >> bit & 1 != 0 {
            inj.call(
                "arch_prctl(ARCH_REQ_XCOMP_PERM)",
                libc::SYS_arch_prctl,
                &[ARCH_REQ_XCOMP_PERM, bit],
            )?;
        }
    }
    for bit in 0..32u32 {
        let cmd = a.membarrier & (1 << bit);
        if cmd != 0 {
            inj.call(
                "membarrier(REGISTER)",
                libc::SYS_membarrier,
                &[cmd as u64, 0, 0],
            )?;
        }
    }
    for t in &a.itimers {
        if t.which == libc::ITIMER_REAL {
            // Expired with its SIGALRM still queued (value 0): the kernel
            // re-arms it when the signal is taken, but setitimer with a
            // zero value would forget the interval. Expiring it again at
            // once gives the same state: the interval kept, a SIGALRM
            // pending (merged with the one restored), re-armed on delivery.
            set_itimer(inj, t.which, t.interval_us, t.value_us.max(1))?;
            continue;
        }
        set_itimer(inj, t.which, t.interval_us, t.value_us)?;
        // The kernel adds one tick to a CPU-time timer it arms, so a
        // timer read and set back would gain a tick per checkpoint. The
        // stopped stub uses no CPU time: what it reads back now, less what
        // was asked, is exactly that tick.
        inj.call("getitimer", libc::SYS_getitimer, &[t.which as u64, buf])?;
        let b = inj.get(0, 32)?;
        let w = |i: usize| {
            u64::from_le_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let got = w(16) * 1_000_000 + w(24);
        let extra = got.saturating_sub(t.value_us);
        if extra > 0 && extra < t.value_us {
            set_itimer(inj, t.which, t.interval_us, t.value_us - extra)?;
        }
    }
    restore_speculation(inj, a)?;
    Ok(())
}

fn set_itimer(inj: &mut Injector, which: i32, interval_us: u64, value_us: u64) -> Result<()> {
    let tv = |us: u64| [us / 1_000_000, us % 1_000_000];
    let words = [tv(interval_us), tv(value_us)].concat();
    let p = inj.put(0, &le(&words))?;
    inj.call("setitimer", libc::SYS_setitimer, &[which as u64, p, 0])?;
    Ok(())
}

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_THREAD_ID: i32 = 4;

/// POSIX timers, each recreated with its id, clock, notification and
/// sigev_value, then armed with its remaining time and interval.
/// Runs after the threads exist: a SIGEV_THREAD_ID timer may signal one.
pub(crate) fn restore_posix_timers(inj: &mut Injector, a: &Attrs) -> Result<()> {
    if a.posix_timers.is_empty() {
        return Ok(());
    }
    let pid = inj.pid();
    inj.call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0],
    )?;
    for t in &a.posix_timers {
        // struct sigevent: sigev_value (8), sigev_signo (4), sigev_notify
        // (4), then the union whose first int is the thread id; 64 bytes.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.value.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        if t.notify & SIGEV_THREAD_ID != 0 {
            let target = if t.target_tid != 0 { t.target_tid } else { pid };
            ev[16..20].copy_from_slice(&target.to_le_bytes());
        }
        let evp = inj.put(0, &ev)?;
        let idp = inj.put(64, &t.id.to_le_bytes())?;
        inj.call(
            "timer_create",
            libc::SYS_timer_create,
            &[t.clock_id as i64 as u64, evp, idp],
        )?;
        let got = inj.get(64, 4)?;
        let got = i32::from_le_bytes([got[0], got[1], got[2], got[3]]);
        if got != t.id {
            return Err(Error::task(
                pid,
                format!("timer_create gave POSIX timer id {got}, not {}", t.id),
            ));
        }
        if t.remaining_ns != 0 {
            let ts = |ns: u64| [ns / 1_000_000_000, ns % 1_000_000_000];
            let spec = inj.put(128, &le(&[ts(t.interval_ns), ts(t.remaining_ns)].concat()))?;
            inj.call(
                "timer_settime",
                libc::SYS_timer_settime,
                &[t.id as u64, 0, spec, 0],
            )?;
        }
    }
    inj.call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0],
    )?;
    Ok(())
}
