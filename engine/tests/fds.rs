//! Descriptors: a pipe to a process outside the dump is refused by name
//! (the gzip of `cat FILE | gzip > out.gz`), or accepted with --external
//! and taken back at restore with --inherit-fd, the archive coming out
//! complete either way; terminals, locks, leases, stateful devices, foreign
//! signal owners and packet-mode pipes with data are refused by dump and
//! by pre-dump, the process running on untouched.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use test_case::test_case;

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

fn pipe_ino(fd: &OwnedFd) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink");
    let s = link.to_string_lossy();
    s.strip_prefix("pipe:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a pipe: {s}"))
}

/// Runs crust with `fd` of this process given to it as descriptor `at`.
fn crust_with_fd(args: &[&str], fd: &OwnedFd, at: i32) -> Output {
    let stdout = tempfile::tempfile().expect("temp file");
    let stderr = tempfile::tempfile().expect("temp file");
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new(CRUST);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("dup"))
        .stderr(stderr.try_clone().expect("dup"));
    // SAFETY: dup2 and fcntl are async-signal-safe. dup2 leaves the copy
    // without FD_CLOEXEC, so crust inherits it at `at`; if the fd is
    // already there, dup2 does nothing and FD_CLOEXEC is cleared instead.
    unsafe {
        cmd.pre_exec(move || {
            let r = match raw == at {
                true => libc::fcntl(at, libc::F_SETFD, 0),
                false => libc::dup2(raw, at),
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let status = cmd.status().expect("run crust");
    let read = |mut f: File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().expect("rewind");
        f.read_to_string(&mut s).expect("read crust output");
        s
    };
    Output {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        stdout: read(stdout),
        stderr: read(stderr),
        elapsed: started.elapsed(),
    }
}

/// Deterministic text-like input: words from a small pseudo-random stream.
fn input(len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "crust", "pipe", "gzip", "restore", "dump", "page", "fd", "kernel", "signal", "data",
        "lost", "kept",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 12) as usize].as_bytes());
        out.extend_from_slice(&(x >> 40).to_le_bytes()[..3]);
        out.push(if x.is_multiple_of(9) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// `cat | gzip -c > out.gz`, fed by this test through a pipe it holds.
struct Pipeline {
    cat: Proc,
    gzip: Proc,
    /// The test's end feeding cat.
    feed: Option<File>,
    /// cat → gzip.
    ino: u64,
    /// A dup of the cat → gzip read end, when asked for.
    keep: Option<OwnedFd>,
    out: std::path::PathBuf,
}

fn pipeline(dir: &Path, keep_read_end: bool) -> Pipeline {
    let (a_r, a_w) = pipe();
    let (b_r, b_w) = pipe();
    let ino = pipe_ino(&b_r);
    let out = dir.join("out.gz");
    let gz = File::create(&out).expect("create out.gz");
    let cat = spawn_daemon_with(&mut Command::new("cat"), a_r.into(), b_w.into());
    let keep = keep_read_end.then(|| b_r.try_clone().expect("dup"));
    let gzip = spawn_daemon_with(Command::new("gzip").arg("-c"), b_r.into(), gz.into());
    Pipeline {
        cat,
        gzip,
        feed: Some(File::from(a_w)),
        ino,
        keep,
        out,
    }
}

/// Waits until both cat and gzip sleep in read(): everything fed so far
/// went through cat into gzip.
fn wait_drained(p: &Pipeline) {
    for (who, pid) in [("cat", p.cat.pid), ("gzip", p.gzip.pid)] {
        wait_until(TIMEOUT, &format!("{who} to block in read"), || {
            let state = status_field(pid, "State").unwrap_or_default();
            match (state.starts_with('S'), blocked_syscall(pid)) {
                (true, Some(0)) => Ok(()),
                (_, sc) => Err(format!("state {state:?}, syscall {sc:?}")),
            }
        });
    }
}

/// Feeds the rest, closes the feed and checks that both exit 0 and that
/// the archive decompresses to exactly `data`.
fn finish(p: &mut Pipeline, rest: &[u8], data: &[u8]) {
    let mut feed = p.feed.take().expect("feed");
    feed.write_all(rest).expect("feed the rest");
    drop(feed);
    p.keep = None;
    assert_eq!(p.cat.wait(TIMEOUT), Exit::Code(0), "cat");
    assert_eq!(p.gzip.wait(TIMEOUT), Exit::Code(0), "gzip");
    let o = Command::new("gzip")
        .arg("-dc")
        .arg(&p.out)
        .output()
        .expect("gzip -dc");
    assert!(
        o.status.success(),
        "gzip -dc: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout.len(), data.len(), "decompressed length");
    assert!(
        o.stdout == data,
        "the archive does not decompress to the input"
    );
}

#[test]
fn gzip_reading_a_pipe_from_cat_is_refused_and_runs_on() {
    init();
    let tmp = tempdir();
    let data = input(4 << 20);
    let mut p = pipeline(tmp.path(), false);
    let (first, rest) = data.split_at(1 << 20);
    p.feed
        .as_mut()
        .expect("feed")
        .write_all(first)
        .expect("feed");
    wait_drained(&p);

    let key = format!("pipe:[{}]", p.ino);
    let pid = p.gzip.pid.to_string();
    let images = tmp.path().join("images");
    for op in ["dump", "pre-dump"] {
        let out = crust([op, "-t", &pid, "-D", path_str(&images)]);
        out.assert_failed()
            .stderr_has(&key)
            .stderr_has(&format!("pid {}", p.cat.pid))
            .stderr_has("--external");
        assert!(
            !images.join("inventory.img").exists(),
            "{op} left an inventory"
        );
        p.gzip.assert_running_untraced();
    }
    finish(&mut p, rest, &data);
}

#[test]
fn gzip_with_external_pipe_restores_with_inherit_fd() {
    init();
    let tmp = tempdir();
    let data = input(4 << 20);
    let mut p = pipeline(tmp.path(), true);
    let (first, rest) = data.split_at(1 << 20);
    p.feed
        .as_mut()
        .expect("feed")
        .write_all(first)
        .expect("feed");
    wait_drained(&p);

    let key = format!("pipe:[{}]", p.ino);
    let gzip_pid = p.gzip.pid;
    let images = tmp.path().join("images");
    dump(gzip_pid, &images, &["--external", &key]);
    assert_eq!(p.gzip.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));

    // Without the pipe, restore fails naming it, before any process exists.
    let pidfile = tmp.path().join("restored.pid");
    let base = [
        "restore",
        "-d",
        "-D",
        path_str(&images),
        "--pidfile",
        path_str(&pidfile),
    ];
    let out = crust(base);
    out.assert_failed()
        .stderr_has(&key)
        .stderr_has("--inherit-fd");
    assert_pid_free(gzip_pid, "restore without --inherit-fd");
    // A write end where the read end was: refused too.
    let (_, w) = pipe();
    let inherit = format!("fd[9]:{key}");
    let mut args = base.to_vec();
    args.extend(["--inherit-fd", &inherit]);
    crust_with_fd(&args, &w, 9)
        .assert_failed()
        .stderr_has("write end");
    assert_pid_free(gzip_pid, "restore with the wrong end");

    // With this test's read end of cat → gzip as the process's stdin.
    let keep = p.keep.take().expect("kept read end");
    crust_with_fd(&args, &keep, 9).assert_ok();
    drop(keep);
    // The old Proc was reaped above; the restored gzip is ours to reap.
    p.gzip = Proc::adopt(gzip_pid);
    assert_eq!(read_string(&pidfile).trim(), gzip_pid.to_string());
    let link = std::fs::read_link(format!("/proc/{gzip_pid}/fd/0")).expect("fd 0");
    assert_eq!(link.to_string_lossy(), key, "stdin of the restored gzip");
    finish(&mut p, rest, &data);
}

/// Starts fdholder in MODE, with `stdin`, and waits until it is ready.
fn holder(dir: &Path, mode: &str, stdin: Stdio) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(dir, "fdholder.c", &[]);
    let log = dir.join(format!("{mode}.log"));
    let p = spawn_daemon_with(Command::new(bin).arg(mode).arg(&log), stdin, Stdio::null());
    wait_file_contains(&log, "ready", TIMEOUT);
    (p, log)
}

