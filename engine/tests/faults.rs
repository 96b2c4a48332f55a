//! Fault injection: the engine is killed (SIGKILL) at random moments of
//! every operation, its image directory runs out of space, its target
//! dies under it. After each fault the source must be alive, running,
//! untraced, and its own checks (memory, signal mask, descriptor table,
//! mappings: progs/selfcheck.c) must pass; a later dump of it must
//! restore every page.
//!
//! Kill moments are drawn from a seeded generator; the seed is printed and
//! `CRUST_FAULT_SEED=N` replays a run. Delays are spread uniformly over the
//! operation's measured duration (plus a margin past its end).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Size of the target's checked memory: dumps of it last tens of ms.
const TARGET_MIB: u32 = 64;

/// A small xorshift generator: reproducible kill moments.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("CRUST_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{test}: CRUST_FAULT_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        let us = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % us)
    }
}

fn pidfd_of(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor returned by pidfd_open, owned from here on.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A running selfcheck target and how many times we asked it for a report.
struct Target {
    p: Proc,
    status: PathBuf,
    asked: u32,
}

fn start_target(tmp: &Path, bin: &Path, name: &str) -> Target {
    let pidfile = tmp.join(format!("{name}.pid"));
    let status = tmp.join(format!("{name}.status"));
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&status);
    let p = spawn_daemon(
        Command::new(bin)
            .arg(&pidfile)
            .arg(&status)
            .arg(TARGET_MIB.to_string()),
    );
    wait_file_contains(&pidfile, "\n", TIMEOUT);
    let mut t = Target {
        p,
        status,
        asked: 0,
    };
    t.check("at start");
    t
}

/// Whether `pid` has a VMA registered with a userfaultfd (`uw` in VmFlags).
fn has_uffd_wp(pid: i32) -> bool {
    read_string(Path::new(&format!("/proc/{pid}/smaps")))
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .any(|f| f.split_whitespace().any(|w| w == "uw"))
}

impl Target {
    /// The target runs freely, and its own checks pass.
    fn check(&mut self, context: &str) {
        let pid = self.p.pid;
        if let Some(exit) = self.p.try_wait() {
            panic!("{context}: target pid {pid} died: {exit:?}");
        }
        self.p.assert_running_untraced();
        self.asked += 1;
        self.p.signal(libc::SIGUSR1);
        let want = format!("n={} ", self.asked);
        let mut text = String::new();
        let status = self.status.clone();
        let p = &mut self.p;
        wait_until(TIMEOUT, &format!("{context}: report {want}"), || {
            text = read_string(&status);
            if text.starts_with(&want) {
                return Ok(());
            }
            if let Some(exit) = p.try_wait() {
                panic!("{context}: target pid {pid} died: {exit:?}");
            }
            Err(format!("status holds {text:?}"))
        });
        if !text.contains(" OK ") {
            // The target's whole mappings, before and now, if they differ.
            let maps = std::fs::read_to_string(format!("{}.maps", self.status.display()));
            panic!(
                "{context}: target pid {pid} found itself harmed: {text}\n{}",
                maps.unwrap_or_default()
            );
        }
    }

    /// Nothing of a tracker is left in the task: no registered memory, no
    /// userfaultfd descriptor.
    fn assert_untracked(&self, context: &str) {
        let pid = self.p.pid;
        let uffds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))
                    })
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            uffds.is_empty(),
            "{context}: pid {pid} still holds a userfaultfd at fd {uffds:?}"
        );
        assert!(
            !has_uffd_wp(self.p.pid),
            "{context}: pid {} still has memory registered with a userfaultfd",
            self.p.pid
        );
    }
}

/// Runs crust with `args` and kills it with SIGKILL `delay` after its
/// worker process started, unless it finished first. Returns its exit
/// status, None if it was killed. Returns only once the worker is gone
/// too (reaped by crust, or by us: we are the orphan's subreaper).
fn crust_killed_after(args: &[String], delay: Duration) -> Option<i32> {
    crust_killed_after_as(args, delay, Kill::Crust)
}

/// What a fault-injection kill is aimed at.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// The crust process the user started.
    Crust,
    /// Its whole process group (as `timeout -s KILL` or `kill -9 -PGID`).
    Group,
}

