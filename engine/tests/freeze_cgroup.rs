//! `--freeze-cgroup`: a tree that forks all the time (progs/forker.c: a
//! root and three workers, each forking and reaping a child in a loop) is
//! put in a cgroup v2 of its own, made under this test's cgroup, and
//! dumped with the cgroup freezer (pre-dump, then dump), then restored: it
//! goes on forking. The cgroup is thawed after each. A cgroup holding a
//! process outside the tree is refused by name and left thawed.

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A cgroup v2 made for one test under the test's own cgroup; removed on
/// drop (its processes are the test's to end first).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let mountinfo = read_string(Path::new("/proc/self/mountinfo"));
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("a cgroup2 mount (the freezer test needs cgroup v2)");
        let ours = read_string(Path::new("/proc/self/cgroup"));
        let rel = ours
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line in /proc/self/cgroup");
        let dir = mount
            .join(rel.trim_start_matches('/'))
            .join(format!("crust-itest-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup { dir }
    }

    fn procs(&self) -> Vec<i32> {
        read_string(&self.dir.join("cgroup.procs"))
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn frozen(&self) -> bool {
        read_string(&self.dir.join("cgroup.freeze")).trim() == "1"
    }

    /// `cmd` made to join the cgroup between fork and exec, so that
    /// whatever it forks is in the cgroup from the start.
    fn spawn_in(&self, cmd: &mut Command) -> Proc {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .expect("no NUL in the path");
        // SAFETY: open, write and close are async-signal-safe; the path
        // was made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        spawn_daemon(cmd)
    }
}

impl Drop for Cgroup {
    /// Ends whatever still runs in the cgroup (a test that failed half
    /// way): frozen so that nothing forks meanwhile, every process and
    /// every child of one (zombies included) taken by pid, killed through
    /// cgroup.kill and reaped (they end up ours: we are their subreaper);
    /// then the cgroup is removed.
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "1");
        let frozen = |d: &Path| {
            let ev = read_string(&d.join("cgroup.events"));
            match ev.contains("frozen 1") || ev.contains("populated 0") {
                true => Ok(()),
                false => Err(ev),
            }
        };
        wait_until(TIMEOUT, "the test cgroup to freeze", || frozen(&self.dir));
        let mut pids = self.procs();
        for p in pids.clone() {
            pids.extend(
                read_string(Path::new(&format!("/proc/{p}/task/{p}/children")))
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        let held: Vec<Proc> = pids
            .iter()
            .filter(|&&p| Path::new(&format!("/proc/{p}")).exists())
            .map(|&p| Proc::adopt(p))
            .collect();
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        drop(held);
        let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
        wait_until(TIMEOUT, "the test cgroup to empty", || {
            match read_string(&self.dir.join("cgroup.events")).contains("populated 0") {
                true => Ok(()),
                false => Err(format!("holds {:?}", self.procs())),
            }
        });
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("warning: rmdir {}: {e}", self.dir.display());
        }
    }
}

/// The pids a line "ready ROOT W1 W2 W3" of the log names.
fn ready_pids(log: &Path) -> Vec<i32> {
    let text = wait_file_contains(log, "ready", TIMEOUT);
    text.lines()
        .find_map(|l| l.strip_prefix("ready "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every pid of the dumped tree (pstree.img).
fn dumped_pids(dir: &Path) -> Vec<i32> {
    let out = crust(["show", path_str(&dir.join("pstree.img"))]);
    out.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("pstree JSON");
    v["message"]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["pid"].as_i64().map(|p| p as i32))
        .collect()
}

/// Asks the tree to report (SIGUSR1 to the root) and waits until the root
/// and its three workers have each written an OK line after `from` bytes.
fn expect_forking(root: &Proc, log: &Path, workers: &[i32]) {
    let from = read_string(log).len();
    root.signal(libc::SIGUSR1);
    wait_until(TIMEOUT, "the tree to report", || {
        let text = read_string(log);
        let new = &text[from.min(text.len())..];
        let missing: Vec<String> = workers
            .iter()
            .map(|w| format!("OK worker {w} "))
            .chain(["OK root ".to_string()])
            .filter(|l| !new.contains(l.as_str()))
            .collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!("missing {missing:?} in {new:?}")),
        }
    });
}