/// Dump and pre-dump are both refused naming `named`; the holder runs on,
/// untraced, and finds its state intact.
fn assert_refused(mut p: Proc, log: &Path, images: &Path, named: &[&str]) {
    let pid = p.pid.to_string();
    for op in ["dump", "pre-dump"] {
        let out = crust([op, "-t", &pid, "-D", path_str(images)]);
        out.assert_failed();
        for n in named {
            out.stderr_has(n);
        }
        assert!(
            !images.join("inventory.img").exists(),
            "{op} left an inventory"
        );
        assert_eq!(p.try_wait(), None, "the refused process died");
        p.assert_running_untraced();
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(log);
    assert!(text.ends_with("OK\n"), "holder log: {text}");
}

#[test_case("flock", &["FLOCK", "lock"] ; "flock lock")]
#[test_case("posix", &["POSIX", "lock"] ; "posix lock")]
#[test_case("ofd", &["OFDLCK", "lock"] ; "ofd lock")]
#[test_case("lease", &["LEASE", "lease"] ; "read lease")]
#[test_case("ptmx", &["/dev/ptmx", "terminal"] ; "pty master")]
#[test_case("kmsg", &["/dev/kmsg", "character device"] ; "stateful char device")]
#[test_case("owner", &["signal owner"] ; "signal owner elsewhere")]
#[test_case("packet", &["packet mode"] ; "packet pipe with data")]
fn refused_by_name_and_left_running(mode: &str, named: &[&str]) {
    init();
    let tmp = tempdir();
    let (p, log) = holder(tmp.path(), mode, Stdio::null());
    assert_refused(p, &log, &tmp.path().join("images"), named);
}

#[test]
fn pty_slave_stdin_is_refused() {
    init();
    let tmp = tempdir();
    // SAFETY: plain libc calls on descriptors this test owns; ptsname_r
    // writes into the buffer it is given.
    let (master, slave_path) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let path = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        (master, path)
    };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave_path)
        .expect("open pty slave");
    let (p, log) = holder(tmp.path(), "stdin", slave.into());
    assert_refused(
        p,
        &log,
        &tmp.path().join("images"),
        &[&format!("fd 0: {slave_path}"), "terminal"],
    );
    drop(master);
}