fn crust_killed_after_as(args: &[String], delay: Duration, aim: Kill) -> Option<i32> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // dump and pre-dump work in a worker; restore's first child is the
    // task it restores, not a worker.
    let has_worker = args[0] != "restore";
    let mut cmd = Command::new(CRUST);
    if aim == Kill::Group {
        cmd.process_group(0);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if has_worker {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn crust");
    let pid = child.id();
    let children = format!("/proc/{pid}/task/{pid}/children");
    let mut worker = None;
    wait_until(TIMEOUT, "crust's worker to start", || {
        if !has_worker {
            return Ok(());
        }
        worker = read_string(Path::new(&children))
            .split_whitespace()
            .next()
            .and_then(|w| w.parse::<i32>().ok());
        if worker.is_some() || !Path::new(&children).exists() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(_)) => Ok(()),
            _ => Err("no worker yet".into()),
        }
    });
    // The kill moment is the point of the test, not a synchronisation.
    std::thread::sleep(delay);
    match aim {
        Kill::Crust => {
            let _ = child.kill();
        }
        // SAFETY: kill(2) of the process group crust leads (it was
        // spawned with process_group(0) and not reaped yet).
        Kill::Group => unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        },
    }
    let st = child.wait().expect("wait for crust");
    // The worker holds the pipe's write end until it exits.
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Some(w) = worker {
        let mut ws = 0;
        // SAFETY: waitpid on one pid with a valid status pointer; ECHILD
        // (crust reaped it) is fine.
        unsafe { libc::waitpid(w, &mut ws, libc::__WALL) };
    }
    assert!(!err.contains("panicked"), "crust {args:?} panicked: {err}");
    if st.code().is_some_and(|c| c != 0) {
        // A failure before the kill fails the caller's test: say why.
        eprintln!("crust {args:?} exited with {st} by itself: {err}");
    }
    st.code()
}

