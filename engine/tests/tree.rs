//! Process trees (progs/tree.c): a root, two children, five grandchildren,
//! with a second session, four process groups (one whose leader is gone),
//! a stopped process and two zombies (an exit status and a signal). A dump takes the whole tree and
//! restore rebuilds it with the same pids, parents, groups, sessions,
//! states and zombie statuses; each live process checks its own memory
//! (copy-on-write after fork) and ids. A dump killed mid-way leaves every
//! process of the tree as it was.
//!
//! Parent-and-child programs: an open file, memory objects and unix socket
//! pairs shared over fork stay shared; members running as other users keep
//! their own credentials; what is not restored (a socket held outside the
//! tree, one epoll in two members, a zombie of another user, a vfork parent
//! waiting) is refused by name and the processes run on.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

const NAMES: [&str; 9] = ["R", "A", "A1", "A2", "A3", "A5", "B", "B1", "B2"];
const LIVE: [&str; 7] = ["R", "A", "A1", "A3", "A5", "B", "B1"];

/// What restore must bring back of one process: /proc/PID/stat's state,
/// ppid, pgrp, session and exit code (a zombie's wait status).
type Place = (char, i32, i32, i32, i32);

fn place(pid: i32) -> Option<Place> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i - 3)?.parse().ok();
    Some((f[0].chars().next()?, n(4)?, n(5)?, n(6)?, n(52)?))
}

struct Tree {
    /// The root, our child.
    root: Proc,
    /// Every member's pid, in NAMES order.
    pids: Vec<i32>,
    log: PathBuf,
}