/// Pre-dump looks at a running task: descriptors it closes meanwhile are
/// simply not there (they used to fail the pre-dump with EBADF).
#[test]
fn pre_dump_of_a_task_opening_and_closing_fds() {
    init();
    let tmp = tempdir();
    let (mut p, log) = holder(tmp.path(), "churn", Stdio::null());
    let pid = p.pid.to_string();
    for i in 0..20 {
        let images = tmp.path().join(format!("pre{i}"));
        crust([
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&images),
            "--pre-dump-mode",
            "read",
        ])
        .assert_ok();
        p.assert_running_untraced();
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&log);
    assert!(text.ends_with("OK\n"), "holder log: {text}");
}

/// A running task that keeps closing a descriptor and opening another file
/// under the same number: the checks a pre-dump makes before freezing see
/// the number change between reading its link and stat'ing it. That is a
/// descriptor that changed meanwhile, not a file replaced under the task:
/// never a refusal (the frozen pass of a dump judges what it holds then).
#[test]
fn a_descriptor_reused_while_checked_is_not_refused() {
    init();
    let tmp = tempdir();
    let mut p = spawn_daemon(Command::new("/bin/sh").args([
        "-c",
        "while :; do exec 3</proc/self/maps; exec 3<&-; exec 3</etc/hostname; exec 3<&-; done",
    ]));
    let pid = p.pid.to_string();
    for i in 0..100 {
        let images = tmp.path().join(format!("pre{i}"));
        let out = crust([
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&images),
            "--pre-dump-mode",
            "read",
        ]);
        out.assert_ok();
        std::fs::remove_dir_all(&images).expect("remove a pre-dump");
    }
    assert_eq!(p.try_wait(), None, "the pre-dumped shell died");
    p.assert_running_untraced();
    p.signal(libc::SIGKILL);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
}

