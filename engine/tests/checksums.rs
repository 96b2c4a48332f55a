//! Page run checksums as a real dump writes them: computed while the data
//! passes through the dump's page writer, over runs longer than one of its
//! 8 MiB buffers, they equal the checksum of the bytes in the pages file.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use crust::image::chain::run_checksum;
use crust::image::messages::{Pagemap, Task, PE_IN_PARENT};
use crust::image::{ImageDir, Kind, PagesReader};

/// The dump's copy buffer: a run longer than this spans several of them.
const DUMP_BUFFER: u64 = 8 << 20;

/// Checks every stored run of the image in `dir` against the bytes the
/// pages file holds for it; returns the longest stored run, in bytes.
fn check_runs(dir: &Path, pid: i32) -> u64 {
    let images = ImageDir::open(dir).expect("image dir");
    let pagemap: Pagemap = images.read_pagemap(pid).expect("pagemap");
    let reader = PagesReader::open(&dir.join(&pagemap.pages_file)).expect("pages file");
    let (mut off, mut longest) = (0u64, 0u64);
    for e in pagemap
        .entries
        .iter()
        .filter(|e| e.flags & PE_IN_PARENT == 0)
    {
        let len = e.nr_pages * 4096;
        let data = reader
            .bytes(off, len)
            .unwrap_or_else(|| panic!("{}: run at {:#x} ends early", dir.display(), e.vaddr));
        assert_eq!(
            e.checksum,
            Some(run_checksum(e.vaddr, data)),
            "{}: run at {:#x}, {} pages",
            dir.display(),
            e.vaddr,
            e.nr_pages
        );
        off += len;
        longest = longest.max(len);
    }
    assert_eq!(
        off,
        reader.data_len(),
        "{}: pages file length",
        dir.display()
    );
    longest
}

/// A 24 MiB ticker is pre-dumped (read mode, left running) and dumped;
/// both images carry checksums equal to their stored bytes, including a
/// run over three buffers, and the dump restores.
#[test]
fn streamed_checksums_match_the_stored_pages() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "ticker.c", &["-pthread"]);
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg("24").arg("0"));
    wait_tick(&log, 2);
    let pid = p.pid;
    let img = tmp.path().join("img");
    let pid_s = pid.to_string();
    let pre = img.join("pre");
    crust([
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        path_str(&pre),
        "--pre-dump-mode",
        "read",
    ])
    .assert_ok();
    let longest = check_runs(&pre, pid);
    assert!(
        longest > 2 * DUMP_BUFFER,
        "pre-dump: longest run {longest} bytes"
    );
    let dump = img.join("dump");
    dump_and_reap(&mut p, &dump);
    let at_dump = last_tick(&log);
    let longest = check_runs(&dump, pid);
    assert!(
        longest > 2 * DUMP_BUFFER,
        "dump: longest run {longest} bytes"
    );

    let mut r = restore_detached(&dump, pid);
    wait_tick(&log, at_dump + 3);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}

/// A run left to the parent has no data checksum of its own: the
/// pagemap's layout digest binds it to its address. Moved to another
/// address the parent also holds (data that would pass every parent
/// checksum, at the wrong place), the image is refused naming the digest,
/// and restored as written it comes back intact.
#[test]
fn moved_parent_run_is_refused_by_the_layout_digest() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "ticker.c", &["-pthread"]);
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(Command::new(bin).arg(&log).arg("4").arg("0"));
    wait_tick(&log, 2);
    let pid = p.pid;
    let pid_s = pid.to_string();
    let pre = tmp.path().join("pre");
    crust([
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        path_str(&pre),
        "--track-mem",
    ])
    .assert_ok();
    let top = tmp.path().join("dump");
    dump(pid, &top, &["--track-mem", "--prev-images-dir", "../pre"]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let images = ImageDir::open(&top).expect("image dir");
    let file = images.file(Kind::Task, Some(pid));
    let original = std::fs::read(&file).expect("task image");
    let mut task: Task = images.read(Kind::Task, Some(pid)).expect("task image");
    let pm = task.pagemap.as_mut().expect("pagemap");
    let runs: Vec<(u64, u64)> = pm
        .entries
        .iter()
        .filter(|e| e.flags & PE_IN_PARENT != 0)
        .map(|e| (e.vaddr, e.nr_pages))
        .collect();
    assert!(runs.len() >= 2, "runs left to the parent: {runs:?}");
    // The first such run moved onto the second one's address.
    let first = pm
        .entries
        .iter_mut()
        .find(|e| e.flags & PE_IN_PARENT != 0)
        .expect("a parent run");
    first.vaddr = runs[1].0;
    first.nr_pages = first.nr_pages.min(runs[1].1);
    std::fs::remove_file(&file).expect("rm task image");
    images
        .write(Kind::Task, Some(pid), &task)
        .expect("task image");
    crust(["restore", "-d", "-D", path_str(&top)])
        .assert_failed()
        .stderr_has("layout digest");
    assert_pid_free(pid, "after a refused restore");
    std::fs::write(&file, original).expect("put the task image back");
    let at_dump = last_tick(&log);
    let mut r = restore_detached(&top, pid);
    wait_tick(&log, at_dump + 2);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}
