//! A seeded mutation test over every kind of image file.
//!
//! One small real process (the C ticker, which checks its own memory on
//! SIGTERM) is pre-dumped with the content tracker (so a digests image
//! exists) and then dumped on top of that pre-dump. Copies of the two
//! image directories are then mutated, one file per case: truncation, bit
//! flips, random overwrites, header fields (lengths, kind, version,
//! magic), payload edits with the header CRC fixed up (so the decoders
//! and checks behind the CRC are exercised), files swapped for others, and
//! non-regular files (FIFO, symbolic link, directory, /dev/zero). For
//! every case `crust show` (file and directory) and `crust restore` run
//! with a timeout (a hang is a failure) and must not panic. A mutated
//! image that still restores must give back the original memory: the
//! restored ticker is asked to check itself, and anything but "OK" fails
//! the test, except for CRC-fixed edits of task state (registers, VMAs,
//! descriptors) that no checksum can catch: those are only killed.
//!
//! The seed is printed; `CRUST_FUZZ_SEED=N` replays a run and
//! `CRUST_FUZZ_CASES=N` sets the number of cases (default 240).

mod common;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Bound for one crust run on a mutated image: much more than it needs.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const HEADER_LEN: usize = 32;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn seed() -> u64 {
    match std::env::var("CRUST_FUZZ_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRUST_FUZZ_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::DirBuilder::new().mode(0o700).create(to).expect("mkdir");
    for e in fs::read_dir(from).expect("read images") {
        let e = e.expect("entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy image");
    }
}

fn image_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read images")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img"))
        .collect();
    v.sort();
    v
}

/// What a mutation was, and whether a restore that still succeeds must
/// give back the original memory.
struct Mutation {
    what: String,
    memory_must_match: bool,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Message images (not pages): header length field and payload range.
fn payload_range(b: &[u8]) -> Option<(usize, usize)> {
    if b.len() < HEADER_LEN || &b[0..4] != b"CRST" || &b[4..8] == b"PGES" {
        return None;
    }
    let hl = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    (hl >= HEADER_LEN && hl <= b.len()).then_some((hl, b.len()))
}

fn mutate(rng: &mut Rng, file: &Path, others: &[PathBuf]) -> Mutation {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let state_kind = ["task-", "pstree"].iter().any(|k| name.starts_with(k));
    let mut bytes = fs::read(file).expect("read image");
    let len = bytes.len() as u64;
    let raw = |what: String| Mutation {
        what,
        memory_must_match: true,
    };
    let m = match rng.below(12) {
        0 => {
            let at = rng.below(len);
            bytes.truncate(at as usize);
            raw(format!("truncated to {at} bytes"))
        }
        1 | 2 => {
            let n = 1 + rng.below(8);
            let mut at = Vec::new();
            for _ in 0..n {
                let i = rng.below(len) as usize;
                bytes[i] ^= 1 << rng.below(8);
                at.push(i);
            }
            raw(format!("bits flipped at {at:?}"))
        }
        3 => {
            let at = rng.below(len) as usize;
            let n = (1 + rng.below(64) as usize).min(bytes.len() - at);
            for b in &mut bytes[at..at + n] {
                *b = rng.next() as u8;
            }
            raw(format!("{n} random bytes at {at}"))
        }
        4 if len >= HEADER_LEN as u64 => {
            let (field, at, wide) = *rng.pick(&[
                ("payload length", 16usize, true),
                ("header length", 12, false),
                ("kind", 4, false),
                ("version", 8, false),
                ("common magic", 0, false),
                ("crc", 24, false),
            ]);
            let v = match rng.below(4) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.next(),
                _ => {
                    let old = if wide {
                        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
                    } else {
                        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as u64
                    };
                    old.wrapping_add(rng.below(9)).wrapping_sub(4)
                }
            };
            if wide {
                put_u64(&mut bytes, at, v);
            } else if field == "kind" && rng.below(2) == 0 {
                // Another valid kind's magic.
                let kinds: [&[u8; 4]; 9] = [
                    b"INVN", b"PTRE", b"CORE", b"MM__", b"FDS_", b"PGMP", b"PGES", b"STAT", b"DGST",
                ];
                bytes[4..8].copy_from_slice(*rng.pick(&kinds));
            } else {
                put_u32(&mut bytes, at, v as u32);
            }
            raw(format!("header field {field} set to {v:#x}"))
        }
        5..=7 if payload_range(&bytes).is_some() => {
            // Payload edit with the CRC fixed: only the decoders and the
            // checks behind the CRC stand in the way.
            let (start, end) = payload_range(&bytes).expect("payload");
            let what = if end > start {
                let n = 1 + rng.below(4);
                let mut at = Vec::new();
                for _ in 0..n {
                    let i = start + rng.below((end - start) as u64) as usize;
                    match rng.below(3) {
                        0 => bytes[i] ^= 1 << rng.below(8),
                        1 => bytes[i] = rng.next() as u8,
                        _ => bytes[i] = bytes[i].wrapping_add(1),
                    }
                    at.push(i);
                }
                format!("payload bytes {at:?} changed, CRC fixed")
            } else {
                "empty payload, CRC fixed".to_string()
            };
            if rng.below(4) == 0 && end > start {
                let cut = start + rng.below((end - start) as u64) as usize;
                bytes.truncate(cut);
                put_u64(&mut bytes, 16, (cut - start) as u64);
            }
            let (start, _) = payload_range(&bytes).unwrap_or((HEADER_LEN, bytes.len()));
            let crc = crc32fast::hash(&bytes[start..]);
            put_u32(&mut bytes, 24, crc);
            Mutation {
                what,
                memory_must_match: !state_kind,
            }
        }
        8 if !others.is_empty() => {
            let other = rng.pick(others);
            bytes = fs::read(other).expect("read other image");
            raw(format!("replaced by a copy of {}", other.display()))
        }
        9 => {
            fs::remove_file(file).expect("rm image");
            let what = match rng.below(5) {
                0 => {
                    let c = std::ffi::CString::new(path_str(file)).expect("path");
                    // SAFETY: mkfifo with a valid C string.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
                    "a FIFO"
                }
                1 => {
                    std::os::unix::fs::symlink("/dev/zero", file).expect("symlink");
                    "a symlink to /dev/zero"
                }
                2 => {
                    fs::create_dir(file).expect("mkdir");
                    "a directory"
                }
                3 => {
                    let c = std::ffi::CString::new(path_str(file)).expect("path");
                    // SAFETY: mknod of /dev/zero's device number, valid C string.
                    let r = unsafe {
                        libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5))
                    };
                    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
                    "a /dev/zero device node"
                }
                _ => "removed",
            };
            return raw(format!("replaced by {what}"));
        }
        _ => {
            let extra = 1 + rng.below(5000) as usize;
            for _ in 0..extra {
                bytes.push(rng.next() as u8);
            }
            raw(format!("{extra} bytes appended"))
        }
    };
    fs::write(file, &bytes).expect("write mutated image");
    m
}