impl Tree {
    fn start(tmp: &Path, bin: &Path) -> Tree {
        let log = tmp.join("tree.log");
        let root = spawn_daemon(Command::new(bin).arg(&log));
        let text = wait_file_contains(&log, "pids", TIMEOUT);
        let pids: Vec<i32> = text
            .lines()
            .find_map(|l| l.strip_prefix("pids "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(pids.len(), NAMES.len(), "pids line in {text:?}");
        assert_eq!(pids[0], root.pid);
        let t = Tree { root, pids, log };
        // Every other member waits in sigsuspend: until each is there (the
        // root reports the pids just before), a snapshot of the places
        // could catch one still running.
        wait_until(
            TIMEOUT,
            "A1 stopped, A2 and B2 zombies, the rest waiting",
            || {
                let want = [("A1", 'T'), ("A2", 'Z'), ("B2", 'Z')];
                for (name, st) in want {
                    let got = place(t.pid(name)).map(|p| p.0);
                    if got != Some(st) {
                        return Err(format!("{name} in state {got:?}"));
                    }
                }
                for name in NAMES.iter().filter(|n| !want.iter().any(|w| w.0 == **n)) {
                    let got = blocked_syscall(t.pid(name));
                    if got != Some(libc::SYS_rt_sigsuspend) {
                        return Err(format!("{name} in syscall {got:?}"));
                    }
                }
                Ok(())
            },
        );
        t
    }

    /// `crust dump` of the tree into `dir`, which kills it; every member
    /// (ours as the tree dies: the root our child, the others reparented
    /// to this subreaper) reaped.
    fn dump_and_reap(&mut self, dir: &Path) -> Output {
        self.dump_and_reap_env(dir, &[])
    }

    /// `crust dump -v` of the tree, with `env`.
    fn dump_and_reap_env(&mut self, dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Output {
        let mut members: Vec<Proc> = self.pids[1..].iter().map(|&p| Proc::adopt(p)).collect();
        let pid = self.root.pid.to_string();
        let args = ["dump", "-v", "-t", &pid, "-D", path_str(dir)];
        let out = crust_spawn_env(args, env).wait(TIMEOUT);
        out.assert_ok();
        assert_eq!(self.root.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
        for m in &mut members {
            m.wait(TIMEOUT);
        }
        out
    }

    fn pid(&self, name: &str) -> i32 {
        self.pids[NAMES.iter().position(|n| *n == name).expect("a member")]
    }

    fn places(&self) -> Vec<Option<Place>> {
        self.pids.iter().map(|&p| place(p)).collect()
    }

    /// Waits until every member is where `want` says: released by crust,
    /// a member runs until it is back in its wait (a stopped one stops).
    fn wait_places(&self, want: &[Option<Place>], what: &str) {
        wait_until(TIMEOUT, &format!("the tree {what}"), || {
            let now = self.places();
            let diff: Vec<String> = now
                .iter()
                .zip(want)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("{} {:?}, not {:?}", NAMES[i], a, b))
                .collect();
            match diff.is_empty() {
                true => Ok(()),
                false => Err(diff.join("; ")),
            }
        });
    }

    /// Wakes every live member (A1 is continued first): each checks itself,
    /// parents reap their children (zombies included, with their status),
    /// the root exits 0 with "OK all".
    fn finish(mut self) {
        let a1 = Proc::adopt(self.pid("A1"));
        a1.signal(libc::SIGCONT);
        let others: Vec<Proc> = LIVE[1..].iter().map(|n| Proc::adopt(self.pid(n))).collect();
        for p in &others {
            p.signal(libc::SIGUSR1);
        }
        self.root.signal(libc::SIGUSR1);
        let exit = self.root.wait(TIMEOUT);
        let text = read_string(&self.log);
        assert_eq!(exit, Exit::Code(0), "log: {text}");
        for n in LIVE {
            assert!(text.contains(&format!("OK {n}\n")), "no OK {n} in: {text}");
        }
        assert!(text.contains("OK all"), "{text}");
        drop(a1);
        drop(others);
    }
}

/// Also with every injected call one by one (CRUST_INJECT_BATCH=0): the
/// members then have no batch runner to take over from the root, and map
/// their own scratch areas around what they inherited. And with every
/// process dumped and restored on crust's main thread
/// (CRUST_DUMP_THREADS=1, CRUST_RESTORE_THREADS=1); otherwise the dump
/// finishes its members on two threads (`-v` shows "two threads") and a
/// helper thread restores some leaves (restore/parallel.rs: `-v` shows
/// its "hand over").
#[test_case::test_case(true, true ; "batched")]
#[test_case::test_case(false, true ; "one by one")]
#[test_case::test_case(true, false ; "on one thread")]
fn tree_dump_restore(batched: bool, two_threads: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "tree.c", &[]);
    let mut tree = Tree::start(tmp.path(), &bin);
    let before = tree.places();
    let dir = tmp.path().join("img");
    let env: [(&str, &std::ffi::OsStr); 1] = [("CRUST_DUMP_THREADS", "1".as_ref())];
    let out = tree.dump_and_reap_env(&dir, if two_threads { &[] } else { &env });
    assert_eq!(
        out.stderr.contains("two threads"),
        two_threads,
        "dump phases: {}",
        out.stderr
    );
    for &p in &tree.pids {
        assert_pid_free(p, "after the dump");
    }
    // The tree image: every member with its place.
    let show = crust(["show", path_str(&dir.join("pstree.img"))]);
    show.assert_ok();
    for &p in &tree.pids {
        assert!(show.stdout.contains(&p.to_string()), "{}", show.stdout);
    }
    drop(out);
    let pages = shared_pages_files(&dir, &tree.pids);
    // `crust show` lists every packed task image with its pid.
    let shown = crust(["show", path_str(&dir.join("tasks.img"))]);
    shown.assert_ok();
    let packed = shown.json()["message"]["tasks"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|e| e["pid"].as_i64())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let images = crust::image::ImageDir::open(&dir).expect("image dir");
    let live: Vec<i64> = tree
        .pids
        .iter()
        .filter(|&&p| images.has_task(p))
        .map(|&p| i64::from(p))
        .collect();
    assert!(live.len() > 1, "live members: {live:?}");
    let mut sorted = live.clone();
    sorted.sort();
    assert_eq!(packed, sorted, "tasks.img as shown");
    assert_eq!(
        pages.len(),
        if two_threads { 2 } else { 1 },
        "one pages file per dumping thread: {pages:?}"
    );
    if two_threads {
        // A pages file cut short: refused by name, nothing restored.
        let file = dir.join(&pages[1]);
        let whole = std::fs::read(&file).expect("read pages");
        std::fs::write(&file, &whole[..whole.len() - 4096]).expect("cut pages");
        let out = crust(["restore", "-d", "-D", path_str(&dir)]);
        out.assert_failed().stderr_has(&pages[1]);
        for &p in &tree.pids {
            assert_pid_free(p, "after a refused restore");
        }
        std::fs::write(&file, whole).expect("put the pages back");
        // A byte of a packed task image changed: refused by name.
        let pack = dir.join("tasks.img");
        let whole = std::fs::read(&pack).expect("read tasks.img");
        let mut bad = whole.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x5a;
        std::fs::write(&pack, &bad).expect("spoil tasks.img");
        let out = crust(["restore", "-d", "-D", path_str(&dir)]);
        out.assert_failed().stderr_has("tasks.img");
        for &p in &tree.pids {
            assert_pid_free(p, "after a refused restore");
        }
        std::fs::write(&pack, whole).expect("put tasks.img back");
    }
    let mut env: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
    if !batched {
        env.push(("CRUST_INJECT_BATCH", "0".as_ref()));
    }
    if !two_threads {
        env.push(("CRUST_RESTORE_THREADS", "1".as_ref()));
    }
    let out = crust_spawn_env(["restore", "-d", "-v", "-D", path_str(&dir)], &env).wait(TIMEOUT);
    out.assert_ok();
    assert_eq!(
        out.stderr.contains("hand over"),
        two_threads,
        "restore phases: {}",
        out.stderr
    );
    tree.root = Proc::adopt(tree.root.pid);
    tree.wait_places(&before, "after restore");
    for &p in &tree.pids {
        assert_eq!(
            status_field(p, "TracerPid").as_deref(),
            Some("0"),
            "pid {p} still traced"
        );
    }
    tree.finish();
}

/// The pages files of a tree's image, checked: every member's data is a
/// stretch of one of them (its pagemap's data_offset on), the stretches
/// of a file one after the other from its start, the last ending where
/// its data does.
fn shared_pages_files(dir: &std::path::Path, pids: &[i32]) -> Vec<String> {
    use crust::image::chain::LayerMap;
    use crust::image::{ImageDir, Kind, PagesReader};
    let images = ImageDir::open(dir).expect("image dir");
    let mut stretches: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    // The task images are packed in tasks.img; a zombie has none.
    for &p in pids {
        assert!(
            !images.file(Kind::Task, Some(p)).exists(),
            "pid {p} has its own task image"
        );
    }
    for &p in pids.iter().filter(|&&p| images.has_task(p)) {
        let pm = images.read_pagemap(p).expect("pagemap");
        let name = pm.pages_file.clone();
        let layer = LayerMap::new(dir, pm).expect("layer");
        stretches.entry(name).or_default().push(layer.data_range());
    }
    for (name, s) in &mut stretches {
        s.sort();
        let mut at = 0;
        for &(start, end) in s.iter() {
            assert_eq!(start, at, "{name}: stretches {s:?}");
            at = end;
        }
        let data = PagesReader::open(&dir.join(name.as_str()))
            .expect("pages file")
            .data_len();
        assert_eq!(data, at, "{name}: stretches {s:?}");
    }
    stretches.into_keys().collect()
}

/// Kills `crust restore` of the tree at spread moments, a helper thread
/// restoring some of its leaves (restore/parallel.rs): whatever crust had
/// done, no member is left half-built. A leaf handed over to the helper
/// waits untraced in pause(2) for a moment; if crust dies then, its
/// parent (a stub crust traces, killed with it) takes it along through
/// its parent death signal. So after each kill every member is gone or
/// released (running the program again: a partial tree is the documented
/// outcome of a kill during the release), never in pause.
#[test]
fn tree_restore_killed_midway() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "tree.c", &[]);
    let mut tree = Tree::start(tmp.path(), &bin);
    let dir = tmp.path().join("img");
    tree.dump_and_reap(&dir).assert_ok();
    let args = ["restore", "-d", "-v", "-D", path_str(&dir)];
    let t = Instant::now();
    let out = crust(args);
    let span = t.elapsed();
    out.assert_ok();
    assert!(out.stderr.contains("hand over"), "{}", out.stderr);
    end_leftovers(&tree.pids, "after the undisturbed restore");
    // Killed just when every handed-over leaf waits untraced.
    let env: [(&str, &std::ffi::OsStr); 1] = [("CRUST_KILL_AFTER_HAND_OVER", "1".as_ref())];
    let out = crust_spawn_env(args, &env).wait(TIMEOUT);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", out.stderr);
    wait_until(
        TIMEOUT,
        "every member gone after a kill at the hand over",
        || {
            let me = std::process::id() as i32;
            for &p in &tree.pids {
                match member_left(&tree.pids, p) {
                    // A zombie of ours (reparented to this subreaper) is gone
                    // but for its reaping.
                    Some(pl) if pl.0 == 'Z' && pl.1 == me => {
                        let mut st = 0;
                        // SAFETY: waitpid on one pid with a valid status pointer.
                        unsafe { libc::waitpid(p, &mut st, libc::WNOHANG | libc::__WALL) };
                        return Err(format!("pid {p} a zombie, reaped now"));
                    }
                    Some(pl) => {
                        return Err(format!(
                            "pid {p} still there: {pl:?}, in syscall {:?}",
                            blocked_syscall(p)
                        ))
                    }
                    None => {}
                }
            }
            Ok(())
        },
    );
    // Kill moments spread over the restore's span and a little past it.
    let mut x = u64::from(std::process::id()) | 1;
    let (mut killed, mut finished) = (0, 0);
    for trial in 0..30 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = span.mul_f64(((x >> 33) % 1200) as f64 / 1000.0);
        let context = format!("trial {trial}, kill after {delay:?}");
        let running = crust_spawn(args);
        // The kill moment is the point of the test, not a synchronisation.
        std::thread::sleep(delay);
        // SAFETY: kill(2) of the crust we spawned, not reaped yet.
        unsafe { libc::kill(running.pid(), libc::SIGKILL) };
        match running.wait(TIMEOUT).status.code() {
            Some(0) => finished += 1,
            Some(c) => panic!("{context}: restore failed with {c} before the kill"),
            None => killed += 1,
        }
        wait_until(
            TIMEOUT,
            &format!("{context}: no member left in pause"),
            || {
                for &p in &tree.pids {
                    if blocked_syscall(p) == Some(libc::SYS_pause) {
                        return Err(format!("pid {p} waits in pause: {:?}", place(p)));
                    }
                }
                Ok(())
            },
        );
        end_leftovers(&tree.pids, &context);
    }
    eprintln!("tree_restore_killed_midway: {killed} killed, {finished} finished first");
    tree.root.forget();
}

