//! Unlinked ("ghost") files on tmpfs shared by the processes of a tree,
//! as a common program nobody wrote for this project makes them: Python's
//! multiprocessing (progs/pymp.py: a Pool whose locks are POSIX named
//! semaphores, sem_open then sem_unlink, and whose shared Value lives in
//! an unlinked /dev/shm file), dumped and restored plainly, on top of a
//! pre-dump, and lazily; the pool still computes right and its semaphores
//! still work. Also a path taken at restore (refused by name, the file
//! found there untouched), a ghost file held outside the dump, and one
//! opened with O_NOFOLLOW by Python's tempfile.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The process state letter of `pid` (None once it is gone).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `pid` (a process killed with its dumped parent, reparented
/// to us or to init) is gone, reaping it if it is ours.
fn wait_gone(pid: i32) {
    wait_until(TIMEOUT, &format!("pid {pid} to be gone"), || {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer; ECHILD if not ours.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        match state(pid) {
            None => Ok(()),
            s => Err(format!("{s:?}")),
        }
    });
}

/// A running pymp.py and its two pool workers.
struct Pool {
    root: Proc,
    workers: Vec<i32>,
    log: std::path::PathBuf,
}

fn start_pool(tmp: &Path) -> Pool {
    let log = tmp.join("result.log");
    let root = spawn_daemon(
        Command::new("python3")
            .arg(Path::new(PROGS).join("pymp.py"))
            .arg(&log),
    );
    let text = wait_file_contains(&log, "running", TIMEOUT);
    let workers: Vec<i32> = text
        .lines()
        .find_map(|l| l.strip_prefix("running "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(workers.len(), 2, "{text}");
    // The semaphores: unlinked /dev/shm files every process maps.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", workers[0])).unwrap_or_default();
    assert!(
        maps.lines()
            .any(|l| l.contains("/dev/shm/sem.") && l.ends_with(" (deleted)")),
        "no unlinked semaphore file in the worker's maps:\n{maps}"
    );
    Pool { root, workers, log }
}

impl Pool {
    /// After the dump: the root died by SIGKILL, its workers with it.
    fn reap_dumped(&mut self) {
        assert_eq!(self.root.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
        for &w in &self.workers {
            wait_gone(w);
        }
    }

    /// The restored pool: SIGUSR1, a final map checked, the counter and
    /// the semaphores checked; "OK all". The workers come back with their
    /// pids and are gone once the pool is closed.
    fn finish(&self, restored: Proc) {
        for &w in &self.workers {
            let maps = std::fs::read_to_string(format!("/proc/{w}/maps")).unwrap_or_default();
            assert!(
                maps.lines()
                    .any(|l| l.contains("/dev/shm/sem.") && l.ends_with(" (deleted)")),
                "worker {w} restored without its semaphore files:\n{maps}"
            );
        }
        wake_and_expect_ok(restored, &self.log);
        for &w in &self.workers {
            wait_gone(w);
        }
    }
}

#[test]
fn python_pool_survives_dump_and_restore() {
    init();
    let tmp = tempdir();
    let mut pool = start_pool(tmp.path());
    let img = tmp.path().join("img");
    dump(pool.root.pid, &img, &[]);
    pool.reap_dumped();
    let objects = std::fs::read_dir(&img)
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shmem-"))
        .count();
    assert!(objects >= 2, "{objects} shared objects stored");
    let r = restore_detached(&img, pool.root.pid);
    pool.finish(r);
}

/// Two tracked pre-dumps while the pool computes (every worker writes the
/// semaphores and the counter meanwhile), then the final dump on top: the
/// objects are stored whole by the dump, nothing of them taken from a
/// parent.
#[test]
fn python_pool_survives_predumps_and_dump() {
    init();
    let tmp = tempdir();
    let mut pool = start_pool(tmp.path());
    let root = pool.root.pid.to_string();
    let (pre1, pre2, img) = (
        tmp.path().join("pre1"),
        tmp.path().join("pre2"),
        tmp.path().join("img"),
    );
    crust([
        "pre-dump",
        "-t",
        &root,
        "-D",
        path_str(&pre1),
        "--track-mem",
    ])
    .assert_ok();
    crust([
        "pre-dump",
        "-t",
        &root,
        "-D",
        path_str(&pre2),
        "--track-mem",
        "--prev-images-dir",
        "../pre1",
    ])
    .assert_ok();
    for pre in [&pre1, &pre2] {
        let stored = std::fs::read_dir(pre)
            .expect("pre-dump images")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("shmem-"));
        assert!(!stored, "a pre-dump stored a shared object");
    }
    dump(
        pool.root.pid,
        &img,
        &["--prev-images-dir", "../pre2", "--track-mem"],
    );
    pool.reap_dumped();
    let r = restore_detached(&img, pool.root.pid);
    pool.finish(r);
}

/// A lazy restore of the pool: every process's private memory comes from
/// the lazy-pages daemon; the shared objects are made whole before.
#[test]
fn python_pool_survives_lazy_restore() {
    init();
    let tmp = tempdir();
    let mut pool = start_pool(tmp.path());
    let img = tmp.path().join("img");
    dump(pool.root.pid, &img, &[]);
    pool.reap_dumped();
    let pidfile = img.with_extension("daemon.pid");
    crust([
        "lazy-pages",
        "-D",
        path_str(&img),
        "-d",
        "--pidfile",
        path_str(&pidfile),
        "-o",
        "lazy.log",
    ])
    .assert_ok();
    let daemon_pid: i32 = read_string(&pidfile).trim().parse().expect("daemon pid");
    let mut daemon = Proc::adopt(daemon_pid);
    let restored = img.with_extension("restored.pid");
    crust([
        "restore",
        "-d",
        "--lazy-pages",
        "-D",
        path_str(&img),
        "--pidfile",
        path_str(&restored),
    ])
    .assert_ok();
    let r = Proc::adopt(pool.root.pid);
    pool.finish(r);
    let log = std::fs::read_to_string(img.join("lazy.log")).unwrap_or_default();
    assert_eq!(daemon.wait(TIMEOUT), Exit::Code(0), "{log}");
}

/// progs/sharedmem.c in ghost mode: "ready CHILD".
fn start_ghosts(tmp: &Path) -> (Proc, i32, std::path::PathBuf) {
    let bin = compile_c(tmp, "sharedmem.c", &[]);
    let log = tmp.join("result.log");
    let p = spawn_daemon(Command::new(&bin).arg(&log).arg("ghost"));
    let text = wait_file_contains(&log, "ready", TIMEOUT);
    let child: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|c| c.trim().parse().ok())
        .expect("child pid");
    wait_until(TIMEOUT, "the child to wait", || match state(child) {
        Some('S') => Ok(()),
        s => Err(format!("{s:?}")),
    });
    (p, child, log)
}

/// Wakes the child, then the parent, which must report "OK all".
fn finish_ghosts(p: Proc, child: i32, log: &Path) {
    // SAFETY: plain kill(2) of the child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    wait_until(TIMEOUT, "the child to exit", || match state(child) {
        Some('Z') => Ok(()),
        s => Err(format!("{s:?}")),
    });
    wake_and_expect_ok(p, log);
}

