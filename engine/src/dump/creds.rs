//! Who the task is and what it may do: uids, gids, groups, capability
//! sets, securebits, no_new_privs, dumpable, MDWE and seccomp filters.
//! What cannot be rebuilt exactly (other namespaces, seccomp strict mode,
//! user-notification filters, privileges the engine itself lacks) is
//! refused by name before anything in the task changes.

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{Creds, SeccompFilter};
use crate::proc;

use super::Frozen;

/// Namespaces a task may have of its own; `*_for_children` are the ones
/// its next children would get.
pub(crate) const NAMESPACES: [&str; 10] = [
    "user",
    "mnt",
    "net",
    "pid",
    "pid_for_children",
    "uts",
    "ipc",
    "cgroup",
    "time",
    "time_for_children",
];

const CAP_SYS_ADMIN: u32 = 21;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const BPF_RET: u16 = 0x06;
const BPF_A: u16 = 0x10;
pub(crate) const PR_GET_DUMPABLE: u64 = 3;
pub(crate) const PR_GET_SECUREBITS: u64 = 27;
pub(crate) const PR_GET_NO_NEW_PRIVS: u64 = 39;
pub(crate) const PR_GET_MDWE: u64 = 66;

/// The supplementary groups from a /proc/PID/status text.
pub(crate) fn parse_groups(status: &str) -> std::result::Result<Vec<u32>, String> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .ok_or("no Groups line")?;
    line.split_ascii_whitespace()
        .map(|g| g.parse().map_err(|_| format!("bad group {g:?}")))
        .collect()
}

/// `Seccomp_filters` from a /proc/PID/status text (0 if absent).
pub(crate) fn parse_filter_count(status: &str) -> usize {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp_filters:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn status_text(pid: pid_t) -> Result<String> {
    let path = format!("/proc/{pid}/status");
    crate::proc::read_small_string(&path).map_err(|e| Error::io("reading", path, e))
}

/// The namespaces in which `pid` differs from the engine, by name.
fn foreign_namespaces(pid: pid_t) -> Result<Vec<&'static str>> {
    // The engine's own, read once (they do not change while it runs; each
    // member of a tree is checked two or three times).
    static OURS: std::sync::OnceLock<Vec<(&'static str, std::ffi::OsString)>> =
        std::sync::OnceLock::new();
    let ours = OURS.get_or_init(|| {
        let Ok(dir) = std::fs::File::open("/proc/self/ns") else {
            return Vec::new();
        };
        NAMESPACES
            .iter()
            // A namespace the kernel does not have is not compared.
            .filter_map(|ns| Some((*ns, ns_link(&dir, ns).ok()?)))
            .collect()
    });
    // The directory looked up once, each link in it (ten full paths cost
    // a third more).
    let path = format!("/proc/{pid}/ns");
    let dir = std::fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
    let mut out = Vec::new();
    for (ns, ours) in ours {
        let theirs = ns_link(&dir, ns)
            .map_err(|e| Error::io("readlink", format!("{path}/{ns}"), e.into()))?;
        if theirs != *ours {
            out.push(*ns);
        }
    }
    Ok(out)
}

/// The link `name` in the /proc/PID/ns directory `dir` ("net:[4026531840]").
fn ns_link(dir: &std::fs::File, name: &str) -> nix::Result<std::ffi::OsString> {
    use std::os::fd::AsRawFd;
    nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)
}

