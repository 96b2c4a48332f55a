//! The daemonising launcher of `zdtm-dummy`, on real processes, as the
//! runner sees it: once the launcher has exited (the pidfile exists), the
//! daemon holds nothing but stdio: the readiness pipe is closed before the
//! pidfile appears, so the runner's "before" snapshot cannot see a
//! descriptor the dump will not. This binary is the child subreaper of the
//! daemons (as the runner is) and kills and reaps each by pid.
//! Also: a run's cleanup kills a tracked test with its whole tree.

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

/// A test that forked (a tree) and fails: the run's cleanup kills the
/// tracked root and every descendant, and reaps them (they reparent to the
/// runner, the subreaper), so a failing tree test leaves nothing behind.
// The root is reaped by pid (the tracker), not through `Child`.
#[allow(clippy::zombie_processes)]
#[test]
fn cleanup_kills_a_tracked_tree() {
    use std::io::BufRead;
    zdtm_runner::procs::set_subreaper().expect("PR_SET_CHILD_SUBREAPER");
    // sh (tracked) -> sh -> sleep: the inner shell prints the sleep's pid,
    // then the outer prints the inner's.
    let mut root = std::process::Command::new("sh")
        .args(["-c", "sh -c 'sleep 60 & echo $!; wait' & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut lines = std::io::BufReader::new(root.stdout.take().expect("stdout"));
    let mut descendants = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        lines.read_line(&mut line).expect("read a pid");
        descendants.push(Pid::from_raw(line.trim().parse().expect("pid")));
    }
    let root = Pid::from_raw(i32::try_from(root.id()).expect("pid fits"));
    let mut tracker = zdtm_runner::procs::Tracker::default();
    tracker.track(root);
    let notes = tracker.cleanup();
    // Which of them is reaped by whom varies: the shells wait for their
    // children, so one may reap a killed child, or exit by itself once its
    // child died, before the cleanup gets to it. What must hold: once the
    // cleanup returns, none of them exists, not even as a zombie.
    for pid in std::iter::once(root).chain(descendants) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} still exists after the cleanup: {notes:?}"
        );
    }
}