/// Restores `top` (its parent next to it); if that works, checks the
/// restored ticker's memory (or just kills it). Returns the outcome.
fn try_restore(top: &Path, pid: i32, log: &Path, memory_must_match: bool, case: &str) -> String {
    let pidfile = top.with_extension("pid");
    let run = crust_spawn([
        "restore",
        "-d",
        "--pid-wait",
        "0",
        "-D",
        path_str(top),
        "--pidfile",
        path_str(&pidfile),
    ]);
    let out = run.wait(RUN_TIMEOUT);
    assert!(
        out.status.code() != Some(101) && !out.stderr.contains("panicked"),
        "{case}: restore panicked:\n{}",
        out.stderr
    );
    if !out.success() {
        // (Unless another process took the pid meanwhile.)
        if !out.stderr.contains("is taken by") {
            assert_pid_free(pid, &format!("{case}: after a failed restore"));
        }
        return "refused".into();
    }
    let before = read_string(log).len();
    // A CRC-fixed state edit may have restored it under another pid.
    let restored: i32 = read_string(&pidfile)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{case}: restore succeeded without writing its pidfile"));
    let mut p = Proc::adopt(restored);
    assert!(
        restored == pid || !memory_must_match,
        "{case}: restored as pid {restored}, not {pid}"
    );
    if !memory_must_match {
        p.signal(libc::SIGKILL);
        p.wait(TIMEOUT);
        return "restored (state edit, killed)".into();
    }
    p.signal(libc::SIGTERM);
    let exit = p.wait(TIMEOUT);
    let text = read_string(log);
    let tail = &text[before.min(text.len())..];
    assert!(
        exit == Exit::Code(0) && tail.lines().any(|l| l.starts_with("OK ")),
        "{case}: a mutated image restored a process with wrong memory or state: exit {exit:?}, log after restore: {tail:?}"
    );
    "restored, memory intact".into()
}

