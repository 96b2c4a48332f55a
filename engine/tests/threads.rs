//! Multi-threaded processes: every thread is frozen, dumped and recreated
//! with its own tid, registers (TLS included), signal mask, altstack, name,
//! pending signals and the syscall it was blocked in, and the program
//! carries on. Real programs: a pthread C program (progs/threads.c), a Rust
//! std::thread program (progs/rsthreads.rs) and a Python interpreter
//! running threads (progs/pythreads.py).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The tids of `pid`, sorted.
fn tids(pid: i32) -> Vec<i32> {
    let mut t: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    t.sort_unstable();
    t
}

/// Each thread's name (comm), by tid.
fn comms(pid: i32) -> Vec<(i32, String)> {
    tids(pid)
        .into_iter()
        .map(|t| {
            let c =
                std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm")).unwrap_or_default();
            (t, c.trim().to_string())
        })
        .collect()
}

/// Waits until every thread of `pid` sits in a system call (not running).
fn wait_all_blocked(pid: i32, n: usize) {
    wait_until(
        TIMEOUT,
        &format!("all {n} threads of {pid} to block"),
        || {
            let t = tids(pid);
            if t.len() != n {
                return Err(format!("{} threads", t.len()));
            }
            for tid in t {
                let s = read_string(Path::new(&format!("/proc/{pid}/task/{tid}/syscall")));
                match s.split_whitespace().next() {
                    Some(nr) if nr.parse::<i64>().is_ok() => {}
                    other => return Err(format!("thread {tid} at {other:?}")),
                }
            }
            Ok(())
        },
    );
}

fn start_c(tmp: &Path) -> (Proc, PathBuf) {
    start_c_with(tmp, &[])
}

fn start_c_with(tmp: &Path, args: &[&str]) -> (Proc, PathBuf) {
    let bin = compile_c(tmp, "threads.c", &["-pthread"]);
    let log = tmp.join("result.log");
    let p = spawn_daemon(Command::new(bin).arg(&log).args(args));
    wait_file_contains(&log, "blocking", TIMEOUT);
    wait_all_blocked(p.pid, 5);
    (p, log)
}

/// Wakes the restored C program and checks every thread reported OK.
fn finish_c(mut r: Proc, log: &Path) {
    r.signal(libc::SIGUSR1);
    let exit = r.wait(TIMEOUT);
    let text = read_string(log);
    assert_eq!(exit, Exit::Code(0), "log: {text}");
    for t in ["OK t0", "OK t1", "OK t2", "OK t3", "OK all"] {
        assert!(text.contains(t), "no {t:?} in: {text}");
    }
}

/// Threads blocked in futex waits, read(2), nanosleep (and one with a
/// signal pending in its own queue) come back with the same tids and
/// names, back in their calls, and go on with their own state.
#[test]
fn pthreads_roundtrip() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_c(tmp.path());
    let pid = p.pid;
    let before = comms(pid);
    assert_eq!(before.len(), 5);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let r = restore_detached(&images, pid);
    assert_eq!(comms(pid), before, "tids and names after restore");
    wait_all_blocked(pid, 5);
    finish_c(r, &log);
}

/// A seccomp filter every thread has (installed with TSYNC) is installed
/// once at restore and synced to every thread: each still has it, with
/// no_new_privs, and the engine's own calls got through it at dump.
#[test]
fn pthreads_with_seccomp_filter() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_c_with(tmp.path(), &["seccomp"]);
    let pid = p.pid;
    let pre = tmp.path().join("pre");
    crust(["pre-dump", "-t", &pid.to_string(), "-D", path_str(&pre)]).assert_ok();
    let images = tmp.path().join("images");
    dump(pid, &images, &["--prev-images-dir", "../pre"]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let r = restore_detached(&images, pid);
    for tid in tids(pid) {
        let status = read_string(Path::new(&format!("/proc/{pid}/task/{tid}/status")));
        for want in ["Seccomp:\t2", "Seccomp_filters:\t1", "NoNewPrivs:\t1"] {
            assert!(
                status.contains(want),
                "thread {tid}: no {want:?} in {status}"
            );
        }
    }
    finish_c(r, &log);
}

/// Pre-dumps (the page list is taken with every thread stopped), then the
/// final dump on top of them.
#[test]
fn pthreads_predump_then_dump() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_c(tmp.path());
    let pid = p.pid.to_string();
    let pre = tmp.path().join("pre");
    crust(["pre-dump", "-t", &pid, "-D", path_str(&pre), "--track-mem"]).assert_ok();
    let images = tmp.path().join("images");
    dump(
        p.pid,
        &images,
        &["--track-mem", "--prev-images-dir", "../pre"],
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let r = restore_detached(&images, p.pid);
    finish_c(r, &log);
}

/// A dump that leaves the process running lets every thread go on as it
/// was (each parked thread leaves through the signal path).
#[test]
fn pthreads_leave_running() {
    init();
    let tmp = tempdir();
    let (p, log) = start_c(tmp.path());
    let images = tmp.path().join("images");
    dump(p.pid, &images, &["--leave-running"]);
    p.assert_running_untraced();
    for tid in tids(p.pid) {
        let status = read_string(Path::new(&format!("/proc/{}/task/{tid}/status", p.pid)));
        assert!(
            status.contains("TracerPid:\t0"),
            "thread {tid} still traced: {status}"
        );
    }
    finish_c(p, &log);
}

