//! /proc/PID/status: ids, credentials, signal masks and capabilities.

use super::{pid_path, read_parsed, ParseError, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// As printed: the kernel escapes '\n' and '\\' in it.
    pub name: String,
    /// Absent on kernels before 4.7.
    pub umask: Option<u32>,
    pub state: char,
    pub tgid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    /// One id per pid namespace level, outermost first ([] if absent).
    pub ns_tgid: Vec<i32>,
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    pub threads: u32,
    /// SigQ: (queued, limit).
    pub sig_q: (u64, u64),
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
}

/// Capability numbers crust asks about (linux/capability.h).
pub mod cap {
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_RESOURCE: u32 = 24;
    pub const CHECKPOINT_RESTORE: u32 = 40;
}

impl Status {
    pub fn has_cap_eff(&self, cap: u32) -> bool {
        cap < 64 && self.cap_eff & (1u64 << cap) != 0
    }
}

/// Parses /proc/PID/status ("Key:\tvalue" lines; unknown keys ignored).
pub fn parse_status(text: &str) -> std::result::Result<Status, ParseError> {
    let mut st = Status::default();
    // Mandatory keys, so that a truncated file is an error, not zeros.
    let mut seen = [false; 8];
    const REQUIRED: [&str; 8] = [
        "Name", "State", "Tgid", "Pid", "PPid", "Uid", "Gid", "SigBlk",
    ];
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim_start_matches(['\t', ' ']);
        let err = |what: &str| ParseError::new(lineno, format!("bad {key} {what}: {value:?}"));
        let int = |v: &str| v.trim().parse::<i32>().map_err(|_| err("value"));
        let hex = |v: &str| u64::from_str_radix(v.trim(), 16).map_err(|_| err("mask"));
        let list = |v: &str| -> std::result::Result<Vec<i32>, ParseError> {
            v.split_ascii_whitespace()
                .map(|x| x.parse().map_err(|_| err("list")))
                .collect()
        };
        let ids = |v: &str| -> std::result::Result<[u32; 4], ParseError> {
            let v: Vec<u32> = v
                .split_ascii_whitespace()
                .map(|x| x.parse().map_err(|_| err("ids")))
                .collect::<std::result::Result<_, _>>()?;
            v.try_into().map_err(|_| err("ids (want 4)"))
        };
        if let Some(idx) = REQUIRED.iter().position(|k| *k == key) {
            seen[idx] = true;
        }
        match key {
            "Name" => st.name = value.to_string(),
            "Umask" => {
                st.umask = Some(u32::from_str_radix(value.trim(), 8).map_err(|_| err("mode"))?)
            }
            "State" => st.state = value.chars().next().ok_or_else(|| err("state"))?,
            "Tgid" => st.tgid = int(value)?,
            "Pid" => st.pid = int(value)?,
            "PPid" => st.ppid = int(value)?,
            "TracerPid" => st.tracer_pid = int(value)?,
            "Uid" => st.uid = ids(value)?,
            "Gid" => st.gid = ids(value)?,
            "NStgid" => st.ns_tgid = list(value)?,
            "NSpid" => st.ns_pid = list(value)?,
            "NSpgid" => st.ns_pgid = list(value)?,
            "NSsid" => st.ns_sid = list(value)?,
            "Threads" => st.threads = value.trim().parse().map_err(|_| err("count"))?,
            "SigQ" => {
                let (q, lim) = value.trim().split_once('/').ok_or_else(|| err("queue"))?;
                st.sig_q = (
                    q.parse().map_err(|_| err("queue"))?,
                    lim.parse().map_err(|_| err("queue"))?,
                );
            }
            "SigPnd" => st.sig_pnd = hex(value)?,
            "ShdPnd" => st.shd_pnd = hex(value)?,
            "SigBlk" => st.sig_blk = hex(value)?,
            "SigIgn" => st.sig_ign = hex(value)?,
            "SigCgt" => st.sig_cgt = hex(value)?,
            "CapInh" => st.cap_inh = hex(value)?,
            "CapPrm" => st.cap_prm = hex(value)?,
            "CapEff" => st.cap_eff = hex(value)?,
            "CapBnd" => st.cap_bnd = hex(value)?,
            "CapAmb" => st.cap_amb = hex(value)?,
            "NoNewPrivs" => st.no_new_privs = int(value)? != 0,
            "Seccomp" => st.seccomp = value.trim().parse().map_err(|_| err("mode"))?,
            _ => {}
        }
    }
    if let Some(idx) = seen.iter().position(|s| !s) {
        return Err(ParseError::new(0, format!("no {} line", REQUIRED[idx])));
    }
    Ok(st)
}

