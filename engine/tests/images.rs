//! Image directories: permissions, `crust show`, corrupted images, and a
//! restore whose pid is still taken.

mod common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Asserts the image directory is 0700 and every file in it 0600.
fn assert_private(images: &Path) -> Vec<String> {
    assert_eq!(
        format!("{:o}", mode(images)),
        "700",
        "mode of the image directory {}",
        images.display()
    );
    let mut names = Vec::new();
    for e in fs::read_dir(images).expect("read images") {
        let e = e.expect("entry");
        names.push(e.file_name().to_string_lossy().into_owned());
        assert!(
            e.file_type().expect("file type").is_file(),
            "{:?} is not a regular file",
            e.path()
        );
        assert_eq!(
            format!("{:o}", mode(&e.path())),
            "600",
            "mode of {}",
            e.path().display()
        );
    }
    names
}

/// Image files hold process memory: the directory is 0700 and every file
/// in it 0600, even in a directory that existed with looser permissions.
#[test]
fn image_permissions() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let images = tmp.path().join("images");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&images)
        .expect("mkdir");
    fs::set_permissions(&images, fs::Permissions::from_mode(0o755)).expect("chmod");
    dump(p.pid, &images, &[]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let names = assert_private(&images);
    // inventory, pstree, stats, and the task and pages files of the task.
    assert!(names.len() >= 5, "too few files: {names:?}");
}

/// A log written into the image directory (`-o dump.log`) is 0600 like
/// the images (as CRIU creates its logs).
#[test]
fn log_file_permissions() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let images = tmp.path().join("images");
    dump(p.pid, &images, &["-o", "dump.log"]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let names = assert_private(&images);
    assert!(
        names.iter().any(|n| n == "dump.log"),
        "no log written: {names:?}"
    );
}

/// `crust show DIR` prints every image as JSON; the task image lists the
/// VMAs with their kinds and the registers.
#[test]
fn show_prints_json() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);

    let out = crust(["show", path_str(&images)]);
    out.assert_ok();
    let json = out.json();
    let obj = json
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {json}"));
    let mut files: Vec<String> = fs::read_dir(&images)
        .expect("read images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img"))
        .collect();
    files.sort();
    let mut keys: Vec<String> = obj.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, files, "crust show keys vs image files");
    for kind in ["task", "pages"] {
        assert!(
            obj.contains_key(&format!("{kind}-{pid}.img")),
            "no {kind} image for pid {pid}: {keys:?}"
        );
    }
    assert_eq!(json["inventory.img"]["message"]["root_pid"], pid);

    let task = &json[format!("task-{pid}.img")]["message"];
    let vmas = task["mm"]["vmas"]
        .as_array()
        .unwrap_or_else(|| panic!("the task image has no vmas: {task}"));
    let kinds: Vec<&str> = vmas
        .iter()
        .map(|v| {
            v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("VMA without a kind name: {v}"))
        })
        .collect();
    for k in ["AnonPrivate", "FilePrivate", "Vdso"] {
        assert!(kinds.contains(&k), "no {k} VMA in {kinds:?}");
    }
    for v in vmas {
        assert!(v["start"].as_u64() < v["end"].as_u64(), "bad VMA {v}");
    }

    let regs = &task["core"]["regs"];
    for r in ["rip", "rsp"] {
        assert!(
            regs[r].as_u64().is_some_and(|x| x != 0),
            "core regs lack a non-zero {r}: {regs}"
        );
    }

    // The pagemap is part of the task image (format 3).
    let runs = &task["pagemap"]["entries"];
    assert!(
        runs.as_array().is_some_and(|r| !r.is_empty()),
        "the task image lists no page runs: {runs}"
    );

    // One file on its own works too.
    let one = crust(["show", path_str(&images.join(format!("task-{pid}.img")))]);
    one.assert_ok();
    assert_eq!(one.json()["kind"], "task");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::DirBuilder::new().mode(0o700).create(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read images") {
        let e = e.expect("entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy image");
    }
}

fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f(&mut bytes);
    fs::write(path, &bytes).expect("write corrupted image");
}

