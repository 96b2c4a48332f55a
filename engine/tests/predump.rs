//! Iterative pre-copy: pre-dumps while the task runs, a final dump on top
//! of them, restore through the chain.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use test_case::test_case;

/// Pages left to the parent, from a --display-stats line: "in parent N"
/// (pre-dump) or "N of M pages left to the parent" (dump).
fn in_parent(out: &Output) -> u64 {
    let text = out.stderr.clone();
    let pre_dump = text
        .split("in parent ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next());
    let dump = text
        .split(" pages left to the parent")
        .next()
        .filter(|_| text.contains(" pages left to the parent"))
        .and_then(|head| head.rsplit("; ").next())
        .and_then(|n_of_m| n_of_m.split(" of ").next());
    pre_dump
        .or(dump)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of pages left to the parent in: {text}"))
}

fn pre_dump(pid: i32, dir: &Path, prev: Option<&str>, mode: &str) -> Output {
    pre_dump_with(pid, dir, prev, mode, "auto")
}

fn pre_dump_with(pid: i32, dir: &Path, prev: Option<&str>, mode: &str, tracker: &str) -> Output {
    let pid = pid.to_string();
    let mut args = vec![
        "pre-dump",
        "-t",
        &pid,
        "-D",
        path_str(dir),
        "--track-mem",
        "--pre-dump-mode",
        mode,
        "--tracker",
        tracker,
        "--display-stats",
    ];
    if let Some(p) = prev {
        args.extend_from_slice(&["--prev-images-dir", p]);
    }
    let out = crust(&args);
    out.assert_ok();
    out
}

/// Whether this kernel offers the pre-dump tracker `tracker`, as `crust
/// check` reports it (mode "pre-dump tracker NAME"). Tests run the trackers
/// the kernel offers and assert the others are refused by name
/// ([`assert_tracker_refused`]): the same test passes on 6.1 (soft-dirty,
/// no uffd-wp), 6.12 (both) and this machine's 6.18 (uffd-wp only).
fn tracker_offered(tracker: &str) -> bool {
    let out = crust(["check", "--json"]);
    out.assert_ok();
    let mode = format!("pre-dump tracker {tracker}");
    let v = out.json();
    let found = v["modes"]
        .as_array()
        .and_then(|modes| modes.iter().find(|m| m["name"] == mode.as_str()))
        .unwrap_or_else(|| panic!("crust check has no mode {mode:?}: {}", out.stdout));
    found["runnable"] == true
}

/// `crust ARGS` (a pre-dump or a dump asking for a tracker this kernel does
/// not offer) fails, names the tracker, and leaves `p` running, untraced,
/// with the descriptors it had.
fn assert_tracker_refused(p: &Proc, tracker: &str, args: &[&str]) {
    let before = fd_links(p.pid);
    crust(args)
        .assert_failed()
        .assert_no_panic()
        .stderr_has(tracker);
    p.assert_running_untraced();
    assert_eq!(
        fd_links(p.pid),
        before,
        "a refused {tracker} request left something in the task"
    );
}

fn start_writer(tmp: &Path, pages: u32, pause_us: u32) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(tmp, "writer.c", &[]);
    let pidfile = tmp.join("writer.pid");
    let result = tmp.join("result");
    let p = spawn_daemon(
        Command::new(bin)
            .arg(&pidfile)
            .arg(&result)
            .arg(pages.to_string())
            .arg(pause_us.to_string()),
    );
    wait_file_contains(&pidfile, "\n", TIMEOUT);
    (p, result)
}

