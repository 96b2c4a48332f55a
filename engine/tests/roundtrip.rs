//! Checkpoint and restore of real programs that never knew about crust:
//! they carry on where they were, with their memory intact.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Starts the C ticker (`progs/ticker.c`) with `mib` MiB of patterned heap.
fn start_ticker(dir: &Path, mib: u32, exit_code: i32) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(dir, "ticker.c", &["-pthread"]);
    let log = dir.join("ticks.log");
    let p = spawn_daemon(
        Command::new(bin)
            .arg(&log)
            .arg(mib.to_string())
            .arg(exit_code.to_string()),
    );
    (p, log)
}

/// Dump, restore -d, carry on, SIGTERM, self-check: the whole round trip.
fn roundtrip(p: &mut Proc, log: &Path, images: &Path) {
    wait_tick(log, 3);
    let pid = p.pid;
    let argv = cmdline(pid);
    dump_and_reap(p, images);
    let at_dump = last_tick(log);

    let mut r = restore_detached(images, pid);
    assert_eq!(
        cmdline(pid),
        argv,
        "the restored pid {pid} runs something else"
    );
    // It carries on: new ticks after the restore.
    wait_tick(log, at_dump + 5);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let n = assert_ticker_ok(log);
    assert!(n >= at_dump + 5, "{n} ticks, {at_dump} at the dump");
}

#[test]
fn c_program_roundtrip() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_ticker(tmp.path(), 64, 0);
    roundtrip(&mut p, &log, &tmp.path().join("images"));
}

#[test]
fn python_roundtrip() {
    init();
    let tmp = tempdir();
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(
        Command::new("python3")
            .arg(Path::new(PROGS).join("ticker.py"))
            .arg(&log),
    );
    roundtrip(&mut p, &log, &tmp.path().join("images"));
}

/// 512 MiB fully written round-trips byte for byte (the program checks).
#[test]
fn large_region_roundtrip() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_ticker(tmp.path(), 512, 0);
    roundtrip(&mut p, &log, &tmp.path().join("images"));
}

/// Without -d, `crust restore` waits for the task and exits with its status.
#[test]
fn restore_waits_for_exit_status() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_ticker(tmp.path(), 4, 7);
    let images = tmp.path().join("images");
    wait_tick(&log, 3);
    let pid = p.pid;
    dump_and_reap(&mut p, &images);
    let at_dump = last_tick(&log);

    let pidfile = tmp.path().join("restored.pid");
    let run = crust_spawn([
        "restore",
        "-D",
        path_str(&images),
        "--pidfile",
        path_str(&pidfile),
    ]);
    wait_until(TIMEOUT, "the pidfile", || {
        let s = read_string(&pidfile);
        if s.ends_with('\n') {
            return Ok(());
        }
        match std::fs::metadata(format!("/proc/{}", run.pid())) {
            Ok(_) => Err(format!("pidfile holds {s:?}")),
            Err(_) => Err("crust restore is gone".into()),
        }
    });
    assert_eq!(read_string(&pidfile).trim(), pid.to_string());
    // The task is crust's child; if anything fails it is killed, and crust
    // (dropped after it) too.
    let mut task = Proc::adopt(pid);
    wait_tick(&log, at_dump + 3);
    task.signal(libc::SIGTERM);
    let out = run.wait(TIMEOUT);
    task.forget();
    out.assert_no_panic();
    assert_eq!(
        out.status.code(),
        Some(7),
        "crust restore should exit with the task's status 7: {}",
        out.stderr
    );
    assert_ticker_ok(&log);
    assert_pid_free(pid, "after crust restore returned");
}

/// --leave-running: the task runs on untouched, and the images are
/// complete: once it is gone they restore it as it was at the dump.
#[test]
fn leave_running() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_ticker(tmp.path(), 64, 0);
    let images = tmp.path().join("images");
    wait_tick(&log, 3);
    let pid = p.pid;
    let before = last_tick(&log);
    dump(pid, &images, &["--leave-running"]);
    let after = last_tick(&log);
    assert_eq!(p.try_wait(), None, "the task died with --leave-running");
    p.assert_running_untraced();
    wait_tick(&log, after + 3);

    let shown = crust(["show", path_str(&images)]);
    shown.assert_ok();
    let json = shown.json();
    for name in ["inventory.img", "pstree.img", "task", "pages"] {
        let key = if name.ends_with(".img") {
            name.to_string()
        } else {
            format!("{name}-{pid}.img")
        };
        assert!(
            json.get(&key).is_some(),
            "crust show lacks {key}: keys {:?}",
            json.as_object().map(|o| o.keys().collect::<Vec<_>>())
        );
    }

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    let first_run = assert_ticker_ok(&log);

    // The original is gone and reaped: restore the images it left.
    let mut r = restore_detached(&images, pid);
    let first_lines = first_run as usize + 1;
    wait_until(TIMEOUT, "ticks from the restored task", || {
        let text = read_string(&log);
        match text.lines().count() {
            n if n >= first_lines + 3 => Ok(()),
            n => Err(format!("{n} lines")),
        }
    });
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&log);
    let lines: Vec<&str> = text.lines().collect();
    let second = &lines[first_lines..];
    let resumed_at: u64 = second[0]
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("restored run starts with {:?}", second[0]));
    assert!(
        (before + 1..=after + 1).contains(&resumed_at),
        "the restored task resumed at tick {resumed_at}, but the dump happened between ticks {before} and {after}"
    );
    check_run(
        second,
        resumed_at,
        "the run restored from --leave-running images",
    );
}