/// Corrupted images are refused with a message naming the image and the
/// problem, without a panic and without leaving any process behind;
/// `crust show` refuses the corrupted file the same way.
#[test]
fn bad_images_are_refused() {
    init();
    let tmp = tempdir();
    let (mut p, log) = small_ticker(tmp.path());
    let pid = p.pid;
    let good = tmp.path().join("images");
    dump_and_reap(&mut p, &good);

    struct Case {
        name: &'static str,
        file: String,
        corrupt: Box<dyn Fn(&Path)>,
        /// Any of these in stderr (besides "image" and the file name).
        says: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "truncated pages",
            file: format!("pages-{pid}.img"),
            corrupt: Box::new(|p| rewrite(p, |b| b.truncate(b.len() - 4096))),
            says: &["truncated"],
        },
        Case {
            name: "flipped task byte",
            file: format!("task-{pid}.img"),
            corrupt: Box::new(|p| rewrite(p, |b| b[40] ^= 0x5a)),
            says: &["checksum"],
        },
        Case {
            name: "flipped last task byte",
            file: format!("task-{pid}.img"),
            corrupt: Box::new(|p| {
                rewrite(p, |b| {
                    let last = b.len() - 1;
                    b[last] ^= 0xff
                })
            }),
            says: &["checksum"],
        },
        Case {
            name: "missing task",
            file: format!("task-{pid}.img"),
            corrupt: Box::new(|p| fs::remove_file(p).expect("rm")),
            says: &["no task image of pid"],
        },
        Case {
            name: "inventory version",
            file: "inventory.img".into(),
            corrupt: Box::new(|p| rewrite(p, |b| b[8] = b[8].wrapping_add(1))),
            says: &["version"],
        },
        Case {
            name: "garbage pstree",
            file: "pstree.img".into(),
            corrupt: Box::new(|p| {
                fs::write(
                    p,
                    b"this is not a crust image at all, just garbage\n".repeat(3),
                )
                .expect("write")
            }),
            says: &["magic"],
        },
        Case {
            name: "empty task image",
            file: format!("task-{pid}.img"),
            corrupt: Box::new(|p| fs::write(p, b"").expect("write")),
            says: &["truncated"],
        },
        Case {
            name: "truncated task header",
            file: format!("task-{pid}.img"),
            corrupt: Box::new(|p| rewrite(p, |b| b.truncate(20))),
            says: &["truncated"],
        },
    ];

    for (i, case) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("bad-{i}"));
        copy_dir(&good, &dir);
        let file = dir.join(&case.file);
        (case.corrupt)(&file);

        let out = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&dir)]);
        let what = format!("{}: crust {:?}", case.name, out.args);
        assert!(
            !out.success(),
            "{what} succeeded on a corrupted image:\n{}",
            out.stderr
        );
        out.assert_failed();
        assert!(
            out.stderr.contains("image"),
            "{what}: no \"image\" in {:?}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&case.file),
            "{what}: the message does not name {}: {:?}",
            case.file,
            out.stderr
        );
        assert!(
            case.says.iter().any(|s| out.stderr.contains(s)),
            "{what}: the message says none of {:?}: {:?}",
            case.says,
            out.stderr
        );
        assert_pid_free(pid, &what);

        if file.exists() {
            let shown = crust(["show", path_str(&file)]);
            shown.assert_failed();
            assert!(
                shown.stderr.contains(&case.file),
                "{}: crust show does not name the file: {:?}",
                case.name,
                shown.stderr
            );
        }
        let shown = crust(["show", path_str(&dir)]);
        if case.name != "missing task" {
            shown.assert_failed();
        } else {
            shown.assert_no_panic();
        }
    }

    // The untouched images still restore: the failures above were the
    // corruption's doing.
    let at_dump = last_tick(&log);
    let mut r = restore_detached(&good, pid);
    wait_tick(&log, at_dump + 2);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}

