//! Credentials, capabilities, seccomp and namespaces: restored exactly
//! (checked from outside, in /proc/PID/status and in a second dump of the
//! restored task), or refused by name by dump and pre-dump with the
//! process left running, untraced, and still working.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use crust::image::container::{read_message, write_message};
use crust::image::messages::Task;
use crust::image::Kind;
use test_case::test_case;

/// The credential lines of /proc/PID/status.
fn cred_lines(pid: i32) -> Vec<String> {
    read_string(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:", "Seccomp"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(String::from)
        .collect()
}

/// The `creds` of the task image in `dir`.
fn image_creds(dir: &Path, pid: i32) -> serde_json::Value {
    let out = crust(["show", path_str(&dir.join(format!("task-{pid}.img")))]);
    out.assert_ok();
    out.json()["message"]["core"]["creds"].clone()
}

fn start(tmp: &Path, wrapper: &[&str], modes: &str) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(tmp, "secure.c", &[]);
    let log = tmp.join("secure.log");
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg("--").arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let p = spawn_daemon(cmd.arg(&log).arg(modes));
    wait_file_contains(&log, "ready\n", TIMEOUT);
    (p, log)
}

/// Ends a secure.c task with SIGTERM; it must report OK and exit 0.
fn finish(p: &mut Proc, log: &Path) {
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0), "log: {}", read_string(log));
    let text = read_string(log);
    assert!(text.ends_with("OK\n"), "the task reported {text:?}");
}

#[test_case(&["unshare", "--net"], "none", "net" ; "own network namespace")]
#[test_case(&["unshare", "--mount"], "none", "mnt" ; "own mount namespace")]
#[test_case(&["unshare", "--uts"], "none", "uts" ; "own uts namespace")]
#[test_case(&["unshare", "--ipc"], "none", "ipc" ; "own ipc namespace")]
#[test_case(&[], "strict", "seccomp strict mode" ; "seccomp strict")]
#[test_case(&[], "notif", "SECCOMP_RET_USER_NOTIF" ; "seccomp user notification")]
#[test_case(&[], "nonnp", "without no_new_privs" ; "seccomp without no_new_privs or CAP_SYS_ADMIN")]
#[test_case(&[], "killer", "would kill the process on the engine's injected personality" ; "seccomp filter against injected calls")]
fn refusal_leaves_process_running(wrapper: &[&str], modes: &str, named: &str) {
    init();
    let tmp = tempdir();
    let (mut p, log) = start(tmp.path(), wrapper, modes);
    let before = cred_lines(p.pid);
    let pid = p.pid.to_string();

    let pre = tmp.path().join("pre");
    crust(["pre-dump", "-t", &pid, "-D", path_str(&pre)])
        .assert_failed()
        .assert_no_panic()
        .stderr_has(named);
    assert!(
        !pre.join("inventory.img").exists(),
        "a refused pre-dump left images"
    );
    p.assert_running_untraced();

    let images = tmp.path().join("images");
    crust(["dump", "-t", &pid, "-D", path_str(&images)])
        .assert_failed()
        .assert_no_panic()
        .stderr_has(named);
    assert!(
        !images.join("inventory.img").exists(),
        "a refused dump left images"
    );
    assert_eq!(p.try_wait(), None, "the refused process died");
    p.assert_running_untraced();
    assert_eq!(
        cred_lines(p.pid),
        before,
        "credentials changed by a refused dump"
    );
    finish(&mut p, &log);
}

/// An unprivileged task (uids, gids, groups, bounding set cut, no
/// capabilities) with no_new_privs and two stacked filters, one with
/// SECCOMP_FILTER_FLAG_LOG: after dump and restore, /proc shows the same
/// credentials, a second dump of the restored task records the same state
/// (filter programs, their order and flags, securebits, dumpable), and the
/// filters still act and the parent death signal, which a uid change
/// clears, is still set (the task checks both itself).
#[test]
fn credentials_and_filters_round_trip() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start(tmp.path(), &[], "nobody,filters,pdeath");
    let before = cred_lines(p.pid);
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("Uid:\t65534\t65533\t65532\t65532")),
        "{before:?}"
    );
    assert!(
        before.contains(&"Seccomp_filters:\t2".to_string()),
        "{before:?}"
    );

    let first = tmp.path().join("first");
    dump_and_reap(&mut p, &first);
    let dumped = image_creds(&first, p.pid);
    assert_eq!(dumped["groups"], serde_json::json!([4, 24]));
    assert_eq!(dumped["no_new_privs"], true);
    assert_eq!(dumped["dumpable"], 0);
    let filters = dumped["seccomp_filters"]
        .as_array()
        .expect("filters")
        .clone();
    assert_eq!(filters.len(), 2);
    assert_eq!(filters[0]["flags"], 0, "the first filter has no flags");
    assert_eq!(filters[1]["flags"], 2, "the second filter has FLAG_LOG");

    let mut r = restore_detached(&first, p.pid);
    assert_eq!(cred_lines(r.pid), before, "credentials after restore");

    let second = tmp.path().join("second");
    dump(r.pid, &second, &["--leave-running"]);
    assert_eq!(
        image_creds(&second, r.pid),
        dumped,
        "state seen in the restored task"
    );
    r.assert_running_untraced();
    finish(&mut r, &log);
}

/// Restore refuses an image whose credentials were removed, rather than
/// handing the engine's root credentials to the task.
#[test]
fn image_without_credentials_is_refused() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = start(tmp.path(), &[], "none");
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let task = images.join(format!("task-{}.img", p.pid));
    let shown = crust(["show", path_str(&task)]);
    shown.assert_ok();
    assert!(
        shown.json()["message"]["core"]["creds"].is_object(),
        "no creds were dumped"
    );
    // The task image as an older crust wrote it: no creds.
    let mut msg: Task = read_message(&task, Kind::Task).expect("read task image");
    msg.core.as_mut().expect("core state").creds = None;
    std::fs::remove_file(&task).expect("remove task image");
    write_message(&task, Kind::Task, &msg).expect("write task image");
    let out = crust(["restore", "-D", path_str(&images)]);
    out.assert_failed()
        .assert_no_panic()
        .stderr_has("no credentials");
    assert_pid_free(p.pid, "after a refused restore");
}

/// An engine that lacks a capability the task holds refuses the dump (a
/// restore could not hand it back), and the task runs on.
#[test]
fn capability_the_engine_lacks_is_refused() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start(tmp.path(), &[], "none");
    let images = tmp.path().join("images");
    // Exec'd by root with CAP_NET_RAW out of its bounding set, crust runs
    // without it in its permitted set; the task still holds it.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-net_raw", "--", CRUST, "dump", "-t"])
        .arg(p.pid.to_string())
        .arg("-D")
        .arg(&images)
        .output()
        .expect("run setpriv crust dump");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dump succeeded: {stderr}");
    assert!(
        stderr.contains("permitted capabilities 13 that the engine does not hold"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert!(
        !images.join("inventory.img").exists(),
        "a refused dump left images"
    );
    assert_eq!(p.try_wait(), None, "the refused process died");
    p.assert_running_untraced();
    finish(&mut p, &log);
}