/// A process holding its own /proc/self/status open (as self-checking
/// programs do while they read it): /proc files have no identity to check
/// and /proc/PID does not exist before restore makes PID; the file is
/// reopened by its path, which names the restored process again.
#[test]
fn own_proc_file_is_reopened_at_restore() {
    init();
    let tmp = tempdir();
    let mut p = spawn_daemon(
        Command::new("/bin/sh").args(["-c", "exec 3</proc/self/status; exec sleep 1000"]),
    );
    let fd3 = format!("/proc/{}/fd/3", p.pid);
    let want = format!("/proc/{}/status", p.pid);
    wait_until(TIMEOUT, "fd 3 on its status and sleep running", || {
        let link = std::fs::read_link(&fd3).map_err(|e| e.to_string())?;
        let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid)).map_err(|e| e.to_string())?;
        match link.to_str() == Some(want.as_str()) && exe.ends_with("sleep") {
            true => Ok(()),
            false => Err(format!("fd 3 -> {link:?}, exe {exe:?}")),
        }
    });
    let pid = p.pid.to_string();
    let images = tmp.path().join("img");
    crust(["dump", "-t", &pid, "-D", path_str(&images)]).assert_ok();
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    crust(["restore", "-d", "-D", path_str(&images)]).assert_ok();
    let mut r = Proc::adopt(p.pid);
    let link = std::fs::read_link(&fd3).expect("fd 3 of the restored process");
    assert_eq!(link.to_str(), Some(want.as_str()));
    r.signal(libc::SIGKILL);
    r.wait(TIMEOUT);
}

/// Unix socket pairs (stream, dgram, seqpacket) with data in flight, a
/// shut-down end, a dup, options and O_NONBLOCK: dumped (also after a
/// pre-dump) and restored, every queue with its message boundaries, and
/// the pairs still talk.
#[test_case(false ; "dump")]
#[test_case(true ; "pre-dump then dump")]
fn socket_pairs_with_data_in_flight(pre: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sockpairs.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log));
    wait_file_contains(&log, "ready", TIMEOUT);
    let images = tmp.path().join("images");
    if pre {
        let predump = tmp.path().join("pre");
        crust([
            "pre-dump",
            "-t",
            &p.pid.to_string(),
            "-D",
            path_str(&predump),
        ])
        .assert_ok();
        dump(p.pid, &images, &["--prev-images-dir", "../pre"]);
        assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    } else {
        dump_and_reap(&mut p, &images);
    }
    wake_and_expect_ok(restore_detached(&images, p.pid), &log);
}

/// Dumps that leave the process running leave its socket queues as they
/// were, for the process and for the next dump: two of them, then a final
/// dump whose restore still has every message (the empty datagram too,
/// which a peek marks and later peeks would skip).
#[test]
fn socket_pairs_leave_running_untouched() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sockpairs.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log));
    wait_file_contains(&log, "ready", TIMEOUT);
    for i in 0..2 {
        dump(
            p.pid,
            &tmp.path().join(format!("lr{i}")),
            &["--leave-running"],
        );
        p.assert_running_untraced();
    }
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    wake_and_expect_ok(restore_detached(&images, p.pid), &log);
}

/// A Python asyncio program (its event loop wakes itself through a unix
/// socket pair, signals come through it, and it streams over another pair
/// with data queued) survives dump and restore.
#[test]
fn python_asyncio_roundtrip() {
    init();
    let tmp = tempdir();
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(
        Command::new("python3")
            .arg(Path::new(PROGS).join("pyasyncio.py"))
            .arg(&log),
    );
    wait_file_contains(&log, "running", TIMEOUT);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    wake_and_expect_ok(restore_detached(&images, p.pid), &log);
}

/// Epoll instances come back with every watch (level and edge triggered,
/// a fired one-shot still disarmed, a nested instance, the data values),
/// a dup of one sharing it.
#[test]
fn epoll_watches_roundtrip() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "epoller.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log));
    wait_file_contains(&log, "ready", TIMEOUT);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    wake_and_expect_ok(restore_detached(&images, p.pid), &log);
}

/// A watch left under a descriptor number that no longer opens its file
/// (added through a dup, then closed), and a fired one-shot watch (the
/// kernel would arm EPOLLERR|EPOLLHUP again at restore), are refused by
/// name at pre-dump and dump; the process runs on.
#[test_case("stale", "no longer opens it" ; "stale watch")]
#[test_case("fired", "EPOLLONESHOT" ; "fired one-shot watch")]
fn epoll_refused_by_name(mode: &str, named: &str) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "epoller.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg(mode));
    wait_file_contains(&log, "ready", TIMEOUT);
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([op, "-t", &p.pid.to_string(), "-D", path_str(&images)])
            .assert_failed()
            .stderr_has(named);
    }
    p.assert_running_untraced();
    p.signal(libc::SIGUSR1);
    let exit = p.wait(TIMEOUT);
    assert_eq!(exit, Exit::Code(0), "log: {}", read_string(&log));
}