/// Rust's std::thread: names, thread-locals, Condvar, channel and sleep.
#[test]
fn rust_std_threads_roundtrip() {
    init();
    let tmp = tempdir();
    let bin = tmp.path().join("rsthreads");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let o = Command::new(rustc)
        .args(["-O", "--edition", "2021", "-o"])
        .arg(&bin)
        .arg(Path::new(PROGS).join("rsthreads.rs"))
        .stdin(Stdio::null())
        .output()
        .expect("run rustc");
    assert!(
        o.status.success(),
        "rustc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(&bin).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "blocking", TIMEOUT);
    wait_all_blocked(pid, 5);
    let before = comms(pid);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let mut r = restore_detached(&images, pid);
    assert_eq!(comms(pid), before);
    std::fs::write(log.with_extension("log.go"), "").expect("go file");
    let exit = r.wait(TIMEOUT);
    let text = read_string(&log);
    assert_eq!(exit, Exit::Code(0), "log: {text}");
    assert!(text.contains("OK all"), "{text}");
}

/// A Python interpreter running threads (GIL handoffs, Event.wait,
/// os.read, time.sleep) survives dump and restore.
#[test]
fn python_threads_roundtrip() {
    init();
    let tmp = tempdir();
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(
        Command::new("python3")
            .arg(Path::new(PROGS).join("pythreads.py"))
            .arg(&log),
    );
    let pid = p.pid;
    wait_file_contains(&log, "blocking", TIMEOUT);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    wake_and_expect_ok(restore_detached(&images, pid), &log);
}

/// Threads being created and exiting all the time: each dump either
/// succeeds (a thread caught mid-clone is frozen with the others) or is
/// refused naming the thread that could not be stopped or was exiting,
/// and the process runs on unharmed; the last dump is restored and the
/// program's own accounting still holds.
#[test]
fn thread_churn_dumped_or_refused_by_name() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "threadchurn.c", &["-pthread"]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "running", TIMEOUT);
    let pid_s = pid.to_string();
    let mut dumped = 0;
    for i in 0..8 {
        let images = tmp.path().join(format!("lr{i}"));
        let out = crust([
            "dump",
            "-t",
            &pid_s,
            "-D",
            path_str(&images),
            "--leave-running",
        ]);
        if out.success() {
            dumped += 1;
        } else {
            out.stderr_has("thread");
        }
        assert_eq!(p.try_wait(), None, "the process died at dump {i}");
    }
    p.assert_running_untraced();
    assert!(dumped > 0, "no dump of the churning process succeeded");
    // The final dump, retried while it is refused for an exiting thread.
    let images = tmp.path().join("images");
    let mut done = false;
    for _ in 0..20 {
        let out = crust(["dump", "-t", &pid_s, "-D", path_str(&images)]);
        if out.success() {
            done = true;
            break;
        }
        out.stderr_has("thread");
    }
    assert!(done, "every final dump was refused");
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let mut r = restore_detached(&images, pid);
    r.signal(libc::SIGTERM);
    let exit = r.wait(TIMEOUT);
    let text = read_string(&log);
    assert_eq!(exit, Exit::Code(0), "log: {text}");
    assert!(text.contains("OK "), "{text}");
}

/// A process whose main thread left with pthread_exit while another thread
/// runs on (its leader a zombie) is refused by name, by pre-dump and dump
/// alike, and the thread that runs on is left running, untraced.
#[test]
fn exited_leader_is_refused_by_name() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "leaderexit.c", &["-pthread"]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "running", TIMEOUT);
    let state = |tid: i32| {
        let s = read_string(Path::new(&format!("/proc/{pid}/task/{tid}/status")));
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    wait_until(TIMEOUT, "the leader to be a zombie", || match state(pid) {
        s if s.starts_with('Z') => Ok(()),
        s => Err(s),
    });
    let pid_s = pid.to_string();
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([op, "-t", &pid_s, "-D", path_str(&images)])
            .assert_failed()
            .stderr_has("main thread has exited");
    }
    let others: Vec<i32> = tids(pid).into_iter().filter(|&t| t != pid).collect();
    assert_eq!(others.len(), 1, "threads: {others:?}");
    let st = state(others[0]);
    assert!(st.starts_with('S'), "the running thread is {st:?}");
    let status = read_string(Path::new(&format!("/proc/{pid}/task/{}/status", others[0])));
    assert!(status.contains("TracerPid:\t0"), "still traced: {status}");
    p.signal(libc::SIGKILL);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
}

/// A signal sent to the process right after its restore goes where it
/// would have gone in the undisturbed process: to the main thread waiting
/// in pause(2), not to one of its sleeping threads. PTRACE_DETACH leaves
/// each thread "signal pending" until it has run once, and the kernel
/// skips such a thread; restore returns only once every thread has run
/// (restore/settle.rs). Without that, a Python main thread in
/// signal.pause() hung about one restore in ten.
#[test]
fn signal_right_after_restore_goes_to_the_waiting_main_thread() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sigroute.c", &["-pthread"]);
    for round in 0..15 {
        let log = tmp.path().join(format!("result{round}.log"));
        let mut p = spawn_daemon(Command::new(&bin).arg(&log));
        let pid = p.pid;
        wait_file_contains(&log, "ready", TIMEOUT);
        let images = tmp.path().join(format!("img{round}"));
        dump_and_reap(&mut p, &images);
        // SIGUSR1 as soon as restore returns; "OK all" from the main thread.
        wake_and_expect_ok(restore_detached(&images, pid), &log);
        let _ = std::fs::remove_dir_all(&images);
    }
}
