//! Visible state capture on real processes (needs root for ptrace of any
//! task and /proc/PID/pagemap; skipped otherwise).

mod common;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use zdtm_runner::freeze::Frozen;
use zdtm_runner::state::{capture, diff::compare, VisibleState};

use common::{root_or_skip, spawn, spawn_dummy, state_of, thread_states, wait_until};

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
    if !root_or_skip("idle_task_captures_are_equal") {
        return;
    }
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
    if !root_or_skip("every_thread_is_frozen") {
        return;
    }
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
    if !root_or_skip("stopped_task_stays_stopped") {
        return;
    }
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
    if !root_or_skip("busy_task_memory_change_is_reported") {
        return;
    }
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
    if !root_or_skip("sleep_is_not_quiescent") {
        return;
    }
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
    if !root_or_skip("migrating_to_another_cpu_changes_nothing") {
        return;
    }
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
    if cpus.len() < 2 {
        eprintln!("migrating_to_another_cpu_changes_nothing: skipped, needs 2 CPUs");
        return;
    }
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
    assert_eq!(compare(&on_first, &on_second), vec![]);
}

#[test]
fn quiescence_is_detected() {
    if !root_or_skip("quiescence_is_detected") {
        return;
    }
    use zdtm_runner::freeze::{blocked_syscalls, wait_quiescent};
    let dir = tempfile::tempdir().expect("tempdir");
    let idle = spawn_dummy(dir.path(), &["--threads=2"]);
    assert!(wait_quiescent(idle.pid, TIMEOUT));
    let lines = blocked_syscalls(idle.pid).expect("all blocked");
    assert_eq!(lines.len(), 3);
    let pause = libc::SYS_pause.to_string();
    assert!(
        lines
            .iter()
            .all(|l| l.split_whitespace().next() == Some(pause.as_str())),
        "{lines:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let busy = spawn_dummy(dir.path(), &["--mode=busy"]);
    assert!(!wait_quiescent(busy.pid, Duration::from_millis(200)));
}
