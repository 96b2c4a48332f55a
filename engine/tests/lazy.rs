//! Post-copy: `crust lazy-pages` + `crust restore --lazy-pages` on real
//! processes (progs/lazymem.c: a pseudo-random pattern it can check
//! itself, and commands it runs as soon as it runs).

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One lazymem process and its files.
struct Target {
    proc: Proc,
    out: PathBuf,
    cmd: PathBuf,
}

fn start(tmp: &Path, mib: u32) -> Target {
    let bin = compile_c(tmp, "lazymem.c", &[]);
    let out = tmp.join("out");
    let cmd = tmp.join("cmd");
    let proc = spawn_daemon(
        Command::new(bin)
            .arg(mib.to_string())
            .arg("12345")
            .arg(&out)
            .arg(&cmd),
    );
    wait_file_contains(&out, "ready\n", TIMEOUT);
    Target { proc, out, cmd }
}

/// Replaces the command file `cmd` (atomically: the targets poll it).
fn write_commands(cmd: &Path, lines: &[&str]) {
    let tmp = cmd.with_extension("new");
    std::fs::write(&tmp, lines.join("\n") + "\n").expect("write commands");
    std::fs::rename(&tmp, cmd).expect("rename commands");
}

impl Target {
    fn commands(&self, lines: &[&str]) {
        write_commands(&self.cmd, lines);
    }

    /// Waits for command `n`'s result line and returns what follows "n ".
    fn result(&self, n: u32) -> String {
        let prefix = format!("{n} ");
        let mut line = String::new();
        wait_until(TIMEOUT, &format!("result of command {n}"), || {
            let text = read_string(&self.out);
            match text
                .lines()
                .find(|l| l.starts_with(&prefix))
                .filter(|_| text.ends_with('\n'))
            {
                Some(l) => {
                    line = l[prefix.len()..].to_string();
                    Ok(())
                }
                None => Err(text),
            }
        });
        line
    }
}

