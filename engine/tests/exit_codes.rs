//! crust's exit codes say what happened (docs/cli.md): 0 done, 1 failed
//! with the source untouched (or nothing restored), 2 bad usage, 3 failed
//! with the process gone. Scripts rely on them to tell "retry" from "data
//! lost", and no input makes crust panic.

mod common;

use std::process::Command;

use common::*;
use test_case::test_case;

/// A ticker that runs until SIGTERM, and its log.
fn ticker(tmp: &std::path::Path, extra: &str) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(tmp, "ticker.c", &["-pthread"]);
    let log = tmp.join("ticks.log");
    let p = spawn_daemon(Command::new(bin).arg(&log).arg("16").arg("0").arg(extra));
    wait_tick(&log, 2);
    (p, log)
}

#[test_case("inf" ; "infinite")]
#[test_case("NaN" ; "not a number")]
#[test_case("-1" ; "negative")]
#[test_case("1e9" ; "beyond an hour")]
#[test_case("soon" ; "not numeric")]
fn pid_wait_out_of_range_is_a_usage_error(value: &str) {
    init();
    let tmp = tempdir();
    let out = crust([
        "restore",
        "-d",
        "--pid-wait",
        value,
        "-D",
        path_str(tmp.path()),
    ]);
    out.assert_code(2).stderr_has("--pid-wait");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    init();
    crust(["dump", "--no-such-flag", "-t", "1", "-D", "/nonexistent"]).assert_code(2);
}

/// A pidfile that cannot be written fails the restore before any process
/// exists: exit 1 and no process, never "failed" with the process running.
#[test]
fn unwritable_pidfile_fails_before_the_process_exists() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = ticker(tmp.path(), "none");
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);

    let out = crust([
        "restore",
        "-d",
        "--pidfile",
        "/nonexistent-dir/crust.pid",
        "-D",
        path_str(&images),
    ]);
    out.assert_code(1).stderr_has("pidfile");
    assert_pid_free(pid, "after a restore refused for its pidfile");

    // The images are intact: the same restore with a good pidfile works.
    let mut q = restore_detached(&images, pid);
    q.signal(libc::SIGTERM);
    assert_eq!(q.wait(TIMEOUT), Exit::Code(0));
}

/// A failed restore removes the pidfile it wrote ahead of the process.
#[test]
fn failed_restore_leaves_no_pidfile() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = ticker(tmp.path(), "none");
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    std::fs::remove_file(images.join(format!("task-{pid}.img"))).expect("remove the task image");
    let pidfile = tmp.path().join("restored.pid");
    let out = crust([
        "restore",
        "-d",
        "--pidfile",
        path_str(&pidfile),
        "-D",
        path_str(&images),
    ]);
    out.assert_code(1);
    assert!(!pidfile.exists(), "a failed restore left its pidfile");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list the temp dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restored.pid"))
        .collect();
    assert!(leftovers.is_empty(), "a failed restore left {leftovers:?}");
    assert_pid_free(pid, "after a failed restore");
}

/// Refused state: exit 1, and the process runs on.
#[test]
fn refused_dump_exits_1_and_leaves_the_process_running() {
    init();
    let tmp = tempdir();
    let (p, log) = ticker(tmp.path(), "tcp");
    let out = crust([
        "dump",
        "-t",
        &p.pid.to_string(),
        "-D",
        path_str(&tmp.path().join("images")),
    ]);
    out.assert_code(1).stderr_has("left running");
    p.assert_running_untraced();
    let at = last_tick(&log);
    wait_tick(&log, at + 2);
}

/// No such process: it is gone, exit 3, and nothing claims it runs on.
#[test]
fn dump_of_a_missing_process_exits_3() {
    init();
    let tmp = tempdir();
    // A pid that was just used and reaped, so is free for now.
    let mut c = Command::new("true").spawn().expect("spawn true");
    let pid = c.id() as i32;
    c.wait().expect("reap true");
    for op in ["dump", "pre-dump"] {
        let out = crust([
            op,
            "-t",
            &pid.to_string(),
            "-D",
            path_str(&tmp.path().join(op)),
        ]);
        out.assert_code(3);
        assert!(
            !out.stderr.contains("left running"),
            "crust {op} says a missing process was left running: {}",
            out.stderr
        );
    }
}