/// Kills and reaps what is left of a restored tree: each member pid that
/// is still ours (a child of this test, the child subreaper, or of
/// another member).
fn end_leftovers(pids: &[i32], context: &str) {
    // Parents first: their children then come to us.
    let left: Vec<Proc> = pids
        .iter()
        .filter(|&&p| member_left(pids, p).is_some())
        .filter_map(|&p| Proc::adopt_if_there(p))
        .collect();
    drop(left);
    for &p in pids {
        wait_until(TIMEOUT, &format!("{context}: pid {p} to go"), || {
            let Some(pl) = member_left(pids, p) else {
                return Ok(());
            };
            // Killed and reaped (a child of another member comes to us
            // once that one is gone).
            drop(Proc::adopt_if_there(p));
            Err(format!("{pl:?}"))
        });
    }
}

/// Where `p` is, if it is a process of ours: a child of this test (the
/// child subreaper) or of a member of the tree `pids`.
fn member_left(pids: &[i32], p: i32) -> Option<Place> {
    let me = std::process::id() as i32;
    place(p).filter(|pl| pl.1 == me || pids.contains(&pl.1))
}

/// Kills `crust dump --leave-running` of the tree at spread moments; after
/// each, every member must be exactly as before (state, parent, group,
/// session, untraced), and at the end every live member's own checks pass.
#[test]
fn tree_dump_killed_midway() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "tree.c", &[]);
    let tree = Tree::start(tmp.path(), &bin);
    let before = tree.places();
    let dir = tmp.path().join("img");
    let root = tree.root.pid.to_string();
    let args = ["dump", "-t", &root, "-D", path_str(&dir), "--leave-running"];
    let t = Instant::now();
    crust(args).assert_ok();
    let took = t.elapsed();
    tree.wait_places(&before, "after a --leave-running dump");
    for k in 0..10u32 {
        let _ = std::fs::remove_dir_all(&dir);
        let run = crust_spawn(args);
        let crust_pid = run.pid();
        let children = format!("/proc/{crust_pid}/task/{crust_pid}/children");
        let mut worker = None;
        wait_until(TIMEOUT, "crust's worker", || {
            worker = read_string(Path::new(&children))
                .split_whitespace()
                .next()
                .and_then(|w| w.parse::<i32>().ok());
            match worker {
                Some(_) => Ok(()),
                None if !Path::new(&children).exists() => Ok(()),
                None => Err("no worker yet".into()),
            }
        });
        // The kill moment is the point of the test, not a synchronisation.
        std::thread::sleep(took * k / 8);
        // SAFETY: kill(2) of the crust we started and have not reaped.
        unsafe { libc::kill(crust_pid, libc::SIGKILL) };
        run.wait(TIMEOUT);
        if let Some(w) = worker {
            let mut ws = 0;
            // SAFETY: waitpid on one pid with a valid status pointer; ECHILD
            // (crust reaped it) is fine.
            unsafe { libc::waitpid(w, &mut ws, libc::__WALL) };
        }
        // Released, every member goes back to where it was (a stopped one
        // stops again): running meanwhile.
        tree.wait_places(&before, &format!("after a dump killed at {k}/8"));
        for &p in &tree.pids {
            assert_eq!(
                status_field(p, "TracerPid").as_deref(),
                Some("0"),
                "pid {p} still traced after a dump killed at {k}/8"
            );
        }
    }
    tree.finish();
}