#[test]
fn mutated_images_never_panic_hang_or_restore_wrong_memory() {
    init();
    let seed = seed();
    let cases: usize = std::env::var("CRUST_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    println!("image fuzz: seed {seed} (replay with CRUST_FUZZ_SEED={seed}), {cases} cases");
    eprintln!("image fuzz: seed {seed} (replay with CRUST_FUZZ_SEED={seed}), {cases} cases");
    let mut rng = Rng(seed);

    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "ticker.c", &["-pthread"]);
    let log = tmp.path().join("ticks.log");
    let mut p = spawn_daemon(Command::new(&bin).arg(&log).arg("1").arg("0"));
    wait_tick(&log, 2);
    let pid = p.pid;
    let pid_s = pid.to_string();
    let base = tmp.path().join("base");
    fs::create_dir(&base).expect("mkdir base");
    let (pre, top) = (base.join("pre"), base.join("top"));
    crust([
        "pre-dump",
        "-t",
        &pid_s,
        "-D",
        path_str(&pre),
        "--track-mem",
        "--tracker",
        "content",
        "--pre-dump-mode",
        "read",
    ])
    .assert_ok();
    wait_tick(&log, last_tick(&log) + 1);
    crust([
        "dump",
        "-t",
        &pid_s,
        "-D",
        path_str(&top),
        "--track-mem",
        "--prev-images-dir",
        "../pre",
    ])
    .assert_ok();
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));

    // Every kind is there to be mutated.
    let mut targets: Vec<(String, String)> = Vec::new();
    for (d, names) in [("pre", image_files(&pre)), ("top", image_files(&top))] {
        for n in names {
            targets.push((d.to_string(), n));
        }
    }
    for kind in ["inventory", "pstree", "task", "pages", "stats", "digests"] {
        assert!(
            targets.iter().any(|(_, n)| n.starts_with(kind)),
            "no {kind} image to fuzz: {targets:?}"
        );
    }

    // The pristine images restore with intact memory: the test can tell.
    let ok = tmp.path().join("pristine");
    fs::create_dir(&ok).expect("mkdir");
    copy_dir(&pre, &ok.join("pre"));
    copy_dir(&top, &ok.join("top"));
    assert_eq!(
        try_restore(&ok.join("top"), pid, &log, true, "pristine"),
        "restored, memory intact"
    );

    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..cases {
        let case_dir = tmp.path().join(format!("case-{i}"));
        fs::create_dir(&case_dir).expect("mkdir case");
        let (cpre, ctop) = (case_dir.join("pre"), case_dir.join("top"));
        copy_dir(&pre, &cpre);
        copy_dir(&top, &ctop);
        let (d, name) = rng.pick(&targets).clone();
        let dir = if d == "pre" { &cpre } else { &ctop };
        let file = dir.join(&name);
        let others: Vec<PathBuf> = targets
            .iter()
            .filter(|(od, on)| !(od == &d && on == &name))
            .map(|(od, on)| case_dir.join(od).join(on))
            .collect();
        let m = mutate(&mut rng, &file, &others);
        let case = format!("seed {seed} case {i}: {d}/{name} {}", m.what);
        eprintln!("{case}");

        for target in [file.clone(), dir.clone()] {
            let out = crust_spawn(["show", path_str(&target)]).wait(RUN_TIMEOUT);
            assert!(
                out.status.code() != Some(101) && !out.stderr.contains("panicked"),
                "{case}: show {} panicked:\n{}",
                target.display(),
                out.stderr
            );
        }
        // What the mutation changed, decoded, for the failure message.
        let original = if d == "pre" {
            pre.join(&name)
        } else {
            top.join(&name)
        };
        let shown = |f: &Path| {
            let out = crust_spawn(["show", path_str(f)]).wait(RUN_TIMEOUT).stdout;
            serde_json::from_str::<serde_json::Value>(out.trim())
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(out)
        };
        let (before, after) = (shown(&original), shown(&file));
        let changed: Vec<String> = before
            .lines()
            .zip(after.lines())
            .filter(|(b, a)| b != a)
            .take(8)
            .map(|(b, a)| format!("  was {b}\n  now {a}"))
            .collect();
        let case = format!("{case}\ndecoded difference:\n{}", changed.join("\n"));
        let outcome = try_restore(&ctop, pid, &log, m.memory_must_match, &case);
        *tally.entry(outcome).or_default() += 1;
        fs::remove_dir_all(&case_dir).expect("rm case");
    }
    println!("image fuzz: seed {seed}: {tally:?}");
    eprintln!("image fuzz: seed {seed}: {tally:?}");
}