/// While the dumped task's zombie holds the pid, restore waits
/// --pid-wait seconds and then says the pid is taken; once the zombie is
/// reaped, the same images restore.
#[test]
fn pid_taken() {
    init();
    let tmp = tempdir();
    let (mut p, log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump(pid, &images, &[]);
    // Not reaped: the zombie keeps the pid.
    wait_state(pid, 'Z', &format!("pid {pid} to become a zombie"));

    let out = crust([
        "restore",
        "-d",
        "--pid-wait",
        "0.5",
        "-D",
        path_str(&images),
    ]);
    out.assert_failed().stderr_has("taken");
    assert!(
        out.elapsed >= Duration::from_millis(500),
        "crust gave up before --pid-wait: {:?}",
        out.elapsed
    );
    assert!(
        out.elapsed < Duration::from_secs(3),
        "crust took {:?} with --pid-wait 0.5",
        out.elapsed
    );
    assert_eq!(
        status_field(pid, "State").map(|s| s.starts_with('Z')),
        Some(true),
        "the zombie should be untouched"
    );

    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let at_dump = last_tick(&log);
    let mut r = restore_detached(&images, pid);
    wait_tick(&log, at_dump + 2);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}

/// A file the task had open is gone at restore time: restore fails after
/// the stub was forked, kills it (the pid is free afterwards) and names
/// the missing file. Put back, the same images restore.
#[test]
fn missing_file_fails_cleanly() {
    init();
    let tmp = tempdir();
    let (mut p, log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let at_dump = last_tick(&log);

    let moved = tmp.path().join("moved-away");
    fs::rename(&log, &moved).expect("move the log away");
    let out = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&images)]);
    out.assert_failed();
    assert_pid_free(pid, "after a restore that failed on a missing file");
    fs::rename(&moved, &log).expect("put the log back");
    assert!(
        out.stderr.contains("ticks.log"),
        "the message does not name the missing file ticks.log: {:?}",
        out.stderr
    );

    let mut r = restore_detached(&images, pid);
    wait_tick(&log, at_dump + 2);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}

// ------------------------------------------------- image directory safety

/// Starts `mapper FILE` (a private read-only mapping of FILE, descriptor
/// closed) and waits until it has mapped it.
fn start_mapper(dir: &Path, file: &Path) -> (Proc, PathBuf) {
    let bin = compile_c(dir, "mapper.c", &[]);
    let out = dir.join("mapper.out");
    let p = spawn_daemon(Command::new(bin).arg(file).arg(&out));
    wait_file_contains(&out, "ready", TIMEOUT);
    (p, out)
}

/// A dump that must fail cleanly (status 1, no panic) and leave `p`
/// running, untraced.
fn refused(p: &Proc, args: &[&str], says: &str) -> Output {
    let out = crust(args);
    out.assert_failed().stderr_has(says);
    p.assert_running_untraced();
    out
}

/// A symbolic link planted in the images directory under an image's name
/// is removed, never written through: its target keeps its contents, and
/// the image written in its place is a new 0600 regular file.
#[test]
fn planted_symlink_is_not_followed() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&images)
        .expect("mkdir");
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious\n").expect("write victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
    for name in ["stats.img".to_string(), format!("pages-{pid}.img")] {
        std::os::unix::fs::symlink(&victim, images.join(name)).expect("plant symlink");
    }
    dump_and_reap(&mut p, &images);
    assert_eq!(fs::read(&victim).expect("read victim"), b"precious\n");
    assert_eq!(format!("{:o}", mode(&victim)), "644", "victim chmodded");
    assert_private(&images);
}

/// An old file with loose permissions in the images directory is
/// replaced by a 0600 one; a log file the dump appends to is made 0600.
#[test]
fn old_files_get_private_modes() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let images = tmp.path().join("images");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&images)
        .expect("mkdir");
    for name in ["stats.img", "inventory.img", "dump.log"] {
        let f = images.join(name);
        fs::write(&f, b"old").expect("write old file");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).expect("chmod");
    }
    dump(p.pid, &images, &["-o", "dump.log"]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    assert_private(&images);
}

/// `-D` naming a symbolic link is refused before the process is touched,
/// and nothing is chmodded through it.
#[test]
fn images_dir_symlink_is_refused() {
    init();
    let tmp = tempdir();
    let (p, _log) = small_ticker(tmp.path());
    let target = tmp.path().join("elsewhere");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&target)
        .expect("mkdir");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let pid = p.pid.to_string();
    for cmd in ["dump", "pre-dump"] {
        refused(
            &p,
            &[cmd, "-t", &pid, "-D", path_str(&link)],
            "symbolic link",
        );
    }
    assert_eq!(format!("{:o}", mode(&target)), "755", "target chmodded");
    assert_eq!(fs::read_dir(&target).expect("read").count(), 0);
}