/// Two pre-dumps of the tree with dirty tracking, a process created
/// between them (a full dump of it, then a chain of its own), and a final
/// dump on top: the pages of every member left to the parents, and the
/// restored tree is whole.
#[test]
fn tree_predumps_then_dump() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "tree.c", &[]);
    let mut tree = Tree::start(tmp.path(), &bin);
    let before = tree.places();
    let root = tree.root.pid.to_string();
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
    tree.wait_places(&before, "after the first pre-dump");
    tree.root.signal(libc::SIGUSR2);
    let text = wait_file_contains(&tree.log, "new ", TIMEOUT);
    let n: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("new "))
        .and_then(|p| p.trim().parse().ok())
        .expect("the new child's pid");
    wait_until(TIMEOUT, "the new child to wait", || {
        match blocked_syscall(n) {
            Some(nr) if nr == libc::SYS_rt_sigsuspend => Ok(()),
            other => Err(format!("in syscall {other:?}")),
        }
    });
    let new_place = place(n);
    crust([
        "pre-dump",
        "-t",
        &root,
        "-D",
        path_str(&pre2),
        "--prev-images-dir",
        "../pre1",
        "--track-mem",
    ])
    .assert_ok();
    assert!(
        pre2.join(format!("task-{n}.img")).exists(),
        "the new process is in the second pre-dump"
    );
    let mut members: Vec<Proc> = tree.pids[1..]
        .iter()
        .chain([&n])
        .map(|&p| Proc::adopt(p))
        .collect();
    dump(
        tree.root.pid,
        &img,
        &["--prev-images-dir", "../pre2", "--track-mem"],
    );
    assert_eq!(tree.root.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    for m in &mut members {
        m.wait(TIMEOUT);
    }
    let stats = crust(["show", path_str(&img.join("stats.img"))]);
    stats.assert_ok();
    let in_parent = stats.json()["message"]["pages_in_parent"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        in_parent > 0,
        "no page left to the parents: {}",
        stats.stdout
    );
    tree.root = restore_detached(&img, tree.root.pid);
    tree.wait_places(&before, "after restore");
    wait_until(TIMEOUT, "the new child after restore", || {
        match place(n) == new_place {
            true => Ok(()),
            false => Err(format!("{:?}, not {new_place:?}", place(n))),
        }
    });
    let log = tree.log.clone();
    let newborn = Proc::adopt(n);
    newborn.signal(libc::SIGUSR1);
    tree.finish();
    assert!(
        read_string(&log).contains("OK N\n"),
        "{}",
        read_string(&log)
    );
    drop(newborn);
}

