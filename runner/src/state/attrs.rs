//! Process attributes outside `/proc/PID/status` that a restore must keep:
//! resource limits (`/proc/PID/limits`), the personality
//! (`/proc/PID/personality`), `oom_score_adj`, the timer slack
//! (`/proc/PID/timerslack_ns`), each thread's scheduling attributes
//! (`sched_getattr`: policy and its flags such as reset-on-fork, nice, RT
//! priority, deadline parameters, utilization clamps) and the POSIX timers
//! (`/proc/PID/timers`: id, signal and value, notification, clock).
//!
//! Not visible from outside, so not compared here: the remaining time of
//! POSIX timers and interval timers (only the owner can ask), and the
//! itimers themselves; the tests check those from inside.

use std::fmt;

use nix::unistd::Pid;

use super::CaptureError;

/// One resource limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// Its `/proc/PID/limits` name (`Max open files`).
    pub name: String,
    /// Soft limit (`unlimited` or a number).
    pub soft: String,
    /// Hard limit.
    pub hard: String,
}

impl fmt::Display for Rlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: soft {} hard {}", self.name, self.soft, self.hard)
    }
}

/// Parses `/proc/PID/limits`: a header, then one row per limit: the name in
/// a 25-column field, then soft, hard and (optional) units.
pub fn parse_limits(text: &str) -> Result<Vec<Rlimit>, String> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (name, rest) = line
            .split_at_checked(25)
            .ok_or_else(|| format!("short limits line {line:?}"))?;
        let mut values = rest.split_whitespace();
        let (Some(soft), Some(hard)) = (values.next(), values.next()) else {
            return Err(format!("no soft and hard limit in {line:?}"));
        };
        out.push(Rlimit {
            name: name.trim().to_string(),
            soft: soft.to_string(),
            hard: hard.to_string(),
        });
    }
    if out.is_empty() {
        return Err("no limits".to_string());
    }
    Ok(out)
}

/// One POSIX timer of `/proc/PID/timers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// `ID:`.
    pub id: i64,
    /// The other lines (`signal: 14/0000000000000000`, `notify:
    /// signal/pid.42`, `ClockID: 1`), in order.
    pub fields: Vec<String>,
}

impl fmt::Display for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timer {}: {}", self.id, self.fields.join(", "))
    }
}

/// Parses `/proc/PID/timers`: blocks that start with `ID: N`.
pub fn parse_timers(text: &str) -> Result<Vec<Timer>, String> {
    let mut out: Vec<Timer> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(id) = line.strip_prefix("ID:") {
            let id = id
                .trim()
                .parse()
                .map_err(|_| format!("bad timer id in {line:?}"))?;
            out.push(Timer {
                id,
                fields: Vec::new(),
            });
        } else if let Some(timer) = out.last_mut() {
            timer
                .fields
                .push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        } else {
            return Err(format!("timer line before any ID: {line:?}"));
        }
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// One thread's scheduling attributes (`sched_getattr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sched {
    /// The thread.
    pub tid: i32,
    /// `SCHED_OTHER` (0), `SCHED_FIFO` (1), `SCHED_RR` (2), `SCHED_BATCH`
    /// (3), `SCHED_IDLE` (5), `SCHED_DEADLINE` (6).
    pub policy: u32,
    /// `SCHED_FLAG_*` (reset-on-fork is 1).
    pub flags: u64,
    /// Nice value.
    pub nice: i32,
    /// Real-time priority.
    pub priority: u32,
    /// `SCHED_DEADLINE` runtime, deadline, period (ns).
    pub deadline: [u64; 3],
    /// Utilization clamps (min, max).
    pub util: [u32; 2],
}

impl fmt::Display for Sched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match self.policy {
            0 => "SCHED_OTHER".to_string(),
            1 => "SCHED_FIFO".to_string(),
            2 => "SCHED_RR".to_string(),
            3 => "SCHED_BATCH".to_string(),
            5 => "SCHED_IDLE".to_string(),
            6 => "SCHED_DEADLINE".to_string(),
            n => format!("policy {n}"),
        };
        write!(
            f,
            "tid {}: {policy} flags {:#x} nice {} rt priority {} runtime/deadline/period {}/{}/{} \
             util {}-{}",
            self.tid,
            self.flags,
            self.nice,
            self.priority,
            self.deadline[0],
            self.deadline[1],
            self.deadline[2],
            self.util[0],
            self.util[1]
        )
    }
}

