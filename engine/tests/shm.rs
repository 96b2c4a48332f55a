//! Shared memory objects: memfds (mapped shared twice and privately, open
//! three times) and SysV segments (one attached twice and removed, one
//! with a key) come back as one object each, with their data, holes,
//! seals, modes (MFD_NOEXEC_SEAL), ids and attributes (progs/shm.c checks itself on SIGTERM), after
//! a dump, and after pre-dumps whose tracker could not see every write
//! (write(2) on the memfd, a forked child that wrote and exited).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Shm {
    log: PathBuf,
    shmids: (i32, i32),
}

fn start(tmp: &Path) -> (Proc, Shm) {
    start_with(tmp, &[])
}

fn start_with(tmp: &Path, args: &[&str]) -> (Proc, Shm) {
    let bin = compile_c(tmp, "shm.c", &[]);
    let log = tmp.join("shm.log");
    let p = spawn_daemon(Command::new(bin).arg(&log).args(args));
    let text = wait_file_contains(&log, "ready", TIMEOUT);
    let ids: Vec<i32> = text
        .split_whitespace()
        .skip(1)
        .take(2)
        .map(|s| s.parse().expect("shmid"))
        .collect();
    (
        p,
        Shm {
            log,
            shmids: (ids[0], ids[1]),
        },
    )
}

/// Whether segment `shmid` exists, with its shm_perm.mode.
fn segment_mode(shmid: i32) -> Option<u32> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is ours and large enough.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    (r == 0).then_some(ds.shm_perm.mode as u32)
}