pub fn read_status(pid: i32) -> Result<Status> {
    read_parsed(&pid_path(pid, "status"), parse_status)
}

/// [`read_status`] from the file itself, never from what a dump's frozen
/// pass kept (super::memo): for pending signals, which others may send.
pub fn read_status_fresh(pid: i32) -> Result<Status> {
    let path = pid_path(pid, "status");
    let bytes = super::read_small_fresh(&path).map_err(|e| super::ProcError::io(&path, e))?;
    parse_status(&String::from_utf8_lossy(&bytes)).map_err(|e| super::ProcError::parse(&path, e))
}

/// /proc/PID/task/TID/status: per-thread masks (SigBlk, SigPnd differ).
pub fn read_task_status(pid: i32, tid: i32) -> Result<Status> {
    read_parsed(&pid_path(pid, &format!("task/{tid}/status")), parse_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The capture program's status, as root, 6.18.
    const CAP: &str = include_str!("testdata/status.txt");

    #[test]
    fn sample() {
        let s = parse_status(CAP).unwrap();
        assert_eq!(s.name, "cap");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (4515, 4515, 4488, 0));
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.gid, [0; 4]);
        assert_eq!(s.ns_tgid, [4515]);
        assert_eq!(s.ns_pid, [4515]);
        assert_eq!(s.ns_pgid, [4488]);
        assert_eq!(s.ns_sid, [2797]);
        assert_eq!(s.threads, 1);
        assert_eq!(s.sig_q, (1, 96365));
        // Captured inside system(): SIGCHLD blocked, SIGINT/SIGQUIT ignored.
        assert_eq!(s.sig_blk, 1 << (libc::SIGCHLD - 1));
        assert_eq!(
            s.sig_ign,
            (1 << (libc::SIGINT - 1)) | (1 << (libc::SIGQUIT - 1))
        );
        assert_eq!(s.sig_cgt, 0);
        assert_eq!(s.cap_eff, 0x000001fffeffffff);
        assert!(s.has_cap_eff(cap::SYS_ADMIN));
        assert!(s.has_cap_eff(cap::CHECKPOINT_RESTORE));
        assert!(!s.no_new_privs);
        assert_eq!(s.seccomp, 0);
    }

    #[test]
    fn nested_namespaces_and_masks() {
        let text = "Name:\tsh\nState:\tS (sleeping)\nTgid:\t40\nPid:\t41\nPPid:\t1\n\
TracerPid:\t7\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nNStgid:\t40\t1\n\
NSpid:\t41\t2\nThreads:\t2\nSigQ:\t3/100\nSigPnd:\t0000000000000100\n\
ShdPnd:\t0000000000004000\nSigBlk:\tfffffffe7ffbfeff\nSigIgn:\t0000000000001000\n\
SigCgt:\t0000000180000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.umask, None);
        assert_eq!(s.tracer_pid, 7);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gid, [5, 6, 7, 8]);
        assert_eq!(s.ns_pid, [41, 2]);
        assert!(s.ns_sid.is_empty());
        assert_eq!(s.sig_q, (3, 100));
        assert_eq!(s.sig_pnd, 1 << 8);
        assert_eq!(s.shd_pnd, 1 << 14);
        assert_eq!(s.sig_blk, 0xfffffffe7ffbfeff);
        assert_eq!(s.sig_cgt, 0x180000000);
        assert!(!s.has_cap_eff(cap::SYS_ADMIN));
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
    }

    #[test]
    fn malformed() {
        let e = parse_status(&CAP.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0")).unwrap_err();
        assert!(e.msg.contains("Uid"), "{e}");
        let e = parse_status(&CAP.replace("SigBlk:", "Sigblk:")).unwrap_err();
        assert_eq!(e.msg, "no SigBlk line");
        assert!(parse_status(&CAP.replace("Umask:\t0022", "Umask:\t0089")).is_err());
    }

    #[test]
    fn read_self() {
        let me = std::process::id() as i32;
        let s = read_status(me).unwrap();
        assert_eq!(s.tgid, me);
        assert!(s.threads >= 1);
        assert_eq!(s.ns_pid.last(), Some(&me));
        let t = read_task_status(me, me).unwrap();
        assert_eq!(t.pid, me);
    }
}