fn bits(mask: u64) -> String {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The one credential refusal a dump needs before its first injected
/// call: in seccomp strict mode, any call but read, write, exit and
/// sigreturn kills the task. ([`refuse`] refuses it too.)
pub(crate) fn refuse_strict_seccomp(pid: pid_t) -> Result<()> {
    if proc::read_status(pid)?.seccomp == 1 {
        return Err(Error::unsupported(pid, "seccomp strict mode"));
    }
    Ok(())
}

/// Refusals readable from outside, without stopping the task (run by
/// pre-dump before freezing and by dump while frozen).
pub(crate) fn refuse(pid: pid_t) -> Result<()> {
    let foreign = foreign_namespaces(pid)?;
    if !foreign.is_empty() {
        return Err(Error::unsupported(
            pid,
            format!(
                "namespaces other than the engine's: {} (not supported yet)",
                foreign.join(", ")
            ),
        ));
    }
    // An LSM confinement (AppArmor profile, SELinux context) is not
    // restored: the restored task would get the engine's.
    let label = |p: &str| std::fs::read(p).ok();
    // The engine's own label and capabilities, read once (they do not
    // change while it runs; each member of a tree is checked twice).
    static OWN_LABEL: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let own_label = OWN_LABEL.get_or_init(|| label("/proc/self/attr/current"));
    let theirs = label(&format!("/proc/{pid}/attr/current"));
    if theirs.is_some() && theirs != *own_label {
        let shown = String::from_utf8_lossy(theirs.as_deref().unwrap_or_default());
        return Err(Error::unsupported(
            pid,
            format!(
                "security label {:?} differs from the engine's (LSM state is not restored)",
                shown.trim_end_matches(['\n', '\0'])
            ),
        ));
    }
    let st = proc::read_status(pid)?;
    if st.seccomp == 1 {
        return Err(Error::unsupported(pid, "seccomp strict mode"));
    }
    if st.seccomp == 2 && !st.no_new_privs && !st.has_cap_eff(CAP_SYS_ADMIN) {
        return Err(Error::unsupported(
            pid,
            "seccomp filters without no_new_privs in a task without CAP_SYS_ADMIN \
             (the kernel would not let the restored task install them)",
        ));
    }
    // A restore can only hand out what the engine holds itself.
    static OWN: std::sync::OnceLock<proc::Status> = std::sync::OnceLock::new();
    let me = match OWN.get() {
        Some(me) => me,
        None => {
            let me = proc::read_status(std::process::id() as pid_t)?;
            OWN.get_or_init(|| me)
        }
    };
    for (name, theirs, ours) in [
        ("permitted", st.cap_prm, me.cap_prm),
        ("bounding", st.cap_bnd, me.cap_bnd),
        ("inheritable", st.cap_inh, me.cap_inh | me.cap_bnd),
    ] {
        if theirs & !ours != 0 {
            return Err(Error::unsupported(
                pid,
                format!(
                    "{name} capabilities {} that the engine does not hold",
                    bits(theirs & !ours)
                ),
            ));
        }
    }
    Ok(())
}

/// Why a filter cannot be rebuilt, if it cannot.
fn unrebuildable(insns: &[u8]) -> Option<String> {
    for (i, ins) in insns.chunks_exact(8).enumerate() {
        let code = u16::from_le_bytes([ins[0], ins[1]]);
        let k = u32::from_le_bytes([ins[4], ins[5], ins[6], ins[7]]);
        if code & 0x07 != BPF_RET {
            continue;
        }
        if code & 0x18 == BPF_A {
            return Some(format!(
                "instruction {i} returns a computed action (it may be a user notification)"
            ));
        }
        if k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF {
            return Some(format!(
                "instruction {i} returns SECCOMP_RET_USER_NOTIF (its listener cannot be rebuilt)"
            ));
        }
    }
    None
}

/// The task's seccomp filters, oldest first, each checked to be
/// rebuildable. The task must be stopped by us.
pub(crate) fn filters(frozen: &Frozen) -> Result<Vec<SeccompFilter>> {
    let pid = frozen.tracee.pid;
    let expected = parse_filter_count(&status_text(pid)?);
    if expected == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    // Index 0 is the oldest filter (the kernel counts from the first one
    // installed): the order they are reinstalled in.
    for (n, (insns, flags)) in frozen.tracee.seccomp_filters()?.into_iter().enumerate() {
        if let Some(why) = unrebuildable(&insns) {
            return Err(Error::unsupported(
                pid,
                format!("seccomp filter {n} (0 = the first installed): {why}"),
            ));
        }
        out.push(SeccompFilter { insns, flags });
    }
    if out.len() != expected {
        return Err(Error::task(
            pid,
            format!(
                "status counts {expected} seccomp filters, PTRACE_SECCOMP_GET_FILTER gave {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The fs.suid_dumpable sysctl, trimmed.
pub(crate) fn suid_dumpable() -> Option<String> {
    std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Names of the calls the engine injects, for refusals.
fn syscall_name(nr: i64) -> String {
    let known = [
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_rt_sigaction, "rt_sigaction"),
        (libc::SYS_sigaltstack, "sigaltstack"),
        (libc::SYS_brk, "brk"),
        (libc::SYS_prctl, "prctl"),
        (libc::SYS_personality, "personality"),
        (libc::SYS_close, "close"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_userfaultfd, "userfaultfd"),
        (libc::SYS_pipe2, "pipe2"),
        (libc::SYS_vmsplice, "vmsplice"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("syscall {nr}"))
}

/// Reads the task's filters (refusing what cannot be rebuilt) and returns
/// the check every injected call must pass: the filters would let it run.
/// The calls every dump injects are checked at once, with the arguments
/// known in advance, so that a filter refusing them is found before
/// anything in the task changes.
pub(crate) fn seccomp_guard(frozen: &Frozen) -> Result<Option<crate::inject::Guard>> {
    let pid = frozen.tracee.pid;
    let filters: Vec<Vec<u8>> = self::filters(frozen)?
        .into_iter()
        .map(|f| f.insns)
        .collect();
    if filters.is_empty() {
        return Ok(None);
    }
    let check = move |nr: i64, args: &[u64; 6], ip: u64| -> Result<()> {
        let data = super::bpf::seccomp_data(nr, ip, args);
        match super::bpf::verdict(&filters, &data) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(Error::unsupported(
                pid,
                format!(
                    "{why} on the engine's injected {}({})",
                    syscall_name(nr),
                    args.iter()
                        .map(|a| format!("{a:#x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(e) => Err(Error::unsupported(
                pid,
                format!("cannot evaluate the task's {e}"),
            )),
        }
    };
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let mut calls: Vec<(i64, [u64; 6])> = vec![
        (libc::SYS_mmap, [0, 4096, rw, anon, u64::MAX, 0]),
        (libc::SYS_munmap, [0, 4096, 0, 0, 0, 0]),
        (libc::SYS_sigaltstack, [0; 6]),
        (libc::SYS_brk, [0; 6]),
        (libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
    ];
    for sig in 1..=64u64 {
        if sig != libc::SIGKILL as u64 && sig != libc::SIGSTOP as u64 {
            calls.push((libc::SYS_rt_sigaction, [sig, 0, 0, 8, 0, 0]));
        }
    }
    for op in [
        libc::PR_GET_TID_ADDRESS as u64,
        libc::PR_GET_PDEATHSIG as u64,
        PR_GET_SECUREBITS,
        PR_GET_NO_NEW_PRIVS,
        PR_GET_DUMPABLE,
        PR_GET_MDWE,
        68, // PR_GET_MEMORY_MERGE
    ] {
        calls.push((libc::SYS_prctl, [op, 0, 0, 0, 0, 0]));
    }
    for (nr, args) in &calls {
        check(*nr, args, 0)?;
    }
    Ok(Some(std::rc::Rc::new(check)))
}

/// What only the task can tell of its credentials (prctl calls injected
/// with the rest of its state, `task::collect_injected`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PrctlCreds {
    pub securebits: u32,
    pub no_new_privs: bool,
    pub dumpable: u64,
    pub mdwe: u64,
}

/// Everything about the task's credentials: ids and capabilities from
/// /proc, the prctl-only state as read by the injected batch, and the
/// seccomp filters through ptrace.
pub(crate) fn collect(frozen: &Frozen, prctl: PrctlCreds) -> Result<Creds> {
    let pid = frozen.tracee.pid;
    let seccomp_filters = filters(frozen)?;
    let PrctlCreds {
        securebits,
        no_new_privs: nnp,
        dumpable,
        mdwe,
    } = prctl;
    // SUID_DUMP_ROOT cannot be set with prctl: the restore gets it from the
    // kernel, which gives fs.suid_dumpable on a credential change.
    if dumpable == 2 && suid_dumpable().as_deref() != Some("2") {
        return Err(Error::unsupported(
            pid,
            "dumpable 2 (SUID_DUMP_ROOT) while fs.suid_dumpable is not 2: it cannot be restored",
        ));
    }
    if dumpable > 2 {
        return Err(Error::task(pid, format!("PR_GET_DUMPABLE gave {dumpable}")));
    }
    let text = status_text(pid)?;
    let st = proc::parse_status(&text).map_err(|e| Error::task(pid, format!("status: {e}")))?;
    let groups = parse_groups(&text).map_err(|e| Error::task(pid, format!("status: {e}")))?;
    if st.seccomp == 1 {
        return Err(Error::unsupported(pid, "seccomp strict mode"));
    }
    Ok(Creds {
        uid: st.uid.to_vec(),
        gid: st.gid.to_vec(),
        groups,
        cap_inh: st.cap_inh,
        cap_prm: st.cap_prm,
        cap_eff: st.cap_eff,
        cap_bnd: st.cap_bnd,
        cap_amb: st.cap_amb,
        securebits,
        no_new_privs: nnp,
        dumpable: dumpable as u32,
        mdwe: mdwe as u32,
        seccomp_mode: st.seccomp,
        seccomp_filters,
    })
}

/// Every thread of a process with seccomp filters must have the leader's
/// (a thread inherits its creator's at clone, SECCOMP_FILTER_FLAG_TSYNC
/// gives all threads the caller's): restore installs them once and syncs
/// them to every thread. A thread with filters of its own is refused.
pub(crate) fn check_thread_filters(frozen: &Frozen) -> Result<()> {
    if frozen.threads.is_empty() {
        return Ok(());
    }
    let pid = frozen.tracee.pid;
    let leader = filters(frozen)?;
    for t in &frozen.threads {
        if filters(t)? != leader {
            return Err(Error::unsupported(
                pid,
                format!(
                    "thread {} has seccomp filters of its own, unlike its leader: per-thread seccomp is not restored",
                    t.tracee.pid
                ),
            ));
        }
    }
    Ok(())
}

/// A thread's own credentials from /proc/TID/status and its prctl state;
/// the process-wide fields are filled in by [`keep_own_thread_creds`].
pub(crate) fn thread_creds(tid: pid_t, (securebits, no_new_privs): (u32, bool)) -> Result<Creds> {
    let text = status_text(tid)?;
    let st = proc::parse_status(&text).map_err(|e| Error::task(tid, format!("status: {e}")))?;
    let groups = parse_groups(&text).map_err(|e| Error::task(tid, format!("status: {e}")))?;
    Ok(Creds {
        uid: st.uid.to_vec(),
        gid: st.gid.to_vec(),
        groups,
        cap_inh: st.cap_inh,
        cap_prm: st.cap_prm,
        cap_eff: st.cap_eff,
        cap_bnd: st.cap_bnd,
        cap_amb: st.cap_amb,
        securebits,
        no_new_privs,
        seccomp_mode: st.seccomp,
        ..Default::default()
    })
}

/// Keeps a thread's credentials only where they differ from the leader's
/// (the common case stores none); the kept ones get the process-wide
/// fields (dumpable, MDWE, seccomp filters) of the leader. A thread whose
/// seccomp mode differs from its leader's is refused (filters are
/// restored process-wide only).
pub(crate) fn keep_own_thread_creds(
    pid: pid_t,
    leader: &Creds,
    threads: &mut [crate::image::messages::ThreadCore],
) -> Result<()> {
    for t in threads {
        let Some(mut own) = t.creds.take() else {
            continue;
        };
        if own.seccomp_mode != leader.seccomp_mode {
            return Err(Error::unsupported(
                pid,
                format!(
                    "thread {} has seccomp mode {}, its leader {}: per-thread seccomp is not restored",
                    t.tid, own.seccomp_mode, leader.seccomp_mode
                ),
            ));
        }
        own.dumpable = leader.dumpable;
        own.mdwe = leader.mdwe;
        own.seccomp_filters = leader.seccomp_filters.clone();
        if own != *leader {
            t.creds = Some(own);
        }
    }
    Ok(())
}

/// One resource limit (soft, hard) of `pid`, from /proc/PID/limits:
/// prlimit64 on another user's task needs CAP_SYS_RESOURCE, this does not.
pub(crate) fn rlimit(pid: pid_t, resource: u32) -> Result<(u64, u64)> {
    limit_of(pid, &limits_text(pid)?, resource)
}

/// The text of /proc/PID/limits, for [`limit_of`].
pub(crate) fn limits_text(pid: pid_t) -> Result<String> {
    let path = format!("/proc/{pid}/limits");
    crate::proc::read_small_string(&path).map_err(|e| Error::io("reading", &path, e))
}

/// One resource limit (soft, hard) from `pid`'s /proc/PID/limits `text`.
pub(crate) fn limit_of(pid: pid_t, text: &str, resource: u32) -> Result<(u64, u64)> {
    parse_limit(text, resource)
        .ok_or_else(|| Error::task(pid, format!("no limit {resource} in /proc/{pid}/limits")))
}

/// Row `resource` (RLIMIT_* order) of a /proc/PID/limits text.
fn parse_limit(text: &str, resource: u32) -> Option<(u64, u64)> {
    let line = text.lines().nth(1 + resource as usize)?;
    // "Max <name...>   soft   hard   [units]": the name has spaces, so
    // the values are found from column 26 on.
    let mut vals = line.get(26..)?.split_ascii_whitespace();
    let val = |v: &str| match v {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((val(vals.next()?)?, val(vals.next()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             96364                96364                processes \n\
Max open files            20000                20000                files     \n\
Max locked memory         8388608              8388608              bytes     \n\
Max address space         unlimited            unlimited            bytes     \n\
Max file locks            unlimited            unlimited            locks     \n\
Max pending signals       96364                96364                signals   \n\
Max msgqueue size         819200               819200               bytes     \n\
Max nice priority         0                    0                    \n\
Max realtime priority     0                    0                    \n\
Max realtime timeout      unlimited            unlimited            us        \n";
        assert_eq!(parse_limit(t, 0), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_limit(t, 3), Some((8388608, u64::MAX)));
        assert_eq!(parse_limit(t, 7), Some((20000, 20000)));
        assert_eq!(parse_limit(t, 13), Some((0, 0)));
        assert_eq!(parse_limit(t, 15), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_limit(t, 16), None);
    }

    #[test]
    fn parses_groups_and_filter_count() {
        let t = "Name:\tx\nGroups:\t4 24 27 \nSeccomp:\t2\nSeccomp_filters:\t3\n";
        assert_eq!(parse_groups(t), Ok(vec![4, 24, 27]));
        assert_eq!(parse_filter_count(t), 3);
        assert_eq!(parse_groups("Groups:\t\n"), Ok(vec![]));
        assert!(parse_groups("Name:\tx\n").is_err());
        assert!(parse_groups("Groups:\tx\n").is_err());
    }

    fn ins(code: u16, k: u32) -> Vec<u8> {
        let mut v = code.to_le_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&k.to_le_bytes());
        v
    }

    #[test]
    fn finds_user_notif_and_computed_returns() {
        let allow = ins(0x06, 0x7fff_0000);
        assert_eq!(unrebuildable(&allow), None);
        let errno = [ins(0x20, 0), ins(0x06, 0x0005_0001)].concat();
        assert_eq!(unrebuildable(&errno), None);
        let notif = [allow.clone(), ins(0x06, 0x7fc0_0000)].concat();
        assert!(unrebuildable(&notif).unwrap().contains("USER_NOTIF"));
        let ret_a = ins(0x16, 0);
        assert!(unrebuildable(&ret_a).unwrap().contains("computed"));
    }
}