/// Dumps the target into `dir` (it dies) and reaps it.
fn dump_target(t: &mut Target, dir: &Path, extra: &[&str]) {
    dump(t.proc.pid, dir, extra);
    assert_eq!(t.proc.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
}

/// `crust lazy-pages -D DIR -d`: returns the daemon (ours: we are a
/// subreaper) once it listens.
fn start_daemon(dir: &Path) -> Proc {
    start_daemon_env(dir, &[])
}

/// A daemon whose background transfer waits for a byte in `fifo`
/// (CRUST_LAZY_HOLD_BACKGROUND), so that the task certainly acts on pages
/// not copied yet; see [`release`].
fn start_daemon_held(dir: &Path, fifo: &Path) -> Proc {
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    start_daemon_env(dir, &[("CRUST_LAZY_HOLD_BACKGROUND", fifo.as_os_str())])
}

/// Lets a held daemon's background transfer start.
fn release(fifo: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .and_then(|mut f| f.write_all(b"go"))
        .expect("the daemon holds the fifo open");
}

fn start_daemon_env(dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Proc {
    start_daemon_with(dir, &[], env)
}

/// `crust lazy-pages -D DIR -d` with `extra` arguments.
fn start_daemon_with(dir: &Path, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Proc {
    let pidfile = dir.with_extension("daemon.pid");
    let mut args = vec![
        "lazy-pages",
        "-D",
        path_str(dir),
        "-d",
        "--pidfile",
        path_str(&pidfile),
        "-o",
        "lazy.log",
        "-v",
    ];
    args.extend_from_slice(extra);
    crust_spawn_env(args, env).wait(TIMEOUT).assert_ok();
    let pid: i32 = read_string(&pidfile).trim().parse().expect("daemon pid");
    let sock = dir.join("lazy-pages.socket");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    Proc::adopt(pid)
}

/// `crust restore -d --lazy-pages`; returns the restored task.
fn restore_lazy(dir: &Path, pid: i32) -> Proc {
    let pidfile = dir.with_extension("restored.pid");
    let out = crust([
        "restore",
        "-d",
        "--lazy-pages",
        "-D",
        path_str(dir),
        "--pidfile",
        path_str(&pidfile),
        "-v",
    ]);
    out.assert_ok().stderr_has("lazy");
    let p = Proc::adopt(pid);
    assert_eq!(read_string(&pidfile).trim(), pid.to_string());
    p
}

/// Waits for the daemon to exit by itself (0), checks it cleaned up, and
/// returns its stats.
fn daemon_done(d: &mut Proc, dir: &Path) -> Value {
    assert_eq!(d.wait(TIMEOUT), Exit::Code(0), "{}", log(dir));
    assert!(
        !dir.join("lazy-pages.socket").exists(),
        "the daemon left its socket"
    );
    let out = crust(["show", path_str(&dir.join("lazy-stats.img"))]);
    out.assert_ok();
    let s = out.json()["message"].clone();
    // Every page handed to the daemon is accounted for exactly once.
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    assert_eq!(
        n("pages_lazy") + n("pages_parent") + n("pages_forked"),
        n("pages_fault") + n("pages_background") + n("pages_dropped") + n("pages_gone"),
        "stats do not add up: {s}"
    );
    s
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lazy.log")).unwrap_or_default()
}

fn n(s: &Value, k: &str) -> u64 {
    s[k].as_u64()
        .unwrap_or_else(|| panic!("no {k} in the stats: {s}"))
}

/// 64 MiB restored lazily: every byte right, the daemon done by itself.
#[test]
fn lazy_restore_keeps_every_byte() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 64);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let mut d = start_daemon(&img);
    let _r = restore_lazy(&img, t.proc.pid);
    t.commands(&["1 check"]);
    assert_eq!(t.result(1), "check ok");
    let s = daemon_done(&mut d, &img);
    assert!(n(&s, "pages_lazy") >= 64 * 256, "{s}");
    assert_eq!(n(&s, "pages_gone"), 0, "{s}");
    assert_eq!(n(&s, "mms"), 1, "{s}");
    assert!(log(&img).contains("lazy restore of pid"), "{}", log(&img));
}

/// After a lazy restore the task forks (the child reads all its memory
/// while the parent goes on), moves and grows a range not copied yet (data follows, the grown part
/// is zero), drops one (DONTNEED: zeros) and unmaps one; the daemon
/// follows each, and restore had returned long before the last page.
#[test]
fn events_after_lazy_restore() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 256);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    // The background transfer starts only once the task has acted: on an
    // idle machine it would otherwise end before the task runs (seen on a
    // fresh clone: 256 MiB delivered in 86 ms, no event to follow).
    let fifo = tmp.path().join("hold");
    let mut d = start_daemon_held(&img, &fifo);
    // Written before the restore: the task runs them at once, while its
    // pages are still at the daemon.
    t.commands(&[
        "1 fork",
        "2 remap 60000 256 512",
        "3 dontneed 58000 512",
        "4 unmap 56000 512",
        "5 wait",
        "6 check",
    ]);
    let _r = restore_lazy(&img, t.proc.pid);
    assert_eq!(t.result(1), "fork started");
    assert_eq!(t.result(2), "remap ok");
    assert_eq!(t.result(3), "dontneed ok");
    assert_eq!(t.result(4), "unmap ok");
    release(&fifo);
    assert_eq!(t.result(5), "wait ok");
    assert_eq!(t.result(6), "check ok");
    let s = daemon_done(&mut d, &img);
    for k in ["forks", "remaps", "removes", "unmaps"] {
        assert!(n(&s, k) >= 1, "no {k} followed: {s}");
    }
    assert_eq!(n(&s, "mms"), 2, "{s}");
    assert!(n(&s, "pages_dropped") >= 512, "{s}");
    let at_end = n(&s, "delivered_at_restore_end");
    assert!(
        at_end < n(&s, "pages_lazy"),
        "restore returned only after every page was delivered: {s}"
    );
}

/// A child forked after a lazy restore gets zeros, not the parent's lazy
/// pages, in a MADV_WIPEONFORK range; the parent keeps its data.
#[test]
fn fork_after_lazy_restore_respects_wipeonfork() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 64);
    t.commands(&["1 wipeonfork 4096 1024"]);
    assert_eq!(t.result(1), "wipeonfork ok");
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let mut d = start_daemon(&img);
    t.commands(&["2 fork", "3 wait", "4 check"]);
    let _r = restore_lazy(&img, t.proc.pid);
    assert_eq!(t.result(2), "fork started");
    assert_eq!(t.result(3), "wait ok");
    assert_eq!(t.result(4), "check ok");
    daemon_done(&mut d, &img);
}