/// Removes segment 2 if a failed test left it (the program removes it
/// when it exits after its checks).
fn cleanup(s: &Shm) {
    // SAFETY: IPC_RMID takes no buffer; errors are ignored (already gone).
    unsafe { libc::shmctl(s.shmids.1, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// SIGTERM: the restored program checks everything and must say OK.
fn finish(s: &Shm, mut r: Proc) {
    r.signal(libc::SIGTERM);
    let exit = r.wait(TIMEOUT);
    let text = read_string(&s.log);
    cleanup(s);
    assert_eq!(exit, Exit::Code(0), "log: {text}");
    assert!(text.trim_end().ends_with("OK"), "log: {text}");
}

fn shmem_images(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("image dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("shmem-"))
        .collect();
    v.sort();
    v
}

/// Each object is stored once, whatever maps or opens it: memfd 1 (three
/// mappings, three fds), memfd 3 (MFD_NOEXEC_SEAL), memfd 2, segment 1
/// (two attachments), segment 2.
#[test]
fn memfds_and_segments_roundtrip() {
    init();
    let tmp = tempdir();
    let (mut p, s) = start(tmp.path());
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    assert_eq!(
        shmem_images(&images),
        [
            "shmem-1.img",
            "shmem-2.img",
            "shmem-3.img",
            "shmem-4.img",
            "shmem-5.img"
        ]
    );
    // Segment 1 was removed and went with its last attachment; segment 2
    // outlives its process and is attached again as it is.
    assert_eq!(segment_mode(s.shmids.0), None);
    assert!(segment_mode(s.shmids.1).is_some());
    let r = restore_detached(&images, p.pid);
    let mode = segment_mode(s.shmids.0).expect("segment 1 recreated with its shmid");
    assert_eq!(mode & 0o1777, 0o1640, "removed again, same mode");
    finish(&s, r);
}

/// A dump that leaves the task running leaves its objects alone.
#[test]
fn leave_running_keeps_the_objects() {
    init();
    let tmp = tempdir();
    let (p, s) = start(tmp.path());
    let images = tmp.path().join("images");
    dump(p.pid, &images, &["--leave-running"]);
    p.assert_running_untraced();
    finish(&s, p);
}

/// Pre-dump, then changes no tracker sees (write(2) on the memfd, a child
/// that writes both kinds of shared mapping and exits), then the final
/// dump on top: the restored objects hold those changes.
fn predump_then_dump(extra: &[&str]) {
    init();
    let tmp = tempdir();
    let (mut p, s) = start(tmp.path());
    let pid = p.pid.to_string();
    let pre = tmp.path().join("pre");
    let mut args = vec!["pre-dump", "-t", &pid, "-D", path_str(&pre), "--track-mem"];
    args.extend_from_slice(extra);
    crust(&args).assert_ok();
    p.signal(libc::SIGUSR1);
    wait_file_contains(&s.log, "changed", TIMEOUT);
    assert!(
        shmem_images(&pre).is_empty(),
        "a pre-dump stores no shared object"
    );
    let images = tmp.path().join("images");
    dump(
        p.pid,
        &images,
        &["--track-mem", "--prev-images-dir", "../pre"],
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let r = restore_detached(&images, p.pid);
    finish(&s, r);
}

#[test]
fn predump_read_then_dump() {
    predump_then_dump(&["--pre-dump-mode", "read"]);
}

#[test]
fn predump_splice_then_dump() {
    predump_then_dump(&["--pre-dump-mode", "splice"]);
}

#[test]
fn predump_content_tracker_then_dump() {
    predump_then_dump(&["--pre-dump-mode", "read", "--tracker", "content"]);
}

/// The removed segment's shmid is taken by another segment before the
/// restore: the restore fails naming it, and succeeds once it is gone.
#[test]
fn taken_shmid_fails_the_restore_by_name() {
    init();
    let tmp = tempdir();
    let (mut p, s) = start(tmp.path());
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    // The same lock as crust's restores, so none runs in between.
    let next = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/shm_next_id")
        .expect("shm_next_id");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&next);
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX) }, 0);
    next.write_all_at(format!("{}\n", s.shmids.0).as_bytes(), 0)
        .expect("write shm_next_id");
    // SAFETY: shmget takes plain integers.
    let squatter = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    drop(next);
    assert_eq!(squatter, s.shmids.0, "could not take the shmid");
    let out = crust(["restore", "-d", "-D", path_str(&images)]);
    out.assert_failed()
        .stderr_has(&format!("shmid {} is now another segment", s.shmids.0));
    assert_pid_free(p.pid, "after the failed restore");
    // SAFETY: IPC_RMID of the segment this test made.
    unsafe { libc::shmctl(squatter, libc::IPC_RMID, std::ptr::null_mut()) };
    let r = restore_detached(&images, p.pid);
    finish(&s, r);
}

/// A memfd also open in another process (here: this test) would stop
/// being shared with it: refused by name, the task left running.
#[test]
fn memfd_held_outside_is_refused() {
    init();
    let tmp = tempdir();
    let (p, s) = start(tmp.path());
    let held = std::fs::File::open(format!("/proc/{}/fd/10", p.pid)).expect("open memfd");
    let images = tmp.path().join("images");
    let pid = p.pid.to_string();
    for args in [
        vec!["dump", "-t", &pid, "-D", path_str(&images)],
        vec![
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&images),
            "--track-mem",
        ],
    ] {
        crust(&args).assert_failed().stderr_has(&format!(
            "/memfd:crust-shm (deleted) is also held by process {}",
            std::process::id()
        ));
        p.assert_running_untraced();
    }
    drop(held);
    finish(&s, p);
}

/// A segment attached in part, or locked with SHM_LOCK: refused by name
/// by dump and pre-dump, the task left running.
#[test_case::test_case("partial", "is attached in part only" ; "partial attach")]
#[test_case::test_case("locked", "is locked in memory (SHM_LOCK)" ; "shm_lock")]
fn segment_refused(mode: &str, why: &str) {
    init();
    let tmp = tempdir();
    let (mut p, s) = start_with(tmp.path(), &[mode]);
    let images = tmp.path().join("images");
    let pid = p.pid.to_string();
    for args in [
        vec!["dump", "-t", &pid, "-D", path_str(&images)],
        vec![
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&images),
            "--track-mem",
        ],
    ] {
        crust(&args).assert_failed().stderr_has(why);
        p.assert_running_untraced();
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    cleanup(&s);
}
