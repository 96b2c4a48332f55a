//! What crust cannot dump it refuses by name, and the process runs on as
//! if nothing happened: not stopped, not traced, memory intact.

mod common;

use std::process::Command;

use common::*;
use test_case::test_case;

#[test_case("unix-bound", "named unix sockets" ; "bound unix socket")]
#[test_case("tcp", "socket" ; "tcp listen socket")]
#[test_case("thread-seccomp", "seccomp mode of its own" ; "thread with its own seccomp filter")]
#[test_case("unlinked", "unlinked" ; "unlinked open file")]
#[test_case("eventfd", "eventfd" ; "eventfd")]
fn refusal_leaves_process_untouched(extra: &str, named: &str) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "ticker.c", &["-pthread"]);
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg("16").arg("0").arg(extra));
    wait_tick(&log, 3);

    let pid = p.pid.to_string();
    // A pre-dump refuses what the final dump would refuse, before it copies
    // any memory: a migration is never pre-copied only to be refused.
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        let out = crust([op, "-t", &pid, "-D", path_str(&images)]);
        out.assert_failed().stderr_has(named);
        assert!(
            !images.join("inventory.img").exists(),
            "a refused {op} left a complete-looking image directory"
        );
        assert!(
            !images.join(format!("pages-{pid}.img")).exists(),
            "a refused {op} copied memory first"
        );
    }

    assert_eq!(p.try_wait(), None, "the refused process died");
    p.assert_running_untraced();
    // It still works: it ticks on and its memory checks out.
    let at = last_tick(&log);
    wait_tick(&log, at + 3);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}
