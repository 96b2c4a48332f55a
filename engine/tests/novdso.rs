//! A task that unmapped its own vDSO: the engine finds a `syscall`
//! instruction in its other executable mappings to dump it, and restore
//! gives back a task without [vdso] (the stub's, used as the gadget until
//! then, is removed by the last injected call).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn specials(pid: i32) -> Vec<String> {
    read_string(Path::new(&format!("/proc/{pid}/maps")))
        .lines()
        .filter(|l| l.contains("[v"))
        .map(|l| l.to_string())
        .collect()
}

fn start(tmp: &Path) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(tmp, "novdso.c", &[]);
    let pidfile = tmp.join("novdso.pid");
    let result = tmp.join("result");
    let p = spawn_daemon(Command::new(bin).arg(&pidfile).arg(&result));
    wait_file_contains(&pidfile, "\n", TIMEOUT);
    let sp = specials(p.pid);
    assert!(
        !sp.iter().any(|l| l.ends_with("[vdso]")),
        "the test program should have unmapped its vDSO: {sp:?}"
    );
    (p, result)
}

#[test]
fn task_without_vdso_dumps_and_restores_without_one() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start(tmp.path());
    let before = specials(p.pid);
    let img = tmp.path().join("img");
    dump_and_reap(&mut p, &img);
    let mut r = restore_detached(&img, p.pid);
    assert_eq!(
        specials(r.pid),
        before,
        "the restored task's special mappings differ"
    );
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_eq!(read_string(&result), "OK\n");
}

#[test]
fn task_without_vdso_leave_running_and_pre_dump() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start(tmp.path());
    let pid = p.pid.to_string();
    let img = tmp.path().join("img");
    crust([
        "pre-dump",
        "-t",
        &pid,
        "-D",
        path_str(&img.join("pre")),
        "--pre-dump-mode",
        "splice",
        "--track-mem",
    ])
    .assert_ok();
    p.assert_running_untraced();
    dump(
        p.pid,
        &img.join("dump"),
        &[
            "--leave-running",
            "--track-mem",
            "--prev-images-dir",
            "../pre",
        ],
    );
    p.assert_running_untraced();
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert_eq!(read_string(&result), "OK\n");
}