/// A task that never stops writing is pre-dumped five times, dumped and
/// restored with every page at its last written version; unchanged pages
/// are left to the parents, not copied again.
/// Each tracker runs where `crust check` offers it; elsewhere the first
/// pre-dump must be refused by name, the task left as it was.
#[test_case("read", "uffd-wp" ; "read mode uffd-wp")]
#[test_case("splice", "uffd-wp" ; "splice mode uffd-wp")]
#[test_case("read", "soft-dirty" ; "read mode soft-dirty")]
#[test_case("splice", "soft-dirty" ; "splice mode soft-dirty")]
#[test_case("read", "content" ; "read mode content digests")]
fn five_pre_dumps_then_dump_keep_every_byte(mode: &str, tracker: &str) {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 16384, 2000);
    let img = tmp.path().join("img");
    if !tracker_offered(tracker) {
        let pid = p.pid.to_string();
        let dir = img.join("pre1");
        assert_tracker_refused(
            &p,
            tracker,
            &[
                "pre-dump",
                "-t",
                &pid,
                "-D",
                path_str(&dir),
                "--track-mem",
                "--pre-dump-mode",
                mode,
                "--tracker",
                tracker,
            ],
        );
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
        assert!(read_string(&result).starts_with("OK"));
        return;
    }
    let mut left_to_parent = 0;
    pre_dump_with(p.pid, &img.join("pre1"), None, mode, tracker);
    for k in 2..=5 {
        let prev = format!("../pre{}", k - 1);
        left_to_parent += in_parent(&pre_dump(
            p.pid,
            &img.join(format!("pre{k}")),
            Some(&prev),
            mode,
        ));
        p.assert_running_untraced();
    }
    assert!(
        left_to_parent > 0,
        "no pre-dump left any page to its parent"
    );
    dump(
        p.pid,
        &img.join("dump"),
        &["--track-mem", "--prev-images-dir", "../pre5"],
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    assert_pages_file_exact(&img.join("dump"), p.pid);
    let mut r = restore_detached(&img.join("dump"), p.pid);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&result);
    assert!(text.starts_with("OK"), "{text}");
}

/// The final dump's pages file was made ahead and filled with zeros
/// (ImageOut::prefill_pages): it ends exactly at its data (the header's
/// length), and the name it was made under is gone.
fn assert_pages_file_exact(dir: &Path, pid: i32) {
    let path = dir.join(format!("pages-{pid}.img"));
    let len = std::fs::metadata(&path).expect("pages file").len();
    let out = crust(["show", path_str(&path)]);
    out.assert_ok();
    let data_len = out.json()["message"]["data_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no data_bytes in {}", out.stdout));
    assert_eq!(len, 4096 + data_len, "pages file not cut to its data");
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .expect("read images dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in {}: {leftovers:?}",
        dir.display()
    );
}

/// The uffd-wp tracker lives in the task at a high close-on-exec
/// descriptor between pre-dumps, is never written into an image, and a
/// final dump with --leave-running removes it. On a kernel without it
/// (6.1: userfaultfd without WP_ASYNC), the auto tracker leaves nothing
/// in the task (it once leaked the userfaultfd it tried), and asking for
/// uffd-wp is refused by name.
#[test]
fn tracker_stays_out_of_the_way_and_is_removed() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 1024, 5000);
    let img = tmp.path().join("img");
    let before: Vec<String> = fd_links(p.pid);
    if !tracker_offered("uffd-wp") {
        pre_dump(p.pid, &img.join("pre1"), None, "read");
        pre_dump(p.pid, &img.join("pre2"), Some("../pre1"), "read");
        assert_eq!(
            fd_links(p.pid),
            before,
            "the auto tracker left a descriptor"
        );
        let pid = p.pid.to_string();
        let dir = img.join("pre3");
        assert_tracker_refused(
            &p,
            "uffd-wp",
            &[
                "pre-dump",
                "-t",
                &pid,
                "-D",
                path_str(&dir),
                "--track-mem",
                "--tracker",
                "uffd-wp",
            ],
        );
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
        assert!(read_string(&result).starts_with("OK"));
        return;
    }
    pre_dump_with(p.pid, &img.join("pre1"), None, "read", "uffd-wp");
    let during = fd_links(p.pid);
    let extra: Vec<&String> = during.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(
        extra.len(),
        1,
        "one tracker descriptor expected, got {extra:?}"
    );
    let (fd, target) = extra[0].split_once(' ').unwrap_or_default();
    assert_eq!(target, "anon_inode:[userfaultfd]");
    let fd: i32 = fd.parse().unwrap_or_default();
    assert!(fd >= 64, "tracker at low descriptor {fd}");
    let fdinfo = read_string(Path::new(&format!("/proc/{}/fdinfo/{fd}", p.pid)));
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap_or(0))
        .unwrap_or(0);
    assert_ne!(
        flags & libc::O_CLOEXEC as u32,
        0,
        "tracker fd not close-on-exec: {fdinfo}"
    );

    // A snapshot (--leave-running --track-mem) keeps the tracker where
    // it was, out of its images.
    dump(
        p.pid,
        &img.join("snap"),
        &[
            "--track-mem",
            "--prev-images-dir",
            "../pre1",
            "--leave-running",
        ],
    );
    p.assert_running_untraced();
    assert_eq!(fd_links(p.pid), during, "a snapshot moved the tracker");
    // --leave-running without --track-mem ends tracking.
    dump(
        p.pid,
        &img.join("dump"),
        &["--prev-images-dir", "../snap", "--leave-running"],
    );
    p.assert_running_untraced();
    assert_eq!(
        fd_links(p.pid),
        before,
        "the tracker descriptor must be gone after --leave-running"
    );
    for d in ["snap", "dump"] {
        let task = crust([
            "show",
            path_str(&img.join(d).join(format!("task-{}.img", p.pid))),
        ]);
        task.assert_ok();
        let fds = serde_json::to_string(&task.json()["message"]["fds"]["fds"]).expect("json");
        assert!(
            !fds.contains(&format!("\"fd\":{fd},")),
            "tracker fd written into the {d} image"
        );
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert!(read_string(&result).starts_with("OK"));
}