/// Starts `prog LOG ARGS` as [`parent_and_child_roundtrip`] does; pre-dump
/// and dump must both refuse it naming `named`; the two run on untouched
/// and finish as they would have (the parent reports "OK all").
fn parent_and_child_refused(prog: &str, args: &[&str], named: &str) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), prog, &[]);
    let log = tmp.path().join("result.log");
    let p = spawn_daemon(Command::new(&bin).arg(&log).args(args));
    let children = ready_pids(&wait_file_contains(&log, "ready", TIMEOUT));
    assert!(
        !children.is_empty(),
        "no child pid in {}",
        read_string(&log)
    );
    let pid = p.pid.to_string();
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([op, "-t", &pid, "-D", path_str(&images)])
            .assert_failed()
            .stderr_has(named);
        assert!(!images.join("inventory.img").exists(), "{op} left an image");
    }
    // A vfork parent waits in D state: only untraced.
    match place(p.pid).map(|p| p.0) {
        Some('D') => assert_eq!(status_field(p.pid, "TracerPid").as_deref(), Some("0")),
        _ => p.assert_running_untraced(),
    }
    for &child in &children {
        let c = Proc::adopt(child);
        if place(child).map(|p| p.0) != Some('Z') {
            c.assert_running_untraced();
        }
        c.signal(libc::SIGUSR1);
        wait_exited(child);
    }
    wake_and_expect_ok(p, &log);
}

/// Waits until `pid` has exited: a zombie, or reaped by its parent at once.
fn wait_exited(pid: i32) {
    wait_until(TIMEOUT, "the child to exit", || {
        match place(pid).map(|p| p.0) {
            Some('Z') | None => Ok(()),
            s => Err(format!("{s:?}")),
        }
    });
}

/// The pids of the "ready PID..." line of `text`.
fn ready_pids(text: &str) -> Vec<i32> {
    text.lines()
        .find_map(|l| l.strip_prefix("ready "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `prog LOG ARGS` (a parent that forks its children and writes
/// "ready CHILD..."; "{tmp}" in an argument is the test's directory), dumps
/// them, restores them, wakes each child (SIGUSR1), waits for it to exit
/// and wakes the parent, which must report "OK all".
fn parent_and_child_roundtrip(prog: &str, args: &[&str]) {
    roundtrip_after_leave_running(prog, args, 0);
}

/// As [`parent_and_child_roundtrip`], after `snapshots` dumps with
/// `--leave-running` (each must leave the processes as they were).
fn roundtrip_after_leave_running(prog: &str, args: &[&str], snapshots: usize) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), prog, &[]);
    let log = tmp.path().join("result.log");
    let dir = path_str(tmp.path()).to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{tmp}", &dir)).collect();
    let mut p = spawn_daemon(Command::new(&bin).arg(&log).args(&args));
    let children = ready_pids(&wait_file_contains(&log, "ready", TIMEOUT));
    assert!(
        !children.is_empty(),
        "no child pid in {}",
        read_string(&log)
    );
    let state = |pid: i32| place(pid).map(|p| p.0);
    for &child in &children {
        wait_until(TIMEOUT, "the child to wait", || match state(child) {
            Some('S') => Ok(()),
            s => Err(format!("{s:?}")),
        });
    }
    for i in 0..snapshots {
        let snap = tmp.path().join(format!("snap{i}"));
        dump(p.pid, &snap, &["--leave-running"]);
    }
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    // Killed with their parent: reparented to us (a child subreaper) or to
    // init, which reap them.
    for &child in &children {
        wait_until(TIMEOUT, "the child to be gone", || {
            let mut st = 0;
            // SAFETY: waitpid with a valid status pointer; ECHILD if not ours.
            unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) };
            match state(child) {
                None => Ok(()),
                s => Err(format!("{s:?}")),
            }
        });
    }
    let r = restore_detached(&images, p.pid);
    for &child in &children {
        // SAFETY: plain kill(2) of the restored child.
        unsafe { libc::kill(child, libc::SIGUSR1) };
        wait_until(TIMEOUT, "the child to exit", || match state(child) {
            Some('Z') => Ok(()),
            s => Err(format!("{s:?}")),
        });
    }
    wake_and_expect_ok(r, &log);
}

/// An open file description a parent shares with its child over fork (one
/// offset) stays one after restore: the child reads a byte, and the
/// parent's next read goes on from there. crossed: the same fd number
/// names different descriptions of one file in parent and child (the
/// child dup2'ed the parent's second description over it): each comes
/// back as the description it was.
#[test_case::test_case(false ; "inherited")]
#[test_case::test_case(true ; "crossed")]
fn file_shared_over_fork_keeps_one_offset(crossed: bool) {
    let args: &[&str] = match crossed {
        false => &["{tmp}/data"],
        true => &["{tmp}/data", "crossed"],
    };
    parent_and_child_roundtrip("sharedfile.c", args);
}

