//! Process attributes crust cannot restore yet are refused by name, at
//! dump and at pre-dump time, and the process runs on untouched: a POSIX timer on another process's CPU clock, and a
//! VMA flag restore cannot
//! reproduce (MAP_DROPPABLE, smaps `dp`).

mod common;

use std::process::Command;

use common::*;
use test_case::test_case;

#[test_case("cputimer", "CPU clock of pid", false ; "timer on another cpu clock at dump")]
#[test_case("cputimer", "CPU clock of pid", true ; "timer on another cpu clock at pre-dump")]
#[test_case("droppable", "`dp`", false ; "droppable mapping at dump")]
#[test_case("droppable", "`dp`", true ; "droppable mapping at pre-dump")]
fn attribute_refused_by_name(state: &str, named: &str, pre_dump: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "attrs.c", &[]);
    let log = tmp.path().join("ticks.log");
    // Declared before the parent, so dropped after it (on failure too).
    let mut kids: Vec<Proc> = Vec::new();
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg(state));
    wait_tick(&log, 3);
    // A live child dies with its parent (PR_SET_PDEATHSIG) and then
    // reparents to us, the subreaper: ours to reap.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid))
        .expect("read children");
    if state == "child" {
        kids.extend(
            children
                .split_whitespace()
                .map(|k| Proc::adopt(k.parse().expect("child pid"))),
        );
    }

    let images = tmp.path().join("images");
    let pid = p.pid.to_string();
    let op = if pre_dump { "pre-dump" } else { "dump" };
    let out = crust([op, "-t", &pid, "-D", path_str(&images)]);
    out.assert_failed().stderr_has(named);
    assert!(
        !images.join("inventory.img").exists(),
        "a refused {op} left a complete-looking image directory"
    );

    assert_eq!(p.try_wait(), None, "the refused process died");
    p.assert_running_untraced();
    let at = last_tick(&log);
    wait_tick(&log, at + 3);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}

/// Restore checks the rebuilt VMAs' smaps VmFlags against the dump's: an
/// image claiming a flag restore does not set (here `dd` recorded without
/// its madvise bit) fails the restore by name, and no process is left.
#[test]
fn restore_refuses_vm_flags_it_did_not_reproduce() {
    use crust::image::container::{read_message, write_message};
    use crust::image::messages::{Task, VmaKind};
    use crust::image::{ImageDir, Kind};
    use crust::proc::maps::VmFlags;

    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "attrs.c", &[]);
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg("none"));
    wait_tick(&log, 3);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);

    let path = ImageDir::open(&images)
        .expect("open images")
        .file(Kind::Task, Some(p.pid));
    let mut task: Task = read_message(&path, Kind::Task).expect("read task image");
    let mm = task.mm.as_mut().expect("memory layout");
    let v = mm
        .vmas
        .iter_mut()
        .find(|v| v.kind == VmaKind::AnonPrivate as i32 && v.vm_flags != 0)
        .expect("an anonymous VMA with VmFlags");
    assert_eq!(v.vm_flags & VmFlags::DONTDUMP, 0);
    v.vm_flags |= VmFlags::DONTDUMP;
    let at = format!("{:#x}-{:#x}", v.start, v.end);
    // Image files are created exclusively: replace, never overwrite.
    std::fs::remove_file(&path).expect("remove task image");
    write_message(&path, Kind::Task, &task).expect("write task image");

    let out = crust(["restore", "-d", "-D", path_str(&images)]);
    // Should the restore wrongly succeed, the task is ours to kill.
    let _restored = std::path::Path::new(&format!("/proc/{}", p.pid))
        .exists()
        .then(|| Proc::adopt(p.pid));
    out.assert_failed()
        .stderr_has("smaps VmFlags")
        .stderr_has(&at)
        .stderr_has(" dd");
    assert_pid_free(p.pid, "after the refused restore");
}