/// A FIFO, a symbolic link to /dev/zero, a directory or a socket in place
/// of an image: restore and show fail at once, naming the file, and never
/// hang; no process is left behind.
#[test]
fn non_regular_images_are_refused() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let good = tmp.path().join("images");
    dump_and_reap(&mut p, &good);
    type Make<'a> = &'a dyn Fn(&Path);
    let kinds: [(&str, Make); 4] = [
        ("FIFO", &|f| {
            let c = std::ffi::CString::new(path_str(f)).expect("path");
            // SAFETY: mkfifo with a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }),
        ("symbolic link", &|f| {
            std::os::unix::fs::symlink("/dev/zero", f).expect("symlink")
        }),
        ("directory", &|f| fs::create_dir(f).expect("mkdir")),
        ("socket", &|f| {
            std::os::unix::net::UnixListener::bind(f).expect("bind");
        }),
    ];
    for (i, (what, make)) in kinds.iter().enumerate() {
        for file in [
            "inventory.img".to_string(),
            format!("task-{pid}.img"),
            format!("pages-{pid}.img"),
        ] {
            let dir = tmp.path().join(format!("bad-{i}-{file}"));
            copy_dir(&good, &dir);
            let f = dir.join(&file);
            fs::remove_file(&f).expect("rm image");
            make(&f);
            let out = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&dir)]);
            out.assert_failed().stderr_has(&file).stderr_has(what);
            assert_pid_free(pid, &format!("{what} as {file}"));
            crust(["show", path_str(&f)])
                .assert_failed()
                .stderr_has(what);
            crust(["show", path_str(&dir)]).assert_failed();
        }
    }
}

/// A task image missing one of its three parts (core state, memory
/// layout, descriptors: one file since format 2) is refused by name,
/// each on its own, and nothing is restored.
#[test]
fn a_task_image_without_one_of_its_parts_is_refused() {
    use crust::image::container::{read_message, write_message};
    use crust::image::messages::Task;
    use crust::image::Kind;
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let good = tmp.path().join("good");
    dump_and_reap(&mut p, &good);
    type DropPart = fn(&mut Task);
    let parts: [(&str, DropPart); 3] = [
        ("core state", |t| t.core = None),
        ("memory layout", |t| t.mm = None),
        ("descriptors", |t| t.fds = None),
    ];
    for (i, (what, drop_part)) in parts.iter().enumerate() {
        let dir = tmp.path().join(format!("without-{i}"));
        copy_dir(&good, &dir);
        let file = dir.join(format!("task-{pid}.img"));
        let mut task: Task = read_message(&file, Kind::Task).expect("read task image");
        drop_part(&mut task);
        fs::remove_file(&file).expect("rm task image");
        write_message(&file, Kind::Task, &task).expect("write task image");
        let out = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&dir)]);
        out.assert_failed()
            .assert_no_panic()
            .stderr_has(&format!("its task image has no {what}"));
        assert_pid_free(pid, what);
    }
}

/// A dump into a directory holding an older dump replaces it whole; a
/// dump that fails there leaves nothing restore accepts (the old
/// inventory goes first), and the process runs on.
#[test]
fn stale_images_never_mix() {
    init();
    let tmp = tempdir();
    let (p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump(pid, &images, &["--leave-running"]);
    // Leftovers of another dump: removed by the next one.
    let foreign = images.join("task-999999.img");
    fs::copy(images.join(format!("task-{pid}.img")), &foreign).expect("copy");
    let first: String = crust(["show", path_str(&images.join("inventory.img"))]).json()["message"]
        ["image_id"]
        .to_string();
    dump(pid, &images, &["--leave-running"]);
    assert!(!foreign.exists(), "a stale image survived a new dump");
    let second: String = crust(["show", path_str(&images.join("inventory.img"))]).json()["message"]
        ["image_id"]
        .to_string();
    assert_ne!(first, second, "the new dump has a new image id");

    // Now a dump that fails after the refusals: a directory sits where an
    // image must go.
    fs::create_dir(images.join(format!("task-{pid}.img.d"))).expect("mkdir");
    fs::remove_file(images.join(format!("task-{pid}.img"))).expect("rm");
    fs::create_dir(images.join(format!("task-{pid}.img"))).expect("mkdir");
    let pid_s = pid.to_string();
    refused(
        &p,
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            path_str(&images),
            "--leave-running",
        ],
        "directory",
    );
    assert!(!images.join("inventory.img").exists(), "old inventory kept");
    let out = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&images)]);
    out.assert_failed().stderr_has("inventory.img");
}