/// The task splits its lazy VMA with mprotect at odd page boundaries
/// right after the restore: the background transfer, whose chunks no
/// longer fit one VMA there, still delivers every page.
#[test]
fn vma_split_after_lazy_restore_loses_nothing() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 256);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let mut d = start_daemon(&img);
    t.commands(&[
        "1 protect 60001 3",
        "2 protect 62007 1",
        "3 protect 65000 17",
    ]);
    let _r = restore_lazy(&img, t.proc.pid);
    assert_eq!(t.result(3), "protect ok");
    t.commands(&["4 check"]);
    assert_eq!(t.result(4), "check ok");
    let s = daemon_done(&mut d, &img);
    assert_eq!(n(&s, "pages_dropped"), 0, "{s}");
    assert_eq!(n(&s, "pages_gone"), 0, "{s}");
}

/// Pre-copy + post-copy: pages pre-dumped and unchanged since come from
/// the parent at once; only the pages dirtied since are lazy.
#[test]
fn lazy_restore_on_top_of_a_pre_dump() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 64);
    let img = tmp.path().join("img");
    let pid = t.proc.pid.to_string();
    crust([
        "pre-dump",
        "-t",
        &pid,
        "-D",
        path_str(&img.join("pre")),
        "--track-mem",
    ])
    .assert_ok();
    t.commands(&["1 dirty 100 256"]);
    assert_eq!(t.result(1), "dirty ok");
    dump_target(
        &mut t,
        &img.join("dump"),
        &["--track-mem", "--prev-images-dir", "../pre"],
    );
    let dir = img.join("dump");
    let mut d = start_daemon(&dir);
    let _r = restore_lazy(&dir, t.proc.pid);
    t.commands(&["2 check"]);
    assert_eq!(t.result(2), "check ok");
    let s = daemon_done(&mut d, &dir);
    let lazy = n(&s, "pages_lazy");
    assert!(
        (256..256 + 64).contains(&lazy),
        "only the dirtied pages should be lazy: {s}"
    );
    // ... and the pre-dumped ones come from the parent, delivered by the
    // daemon so that restore does not wait for them.
    assert!(
        n(&s, "pages_parent") >= 64 * 256 - 256,
        "pre-dumped pages should come from the parent: {s}"
    );
    assert!(
        n(&s, "pages_eager_parent") < 64,
        "restore filled parent pages of lazy VMAs itself: {s}"
    );
}

/// The task is killed mid-transfer: the daemon notices and exits 0.
#[test]
fn daemon_exits_when_the_task_is_killed() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 256);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let mut d = start_daemon(&img);
    let mut r = restore_lazy(&img, t.proc.pid);
    r.signal(libc::SIGKILL);
    assert_eq!(r.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let s = daemon_done(&mut d, &img);
    assert!(n(&s, "pages_gone") > 0, "{s}");
}

/// Without a daemon, restore --lazy-pages is refused before any process
/// exists.
#[test]
fn lazy_restore_without_daemon_is_refused() {
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 1);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let out = crust(["restore", "-d", "--lazy-pages", "-D", path_str(&img)]);
    out.assert_failed().stderr_has("crust lazy-pages");
    assert_pid_free(t.proc.pid, "after a refused lazy restore");
}