/// A detached lazy-pages daemon that cannot start (here: its log file
/// cannot be created) exits 1 and says why on stderr: it failed before
/// it detached, before its log was open, and used to exit 1 without a
/// word (zdtm showed an empty lazy.out). It leaves no socket or pidfile.
#[test]
fn lazy_pages_daemon_that_cannot_start_says_why() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = ticker(tmp.path(), "none");
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let pidfile = tmp.path().join("daemon.pid");
    let out = crust([
        "lazy-pages",
        "-D",
        path_str(&images),
        "-d",
        "--pidfile",
        path_str(&pidfile),
        "-o",
        "/nonexistent-dir/lazy.log",
    ]);
    out.assert_code(1)
        .stderr_has("crust: lazy-pages for")
        .stderr_has("/nonexistent-dir/lazy.log");
    assert!(
        !pidfile.exists(),
        "a daemon that never ran wrote its pidfile"
    );
    assert!(
        !images.join("lazy-pages.socket").exists(),
        "a daemon that never ran left its socket"
    );
}

/// `show` of something that is not an image: exit 1, no panic.
#[test]
fn show_of_garbage_exits_1() {
    init();
    let tmp = tempdir();
    let f = tmp.path().join("task-1.img");
    std::fs::write(&f, b"not an image at all").expect("write");
    crust(["show", path_str(&f)]).assert_code(1);
}

/// CRIU's spellings run unchanged (the zdtm runner's CRIU driver uses
/// them): `-vN` is a verbosity level (above 0: crust's `-v`, so the
/// stats line is printed; `-v0`: quiet), `-j`/`--shell-job` change
/// nothing, and the process comes back and ticks on.
#[test]
fn criu_spellings_are_accepted() {
    init();
    let tmp = tempdir();
    let (mut p, log) = ticker(tmp.path(), "none");
    let images = tmp.path().join("images");
    let pid = p.pid.to_string();
    let out = crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&images),
        "--shell-job",
        "-j",
        "-o",
        "dump.log",
        "-v4",
    ]);
    out.assert_ok().stderr_has("crust: dumped pid");
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let pidfile = tmp.path().join("restored.pid");
    let out = crust([
        "restore",
        "-D",
        path_str(&images),
        "--shell-job",
        "-d",
        "--pidfile",
        path_str(&pidfile),
        "-v0",
    ]);
    out.assert_ok();
    assert!(
        !out.stderr.contains("crust: restored"),
        "-v0 is quiet: {}",
        out.stderr
    );
    let restored = Proc::adopt(p.pid);
    assert_eq!(read_string(&pidfile).trim(), pid);
    let at = last_tick(&log);
    wait_tick(&log, at + 2);
    drop(restored);
}

/// `check --feature NAME` answers by exit status, as `criu check
/// --feature` does, and agrees with the full report.
#[test]
fn check_feature_answers_by_exit_status() {
    init();
    let report = crust(["check", "--json"]);
    report.assert_ok();
    let v = report.json();
    let has = |name: &str| {
        v["features"]
            .as_array()
            .expect("features")
            .iter()
            .any(|f| f["name"] == name && f["available"] == true)
    };
    let tracks = has("uffd-wp dirty tracking") || has("soft-dirty");
    let out = crust(["check", "--feature", "mem_dirty_track"]);
    if tracks {
        out.assert_code(0);
    } else {
        out.assert_code(1)
            .stderr_has("mem_dirty_track is not available");
    }
    crust(["check", "--feature", "no_such_thing"])
        .assert_code(2)
        .stderr_has("unknown feature");
}
