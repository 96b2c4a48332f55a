//! The daemonising launcher of `zdtm-dummy`, on real processes, as the
//! runner sees it: once the launcher has exited (the pidfile exists), the
//! daemon holds nothing but stdio: the readiness pipe is closed before the
//! pidfile appears, so the runner's "before" snapshot cannot see a
//! descriptor the dump will not. This binary is the child subreaper of the
//! daemons (as the runner is) and kills and reaps each by pid.

mod common;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const ROUNDS: usize = 100;

#[test]
fn daemon_holds_only_stdio_when_the_pidfile_appears() {
    zdtm_runner::procs::set_subreaper().expect("PR_SET_CHILD_SUBREAPER");
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    for round in 0..ROUNDS {
        let _ = std::fs::remove_file(&pidfile);
        // As the runner starts tests: only stdio, clean signal state.
        let status = zdtm_runner::procs::clean_command(common::DUMMY)
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--outfile={}", dir.path().join("out").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("launch zdtm-dummy");
        assert!(status.success(), "round {round}: launcher {status:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        let pid = Pid::from_raw(pid);
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        // Kill and reap it before asserting: it is our child (subreaper).
        let _ = kill(pid, Signal::SIGKILL);
        let reaped = zdtm_runner::procs::wait_exit(pid, Duration::from_secs(10));
        assert_eq!(fds, [0, 1, 2], "round {round}: daemon {pid} fds");
        assert!(
            matches!(reaped, Ok(Some(_))),
            "round {round}: {pid} not reaped: {reaped:?}"
        );
    }
}