/// How long `args` takes when left alone (the best of three runs).
fn duration_of(args: &[String], dir: &Path) -> Duration {
    (0..3)
        .map(|_| {
            let _ = std::fs::remove_dir_all(dir);
            let t = Instant::now();
            crust(args).assert_ok();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A full pre-dump + dump + restore of the target: every page right.
/// (Without --track-mem: the tracker still lives in the task's fd table,
/// which the target would rightly report as a change.)
fn dump_restore_check(t: &mut Target, tmp: &Path, context: &str) {
    let img = tmp.join("final");
    let _ = std::fs::remove_dir_all(&img);
    let pid = t.p.pid;
    crust(args(&[
        "pre-dump",
        "-t",
        &pid.to_string(),
        "-D",
        path_str(&img.join("pre")),
    ]))
    .assert_ok();
    dump(pid, &img.join("dump"), &["--prev-images-dir", "../pre"]);
    assert_eq!(t.p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    t.p = restore_detached(&img.join("dump"), pid);
    t.check(&format!("{context}: after restore"));
    t.p.signal(libc::SIGTERM);
    assert_eq!(
        t.p.wait(TIMEOUT),
        Exit::Code(0),
        "{context}: restored target"
    );
    let _ = std::fs::remove_dir_all(&img);
}

/// Kills `crust <op>` at random moments, `trials` times, on one target
/// (a new one when a dump completed and took the old one away).
fn kill_trials(name: &str, op: &[&str], trials: u32) {
    kill_trials_as(name, op, trials, Kill::Crust)
}

fn kill_trials_as(name: &str, op: &[&str], trials: u32, aim: Kill) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut rng = Rng::from_env(name);
    let mut t = start_target(tmp.path(), &bin, "target");
    let img = tmp.path().join("img");
    let cmd = |pid: i32| {
        let mut a = args(op);
        a.extend(args(&["-t", &pid.to_string(), "-D", path_str(&img)]));
        a
    };
    let kills_target = op[0] == "dump" && !op.contains(&"--leave-running");
    // Measured on a target that is not needed afterwards.
    let span = if kills_target {
        let mut spare = start_target(tmp.path(), &bin, "spare");
        let _ = std::fs::remove_dir_all(&img);
        let t0 = Instant::now();
        crust(cmd(spare.p.pid)).assert_ok();
        let d = t0.elapsed();
        spare.p.wait(TIMEOUT);
        d
    } else {
        duration_of(&cmd(t.p.pid), &img)
    };
    t.check(&format!("{name}: after measuring"));
    let max = span + span / 5;
    eprintln!("{name}: {op:?} takes {span:?}; killing within {max:?}");
    let (mut killed, mut finished) = (0, 0);
    for trial in 0..trials {
        let _ = std::fs::remove_dir_all(&img);
        let delay = rng.below(max);
        let context = format!("{name} trial {trial} (kill after {delay:?})");
        let code = crust_killed_after_as(&cmd(t.p.pid), delay, aim);
        match code {
            None => killed += 1,
            Some(0) => finished += 1,
            Some(c) => panic!("{context}: crust failed with {c} before the kill"),
        }
        if kills_target {
            if let Some(exit) = t.p.try_wait() {
                // Allowed only once the images were complete.
                assert!(
                    img.join("inventory.img").exists(),
                    "{context}: the target died ({exit:?}) without complete images"
                );
                t = start_target(tmp.path(), &bin, "target");
                continue;
            }
        }
        t.check(&context);
        t.assert_untracked(&context);
    }
    eprintln!("{name}: {trials} trials, {killed} killed, {finished} finished first");
    assert!(killed > 0, "{name}: no trial killed crust in time");
    dump_restore_check(&mut t, tmp.path(), name);
}

#[test]
fn kill_dump() {
    kill_trials("kill_dump", &["dump"], 40);
}

#[test]
fn kill_dump_leave_running() {
    kill_trials("kill_dump_leave_running", &["dump", "--leave-running"], 60);
}

/// SIGKILL to crust's whole process group: the worker leads a group of
/// its own, so only the waiting process dies and the worker stops at a
/// safe point.
#[test]
fn kill_dump_process_group() {
    kill_trials_as(
        "kill_dump_process_group",
        &["dump", "--leave-running"],
        40,
        Kill::Group,
    );
}

#[test]
fn kill_pre_dump_read() {
    kill_trials(
        "kill_pre_dump_read",
        &["pre-dump", "--pre-dump-mode", "read"],
        60,
    );
}

#[test]
fn kill_pre_dump_splice() {
    kill_trials(
        "kill_pre_dump_splice",
        &["pre-dump", "--pre-dump-mode", "splice"],
        60,
    );
}

fn pre_dump_args(pid: &str, dir: &Path, parent: Option<&str>) -> Vec<String> {
    let mut a = args(&["pre-dump", "-t", pid, "-D", path_str(dir), "--track-mem"]);
    if let Some(p) = parent {
        a.extend(args(&["--prev-images-dir", &format!("../{p}")]));
    }
    a
}

/// The first `pre-dump --track-mem` (it creates the tracker), killed at
/// random moments: unless it completed, no tracker is left in the task.
#[test]
fn kill_first_tracked_pre_dump() {
    init();
    let name = "kill_first_tracked_pre_dump";
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut rng = Rng::from_env(name);
    let mut t = start_target(tmp.path(), &bin, "target");
    let pid = t.p.pid.to_string();
    let img = tmp.path().join("img");
    // Ends the tracking a completed pre-dump started.
    let end = |dir: &Path| {
        let _ = std::fs::remove_dir_all(img.join("end"));
        crust(args(&[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&img.join("end")),
            // Without --track-mem: a snapshot would keep the tracker.
            "--leave-running",
            "--prev-images-dir",
            &format!(
                "../{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
            ),
        ]))
        .assert_ok();
    };
    let first = img.join("first");
    let t0 = Instant::now();
    crust(pre_dump_args(&pid, &first, None)).assert_ok();
    let span = t0.elapsed();
    end(&first);
    t.assert_untracked(&format!("{name}: after the tracking ended"));
    let (mut killed, mut completed) = (0, 0);
    for trial in 0..40 {
        let _ = std::fs::remove_dir_all(&first);
        let delay = rng.below(span + span / 5);
        let context = format!("{name} trial {trial} (kill after {delay:?})");
        let code = crust_killed_after(&pre_dump_args(&pid, &first, None), delay);
        if let Some(c) = code {
            assert_eq!(c, 0, "{context}: pre-dump failed by itself");
        }
        t.check(&context);
        if first.join("inventory.img").exists() {
            completed += 1;
            end(&first);
        } else {
            killed += 1;
        }
        t.assert_untracked(&context);
    }
    eprintln!("{name}: 40 trials, {killed} killed before completing, {completed} completed");
    assert!(killed > 0, "{name}: no trial killed crust in time");
}

/// `pre-dump --track-mem` on top of the last complete tracked pre-dump,
/// killed at random moments, the chain going on from the last complete
/// image each time; then a final dump on top of it and a restore: every
/// page must be right, so no killed pre-dump (which may have re-armed the
/// tracker) made a later one miss a write.
#[test]
fn kill_pre_dump_track_mem_chain() {
    init();
    let name = "kill_pre_dump_track_mem_chain";
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut rng = Rng::from_env(name);
    let mut t = start_target(tmp.path(), &bin, "target");
    let pid = t.p.pid.to_string();
    let chain = tmp.path().join("chain");
    let t0 = Instant::now();
    crust(pre_dump_args(&pid, &chain.join("p0"), None)).assert_ok();
    let span = t0.elapsed();
    let mut base = "p0".to_string();
    let (mut killed, mut completed) = (0, 0);
    for trial in 1..=40 {
        let dir = format!("p{trial}");
        let delay = rng.below(span + span / 5);
        let context = format!("{name} trial {trial} (kill after {delay:?})");
        let code = crust_killed_after(&pre_dump_args(&pid, &chain.join(&dir), Some(&base)), delay);
        if let Some(c) = code {
            assert_eq!(c, 0, "{context}: pre-dump failed by itself");
        }
        t.check(&context);
        if chain.join(&dir).join("inventory.img").exists() {
            completed += 1;
            base = dir;
        } else {
            killed += 1;
            let _ = std::fs::remove_dir_all(chain.join(&dir));
        }
    }
    eprintln!("{name}: 40 trials, {killed} killed before completing, {completed} completed");
    assert!(killed > 0, "{name}: no trial killed crust in time");
    dump(
        t.p.pid,
        &chain.join("dump"),
        &["--track-mem", "--prev-images-dir", &format!("../{base}")],
    );
    assert_eq!(t.p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let pid = t.p.pid;
    t.p = restore_detached(&chain.join("dump"), pid);
    t.check(&format!("{name}: after restore"));
    t.p.signal(libc::SIGTERM);
    assert_eq!(t.p.wait(TIMEOUT), Exit::Code(0), "{name}: restored target");
}

/// A restore killed at any moment leaves no process with the image's pid.
#[test]
fn kill_restore() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut rng = Rng::from_env("kill_restore");
    let mut t = start_target(tmp.path(), &bin, "target");
    let pid = t.p.pid;
    let img = tmp.path().join("img");
    dump(pid, &img, &[]);
    assert_eq!(t.p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let cmd = args(&["restore", "-d", "-D", path_str(&img)]);
    let t0 = Instant::now();
    crust(&cmd).assert_ok();
    let span = t0.elapsed();
    let mut restored = Proc::adopt(pid);
    restored.signal(libc::SIGKILL);
    restored.wait(TIMEOUT);
    let max = span + span / 5;
    let (mut killed, mut finished) = (0, 0);
    for trial in 0..40 {
        let delay = rng.below(max);
        let context = format!("kill_restore trial {trial} (kill after {delay:?})");
        match crust_killed_after(&cmd, delay) {
            Some(0) => {
                finished += 1;
                // A report left by an earlier restored instance says nothing.
                let _ = std::fs::remove_file(&t.status);
                let mut r = Target {
                    p: Proc::adopt(pid),
                    status: t.status.clone(),
                    asked: t.asked,
                };
                r.check(&format!("{context}: restored"));
                r.p.signal(libc::SIGKILL);
                r.p.wait(TIMEOUT);
            }
            Some(c) => panic!("{context}: restore failed with {c}"),
            None => {
                killed += 1;
                // A half-built task dies with the engine (EXITKILL) and,
                // orphaned, becomes ours to reap. One that does not die
                // was complete (crust was killed after letting it go): it
                // must then pass its own check.
                let pidfd = pidfd_of(pid);
                let exited = match &pidfd {
                    None => true,
                    Some(fd) => {
                        let mut pfd = libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: polling one valid pollfd. A dying task
                        // exits within milliseconds; the bound only decides
                        // when a living one counts as complete.
                        unsafe { libc::poll(&mut pfd, 1, 3000) != 0 }
                    }
                };
                drop(pidfd);
                if exited {
                    let mut st = 0;
                    // SAFETY: waitpid on one pid with a valid status pointer.
                    unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
                } else {
                    // A report left by an earlier restored instance says nothing.
                    let _ = std::fs::remove_file(&t.status);
                    let mut r = Target {
                        p: Proc::adopt(pid),
                        status: t.status.clone(),
                        asked: t.asked,
                    };
                    r.check(&format!("{context}: a restore that completed"));
                    r.p.signal(libc::SIGKILL);
                    r.p.wait(TIMEOUT);
                }
                assert_pid_free(pid, &context);
            }
        }
    }
    eprintln!("kill_restore: 40 trials, {killed} killed, {finished} finished first");
    assert!(killed > 0, "kill_restore: no trial killed crust in time");
}

/// A tmpfs mounted for one test, unmounted (and its mount point removed)
/// on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&at).expect("mkdir mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {}: {st}", at.display());
        SmallFs(at)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// An image directory too small for the pages: every operation fails with
/// a clear error, and the source runs on unharmed, without a tracker.
#[test]
fn enospc_leaves_the_source_unharmed() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut t = start_target(tmp.path(), &bin, "target");
    let fs = SmallFs::mount(tmp.path().join("small"), "8m");
    let pid = t.p.pid.to_string();
    let dir = fs.0.join("img");
    for op in [
        &["dump"][..],
        &["dump", "--leave-running"],
        &["pre-dump", "--pre-dump-mode", "read"],
        &["pre-dump", "--pre-dump-mode", "splice"],
        &["pre-dump", "--pre-dump-mode", "read", "--track-mem"],
        &["pre-dump", "--pre-dump-mode", "splice", "--track-mem"],
    ] {
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = args(op);
        a.extend(args(&["-t", &pid, "-D", path_str(&dir)]));
        let out = crust(&a);
        out.assert_failed().stderr_has("No space left on device");
        let context = format!("{op:?} into a full tmpfs");
        t.check(&context);
        t.assert_untracked(&context);
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(fs);
    dump_restore_check(&mut t, tmp.path(), "enospc");
}

/// The target dies under the engine (SIGKILL at random moments of a
/// dump): crust reports it, without hanging or panicking, with the exit
/// code that says the process is gone (3, docs/cli.md).
#[test]
fn target_killed_mid_dump() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "selfcheck.c", &[]);
    let mut rng = Rng::from_env("target_killed_mid_dump");
    let img = tmp.path().join("img");
    let mut span = Duration::from_millis(200);
    for trial in 0..20 {
        let mut t = start_target(tmp.path(), &bin, "target");
        let _ = std::fs::remove_dir_all(&img);
        let delay = rng.below(span);
        let pid = t.p.pid.to_string();
        let run = crust_spawn(["dump", "-t", &pid, "-D", path_str(&img)]);
        // The kill moment is the point of the test, not a synchronisation.
        std::thread::sleep(delay);
        t.p.signal(libc::SIGKILL);
        let out = run.wait(TIMEOUT);
        out.assert_no_panic();
        if out.success() {
            span = span.max(out.elapsed);
        } else {
            assert_eq!(
                out.status.code(),
                Some(3),
                "trial {trial} (kill after {delay:?}): {}",
                out.stderr
            );
            assert!(
                out.stderr.contains("the process is gone"),
                "trial {trial}: crust should say the process is gone: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(&pid),
                "trial {trial}: the error should name pid {pid}: {}",
                out.stderr
            );
        }
        assert_eq!(t.p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    }
}