/// An image whose dump left pages at its source (PE_LAZY) is refused by
/// a plain restore, with the way out named.
#[test]
fn lazy_image_needs_lazy_pages() {
    use crust::image::messages::{Task, PE_LAZY};
    use crust::image::{ImageDir, Kind, PagesReader, PagesWriter};
    init();
    let tmp = tempdir();
    let mut t = start(tmp.path(), 1);
    let img = tmp.path().join("img");
    dump_target(&mut t, &img, &[]);
    let pid = t.proc.pid;
    // Turn the last stored run into a lazy one: its data leaves the
    // pages file, as a lazy dump would have written it.
    let dir = ImageDir::open(&img).expect("open");
    let mut task: Task = dir.read(Kind::Task, Some(pid)).expect("task image");
    let mut pm = task.pagemap.take().expect("pagemap");
    let pages = img.join(&pm.pages_file);
    let reader = PagesReader::open(&pages).expect("pages");
    let last = pm.entries.last_mut().expect("a run");
    last.flags |= PE_LAZY;
    last.checksum = None;
    let keep = reader.data_len() - last.nr_pages * 4096;
    let data = reader.bytes(0, keep).expect("data").to_vec();
    drop(reader);
    std::fs::remove_file(&pages).expect("rm pages");
    let mut w = PagesWriter::create(&pages).expect("pages writer");
    w.write(&data).expect("write");
    w.finish().expect("finish");
    std::fs::remove_file(dir.file(Kind::Task, Some(pid))).expect("rm task image");
    crust::image::chain::seal(&mut pm);
    task.pagemap = Some(pm);
    dir.write(Kind::Task, Some(pid), &task).expect("task image");
    let out = crust(["restore", "-d", "-D", path_str(&img)]);
    out.assert_failed().stderr_has("--lazy-pages");
    assert_pid_free(pid, "after a refused restore");
}

/// A lazytree (progs/lazytree.c): a parent and its child, whose private
/// memory is half shared copy-on-write, half the child's own.
struct Tree {
    parent: Proc,
    child: i32,
    out: PathBuf,
    cmd: PathBuf,
}

fn start_tree(tmp: &Path, mib: u32) -> Tree {
    start_tree_with(tmp, mib, &[])
}

fn start_tree_with(tmp: &Path, mib: u32, extra: &[&str]) -> Tree {
    let bin = compile_c(tmp, "lazytree.c", &[]);
    let out = tmp.join("tree.out");
    let cmd = tmp.join("tree.cmd");
    let parent = spawn_daemon(
        Command::new(bin)
            .arg(mib.to_string())
            .arg("777")
            .arg(&out)
            .arg(&cmd)
            .args(extra),
    );
    let text = wait_file_contains(&out, "ready", TIMEOUT);
    let child = text
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {text:?}"));
    Tree {
        parent,
        child,
        out,
        cmd,
    }
}

impl Tree {
    /// Waits for command `n`'s result from both processes.
    fn results(&self, n: u32, what: &str) -> (String, String) {
        let mut got = (String::new(), String::new());
        wait_until(TIMEOUT, &format!("results of command {n}"), || {
            let text = read_string(&self.out);
            let find = |who: &str| {
                let prefix = format!("{n} {who} {what} ");
                text.lines()
                    .find(|l| l.starts_with(&prefix))
                    .map(|l| l[prefix.len()..].to_string())
            };
            match (find("parent"), find("child")) {
                (Some(p), Some(c)) if text.ends_with('\n') => {
                    got = (p, c);
                    Ok(())
                }
                _ => Err(text),
            }
        });
        got
    }