#[test]
fn forking_tree_dumped_with_the_cgroup_freezer() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "forker.c", &[]);
    let cg = Cgroup::new("forker");
    let log = tmp.path().join("forker.log");
    let mut root = cg.spawn_in(Command::new(&bin).arg(&log));
    let pids = ready_pids(&log);
    assert_eq!(pids.len(), 4, "ready line");
    assert_eq!(pids[0], root.pid);
    let cgroup = cg.dir.to_str().expect("UTF-8 path");
    let pid = root.pid.to_string();

    // A pre-dump (read mode) and a dump on top, both through the freezer.
    let pre = tmp.path().join("pre");
    crust([
        "pre-dump",
        "-t",
        &pid,
        "-D",
        path_str(&pre),
        "--pre-dump-mode",
        "read",
        "--freeze-cgroup",
        cgroup,
    ])
    .assert_ok();
    assert!(!cg.frozen(), "the pre-dump left the cgroup frozen");
    expect_forking(&root, &log, &pids[1..]);
    let dir = tmp.path().join("img");
    crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&dir),
        "--prev-images-dir",
        "../pre",
        "--freeze-cgroup",
        cgroup,
    ])
    .assert_ok();
    assert!(!cg.frozen(), "the dump left the cgroup frozen");
    assert_eq!(root.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    // Every member died with the dump and was reparented to us: reaped.
    let members = dumped_pids(&dir);
    for &p in &members[1..] {
        let mut ws = 0;
        // SAFETY: waitpid on one pid with a valid status pointer.
        let r = unsafe { libc::waitpid(p, &mut ws, libc::__WALL) };
        assert_eq!(r, p, "member {p}: {}", std::io::Error::last_os_error());
    }
    for w in &pids[1..] {
        assert!(members.contains(w), "worker {w} not dumped: {members:?}");
    }

    // Restored (outside the cgroup: membership is not restored), it forks on.
    let restored = restore_detached(&dir, root.pid);
    expect_forking(&restored, &log, &pids[1..]);
    let mut restored = restored;
    restored.signal(libc::SIGTERM);
    assert_eq!(
        restored.wait(TIMEOUT),
        Exit::Code(0),
        "log: {}",
        read_string(&log)
    );
}

#[test]
fn cgroup_with_a_process_outside_the_tree_is_refused() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "forker.c", &[]);
    let cg = Cgroup::new("stranger");
    let log = tmp.path().join("forker.log");
    let root = cg.spawn_in(Command::new(&bin).arg(&log));
    ready_pids(&log);
    let stranger = cg.spawn_in(Command::new("sleep").arg("1000"));
    let cgroup = cg.dir.to_str().expect("UTF-8 path");
    let pid = root.pid.to_string();
    for op in ["pre-dump", "dump"] {
        let images = tmp.path().join(op);
        crust([
            op,
            "-t",
            &pid,
            "-D",
            path_str(&images),
            "--freeze-cgroup",
            cgroup,
        ])
        .assert_failed()
        .stderr_has(&format!(
            "process {} (sleep) is in cgroup {cgroup} but not in the dumped tree",
            stranger.pid
        ));
        assert!(!cg.frozen(), "a refused {op} left the cgroup frozen");
        assert!(!images.join("inventory.img").exists());
    }
    root.assert_running_untraced();
    let mut root = root;
    root.signal(libc::SIGTERM);
    assert_eq!(root.wait(TIMEOUT), Exit::Code(0));
    drop(stranger);
}

