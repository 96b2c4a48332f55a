//! Visible state capture on real processes (needs root for ptrace of any
//! task and /proc/PID/pagemap; they fail, saying so, without it).

mod common;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use zdtm_runner::freeze::Frozen;
use zdtm_runner::state::{capture, diff::compare, VisibleState};

use common::{require_root, spawn, spawn_dummy, state_of, thread_states, wait_until};

const TIMEOUT: Duration = Duration::from_secs(10);

fn field<'a>(state: &'a VisibleState, name: &str) -> Option<&'a str> {
    state
        .status
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn idle_task_captures_are_equal() {
    require_root("idle_task_captures_are_equal");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_dummy(dir.path(), &[]);
    let first = capture(child.pid, TIMEOUT).expect("first capture");
    let second = capture(child.pid, TIMEOUT).expect("second capture");
    assert_eq!(compare(&first, &second), vec![], "{}", first.render());
    assert_eq!(first, second);

    assert_eq!(field(&first, "Name"), Some("zdtm-dummy"));
    assert_eq!(field(&first, "Pid"), Some(child.pid.to_string().as_str()));
    assert!(first.fds.iter().any(|f| f.fd == 0), "{:?}", first.fds);
    assert!(first.maps.iter().any(|m| m.path == "[stack]"));
    assert!(first
        .memory
        .iter()
        .any(|v| v.path == "[stack]" && !v.pages.is_empty()));
    assert!(!first.memory.iter().any(|v| v.path.starts_with("[vvar")));
    // The task runs again after the capture.
    assert!(wait_until(TIMEOUT, || state_of(child.pid) == Some('S')));
}

#[test]
fn every_thread_is_frozen() {
    require_root("every_thread_is_frozen");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_dummy(dir.path(), &["--threads=3"]);
    let frozen = Frozen::freeze(child.pid, TIMEOUT).expect("freeze");
    assert_eq!(frozen.threads().len(), 4);
    for tid in frozen.threads() {
        let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", child.pid))
            .expect("thread status");
        let letter = zdtm_runner::state::status::state_letter(&status);
        assert_eq!(letter, Some('t'), "thread {tid} not in a ptrace stop");
    }
    frozen.release().expect("release");

    let first = capture(child.pid, TIMEOUT).expect("first capture");
    assert_eq!(field(&first, "Threads"), Some("4"));
    let second = capture(child.pid, TIMEOUT).expect("second capture");
    assert_eq!(compare(&first, &second), vec![]);
}

#[test]
fn stopped_task_stays_stopped() {
    require_root("stopped_task_stays_stopped");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_dummy(dir.path(), &["--threads=1"]);
    let running = capture(child.pid, TIMEOUT).expect("capture while running");

    kill(child.pid, Signal::SIGSTOP).expect("SIGSTOP");
    assert!(wait_until(TIMEOUT, || state_of(child.pid) == Some('T')));
    let stopped = capture(child.pid, TIMEOUT).expect("capture while stopped");
    // The detach wakes each thread, which goes back to the group stop: it
    // must stay stopped (as `--leave-stopped` needs), not resume.
    let stays_stopped = || {
        assert!(
            wait_until(TIMEOUT, || state_of(child.pid) == Some('T')),
            "{}",
            thread_states(child.pid)
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            state_of(child.pid),
            Some('T'),
            "{}",
            thread_states(child.pid)
        );
    };
    stays_stopped();
    let again = capture(child.pid, TIMEOUT).expect("second capture while stopped");
    stays_stopped();

    kill(child.pid, Signal::SIGCONT).expect("SIGCONT");
    assert!(wait_until(TIMEOUT, || state_of(child.pid) == Some('S')));
    assert_eq!(compare(&running, &stopped), vec![]);
    assert_eq!(compare(&stopped, &again), vec![]);
}

#[test]
fn busy_task_memory_change_is_reported() {
    require_root("busy_task_memory_change_is_reported");
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_dummy(dir.path(), &["--mode=busy"]);
    let first = capture(child.pid, TIMEOUT).expect("first capture");
    std::thread::sleep(Duration::from_millis(20));
    let second = capture(child.pid, TIMEOUT).expect("second capture");
    let diffs = compare(&first, &second);
    let memory = diffs
        .iter()
        .find(|d| d.check == "memory")
        .unwrap_or_else(|| panic!("no memory difference in {diffs:?}"));
    assert!(memory.detail.contains("first at 0x"), "{}", memory.detail);
}

#[test]
fn sleep_is_not_quiescent() {
    // nanosleep writes the remaining time to user memory whenever it is
    // interrupted, a ptrace freeze included: tests must wait in pause() or
    // similar (docs/test-protocol.md). This pins that reasoning down.
    require_root("sleep_is_not_quiescent");
    let child = spawn("sleep", &["30"]);
    assert!(wait_until(TIMEOUT, || state_of(child.pid) == Some('S')));
    let first = capture(child.pid, TIMEOUT).expect("first capture");
    std::thread::sleep(Duration::from_millis(20));
    let second = capture(child.pid, TIMEOUT).expect("second capture");
    let diffs = compare(&first, &second);
    eprintln!("{diffs:#?}");
    // Everything but the memory is equal.
    assert!(diffs.iter().all(|d| d.check == "memory"), "{diffs:?}");
}

