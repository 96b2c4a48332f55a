//! Image directories: permissions, `crust show`, corrupted images, and a
//! restore whose pid is still taken.

mod common;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Starts a small C ticker and waits for its first ticks.
fn small_ticker(dir: &Path) -> (Proc, PathBuf) {
    let bin = compile_c(dir, "ticker.c", &["-pthread"]);
    let log = dir.join("ticks.log");
    let p = spawn_daemon(Command::new(bin).arg(&log).arg("2").arg("0"));
    wait_tick(&log, 3);
    (p, log)
}

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
    assert!(names.len() >= 7, "too few files: {names:?}");
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

/// `crust show DIR` prints every image as JSON; the mm image lists VMAs
/// with their kinds, the core image the registers.
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
    for kind in ["core", "mm", "fds", "pagemap", "pages"] {
        assert!(
            obj.contains_key(&format!("{kind}-{pid}.img")),
            "no {kind} image for pid {pid}: {keys:?}"
        );
    }
    assert_eq!(json["inventory.img"]["message"]["root_pid"], pid);

    let vmas = json[format!("mm-{pid}.img")]["message"]["vmas"]
        .as_array()
        .unwrap_or_else(|| panic!("mm has no vmas: {}", json[format!("mm-{pid}.img")]));
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

    let regs = &json[format!("core-{pid}.img")]["message"]["regs"];
    for r in ["rip", "rsp"] {
        assert!(
            regs[r].as_u64().is_some_and(|x| x != 0),
            "core regs lack a non-zero {r}: {regs}"
        );
    }

    // One file on its own works too.
    let one = crust(["show", path_str(&images.join(format!("core-{pid}.img")))]);
    one.assert_ok();
    assert_eq!(one.json()["kind"], "core");
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
            name: "flipped core byte",
            file: format!("core-{pid}.img"),
            corrupt: Box::new(|p| rewrite(p, |b| b[40] ^= 0x5a)),
            says: &["checksum"],
        },
        Case {
            name: "flipped last mm byte",
            file: format!("mm-{pid}.img"),
            corrupt: Box::new(|p| {
                rewrite(p, |b| {
                    let last = b.len() - 1;
                    b[last] ^= 0xff
                })
            }),
            says: &["checksum"],
        },
        Case {
            name: "missing mm",
            file: format!("mm-{pid}.img"),
            corrupt: Box::new(|p| fs::remove_file(p).expect("rm")),
            says: &["No such file"],
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
            name: "empty pagemap",
            file: format!("pagemap-{pid}.img"),
            corrupt: Box::new(|p| fs::write(p, b"").expect("write")),
            says: &["truncated"],
        },
        Case {
            name: "truncated fds header",
            file: format!("fds-{pid}.img"),
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
        if case.name != "missing mm" {
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
    wait_until(
        TIMEOUT,
        &format!("pid {pid} to become a zombie"),
        || match status_field(pid, "State") {
            Some(s) if s.starts_with('Z') => Ok(()),
            s => Err(format!("state {s:?}")),
        },
    );

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