/// A memfd mapping, a SysV segment (removed, attached by both) and
/// MAP_SHARED|MAP_ANONYMOUS memory shared by a parent and its child are
/// still one object after restore: the child's write is seen by the
/// parent. anon-partial: the child unmapped the head and tail of the
/// region and moved a part of it (mremap), the parent made its tail
/// read-only: each mapping comes back at its offset into the object (the
/// child writes through its moved part, the parent sees it), the tail
/// only the parent maps with its data. memfd-fd: a memfd descriptor shared over fork keeps one offset.
/// ghost: an unlinked file on /dev/shm mapped by both and another only
/// open (one offset), restored at their paths, unlinked, holes kept.
#[test_case::test_case("memfd" ; "memfd")]
#[test_case::test_case("sysv" ; "sysv segment")]
#[test_case::test_case("anon" ; "shared anonymous")]
#[test_case::test_case("anon-partial" ; "shared anonymous partly unmapped")]
#[test_case::test_case("memfd-fd" ; "memfd descriptor")]
#[test_case::test_case("ghost" ; "unlinked tmpfs files mapped and open")]
fn memory_object_shared_over_fork_stays_shared(kind: &str) {
    parent_and_child_roundtrip("sharedmem.c", &[kind]);
}

/// Unix socket pairs made before a fork (stream, datagram, seqpacket, one
/// end held by both processes) keep their data in flight both ways, their
/// message boundaries, shutdown state and shared flags, and the child's
/// epoll watch of its end reports it readable after restore.
#[test]
fn socket_pairs_between_parent_and_child() {
    parent_and_child_roundtrip("treesock.c", &[]);
}

/// Dumps that leave the tree running leave its socket queues (datagram
/// queues are taken out and sent again while frozen) and its shared epoll
/// as they were: the final dump and restore still carry every message.
#[test]
fn socket_pairs_between_parent_and_child_after_leave_running_dumps() {
    roundtrip_after_leave_running("treesock.c", &["shared-epoll"], 2);
}

/// A socket pair whose other end a process outside the dumped tree holds
/// (here: this test) is refused by name, by pre-dump and dump, and the
/// process runs on.
#[test]
fn socket_peer_outside_the_tree_is_refused_by_name() {
    use std::os::fd::{FromRawFd, OwnedFd};
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "ticker.c", &[]);
    let log = tmp.path().join("ticks.log");
    let mut ends = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors, owned from here on.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // Its stdin is one end; this test keeps the other.
    let mut p = spawn_daemon_with(
        Command::new(&bin).arg(&log).arg("1").arg("0").arg("none"),
        std::process::Stdio::from(theirs),
        std::process::Stdio::null(),
    );
    wait_tick(&log, 2);
    let pid = p.pid.to_string();
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([op, "-t", &pid, "-D", path_str(&images)])
            .assert_failed()
            .stderr_has(&format!("is also held by pid {}", std::process::id()))
            .stderr_has("outside the dumped process");
    }
    p.assert_running_untraced();
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
    drop(ours);
}

/// One epoll instance held by a parent and its child (inherited over
/// fork) stays one: after restore the child's wait reports the parent's
/// watch, and the parent's reports the watch the child added.
#[test]
fn epoll_shared_by_parent_and_child_stays_one() {
    parent_and_child_roundtrip("treesock.c", &["shared-epoll"]);
}

/// A shared epoll instance watching the child's end, which the parent
/// closed: the child, which still has that number open, adds the watch at
/// restore.
#[test]
fn shared_epoll_watching_the_childs_end_stays_one() {
    parent_and_child_roundtrip("treesock.c", &["shared-epoll-child-end"]);
}

/// A shared epoll instance whose watch no holder has open under its
/// number any more (added through a dup since closed) is refused by name:
/// watches are added by number.
#[test]
fn shared_epoll_watch_under_a_closed_number_is_refused_by_name() {
    parent_and_child_refused("treesock.c", &["shared-epoll-stale"], "no longer opens it");
}

/// A tree whose members run as different users: the root stays root
/// (a child subreaper), one child runs as nobody with groups of its own,
/// a subreaper flag and a parent death signal set after its setresuid,
/// another with uids, gids and groups of its own and some capabilities
/// kept (and a smaller bounding set). After restore each finds exactly
/// its own credentials, pdeath signal and subreaper flag (no capability
/// more or less).
#[test]
fn members_keep_their_own_credentials() {
    parent_and_child_roundtrip("treecreds.c", &["users"]);
}

/// A zombie whose ids differ from the engine's is refused by name: it
/// would exit as the engine's stub.
#[test]
fn zombie_of_another_user_is_refused_by_name() {
    parent_and_child_refused(
        "treecreds.c",
        &["zombie-nobody"],
        "a zombie's credentials are not restored",
    );
}

/// A vfork parent waiting for its child (the two share one address space)
/// is refused by name, and both run on.
#[test]
fn vfork_parent_waiting_is_refused_by_name() {
    parent_and_child_refused("treecreds.c", &["vfork"], "a vfork child or CLONE_VM");
}