/// "N target" for each descriptor of `pid`, sorted.
fn fd_links(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    std::fs::read_link(e.path())
                        .ok()
                        .map(|t| format!("{n} {}", t.display()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Where a tracker cannot work (soft-dirty without CONFIG_MEM_SOFT_DIRTY,
/// as on this project's machines), asking for it is refused by name and
/// the task is left running untouched, with no tracker in it.
#[test]
fn unavailable_tracker_is_refused() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 256, 5000);
    let before = fd_links(p.pid);
    let pid = p.pid.to_string();
    let dir = tmp.path().join("img");
    let out = crust([
        "pre-dump",
        "-t",
        &pid,
        "-D",
        path_str(&dir),
        "--track-mem",
        "--tracker",
        "soft-dirty",
    ]);
    if crust(["check"]).stdout.contains("yes  soft-dirty") {
        out.assert_ok();
    } else {
        out.assert_failed()
            .assert_no_panic()
            .stderr_has("soft-dirty");
        p.assert_running_untraced();
        assert_eq!(
            fd_links(p.pid),
            before,
            "a refused pre-dump left something in the task"
        );
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert!(read_string(&result).starts_with("OK"));
}

/// Snapshots (CRIU's `--snaps`): full dumps that leave the task running
/// with its dirty tracker (`dump --leave-running --track-mem`), each on
/// top of the previous one, then a final dump on top of the last. The
/// task never stops writing; every page written after a snapshot must be
/// in a later image, which the restored task checks page by page (its
/// recorded versions). Unchanged pages are left to the snapshots. Each
/// tracker runs where the kernel offers it, and is refused by name
/// elsewhere.
#[test_case("uffd-wp" ; "uffd-wp")]
#[test_case("soft-dirty" ; "soft-dirty")]
#[test_case("content" ; "content digests")]
fn snapshots_then_dump_keep_every_byte(tracker: &str) {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 8192, 2000);
    let img = tmp.path().join("img");
    let pid = p.pid.to_string();
    let snap = |k: u32| img.join(format!("snap{k}"));
    let snapshot_args = |k: u32, prev: Option<String>| -> Vec<String> {
        let mut a: Vec<String> = [
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&snap(k)),
            "--leave-running",
            "--track-mem",
            "--tracker",
            tracker,
            "--display-stats",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(prev) = prev {
            a.extend(["--prev-images-dir".to_string(), prev]);
        }
        a
    };
    if !tracker_offered(tracker) {
        let args = snapshot_args(1, None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_tracker_refused(&p, tracker, &args);
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
        assert!(read_string(&result).starts_with("OK"));
        return;
    }
    let mut left_to_parent = 0;
    for k in 1..=3 {
        let prev = (k > 1).then(|| format!("../snap{}", k - 1));
        let out = crust(snapshot_args(k, prev));
        out.assert_ok();
        if k > 1 {
            left_to_parent += in_parent(&out);
        }
        p.assert_running_untraced();
        // The snapshot records its tracker, so the next image may use it.
        let inv = crust(["show", path_str(&snap(k).join("inventory.img"))]);
        inv.assert_ok();
        assert_eq!(inv.json()["message"]["tracker"], tracker, "{}", inv.stdout);
    }
    assert!(
        left_to_parent > 0,
        "no snapshot left any page to its parent"
    );
    let out = dump(
        p.pid,
        &img.join("dump"),
        &[
            "--track-mem",
            "--prev-images-dir",
            "../snap3",
            "--tracker",
            tracker,
            "--display-stats",
        ],
    );
    assert!(
        in_parent(&out) > 0,
        "the dump left nothing to the snapshots"
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let mut r = restore_detached(&img.join("dump"), p.pid);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&result);
    assert!(text.starts_with("OK"), "{text}");
}

/// A dump that ended tracking (killed, or --leave-running without
/// --track-mem) is not a parent: what the task wrote after it is not
/// known. Refused by name, the task left running.
#[test]
fn a_dump_without_tracking_is_no_parent() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 256, 5000);
    let img = tmp.path().join("img");
    let pid = p.pid.to_string();
    dump(p.pid, &img.join("full"), &["--leave-running"]);
    let out = crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&img.join("next")),
        "--leave-running",
        "--track-mem",
        "--prev-images-dir",
        "../full",
    ]);
    out.assert_failed()
        .assert_no_panic()
        .stderr_has("not a pre-dump or a snapshot");
    p.assert_running_untraced();
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert!(read_string(&result).starts_with("OK"));
}

