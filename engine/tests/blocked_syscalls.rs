//! Tasks dumped in the middle of a blocking system call resume it after
//! restore with the semantics the program relies on.

mod common;

use std::process::Command;

use common::*;
use test_case::test_case;

/// Waits until `pid` sits in one of `nrs` (or has reported a result).
fn wait_blocked_in(pid: i32, nrs: &[i64], log: &std::path::Path) {
    wait_until(
        TIMEOUT,
        &format!("pid {pid} to block in syscall {nrs:?}"),
        || {
            let text = read_string(log);
            if text.contains("OK") || text.contains("BAD") {
                panic!("pid {pid} finished early: {text}");
            }
            match blocked_syscall(pid) {
                Some(nr) if nrs.contains(&nr) => Ok(()),
                other => Err(format!("in {other:?}")),
            }
        },
    );
}

#[test_case("nanosleep", &[libc::SYS_nanosleep, libc::SYS_clock_nanosleep], false ; "nanosleep")]
#[test_case("pause", &[libc::SYS_pause], true ; "pause")]
#[test_case("read", &[libc::SYS_read], true ; "pipe read")]
fn blocked_syscall_resumes(mode: &str, nrs: &[i64], wake_with_usr1: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "blocked.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(mode).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "blocking", TIMEOUT);
    wait_blocked_in(pid, nrs, &log);

    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let mut r = restore_detached(&images, pid);
    if wake_with_usr1 {
        // Back in the same call (not woken spuriously), then woken for real.
        wait_blocked_in(pid, nrs, &log);
        r.signal(libc::SIGUSR1);
    }
    wait_until(
        TIMEOUT,
        &format!("a result in {}", log.display()),
        || match read_string(&log).lines().count() {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} lines")),
        },
    );
    let text = read_string(&log);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "log: {text}");
    let result = text.lines().nth(1).unwrap_or_default();
    assert!(result.starts_with("OK"), "{mode}: {text}");
}

/// A signal that arrives before the restored task runs again must
/// interrupt the call it was dumped in, as it would have interrupted the
/// original: the handler runs and pause() returns EINTR. Re-entering the
/// call after the handler would lose the wakeup and hang.
#[test]
fn signal_before_resume_interrupts_the_call() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "blocked.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg("pause").arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "blocking", TIMEOUT);
    wait_blocked_in(pid, &[libc::SYS_pause], &log);

    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let pidfile = tmp.path().join("restored.pid");
    crust([
        "restore",
        "-d",
        "--leave-stopped",
        "-D",
        path_str(&images),
        "--pidfile",
        path_str(&pidfile),
    ])
    .assert_ok();
    let mut r = Proc::adopt(pid);
    wait_state(pid, 'T', "the restored task to be stopped");
    // Queued while it is stopped: delivered before it executes anything.
    r.signal(libc::SIGUSR1);
    r.signal(libc::SIGCONT);
    wait_until(
        TIMEOUT,
        &format!("a result in {}", log.display()),
        || match read_string(&log).lines().count() {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} lines")),
        },
    );
    let text = read_string(&log);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "log: {text}");
    assert!(
        text.lines().nth(1).unwrap_or_default().starts_with("OK"),
        "{text}"
    );
}