/// Kill-safety: crust (the process the user runs) or its worker killed
/// by SIGKILL while the cgroup is frozen. A wide tree (100 idle children
/// besides the forking ones) keeps the worker seizing for a while; the
/// test spins on cgroup.freeze and kills as soon as it reads 1 (the
/// worker: stopped first, killed if the cgroup is still frozen). Killed
/// crust: its worker stops at its next safe point and thaws. Killed
/// worker: the crust that waits for it thaws. Either way the cgroup ends
/// thawed and the tree forks on, untraced.
#[test]
fn killed_while_frozen_leaves_the_cgroup_thawed() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "forker.c", &[]);
    let cg = Cgroup::new("killed");
    let log = tmp.path().join("forker.log");
    let mut root = cg.spawn_in(Command::new(&bin).arg(&log).arg("100"));
    let pids = ready_pids(&log);
    let cgroup = cg.dir.to_str().expect("UTF-8 path");
    let pid = root.pid.to_string();
    let freeze = cg.dir.join("cgroup.freeze");
    let mut caught = 0;
    for round in 0..6 {
        let kill_worker = round % 2 == 1;
        let dir = tmp.path().join(format!("img{round}"));
        let run = crust_spawn([
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&dir),
            "--leave-running",
            "--freeze-cgroup",
            cgroup,
        ]);
        let crust_pid = run.pid();
        let children = format!("/proc/{crust_pid}/task/{crust_pid}/children");
        let deadline = std::time::Instant::now() + TIMEOUT;
        // Spinning, not sleeping: the moment to catch is the freeze.
        while read_string(&freeze).trim() != "1" && std::time::Instant::now() < deadline {
            if !Path::new(&children).exists() {
                break;
            }
            std::hint::spin_loop();
        }
        let worker: Option<i32> = read_string(Path::new(&children))
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok());
        // The worker is stopped first and killed only if the cgroup is
        // still frozen then: stopped, it cannot thaw it meanwhile, so the
        // kill lands between its freeze and its thaw, never in a burst of
        // injected calls (the one window a killed worker can harm a task
        // in, architecture.md). Otherwise it goes on (SIGCONT) and the
        // round kills nothing. crust itself may be killed at any moment.
        let frozen_now = match (kill_worker, worker) {
            (true, Some(w)) => {
                // SAFETY: kill(2) of crust's worker, which lives until its
                // parent (that crust, not reaped yet) waits for it.
                unsafe { libc::kill(w, libc::SIGSTOP) };
                wait_until(TIMEOUT, "the worker to stop", || {
                    match read_string(Path::new(&format!("/proc/{w}/stat")))
                        .rsplit(") ")
                        .next()
                        .and_then(|r| r.chars().next())
                    {
                        Some('T') | None => Ok(()),
                        other => Err(format!("state {other:?}")),
                    }
                });
                let frozen = read_string(&freeze).trim() == "1";
                // SAFETY: as above.
                unsafe { libc::kill(w, if frozen { libc::SIGKILL } else { libc::SIGCONT }) };
                frozen
            }
            _ => {
                let frozen = read_string(&freeze).trim() == "1";
                // SAFETY: kill(2) of the crust we started, not reaped yet.
                unsafe { libc::kill(crust_pid, libc::SIGKILL) };
                frozen
            }
        };
        let out = run.wait(TIMEOUT);
        eprintln!(
            "round {round} (frozen when killed: {frozen_now}): {}",
            out.stderr.trim()
        );
        if frozen_now && kill_worker {
            // Thawed by the crust that waited for the worker.
            assert!(out.stderr.contains("thawed it"), "{}", out.stderr);
        }
        if let Some(w) = worker {
            let mut ws = 0;
            // SAFETY: waitpid on one pid with a valid status pointer; ECHILD
            // (crust reaped it) is fine.
            unsafe { libc::waitpid(w, &mut ws, libc::__WALL) };
        }
        caught += (frozen_now && kill_worker) as u32;
        wait_until(TIMEOUT, "the cgroup to be thawed", || {
            match read_string(&freeze).trim() {
                "0" => Ok(()),
                v => Err(format!("cgroup.freeze is {v}")),
            }
        });
        root.assert_running_untraced();
        expect_forking(&root, &log, &pids[1..]);
    }
    assert!(
        caught > 0,
        "no worker was killed while the cgroup was frozen"
    );
    root.signal(libc::SIGTERM);
    assert_eq!(root.wait(TIMEOUT), Exit::Code(0));
}