/// A ghost file's path taken by another file at restore: the restore
/// fails naming it, before any process exists, and the file found there
/// is left as it was; once it is gone, the restore succeeds.
#[test]
fn ghost_path_taken_at_restore_fails_by_name() {
    init();
    let tmp = tempdir();
    let (mut p, child, log) = start_ghosts(tmp.path());
    let img = tmp.path().join("img");
    dump(p.pid, &img, &[]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    wait_gone(child);
    let taken = format!("/dev/shm/crust-ghost-{}-map", p.pid);
    std::fs::write(&taken, b"someone else's").expect("taking the path");
    let out = crust(["restore", "-d", "-D", path_str(&img)]);
    let found = std::fs::read(&taken);
    let _ = std::fs::remove_file(&taken);
    assert_eq!(
        found.ok().as_deref(),
        Some(&b"someone else's"[..]),
        "the file found at the path was changed"
    );
    out.assert_failed()
        .stderr_has(&format!("unlinked file {taken}: the path is taken"));
    assert!(state(p.pid).is_none() && state(child).is_none());
    // Nothing left behind at the other ghost's path either.
    let other = format!("/dev/shm/crust-ghost-{}-fd", p.pid);
    assert!(!Path::new(&other).exists(), "{other} left behind");
    let r = restore_detached(&img, p.pid);
    finish_ghosts(r, child, &log);
}

/// A ghost file the dumped process shares with a process outside the dump
/// (its parent: only the child is dumped) is refused by name at dump and
/// pre-dump; both run on untouched.
#[test]
fn ghost_file_held_outside_is_refused() {
    init();
    let tmp = tempdir();
    let (p, child, log) = start_ghosts(tmp.path());
    let img = tmp.path().join("img");
    let why = format!(
        "is also held by process {}, which is not dumped with it",
        p.pid
    );
    for op in ["pre-dump", "dump"] {
        crust([op, "-t", &child.to_string(), "-D", path_str(&img)])
            .assert_failed()
            .stderr_has(&why);
    }
    finish_ghosts(p, child, &log);
}

/// One process holding an unlinked /dev/shm file as Python's tempfile
/// makes it (O_NOFOLLOW), mapped and open: its description is opened by
/// crust at the path before the file is unlinked again (no /proc link
/// can be opened with O_NOFOLLOW); flags, offset, data and sharing back.
#[test]
fn python_tempfile_ghost_with_o_nofollow() {
    init();
    let tmp = tempdir();
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(
        Command::new("python3")
            .arg(Path::new(PROGS).join("pyghost.py"))
            .arg(&log),
    );
    wait_file_contains(&log, "blocked", TIMEOUT);
    let img = tmp.path().join("img");
    dump_and_reap(&mut p, &img);
    let r = restore_detached(&img, p.pid);
    wake_and_expect_ok(r, &log);
}