/// A splice-mode pre-dump of a task whose user is over its pipe buffer
/// quota (pipe-user-pages-soft; the task lacks CAP_SYS_RESOURCE): the
/// task may not grow the pipes the engine makes in it (F_SETPIPE_SZ:
/// EPERM), so those pages are copied while frozen instead of pinned. Seen
/// on 6.12 (a pre-dump of a task without capabilities failed while another
/// splice pre-dump held hundreds of MiB in root's pipes). Every pre-dump
/// succeeds and the restore has every page.
#[test]
fn splice_mode_copies_what_a_task_over_its_pipe_quota_cannot_pin() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    init();
    let tmp = tempdir();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod tmp");
    let hog_bin = compile_c(tmp.path(), "pipehog.c", &[]);
    let ready = tmp.path().join("hog.ready");
    let mut hog = spawn_daemon(Command::new(hog_bin).arg(&ready).uid(NOBODY).gid(NOBODY));
    wait_file_contains(&ready, "\n", TIMEOUT);
    let said = read_string(&ready);
    assert!(
        said.starts_with("hog "),
        "the quota was never reached: {said}"
    );

    let bin = compile_c(tmp.path(), "writer.c", &[]);
    let pidfile = tmp.path().join("writer.pid");
    let result = tmp.path().join("result");
    let mut p = spawn_daemon(
        Command::new(bin)
            .arg(&pidfile)
            .arg(&result)
            .arg("2048")
            .arg("2000")
            .uid(NOBODY)
            .gid(NOBODY),
    );
    wait_file_contains(&pidfile, "\n", TIMEOUT);
    let img = tmp.path().join("img");
    pre_dump_with(p.pid, &img.join("pre1"), None, "splice", "auto");
    pre_dump(p.pid, &img.join("pre2"), Some("../pre1"), "splice");
    p.assert_running_untraced();
    dump(
        p.pid,
        &img.join("dump"),
        &["--track-mem", "--prev-images-dir", "../pre2"],
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    hog.signal(libc::SIGTERM);
    hog.wait(TIMEOUT);
    let mut r = restore_detached(&img.join("dump"), p.pid);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&result);
    assert!(text.starts_with("OK"), "{text}");
}
