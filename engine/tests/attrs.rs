//! Process attributes crust cannot restore yet are refused by name, at
//! dump and at pre-dump time, and the process runs on untouched: children
//! (live or zombie), a POSIX timer on another process's CPU clock, and a
//! VMA flag restore cannot
//! reproduce (MAP_DROPPABLE, smaps `dp`).

mod common;

use std::process::Command;

use common::*;
use test_case::test_case;

#[test_case("child", "child process", false ; "live child at dump")]
#[test_case("child", "child process", true ; "live child at pre-dump")]
#[test_case("zombie", "child process", false ; "zombie child at dump")]
#[test_case("zombie", "child process", true ; "zombie child at pre-dump")]
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