    /// Dumps the tree into `dir` with `extra` (both processes die), reaps
    /// the parent, and the child, which the subreaper (us) inherits.
    fn dump(&mut self, dir: &Path, extra: &[&str]) -> Output {
        let mut child = Proc::adopt(self.child);
        let out = dump(self.parent.pid, dir, extra);
        assert_eq!(self.parent.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
        assert_eq!(child.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
        out
    }

    /// After a restore: each process checks its memory, the parent then
    /// writes the shared half (the child must not see it), and both exit;
    /// the parent reports its child's status.
    fn check_and_exit(&self, restored: &mut Proc, first: u32) {
        let n = |k: u32| (first + k).to_string();
        let lines = [
            format!("{} check", n(0)),
            format!("{} write", n(1)),
            format!("{} check", n(2)),
        ];
        let lines: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
        write_commands(&self.cmd, &lines);
        let ok = ("ok".to_string(), "ok".to_string());
        assert_eq!(self.results(first, "check"), ok);
        assert_eq!(self.results(first + 2, "check"), ok);
        write_commands(&self.cmd, &[&format!("{} exit", n(3))]);
        assert_eq!(restored.wait(TIMEOUT), Exit::Code(0), "the restored parent");
        assert_pid_free(self.child, "after the restored child exited");
    }
}

/// A tree restored lazily: each process's uffd is handed to the one
/// daemon (a handoff each, on one connection), each process gets its own
/// pages (the child's own half and the copy-on-write half it still
/// shared with its parent), faulted while the background transfer is
/// held back; the daemon exits once both are done.
#[test]
fn lazy_restore_of_a_tree_gives_each_process_its_pages() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 16);
    let img = tmp.path().join("img");
    t.dump(&img, &[]);
    let fifo = tmp.path().join("hold");
    let mut d = start_daemon_held(&img, &fifo);
    write_commands(&t.cmd, &["1 check"]);
    let mut r = restore_lazy(&img, t.parent.pid);
    // Every page checked before any background copy: by fault.
    let ok = ("ok".to_string(), "ok".to_string());
    assert_eq!(t.results(1, "check"), ok);
    release(&fifo);
    t.check_and_exit(&mut r, 2);
    let s = daemon_done(&mut d, &img);
    assert_eq!(n(&s, "tasks"), 2, "{s}");
    assert_eq!(n(&s, "mms"), 2, "{s}");
    assert!(n(&s, "pages_lazy") >= 2 * 16 * 256, "{s}");
    assert!(n(&s, "pages_fault") >= 2 * 16 * 256, "{s}");
    let log = log(&img);
    for pid in [t.parent.pid, t.child] {
        assert!(log.contains(&format!("pid {pid} handed over")), "{log}");
    }
}

/// The source keeps each process's memory in a twin of its own and serves
/// pages by pid: `dump --lazy-pages` of a tree, `lazy-pages --page-server`
/// and a lazy restore give each process its own pages; the source exits 0
/// once all are delivered, its twins with it.
#[test]
fn remote_lazy_migration_of_a_tree() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 16);
    let img = tmp.path().join("img");
    let args = [
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "-o",
        "dump.log",
    ];
    let out = t.dump(&img, &args);
    let (worker, mut twins) = served(&out);
    assert_eq!(twins.len(), 2, "{}", out.stderr);
    let mut worker = worker;
    let mut d = start_daemon_with(&img, &["--page-server"], &[]);
    let mut r = restore_lazy(&img, t.parent.pid);
    t.check_and_exit(&mut r, 1);
    let s = daemon_done(&mut d, &img);
    assert_eq!(n(&s, "tasks"), 2, "{s}");
    assert!(n(&s, "pages_lazy") >= 2 * 16 * 256, "{s}");
    assert_eq!(worker.wait(TIMEOUT), Exit::Code(0), "the serving crust");
    for tw in &mut twins {
        assert_eq!(tw.wait(TIMEOUT), Exit::Signal(libc::SIGKILL), "a twin");
    }
}

/// Pre-copy then post-copy of a tree: a tracked pre-dump, the parent
/// rewrites half its memory, then a remote lazy dump on top: only those
/// pages travel from the source, every other page of both processes comes
/// from the pre-dump's images (delivered by the daemon, each from its own
/// process's chain), and each process has its own memory after.
#[test]
fn precopy_then_remote_lazy_of_a_tree() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 16);
    let pid = t.parent.pid.to_string();
    let pre = tmp.path().join("pre");
    crust(["pre-dump", "-t", &pid, "-D", path_str(&pre), "--track-mem"]).assert_ok();
    write_commands(&t.cmd, &["1 write"]);
    let ok = ("ok".to_string(), "ok".to_string());
    assert_eq!(t.results(1, "write"), ok);
    let img = tmp.path().join("img");
    let args = [
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "-o",
        "dump.log",
        "--track-mem",
        "--prev-images-dir",
        "../pre",
    ];
    let out = t.dump(&img, &args);
    let (mut worker, mut twins) = served(&out);
    let mut d = start_daemon_with(&img, &["--page-server"], &[]);
    let mut r = restore_lazy(&img, t.parent.pid);
    t.check_and_exit(&mut r, 2);
    let s = daemon_done(&mut d, &img);
    assert_eq!(n(&s, "tasks"), 2, "{s}");
    // The parent's rewritten half (8 MiB) travelled; the child's memory
    // and the parent's other half came from the pre-dump.
    let half = 16 * 256 / 2;
    assert!(
        n(&s, "pages_lazy") >= half && n(&s, "pages_lazy") < half + 256,
        "{s}"
    );
    assert!(n(&s, "pages_parent") >= 3 * half, "{s}");
    assert_eq!(worker.wait(TIMEOUT), Exit::Code(0), "the serving crust");
    for tw in &mut twins {
        assert_eq!(tw.wait(TIMEOUT), Exit::Signal(libc::SIGKILL), "a twin");
    }
}