/// Parent chains are checked when the pre-dump or dump starts, with the
/// process untouched: `--prev-images-dir .`, a loop through the directory
/// being written, a parent without its inventory, a parent of another
/// pid, a parent that is a dump. A parent re-dumped after its child was
/// made breaks the child loudly at restore.
#[test]
fn parent_chain_is_checked() {
    init();
    let tmp = tempdir();
    let (p, log) = small_ticker(tmp.path());
    let (other, _log2) = {
        let sub = tmp.path().join("other");
        fs::create_dir(&sub).expect("mkdir");
        let bin = compile_c(&sub, "ticker.c", &["-pthread"]);
        let l = tmp.path().join("other.log");
        let o = spawn_daemon(Command::new(bin).arg(&l).arg("0").arg("0"));
        wait_tick(&l, 1);
        (o, l)
    };
    let pid = p.pid.to_string();
    let d = |n: &str| tmp.path().join(n);
    let pre = |dir: &str, parent: Option<&str>| {
        let mut a = vec!["pre-dump", "-t", &pid, "-D"];
        let dir = d(dir);
        a.push(path_str(&dir));
        a.extend(["--pre-dump-mode", "read"]);
        if let Some(par) = parent {
            a.extend(["--prev-images-dir", par]);
        }
        crust(&a)
    };
    pre("a", None).assert_ok();
    // Its own parent.
    let out = pre("a", Some("."));
    out.assert_failed().stderr_has("directory being written");
    p.assert_running_untraced();
    assert!(
        d("a").join("inventory.img").exists(),
        "a refused pre-dump removed a"
    );
    // a <- b, then a on top of b: a loop through a.
    pre("b", Some("../a")).assert_ok();
    let out = pre("a", Some("../b"));
    out.assert_failed().stderr_has("directory being written");
    p.assert_running_untraced();
    refused(
        &p,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&d("a")),
            "--prev-images-dir",
            "../b",
            "--leave-running",
        ],
        "directory being written",
    );
    // A parent of another pid.
    let opid = other.pid.to_string();
    let od = d("o");
    crust([
        "pre-dump",
        "-t",
        &opid,
        "-D",
        path_str(&od),
        "--pre-dump-mode",
        "read",
    ])
    .assert_ok();
    refused(
        &p,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&d("x")),
            "--prev-images-dir",
            "../o",
            "--leave-running",
        ],
        "not",
    );
    // A parent that is a dump that ended tracking, not a pre-dump or a snapshot.
    crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&d("full")),
        "--leave-running",
    ])
    .assert_ok();
    refused(
        &p,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&d("x")),
            "--prev-images-dir",
            "../full",
            "--leave-running",
        ],
        "not a pre-dump",
    );
    // An incomplete parent: no inventory.
    pre("c", None).assert_ok();
    fs::remove_file(d("c").join("inventory.img")).expect("rm");
    refused(
        &p,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&d("x")),
            "--prev-images-dir",
            "../c",
            "--leave-running",
        ],
        "inventory.img",
    );
    // A child made on b, then b re-dumped: the child no longer restores.
    crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&d("top")),
        "--prev-images-dir",
        "../b",
        "--leave-running",
    ])
    .assert_ok();
    pre("b", Some("../a")).assert_ok();
    p.signal(libc::SIGTERM);
    let mut p = p;
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    let out = crust([
        "restore",
        "-d",
        "--pid-wait",
        "0",
        "-D",
        path_str(&d("top")),
    ]);
    out.assert_failed().stderr_has("re-dumped");
    assert_pid_free(p.pid, "restore on a re-dumped parent");
    let _ = log;
}

/// The files a restore maps are recorded at dump time: a mapped file that
/// changed since is refused by name, unless --skip-file-checks.
#[test]
fn changed_mapped_file_is_refused() {
    init();
    let tmp = tempdir();
    let data = tmp.path().join("data.bin");
    fs::write(&data, vec![b'A'; 8192]).expect("write data");
    let (mut p, out) = start_mapper(tmp.path(), &data);
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);

    // Same size, new contents: the mtime tells.
    let mtime = fs::metadata(&data)
        .expect("stat")
        .modified()
        .expect("mtime");
    fs::write(&data, vec![b'B'; 8192]).expect("rewrite data");
    let f = fs::File::options().write(true).open(&data).expect("open");
    f.set_modified(mtime + Duration::from_secs(5))
        .expect("set mtime");
    drop(f);
    let r = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&images)]);
    r.assert_failed()
        .stderr_has("data.bin")
        .stderr_has("--skip-file-checks");
    assert_pid_free(pid, "restore refused on a changed mapped file");

    let pidfile = tmp.path().join("pid");
    crust([
        "restore",
        "-d",
        "--skip-file-checks",
        "-D",
        path_str(&images),
        "--pidfile",
        path_str(&pidfile),
    ])
    .assert_ok();
    let mut r = Proc::adopt(pid);
    r.assert_running_untraced();
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    // The private mapping came back from the file as it is now.
    let text = read_string(&out);
    assert!(text.contains("ready"), "{text}");
}