/// Shared memory (anonymous and memfd) of a parent and child written
/// between pre-dumps of the tree: by the child, and by a process the
/// parent forked, that wrote and exited between two pre-dumps (no
/// tracker of a member sees its writes). The final dump on top stores
/// what every sharer wrote: both see every write after restore.
#[test_case::test_case("splice", "auto" ; "splice")]
#[test_case::test_case("read", "auto" ; "read")]
#[test_case::test_case("read", "content" ; "read content tracker")]
fn shared_memory_written_between_predumps(mode: &str, tracker: &str) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sharedpre.c", &[]);
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(&bin).arg(&log));
    let text = wait_file_contains(&log, "ready", TIMEOUT);
    let child: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|c| c.trim().parse().ok())
        .expect("child pid");
    let waiting = |pid: i32, what: &str| {
        wait_until(TIMEOUT, what, || match blocked_syscall(pid) {
            Some(nr) if nr == libc::SYS_rt_sigsuspend => Ok(()),
            other => Err(format!("in syscall {other:?}")),
        })
    };
    waiting(child, "the child to wait");
    waiting(p.pid, "the parent to wait");
    let root = p.pid.to_string();
    let (pre1, pre2, img) = (
        tmp.path().join("pre1"),
        tmp.path().join("pre2"),
        tmp.path().join("img"),
    );
    let pre_dump = |dir: &Path, prev: Option<&str>| {
        let mut args = vec!["pre-dump", "-t", &root, "-D", path_str(dir), "--track-mem"];
        args.extend(["--pre-dump-mode", mode, "--tracker", tracker]);
        if let Some(prev) = prev {
            args.extend(["--prev-images-dir", prev]);
        }
        crust(&args).assert_ok();
    };
    pre_dump(&pre1, None);
    // SAFETY: plain kill(2) of the child.
    unsafe { libc::kill(child, libc::SIGUSR2) };
    wait_file_contains(&log, "wrote1", TIMEOUT);
    waiting(child, "the child to wait again");
    pre_dump(&pre2, Some("../pre1"));
    p.signal(libc::SIGUSR2);
    wait_file_contains(&log, "transient", TIMEOUT);
    waiting(p.pid, "the parent to wait again");
    dump(
        p.pid,
        &img,
        &["--prev-images-dir", "../pre2", "--track-mem"],
    );
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    // The anonymous memory and the memfd, each stored once.
    let objects = std::fs::read_dir(&img)
        .expect("images")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shmem-"))
        .count();
    assert_eq!(objects, 2);
    let state = |pid: i32| place(pid).map(|p| p.0);
    wait_until(TIMEOUT, "the child to be gone", || {
        let mut st = 0;
        // SAFETY: waitpid with a valid status pointer; ECHILD if not ours.
        unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) };
        match state(child) {
            None => Ok(()),
            s => Err(format!("{s:?}")),
        }
    });
    let r = restore_detached(&img, p.pid);
    // SAFETY: plain kill(2) of the restored child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    wait_until(TIMEOUT, "the child to exit", || match state(child) {
        Some('Z') => Ok(()),
        s => Err(format!("{s:?}")),
    });
    wake_and_expect_ok(r, &log);
}

/// Shared anonymous memory a dumped process shares with a process outside
/// the dump (here its parent: only the child is dumped) is refused by
/// name, at dump and pre-dump: restored, it would no longer be shared.
/// Both run on untouched and still share it.
#[test]
fn shared_anonymous_memory_held_outside_is_refused() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sharedmem.c", &[]);
    let log = tmp.path().join("result.log");
    let p = spawn_daemon(Command::new(&bin).arg(&log).arg("anon"));
    let text = wait_file_contains(&log, "ready", TIMEOUT);
    let child: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|c| c.trim().parse().ok())
        .expect("child pid");
    let state = |pid: i32| place(pid).map(|p| p.0);
    wait_until(TIMEOUT, "the child to wait", || match state(child) {
        Some('S') => Ok(()),
        s => Err(format!("{s:?}")),
    });
    let img = tmp.path().join("img");
    let why = format!(
        "is also mapped by process {}, which is not dumped with it",
        p.pid
    );
    for op in ["pre-dump", "dump"] {
        crust([op, "-t", &child.to_string(), "-D", path_str(&img)])
            .assert_failed()
            .stderr_has(&why);
    }
    // SAFETY: plain kill(2) of the child, still running.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    wait_until(TIMEOUT, "the child to exit", || match state(child) {
        Some('Z') => Ok(()),
        s => Err(format!("{s:?}")),
    });
    wake_and_expect_ok(p, &log);
}