/// A memfd or SysV segment shared by a parent and its child is never
/// lazy (made and filled by restore before the processes): after a lazy
/// restore of the two it is still one object, the child's write seen by
/// the parent (progs/sharedmem.c).
#[test_case::test_case("memfd" ; "memfd")]
#[test_case::test_case("sysv" ; "sysv segment")]
fn memory_shared_in_a_tree_stays_shared_after_a_lazy_restore(kind: &str) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sharedmem.c", &[]);
    let result = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(&bin).arg(&result).arg(kind));
    let text = wait_file_contains(&result, "ready", TIMEOUT);
    let child: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|c| c.trim().parse().ok())
        .expect("child pid");
    let state = |pid: i32| status_field(pid, "State").unwrap_or_default();
    wait_until(TIMEOUT, "the child to wait", || match state(child) {
        s if s.starts_with('S') => Ok(()),
        s => Err(s),
    });
    let mut c = Proc::adopt(child);
    let img = tmp.path().join("img");
    dump(p.pid, &img, &[]);
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    assert_eq!(c.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let mut d = start_daemon(&img);
    let r = restore_lazy(&img, p.pid);
    // SAFETY: plain kill(2) of the restored child, by pid.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    wait_until(TIMEOUT, "the child to exit", || match state(child) {
        s if s.starts_with('Z') => Ok(()),
        s => Err(s),
    });
    wake_and_expect_ok(r, &result);
    let s = daemon_done(&mut d, &img);
    assert_eq!(n(&s, "tasks"), 2, "{s}");
}

/// No destination comes: the source writes every process's lazy pages
/// into DIR, which then restores without --lazy-pages, each process
/// with its own memory.
#[test]
fn a_lazy_tree_is_written_back_when_no_destination_comes() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 8);
    let img = tmp.path().join("img");
    let args = [
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "--lazy-timeout",
        "1",
        "-o",
        "dump.log",
    ];
    let out = t.dump(&img, &args);
    let (mut worker, mut twins) = served(&out);
    assert_eq!(worker.wait(TIMEOUT), Exit::Code(0), "the serving crust");
    for tw in &mut twins {
        assert_eq!(tw.wait(TIMEOUT), Exit::Signal(libc::SIGKILL), "a twin");
    }
    let log = read_string(&img.join("dump.log"));
    assert!(log.contains("restores without --lazy-pages"), "{log}");
    let mut r = restore_detached(&img, t.parent.pid);
    t.check_and_exit(&mut r, 1);
}

/// Killing the serving crust of a tree's lazy dump kills every twin
/// (PTRACE_O_EXITKILL): no process is left holding memory.
#[test]
fn killing_the_source_of_a_lazy_tree_leaves_no_twin() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 4);
    let img = tmp.path().join("img");
    let args = [
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "-o",
        "dump.log",
    ];
    let out = t.dump(&img, &args);
    let (mut worker, mut twins) = served(&out);
    assert_eq!(twins.len(), 2, "{}", out.stderr);
    worker.signal(libc::SIGKILL);
    assert_eq!(worker.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    for tw in &mut twins {
        assert_eq!(tw.wait(TIMEOUT), Exit::Signal(libc::SIGKILL), "a twin");
    }
}