/// The executable changed since the dump: refused by name.
#[test]
fn changed_executable_is_refused() {
    init();
    let tmp = tempdir();
    let (mut p, _log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let exe = tmp.path().join("ticker");
    let f = fs::File::options()
        .write(true)
        .open(&exe)
        .expect("open exe");
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .expect("set mtime");
    drop(f);
    let r = crust(["restore", "-d", "--pid-wait", "0", "-D", path_str(&images)]);
    r.assert_failed()
        .stderr_has("executable")
        .stderr_has("ticker");
    assert_pid_free(pid, "restore refused on a changed executable");
}

/// A file mapped from a lazily unmounted filesystem cannot be found again
/// by its path: dump and pre-dump refuse it by name, the process runs on.
#[test]
fn lazily_unmounted_file_is_refused() {
    init();
    let tmp = tempdir();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "crust-itest",
            path_str(&mnt),
        ])
        .status()
        .expect("run mount");
    assert!(st.success(), "mount tmpfs on {}", mnt.display());
    let data = mnt.join("data.bin");
    fs::write(&data, vec![b'A'; 4096]).expect("write data");
    let (mut p, out) = start_mapper(tmp.path(), &data);
    let st = Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .status()
        .expect("run umount");
    assert!(st.success(), "umount -l {}", mnt.display());
    let pid = p.pid.to_string();
    let images = tmp.path().join("images");
    for cmd in ["pre-dump", "dump"] {
        refused(
            &p,
            &[cmd, "-t", &pid, "-D", path_str(&images)],
            "not reachable",
        );
    }
    assert!(!images.join("inventory.img").exists());
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert!(read_string(&out).contains("OK"), "{}", read_string(&out));
}

/// An overlayfs mounted for one test, unmounted (lazily) on drop.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    /// lower/ (holding `data.bin`, 8 KiB of 'L'), upper/, work/ and merged/
    /// under `dir`.
    fn mount(dir: &Path) -> Overlay {
        let d = |n: &str| {
            let p = dir.join(n);
            fs::create_dir(&p).expect("mkdir");
            p
        };
        let (lower, upper, work, merged) = (d("lower"), d("upper"), d("work"), d("merged"));
        fs::write(lower.join("data.bin"), vec![b'L'; 8192]).expect("write lower file");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let st = Command::new("mount")
            .args([
                "-t",
                "overlay",
                "-o",
                &opts,
                "crust-itest-ovl",
                path_str(&merged),
            ])
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t overlay on {}", merged.display());
        Overlay { merged }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// A file mapped from an overlayfs (a container's root; virtme-ng's /usr
/// in the kernels VM) restores. On 6.1 and 6.12, /proc/PID/maps names the
/// device of the layer under the overlay while stat(2) names the
/// overlay's: restore compares stat(2) with stat(2) at dump, never with
/// the device maps printed (it refused every such file as "replaced since
/// the dump" before). A file still in the lower layer and one copied up
/// (written through the overlay) are both mapped.
#[test]
fn file_mapped_from_an_overlay_restores() {
    init();
    let tmp = tempdir();
    let ovl = Overlay::mount(tmp.path());
    let lower_file = ovl.merged.join("data.bin");
    let upper_file = ovl.merged.join("upper.bin");
    fs::write(&upper_file, vec![b'U'; 4096]).expect("write through the overlay");
    for (name, file) in [("lower", &lower_file), ("upper", &upper_file)] {
        let dir = tmp.path().join(format!("run-{name}"));
        fs::create_dir(&dir).expect("mkdir");
        let (mut p, out) = start_mapper(&dir, file);
        let pid = p.pid;
        let images = dir.join("images");
        dump_and_reap(&mut p, &images);
        let mut r = restore_detached(&images, pid);
        r.assert_running_untraced();
        r.signal(libc::SIGTERM);
        assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{name} file");
        let text = read_string(&out);
        assert!(text.contains("OK"), "{name} file: {text}");
    }
    drop(ovl);
}