/// A vfork child shares its parent's memory until it execs or exits:
/// restore cannot make that again, so dump and pre-dump refuse the pair by
/// name (tree_scan::check_no_shared_vm) and both run on untouched.
#[test]
fn vfork_child_is_refused() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "vforker.c", &[]);
    let log = tmp.path().join("vfork.log");
    let mut parent = spawn_daemon(Command::new(bin).arg(&log));
    let text = wait_file_contains(&log, "\n", TIMEOUT);
    let child: i32 = text
        .trim()
        .strip_prefix("CHILD ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("log: {text:?}"));
    let child = Proc::adopt(child);
    let pid = parent.pid.to_string();
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([op, "-t", &pid, "-D", path_str(&images)])
            .assert_failed()
            .stderr_has(&format!(
                "shares its memory with process {} (a vfork child or CLONE_VM)",
                child.pid
            ));
        assert!(!images.join("inventory.img").exists());
    }
    assert_eq!(parent.try_wait(), None, "the refused parent died");
    child.assert_running_untraced();
    // The child's end lets the parent's vfork return: it exits 0.
    drop(child);
    assert_eq!(parent.wait(TIMEOUT), Exit::Code(0));
}

/// gonecwd.c's tree, running: a root and four children, the second and
/// the third in removed working directories (refused by name).
struct GoneCwd {
    root: Proc,
    log: PathBuf,
    children: Vec<i32>,
}

impl GoneCwd {
    fn start(dir: &Path) -> GoneCwd {
        let bin = compile_c(dir, "gonecwd.c", &[]);
        let log = dir.join("result.log");
        let root = spawn_daemon(Command::new(&bin).arg(&log).arg(dir));
        let children = ready_pids(&wait_file_contains(&log, "ready", TIMEOUT));
        assert_eq!(children.len(), 4, "{}", read_string(&log));
        GoneCwd {
            root,
            log,
            children,
        }
    }

    /// Checks that every process runs, untraced, then ends the tree: each
    /// child exits 0 and the root reports it.
    fn end_untouched(self) {
        self.root.assert_running_untraced();
        let mut kids = Vec::new();
        for &child in &self.children {
            let c = Proc::adopt(child);
            c.assert_running_untraced();
            c.signal(libc::SIGUSR1);
            kids.push(c);
        }
        for c in &kids {
            wait_exited(c.pid);
        }
        wake_and_expect_ok(self.root, &self.log);
    }
}

/// A member refused by a dump's frozen pass (its refusals run there only):
/// the images already in the directory stay as they were, whichever
/// number of threads checks the members. The old images go only once
/// every member is checked.
#[test]
fn member_refused_frozen_leaves_the_old_images() {
    init();
    let tmp = tempdir();
    let tree = GoneCwd::start(tmp.path());
    // The images of another process, dumped left running.
    let other = spawn_daemon(Command::new("sleep").arg("600"));
    let images = tmp.path().join("img");
    dump(other.pid, &images, &["--leave-running"]);
    let listing = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .expect("images directory")
            .map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).expect("read image"))
            })
            .collect();
        files.sort();
        files
    };
    let before = listing(&images);
    assert!(before.iter().any(|(n, _)| n == "inventory.img"));
    let pid = tree.root.pid.to_string();
    let one: [(&str, &std::ffi::OsStr); 1] = [("CRUST_DUMP_THREADS", "1".as_ref())];
    for env in [&[][..], &one[..]] {
        let out = crust_spawn_env(["dump", "-t", &pid, "-D", path_str(&images)], env).wait(TIMEOUT);
        out.assert_failed()
            .stderr_has("unsupported: working directory was removed");
        let after: Vec<(String, Vec<u8>)> = listing(&images)
            .into_iter()
            // The new dump's empty files, made before the freeze, go with
            // the failed dump; none is an image restore takes.
            .filter(|(n, _)| !n.starts_with('.'))
            .collect();
        assert_eq!(
            after.iter().map(|f| &f.0).collect::<Vec<_>>(),
            before.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(after == before, "an old image changed");
    }
    other.assert_running_untraced();
    tree.end_untouched();
}

/// Two members refused (each in a removed working directory), judged on
/// two threads (every other member on each): by a dump frozen, on its two
/// finishing threads, and by a pre-dump before the freeze. The error
/// names the first of them in the tree's order, as on one thread
/// (CRUST_DUMP_THREADS=1), whichever thread finds its refusal first; the
/// tree runs on untouched.
#[test]
fn first_member_refused_is_named_on_two_threads() {
    init();
    let tmp = tempdir();
    let tree = GoneCwd::start(tmp.path());
    // Members: the root, then its children in fork order. Before the
    // freeze, the root and the second child are judged on this thread,
    // the first and the third on the second one; frozen, the members
    // after the root are split so: the first and the third on this
    // thread, the second and the fourth on the other.
    let named = format!(
        "pid {}: unsupported: working directory was removed",
        tree.children[1]
    );
    let pid = tree.root.pid.to_string();
    let one: [(&str, &std::ffi::OsStr); 1] = [("CRUST_DUMP_THREADS", "1".as_ref())];
    for round in 0..8 {
        let env: &[(&str, &std::ffi::OsStr)] = if round % 2 == 0 { &[] } else { &one };
        let action = if round % 4 < 2 { "dump" } else { "pre-dump" };
        let images = tmp.path().join(format!("img{round}"));
        let out = crust_spawn_env([action, "-t", &pid, "-D", path_str(&images)], env).wait(TIMEOUT);
        out.assert_failed().stderr_has(&named);
        assert!(!images.join("inventory.img").exists());
    }
    tree.end_untouched();
}