/// `struct sched_attr`, SCHED_ATTR_SIZE_VER1.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// `sched_getattr(tid)`.
pub fn sched_of(tid: Pid) -> Result<Sched, CaptureError> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: sched_getattr writes at most `size` bytes to `attr`, a live,
    // properly aligned struct of that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid.as_raw(),
            std::ptr::addr_of_mut!(attr),
            size,
            0u32,
        )
    };
    if rc != 0 {
        return Err(CaptureError::io(
            format!("sched_getattr({tid})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Sched {
        tid: tid.as_raw(),
        policy: attr.sched_policy,
        flags: attr.sched_flags,
        nice: attr.sched_nice,
        priority: attr.sched_priority,
        deadline: [attr.sched_runtime, attr.sched_deadline, attr.sched_period],
        util: [attr.sched_util_min, attr.sched_util_max],
    })
}

/// Everything this module reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attrs {
    /// `/proc/PID/personality` (hex).
    pub personality: String,
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: String,
    /// `/proc/PID/timerslack_ns`.
    pub timerslack_ns: String,
    /// Resource limits, in the kernel's order.
    pub rlimits: Vec<Rlimit>,
    /// Scheduling attributes, by tid.
    pub sched: Vec<Sched>,
    /// POSIX timers, by id.
    pub timers: Vec<Timer>,
}

fn read_trimmed(path: String) -> Result<String, CaptureError> {
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| CaptureError::io(&path, e))
}

/// Reads the attributes of `pid` and of its threads `tids`.
pub fn read(pid: Pid, tids: &[Pid]) -> Result<Attrs, CaptureError> {
    let parse_err = |path: String| {
        move |message| CaptureError::Parse {
            path: path.into(),
            message,
        }
    };
    let limits_path = format!("/proc/{pid}/limits");
    let rlimits =
        parse_limits(&read_trimmed(limits_path.clone())?).map_err(parse_err(limits_path))?;
    let timers_path = format!("/proc/{pid}/timers");
    let timers =
        parse_timers(&read_trimmed(timers_path.clone())?).map_err(parse_err(timers_path))?;
    let mut sched = tids
        .iter()
        .map(|&t| sched_of(t))
        .collect::<Result<Vec<_>, _>>()?;
    sched.sort_by_key(|s| s.tid);
    Ok(Attrs {
        personality: read_trimmed(format!("/proc/{pid}/personality"))?,
        oom_score_adj: read_trimmed(format!("/proc/{pid}/oom_score_adj"))?,
        timerslack_ns: read_trimmed(format!("/proc/{pid}/timerslack_ns"))?,
        rlimits,
        sched,
        timers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max stack size            8388608              unlimited            bytes     
Max open files            1024                 524288               files     
Max nice priority         0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

    #[test]
    fn parses_limits() {
        let limits = parse_limits(LIMITS).expect("parses");
        assert_eq!(limits.len(), 5);
        assert_eq!(
            limits[2],
            Rlimit {
                name: "Max open files".into(),
                soft: "1024".into(),
                hard: "524288".into()
            }
        );
        assert_eq!(limits[3].to_string(), "Max nice priority: soft 0 hard 0");
        assert_eq!(limits[4].name, "Max realtime timeout");
        assert!(parse_limits("Limit\n").is_err());
        assert!(parse_limits("Limit\nMax cpu time              unlimited\n").is_err());
    }

    #[test]
    fn parses_timers() {
        let text = "ID: 1\nsignal: 14/0000000000000000\nnotify: signal/pid.42\nClockID: 1\n\
                    ID: 0\nsignal: 34/00007f0000001000\nnotify: thread/tid.43\nClockID: 0\n";
        let timers = parse_timers(text).expect("parses");
        assert_eq!(timers.len(), 2);
        assert_eq!(timers[0].id, 0);
        assert_eq!(
            timers[1].to_string(),
            "timer 1: signal: 14/0000000000000000, notify: signal/pid.42, ClockID: 1"
        );
        assert_eq!(parse_timers("").expect("none"), vec![]);
        assert!(parse_timers("signal: 14/0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
    }

    #[test]
    fn reads_own_attributes() {
        let me = nix::unistd::getpid();
        let attrs = read(me, &[me]).expect("read");
        assert!(attrs.rlimits.iter().any(|l| l.name == "Max open files"));
        assert_eq!(attrs.sched.len(), 1);
        assert_eq!(attrs.sched[0].tid, me.as_raw());
        assert!(attrs.personality.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(attrs.oom_score_adj.parse::<i32>().is_ok());
        assert!(attrs.timerslack_ns.parse::<u64>().is_ok());
    }
}
