//! /proc/PID/stat: the one-line process status (see proc(5) for fields).

use super::{pid_path, read_parsed, ParseError, Result};

/// The fields of /proc/PID/stat crust uses; numbers are proc(5)'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// (1)
    pub pid: i32,
    /// (2) without the parentheses; may contain spaces and ')'.
    pub comm: String,
    /// (3) R, S, D, T, t, Z, X, I...
    pub state: char,
    /// (4)
    pub ppid: i32,
    /// (5)
    pub pgrp: i32,
    /// (6)
    pub session: i32,
    /// (7)
    pub tty_nr: i32,
    /// (9) PF_* flags.
    pub flags: u32,
    /// (20)
    pub num_threads: i64,
    /// (26) the following address fields read as 0 without ptrace access.
    pub start_code: u64,
    /// (27)
    pub end_code: u64,
    /// (28)
    pub start_stack: u64,
    /// (38) signal sent to the parent on exit.
    pub exit_signal: i32,
    /// (45)
    pub start_data: u64,
    /// (46)
    pub end_data: u64,
    /// (47)
    pub start_brk: u64,
    /// (48)
    pub arg_start: u64,
    /// (49)
    pub arg_end: u64,
    /// (50)
    pub env_start: u64,
    /// (51)
    pub env_end: u64,
    /// (52) waitpid()-style status.
    pub exit_code: i32,
}

/// PF_EXITING: the task has begun to exit (set before its memory and
/// files go), though it is not a zombie yet.
pub const PF_EXITING: u32 = 0x4;

impl Stat {
    /// A zombie, a dead task, or one on its way out: its /proc files (exe,
    /// maps, fds) may be gone already.
    pub fn exiting(&self) -> bool {
        matches!(self.state, 'Z' | 'X') || self.flags & PF_EXITING != 0
    }
}

/// Parses /proc/PID/stat. comm is delimited by the *last* ')' since the
/// name itself may contain ") ".
pub fn parse_stat(text: &str) -> std::result::Result<Stat, ParseError> {
    let err = |m: String| ParseError::new(1, m);
    let text = text.trim_end_matches('\n');
    let open = text
        .find(" (")
        .ok_or_else(|| err("no '(' before comm".into()))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| err("no ')' after comm".into()))?;
    if close < open {
        return Err(err("')' before '('".into()));
    }
    let pid = text[..open]
        .parse()
        .map_err(|_| err(format!("bad pid {:?}", &text[..open])))?;
    let comm = text[open + 2..close].to_string();
    // fields[0] is field (3).
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    if fields.len() < 50 {
        return Err(err(format!(
            "only {} fields, expected at least 52",
            fields.len() + 2
        )));
    }
    fn num<T: std::str::FromStr>(fields: &[&str], n: usize) -> std::result::Result<T, ParseError> {
        let s = fields[n - 3];
        s.parse()
            .map_err(|_| ParseError::new(1, format!("bad field {n}: {s:?}")))
    }
    let mut state = fields[0].chars();
    let st = match (state.next(), state.next()) {
        (Some(c), None) => c,
        _ => return Err(err(format!("bad state {:?}", fields[0]))),
    };
    Ok(Stat {
        pid,
        comm,
        state: st,
        ppid: num(&fields, 4)?,
        pgrp: num(&fields, 5)?,
        session: num(&fields, 6)?,
        tty_nr: num(&fields, 7)?,
        flags: num(&fields, 9)?,
        num_threads: num(&fields, 20)?,
        start_code: num(&fields, 26)?,
        end_code: num(&fields, 27)?,
        start_stack: num(&fields, 28)?,
        exit_signal: num(&fields, 38)?,
        start_data: num(&fields, 45)?,
        end_data: num(&fields, 46)?,
        start_brk: num(&fields, 47)?,
        arg_start: num(&fields, 48)?,
        arg_end: num(&fields, 49)?,
        env_start: num(&fields, 50)?,
        env_end: num(&fields, 51)?,
        exit_code: num(&fields, 52)?,
    })
}

pub fn read_stat(pid: i32) -> Result<Stat> {
    read_parsed(&pid_path(pid, "stat"), parse_stat)
}

/// /proc/PID/task/TID/stat, for per-thread state.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<Stat> {
    read_parsed(&pid_path(pid, &format!("task/{tid}/stat")), parse_stat)
}

/// How long thread `tid` of `pid` has run, in nanoseconds: the first field
/// of /proc/PID/task/TID/schedstat (the scheduler's sum_exec_runtime,
/// brought up to date at each switch and tick). None if the kernel has no
/// schedstat (CONFIG_SCHED_INFO) or the thread is gone.
pub fn run_time_ns(pid: i32, tid: i32) -> Option<u64> {
    let path = pid_path(pid, &format!("task/{tid}/schedstat"));
    let text = super::read_small_fresh(&path).ok()?;
    parse_run_time(&text)
}

fn parse_run_time(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: &str = include_str!("testdata/stat.txt");

    #[test]
    fn run_time_is_schedstat_first_field() {
        assert_eq!(
            parse_run_time(b"252642256 25730060 1040\n"),
            Some(252642256)
        );
        assert_eq!(parse_run_time(b""), None);
        assert_eq!(parse_run_time(b"x 1 2"), None);
        // This thread has run.
        let me = std::process::id() as i32;
        assert!(run_time_ns(me, me).is_some());
    }
    // Captured after prctl(PR_SET_NAME, "a) b (c)").
    const TRICKY: &str = "5426 (a) b (c)) R 5421 5421 2797 0 -1 4194304 2894 6515 2 0 3 1 5 0 20 0 1 0 51136 17268736 3401 18446744073709551615 94589108015104 94589108015445 140729950418416 0 0 0 0 16781312 2 0 0 0 17 0 0 0 0 0 0 94589108026800 94589108027416 94590017007616 140729950423112 140729950423335 140729950423335 140729950425039 0\n";

    #[test]
    fn sample() {
        let s = parse_stat(CAP).unwrap();
        assert_eq!(s.pid, 4515);
        assert_eq!(s.comm, "cap");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgrp, s.session, s.tty_nr), (4488, 4488, 2797, 0));
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.num_threads, 1);
        assert_eq!(s.start_code, 94850295951360);
        assert_eq!(s.end_code, 94850295953265);
        assert_eq!(s.start_stack, 140732741963808);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.start_data, 94850295963088);
        assert_eq!(s.end_data, 94850295963864);
        assert_eq!(s.start_brk, 94850902618112);
        assert_eq!(s.arg_start, 140732741970677);
        assert_eq!(s.arg_end, 140732741970683);
        assert_eq!(s.env_start, 140732741970683);
        assert_eq!(s.env_end, 140732741971954);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn comm_with_parens_and_spaces() {
        let s = parse_stat(TRICKY).unwrap();
        assert_eq!(s.pid, 5426);
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'R');
        assert_eq!(s.ppid, 5421);
        assert_eq!(s.env_end, 140729950425039);
    }

    #[test]
    fn malformed() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x) S 1 2 3").is_err());
        assert!(parse_stat("x (y) S").is_err());
        let bad_ppid = TRICKY.replacen(" R 5421", " R x", 1);
        let e = parse_stat(&bad_ppid).unwrap_err();
        assert!(e.msg.contains("field 4"), "{e}");
    }

    #[test]
    fn read_self() {
        let me = std::process::id() as i32;
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.num_threads >= 1);
        assert_ne!(s.start_brk, 0);
        let t = read_task_stat(me, me).unwrap();
        assert_eq!(t.pid, me);
    }
}
