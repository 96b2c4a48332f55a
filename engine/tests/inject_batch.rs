//! Batches of injected calls (engine/src/inject/batch.rs): a runner in the
//! task's scratch mapping runs a table of calls and stops at an int3. The
//! state they read is the same as read one call at a time, and SIGTRAP,
//! which the breakpoint raises, is left exactly as the task had it: in the
//! task dumped and in the one restored.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use test_case::test_case;

fn oks(log: &Path) -> usize {
    let text = read_string(log);
    assert!(!text.contains("BAD"), "{text}");
    text.lines().filter(|l| l.starts_with("OK")).count()
}

fn wait_oks(log: &Path, n: usize) {
    wait_until(
        TIMEOUT,
        &format!("{n} OK lines in {}", log.display()),
        || match oks(log) {
            k if k >= n => Ok(()),
            k => Err(format!("{k} OK lines")),
        },
    );
}

/// (calls one by one, calls in batches, batch runs) from `-v`'s line.
fn counts(stderr: &str, prefix: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains("injected one by one"))
        .unwrap_or_else(|| panic!("no injected-calls line in {stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = numbers.len();
    assert!(n >= 3, "{line}");
    (numbers[n - 3], numbers[n - 2], numbers[n - 1])
}

/// The runner only runs where its breakpoint changes nothing (SIGTRAP
/// neither ignored nor pending: `blocked` is fine, the runner unblocks
/// SIGTRAP for itself); elsewhere the same calls go one by one. Either
/// way the task's SIGTRAP (action, mask, pending, handler never run) is
/// as it was after a dump that leaves it running, and after a restore.
#[test_case("default", true ; "default action")]
#[test_case("blocked", true ; "blocked with a handler")]
#[test_case("ignored", false ; "ignored")]
#[test_case("pending", false ; "pending")]
fn sigtrap_is_left_as_the_task_had_it(mode: &str, batched: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sigtrap.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(mode).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "ready", TIMEOUT);
    wait_oks(&log, 1);

    let first = tmp.path().join("first");
    let out = dump(pid, &first, &["--leave-running", "-v"]);
    let (_, in_batches, runs) = counts(&out.stderr, "crust: injected in");
    assert_eq!(runs > 0, batched, "{mode}: {}", out.stderr);
    assert_eq!(in_batches > 0, batched, "{mode}: {}", out.stderr);
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);

    let second = tmp.path().join("second");
    dump_and_reap(&mut p, &second);
    let out = crust(["restore", "-d", "-v", "-D", path_str(&second)]);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    let (_, in_batches, _) = counts(&out.stderr, "crust: restore");
    assert!(in_batches > 0, "{mode}: {}", out.stderr);
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 3);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

fn core_of(dir: &Path, pid: i32) -> Value {
    let out = crust(["show", path_str(&dir.join(format!("core-{pid}.img")))]);
    out.assert_ok();
    out.json()["message"].clone()
}

/// What a dump reads with injected calls (signal actions, altstack,
/// clear_child_tid, personality, pdeath signal, prctl and arch_prctl
/// state, timers, the prctl-only credentials) is the same whether the
/// calls run in a batch or one by one (CRUST_INJECT_BATCH=0).
#[test]
fn a_batch_reads_what_one_by_one_reads() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sigtrap.c", &[]);
    let log = tmp.path().join("result.log");
    let p = spawn_daemon(Command::new(bin).arg("blocked").arg(&log));
    wait_file_contains(&log, "ready", TIMEOUT);

    let batched = tmp.path().join("batched");
    let out = dump(p.pid, &batched, &["--leave-running", "-v"]);
    assert!(
        counts(&out.stderr, "crust: injected in").2 > 0,
        "{}",
        out.stderr
    );
    let single = tmp.path().join("single");
    let pid = p.pid.to_string();
    let out = crust_spawn_env(
        [
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&single),
            "--leave-running",
            "-v",
        ],
        &[("CRUST_INJECT_BATCH", "0".as_ref())],
    )
    .wait(TIMEOUT);
    out.assert_ok();
    assert_eq!(
        counts(&out.stderr, "crust: injected in").2,
        0,
        "{}",
        out.stderr
    );

    let (a, b) = (core_of(&batched, p.pid), core_of(&single, p.pid));
    for key in [
        "sigactions",
        "altstack",
        "clear_child_tid",
        "personality",
        "pdeath_signal",
        "attrs",
        "creds",
        "sigmask",
        "pending",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key} differs between batched and one-by-one"
        );
    }
    let actions = a["sigactions"].as_array().map_or(0, |v| v.len());
    assert!(
        actions >= 15,
        "the test program sets many actions: {actions}"
    );
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);

    // And restored one call at a time (the vDSO moved by single mremaps,
    // the gadget following it).
    let mut p = p;
    let pid = p.pid;
    let last = tmp.path().join("last");
    dump_and_reap(&mut p, &last);
    let out = crust_spawn_env(
        ["restore", "-d", "-v", "-D", path_str(&last)],
        &[("CRUST_INJECT_BATCH", "0".as_ref())],
    )
    .wait(TIMEOUT);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    assert_eq!(counts(&out.stderr, "crust: restore").2, 0, "{}", out.stderr);
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 3);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

/// 300 files restored: reopened in batches of as many paths as the
/// scratch area holds, each batch run in tables of 128 calls, every
/// descriptor at its number with its file, offset and flags; batched and
/// one by one.
#[test_case(true ; "in batches")]
#[test_case(false ; "one by one")]
fn many_files_are_reopened_in_batches(batched: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "manyfiles.c", &[]);
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg("300").arg(&files).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "ready", TIMEOUT);
    wait_oks(&log, 1);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let env: &[(&str, &std::ffi::OsStr)] = match batched {
        true => &[],
        false => &[("CRUST_INJECT_BATCH", "0".as_ref())],
    };
    let out = crust_spawn_env(["restore", "-d", "-v", "-D", path_str(&images)], env).wait(TIMEOUT);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    let (_, in_batches, runs) = counts(&out.stderr, "crust: restore");
    match batched {
        // 300 openat, 300 F_DUPFD, 300 close + 300 lseek at least: more
        // than one table each.
        true => assert!(in_batches >= 1200 && runs >= 10, "{}", out.stderr),
        false => assert_eq!(runs, 0, "{}", out.stderr),
    }
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 2);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}