#[test]
fn migrating_to_another_cpu_changes_nothing() {
    // glibc registers an rseq area per thread; the kernel writes the
    // current CPU into it when the thread returns to user space after a
    // migration. The capture must not see that as a memory change.
    require_root("migrating_to_another_cpu_changes_nothing");
    use nix::sched::{sched_setaffinity, CpuSet};
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| {
            let mut set = CpuSet::new();
            set.set(c).is_ok()
                && nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
                    .map(|s| s.is_set(c).unwrap_or(false))
                    .unwrap_or(false)
        })
        .take(2)
        .collect();
    assert!(
        cpus.len() >= 2,
        "migrating_to_another_cpu_changes_nothing needs 2 CPUs in its affinity mask, has \
         {cpus:?}: run it where it can migrate, or leave it out by name (--skip)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_dummy(dir.path(), &[]);
    let pin = |cpu: usize| {
        let mut set = CpuSet::new();
        set.set(cpu).expect("cpu");
        sched_setaffinity(child.pid, &set).expect("sched_setaffinity");
        // A freeze/thaw cycle makes it return to user space on that CPU.
        capture(child.pid, TIMEOUT).expect("capture");
        std::thread::sleep(Duration::from_millis(20));
        capture(child.pid, TIMEOUT).expect("capture")
    };
    let on_first = pin(cpus[0]);
    let on_second = pin(cpus[1]);
    // Only the affinity the test changed differs (the check sees it).
    let diffs = compare(&on_first, &on_second);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].check, "status:Cpus_allowed_list");
    assert_eq!(
        diffs[0].detail,
        format!("\"{}\" -> \"{}\"", cpus[0], cpus[1])
    );
}

#[test]
fn quiescence_is_detected() {
    require_root("quiescence_is_detected");
    use zdtm_runner::freeze::{blocked_syscalls, wait_quiescent};
    let dir = tempfile::tempdir().expect("tempdir");
    let idle = spawn_dummy(dir.path(), &["--threads=2"]);
    assert!(wait_quiescent(idle.pid, TIMEOUT));
    let lines = blocked_syscalls(idle.pid).expect("all blocked");
    assert_eq!(lines.len(), 3);
    // The main thread waits for SIGTERM in a futex wait, the others in
    // pause().
    let (pause, futex) = (libc::SYS_pause.to_string(), libc::SYS_futex.to_string());
    let numbers: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        numbers.iter().filter(|n| **n == futex).count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        numbers.iter().filter(|n| **n == pause).count(),
        2,
        "{lines:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let busy = spawn_dummy(dir.path(), &["--mode=busy"]);
    assert!(!wait_quiescent(busy.pid, Duration::from_millis(200)));
}

#[test]
fn a_thread_in_uninterruptible_sleep_is_not_settled() {
    // The dummy's main thread sits in vfork(), in state D, with the same
    // /proc syscall line on every look: blocked, but not settled (a task
    // in D finishes some work when it wakes, then changes its state).
    use zdtm_runner::freeze::{look, settled, wait_quiescent};
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let dummy = spawn(
        common::DUMMY,
        &[
            &format!("--pidfile={}", pidfile.display()),
            &format!("--outfile={}", dir.path().join("out").display()),
            "--foreground",
            "--mode=vfork",
        ],
    );
    assert!(wait_until(TIMEOUT, || pidfile.exists()), "not ready");
    assert!(
        wait_until(TIMEOUT, || state_of(dummy.pid) == Some('D')),
        "never in D: {}",
        thread_states(dummy.pid)
    );
    let first = look(dummy.pid).expect("look");
    let vfork = libc::SYS_vfork.to_string();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].state, 'D', "{first:?}");
    assert_eq!(
        first[0].syscall.split_whitespace().next(),
        Some(vfork.as_str()),
        "{first:?}"
    );
    assert!(!settled(&first, &first), "a thread in D counted as settled");
    assert!(!wait_quiescent(dummy.pid, Duration::from_millis(300)));

    // Kill the vfork child: the dummy goes on to its SIGTERM wait, where
    // it sleeps interruptibly, and settles.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", dummy.pid))
        .expect("children");
    let child: i32 = children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no vfork child in {children:?}"));
    kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL).expect("kill the vfork child");
    assert!(
        wait_quiescent(dummy.pid, TIMEOUT),
        "never settled: {}",
        thread_states(dummy.pid)
    );
    // The vfork child is the dummy's zombie; the dummy's own exit (its
    // drop kills it) hands it to init, which reaps it.
}