/// A lazy dump of a tree that cannot make the child's twin (a seccomp
/// filter of the child fails clone(CLONE_VM)) fails, refused by name,
/// after the root's twin was made: that twin is killed and reaped in the
/// root (no zombie child is left to it), every process gets its
/// thread-exit addresses back, and the tree runs on with its memory.
#[test]
fn a_failed_lazy_dump_of_a_tree_leaves_it_as_it_was() {
    init();
    let tmp = tempdir();
    let mut t = start_tree_with(tmp.path(), 4, &["noclonevm"]);
    let img = tmp.path().join("img");
    let pid = t.parent.pid.to_string();
    let out = crust([
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(&img),
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    out.assert_failed().stderr_has("seccomp");
    let children = read_string(Path::new(&format!("/proc/{pid}/task/{pid}/children")));
    assert_eq!(
        children.split_whitespace().collect::<Vec<_>>(),
        [t.child.to_string()],
        "the root's children after the failed dump"
    );
    for p in [t.parent.pid, t.child] {
        assert_eq!(status_field(p, "TracerPid").as_deref(), Some("0"));
    }
    let mut parent = Proc::adopt(t.parent.pid);
    t.parent.forget();
    t.check_and_exit(&mut parent, 1);
}

/// `crust dump --lazy-pages -d` of a tree, its crust killed at moments
/// spread over the whole dump: either the dump stopped at a safe point
/// and the tree runs on as it was (untraced, no twin left as a zombie
/// child, each process's memory intact), or the dump was complete (the
/// tree is gone) and the source wrote its pages back on being told to
/// stop; in both cases the worker exits by itself and every twin dies.
#[test]
fn killing_a_lazy_dump_of_a_tree_never_harms_it() {
    init();
    let tmp = tempdir();
    let args = |dir: &Path| -> Vec<String> {
        [
            "--lazy-pages",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "-d",
            "-o",
            "dump.log",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain(["-D".to_string(), path_str(dir).to_string()])
        .collect()
    };
    // How long a whole lazy dump takes here.
    let (mut ran, mut dumped) = (0, 0);
    let mut took = Duration::ZERO;
    for trial in 0..10u32 {
        let dir = tmp.path().join(format!("t{trial}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut t = start_tree_with(&dir, 4, &[]);
        let img = dir.join("img");
        let pid = t.parent.pid.to_string();
        let mut a = vec!["dump".to_string(), "-t".to_string(), pid.clone()];
        a.extend(args(&img));
        let t0 = Instant::now();
        let run = crust_spawn(&a);
        let me = run.pid();
        let children = format!("/proc/{me}/task/{me}/children");
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
        if trial > 0 {
            // The kill moment is the point of the test, not a
            // synchronisation.
            std::thread::sleep(took * (trial - 1) / 8);
            // SAFETY: kill(2) of the crust we started and have not reaped.
            unsafe { libc::kill(me, libc::SIGKILL) };
        }
        let out = run.wait(TIMEOUT);
        if trial == 0 {
            out.assert_ok();
            took = t0.elapsed();
        }
        // Done or not, the worker is told to stop (a complete dump then
        // writes its pages back) and exits by itself.
        if let Some(w) = worker {
            // SAFETY: kill(2) of crust's worker (ESRCH if gone), then
            // waitpid of it: it is ours once crust is gone, or ECHILD.
            unsafe {
                libc::kill(w, libc::SIGTERM);
                let mut st = 0;
                libc::waitpid(w, &mut st, libc::__WALL);
            }
        }
        let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
        let twins: Vec<i32> = log
            .split("held by pid ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .map(|l| l.split(", ").filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        for tw in &twins {
            // SAFETY: waitpid of a twin (killed with the worker), ours as
            // the orphans' subreaper; ECHILD if its parent lives.
            unsafe {
                let mut st = 0;
                libc::waitpid(*tw, &mut st, libc::__WALL);
            }
        }
        let state = status_field(t.parent.pid, "State").unwrap_or_default();
        if state.starts_with('Z') || state.is_empty() {
            dumped += 1;
            assert_eq!(t.parent.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
            assert!(
                log.contains("restores without --lazy-pages"),
                "trial {trial}: {log}"
            );
            let mut child = Proc::adopt(t.child);
            assert_eq!(child.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
        } else {
            ran += 1;
            let children = read_string(Path::new(&format!("/proc/{pid}/task/{pid}/children")));
            assert_eq!(
                children.split_whitespace().collect::<Vec<_>>(),
                [t.child.to_string()],
                "trial {trial}: the root's children after a killed dump"
            );
            for p in [t.parent.pid, t.child] {
                assert_eq!(status_field(p, "TracerPid").as_deref(), Some("0"));
            }
            let mut parent = Proc::adopt(t.parent.pid);
            t.parent.forget();
            t.check_and_exit(&mut parent, 1);
        }
        for tw in twins {
            assert_pid_free(tw, &format!("trial {trial}: a twin"));
        }
    }
    eprintln!("killing_a_lazy_dump_of_a_tree: {ran} ran on, {dumped} dumped");
    assert!(ran > 0, "no trial killed the dump in time");
}

/// `crust restore --lazy-pages` of a tree killed as soon as the root's,
/// then the child's, handoff reached the daemon: the daemon exits by
/// itself (1 if not every process was handed over, else 0 once they are
/// gone), every half-built process dies with the engine (EXITKILL), and
/// any process already let go runs on untraced (killed here).
#[test]
fn killing_a_lazy_restore_of_a_tree_midway_leaves_nothing() {
    init();
    let tmp = tempdir();
    let mut t = start_tree(tmp.path(), 16);
    let img = tmp.path().join("img");
    t.dump(&img, &[]);
    let (root, child) = (t.parent.pid, t.child);
    for (trial, at) in [root, child, root, child].into_iter().enumerate() {
        let _ = std::fs::remove_file(img.join("lazy.log"));
        let mut d = start_daemon(&img);
        let run = crust_spawn(["restore", "-d", "--lazy-pages", "-D", path_str(&img)]);
        let line = format!("pid {at} handed over");
        wait_until(TIMEOUT, &line, || match log(&img).contains(&line) {
            true => Ok(()),
            false => Err(log(&img)),
        });
        // SAFETY: kill(2) of the crust we started and have not reaped.
        unsafe { libc::kill(run.pid(), libc::SIGKILL) };
        run.wait(TIMEOUT);
        // The root first: if it was let go and lives, its dying child is
        // its zombie until it dies too.
        for pid in [root, child] {
            let Some(fd) = pidfd(pid) else { continue };
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polling one valid pollfd. A dying process exits
            // within milliseconds; the bound only decides when a living
            // one counts as let go.
            let exited = unsafe { libc::poll(&mut pfd, 1, 3000) } != 0;
            if !exited {
                assert_eq!(
                    status_field(pid, "TracerPid").as_deref(),
                    Some("0"),
                    "trial {trial}: pid {pid} lives on traced"
                );
                // SAFETY: kill(2) of a process of this test, by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let mut st = 0;
            // SAFETY: waitpid on one pid with a valid status pointer;
            // ECHILD if its (live) parent is to reap it.
            unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        }
        let exit = d.wait(TIMEOUT);
        assert!(
            matches!(exit, Exit::Code(0) | Exit::Code(1)),
            "trial {trial}: the daemon {exit:?}: {}",
            log(&img)
        );
        eprintln!("trial {trial}: killed at the handoff of {at}, the daemon {exit:?}");
        if at == root && exit == Exit::Code(1) {
            assert!(
                log(&img).contains("handing over 1 of the 2"),
                "{}",
                log(&img)
            );
        }
        assert_pid_free(root, &format!("trial {trial}"));
        assert_pid_free(child, &format!("trial {trial}"));
    }
}

fn pidfd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor the kernel gave us, owned by nobody else.
    (r >= 0)
        .then(|| unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// The serving crust of a lazy dump (`-d`: reparented to us) and its
/// twins, from the "held by pid A, B" line.
fn served(out: &Output) -> (Proc, Vec<Proc>) {
    out.assert_ok();
    let twins: Vec<i32> = out
        .stderr
        .split("held by pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(|l| l.split(", ").filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    assert!(!twins.is_empty(), "no twin in: {}", out.stderr);
    let tracer: i32 = status_field(twins[0], "TracerPid")
        .and_then(|t| t.parse().ok())
        .expect("a twin's tracer");
    for &tw in &twins {
        assert_eq!(
            status_field(tw, "TracerPid").and_then(|t| t.parse().ok()),
            Some(tracer),
            "every twin is traced by the serving crust"
        );
    }
    (
        Proc::adopt(tracer),
        twins.into_iter().map(Proc::adopt).collect(),
    )
}
