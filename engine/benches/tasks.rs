//! Per-task cost of dump and restore: a process with many threads and a
//! tree of as many processes, next to the same program as a single task,
//! measured in the same run, alternating.
//!
//! The target (C, compiled here with `cc`) starts N-1 threads that each
//! touch 64 KiB of their own and block in a futex wait (pthread_cond_wait),
//! then says "ready" and waits in pause(). For each run and each shape
//! (1 thread, then N), the bench dumps it (`crust dump -v`: wall time and
//! the frozen time from stats.img), restores it (`crust restore -d`: wall
//! time until the task runs), checks the restored process has every
//! thread, and kills it. Medians over the runs; the per-thread cost is
//! (median with N - median with 1) / (N - 1). The tree shape forks N-1
//! children of the root instead (each with 64 KiB of its own, in pause()).
//!
//! Target: per-task overhead under 1 ms for dump (frozen and total) and
//! restore. Missing it is reported, not an error; a failed dump or restore
//! is. Next to the dump's total: crust's own CPU time for it (user +
//! system, from the children's rusage), per task, and what that leaves at
//! best on this machine's CPUs (the dump of a tree is bound by it).
//!
//! Also, in each run: a read-mode pre-dump (`crust pre-dump
//! --pre-dump-mode read`) of the single task and of the tree, its frozen
//! time per process, next to this machine's limit for it: stopping every
//! process of the tree with ptrace and letting it go (PTRACE_SEIZE,
//! PTRACE_INTERRUPT, the wait for the stop, PTRACE_DETACH; nothing read),
//! timed by the bench itself on the same tree.
//!
//! The tree is also dumped and restored with `--no-cpu-latency-hint`
//! (idle CPUs may halt, sys/cpu_latency.rs), in the same alternation, and
//! the machine's limit for what that request changes is printed: a ptrace
//! stop and restart of a child looping on getppid (PTRACE_SYSCALL), per
//! stop, with idle CPUs halting and with them polling (the bench holding
//! the same request as crust).
//!
//! And the machine's limit for a tree's image files: creating, writing
//! (1 KiB) and closing a file in the image directory, timed on 200 files
//! (a tree's dump makes six files whatever its size: inventory, pstree,
//! stats, tasks and two pages files; on a file system where creating a
//! file is slow, the three per process of format 2 could alone exceed the
//! target).
//!
//! Run as root: `cargo bench -p crust --bench tasks`. Environment:
//! `CRUST_BENCH_THREADS` (default 100), `CRUST_BENCH_RUNS` (default 5),
//! `CRUST_BENCH_DIR` (parent of the image directories; default the system
//! temporary directory).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
const TARGET_MS: f64 = 1.0;

mod common;

use common::{env_usize, kill_and_reap, reap, Res};

const TARGET_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready;
static void *run(void *arg) {
    char *mine = malloc(65536);
    if (!mine)
        exit(3);
    memset(mine, (int)(long)arg, 65536);
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    for (;;)
        pthread_cond_wait(&cond, &lock);
    return NULL;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2 && !strcmp(argv[2], "tree")) {
        /* n-1 children, each with 64 KiB of its own, waiting in pause(). */
        for (int i = 1; i < n; i++) {
            pid_t c = fork();
            if (c < 0)
                return 2;
            if (c == 0) {
                char *mine = malloc(65536);
                if (!mine)
                    exit(3);
                memset(mine, i, 65536);
                for (;;)
                    pause();
            }
        }
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    for (int i = 1; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run, (void *)(long)i))
            return 2;
    }
    pthread_mutex_lock(&lock);
    while (ready < n - 1)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
"#;

fn path_str(p: &Path) -> Res<&str> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

fn crust(args: &[&str]) -> Res<String> {
    let out = Command::new(CRUST)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running crust: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("crust {args:?} failed ({}):\n{text}", out.status));
    }
    Ok(text)
}

fn compile(dir: &Path) -> Res<PathBuf> {
    let src = dir.join("threads.c");
    std::fs::write(&src, TARGET_C).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let bin = dir.join("threads");
    let st = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc failed: {st}"));
    }
    Ok(bin)
}

/// The target started with `n` threads, once every thread is blocked.
fn start(bin: &Path, n: usize, shape: Shape) -> Res<Child> {
    let mut cmd = Command::new(bin);
    // Descriptors this bench inherited (a pipe of the shell that started
    // it) are not the target's: a dump would refuse a pipe held outside.
    // SAFETY: close_range is async-signal-safe; it runs in the child
    // between fork and exec and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    if shape == Shape::Tree {
        cmd.arg(n.to_string()).arg("tree");
    } else {
        cmd.arg(n.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the target: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("reading the target: {e}"))?;
    if line.trim() != "ready" {
        kill_and_reap(child.id() as i32);
        return Err(format!("the target said {line:?}"));
    }
    Ok(child)
}

/// The two shapes measured: N threads in one process, or N processes (a
/// root and N-1 children).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Threads,
    Tree,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Threads => "threads",
            Shape::Tree => "processes",
        }
    }
}

fn tasks_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The root's children (the tree target has no grandchildren).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the target and whatever children it has, and reaps them all:
/// the root first, so that its children reparent to us (the child
/// subreaper) and are ours to reap.
fn kill_tree(pid: i32) {
    let kids = children_of(pid);
    kill_and_reap(pid);
    for &k in &kids {
        kill_and_reap(k);
    }
}

struct Sample {
    dump_ms: f64,
    frozen_ms: f64,
    restore_ms: f64,
    /// The CPU time crust used for the dump (user + system, its threads
    /// and any child it waited for).
    dump_cpu_ms: f64,
}

/// CPU time (user + system) of this process's children that ended and
/// were waited for, in milliseconds.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct we pass; a zeroed rusage is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// One dump and restore of a target with `n` threads.
/// `flags`: given to both.
fn one(bin: &Path, base: &Path, n: usize, shape: Shape, run: usize, flags: &[&str]) -> Res<Sample> {
    let target = start(bin, n, shape)?;
    let pid = target.id() as i32;
    let kids = children_of(pid);
    let dir = base.join(format!("img-{}-{n}-{run}-{}", shape.name(), flags.len()));
    let t = Instant::now();
    let pid_arg = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_arg, "-D", path_str(&dir)?];
    args.extend(flags);
    // Nothing else of ours ends while crust dumps (the target is reaped
    // after): the children's CPU time grows by crust's alone.
    let cpu_before = children_cpu_ms();
    let dumped = crust(&args);
    let dump_ms = t.elapsed().as_secs_f64() * 1e3;
    let dump_cpu_ms = children_cpu_ms() - cpu_before;
    if let Err(e) = dumped {
        kill_tree(pid);
        return Err(e);
    }
    reap(pid)?;
    // The dump killed the children too; they were reparented to us.
    for k in kids {
        let _ = reap(k);
    }
    let stats = crust(&["show", path_str(&dir.join("stats.img"))?])?;
    let v: serde_json::Value =
        serde_json::from_str(stats.trim()).map_err(|e| format!("crust show: {e}: {stats}"))?;
    let frozen_ms = v["message"]["frozen_us"]
        .as_u64()
        .ok_or_else(|| format!("no frozen_us in {stats}"))? as f64
        / 1e3;
    let t = Instant::now();
    let mut args = vec!["restore", "-D", path_str(&dir)?, "-d"];
    args.extend(flags);
    crust(&args)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    let got = match shape {
        Shape::Threads => tasks_of(pid),
        Shape::Tree => children_of(pid).len() + 1,
    };
    kill_tree(pid);
    std::fs::remove_dir_all(&dir).ok();
    if got != n {
        return Err(format!("restored {got} {} of {n}", shape.name()));
    }
    Ok(Sample {
        dump_ms,
        frozen_ms,
        restore_ms,
        dump_cpu_ms,
    })
}

/// A read-mode pre-dump of the target started with `n` tasks: its frozen
/// time (stats.img), and for a tree the machine's limit measured first on
/// the same processes ([`ptrace_floor_ms`]).
fn one_predump(bin: &Path, base: &Path, n: usize, shape: Shape, run: usize) -> Res<(f64, f64)> {
    let target = start(bin, n, shape)?;
    let pid = target.id() as i32;
    let mut pids = vec![pid];
    pids.extend(children_of(pid));
    let floor = match shape {
        Shape::Tree => ptrace_floor_ms(&pids),
        Shape::Threads => Ok(0.0),
    };
    let floor = match floor {
        Ok(f) => f,
        Err(e) => {
            kill_tree(pid);
            return Err(e);
        }
    };
    let dir = base.join(format!("pre-{}-{n}-{run}", shape.name()));
    let args = [
        "pre-dump",
        "-t",
        &pid.to_string(),
        "-D",
        path_str(&dir)?,
        "--pre-dump-mode",
        "read",
    ];
    let out = crust(&args).and_then(|_| crust(&["show", path_str(&dir.join("stats.img"))?]));
    kill_tree(pid);
    std::fs::remove_dir_all(&dir).ok();
    let stats = out?;
    let v: serde_json::Value =
        serde_json::from_str(stats.trim()).map_err(|e| format!("crust show: {e}: {stats}"))?;
    let frozen_ms = v["message"]["frozen_us"]
        .as_u64()
        .ok_or_else(|| format!("no frozen_us in {stats}"))? as f64
        / 1e3;
    Ok((frozen_ms, floor))
}

/// The least a consistent freeze of these processes costs here: each
/// seized and interrupted, all waited for in their stop, then each
/// detached (it runs on untouched). Milliseconds, all of them.
fn ptrace_floor_ms(pids: &[i32]) -> Res<f64> {
    let t = Instant::now();
    let mut seized = Vec::new();
    let mut out = Ok(());
    for &p in pids {
        // SAFETY: ptrace requests on a process of ours with no memory
        // passed; each seized one is detached below.
        let r = unsafe {
            libc::ptrace(libc::PTRACE_SEIZE, p, 0, 0) == 0
                && libc::ptrace(libc::PTRACE_INTERRUPT, p, 0, 0) == 0
        };
        if !r {
            out = Err(format!("ptrace floor: pid {p}: {}", common::errno()));
            break;
        }
        seized.push(p);
    }
    for &p in &seized {
        let mut st = 0;
        // SAFETY: waitpid on a tracee of ours with a valid status pointer.
        if unsafe { libc::waitpid(p, &mut st, libc::__WALL) } != p && out.is_ok() {
            out = Err(format!(
                "ptrace floor: waiting for {p}: {}",
                common::errno()
            ));
        }
    }
    for &p in &seized {
        // SAFETY: detaching a tracee of ours, in its stop.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, p, 0, 0) };
    }
    out.map(|()| t.elapsed().as_secs_f64() * 1e3)
}

/// Microseconds per ptrace stop of a child that loops on getppid, stopped
/// at every syscall entry and exit (PTRACE_SYSCALL, 2000 stops), with or
/// without the CPU latency request crust holds (`polling`).
fn stop_us(polling: bool) -> Res<f64> {
    const STOPS: usize = 2000;
    let held = match polling {
        true => Some(crust::sys::cpu_latency::hold().ok_or("cannot open /dev/cpu_dma_latency")?),
        false => None,
    };
    // SAFETY: the child only loops on a raw syscall until it is killed.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: getppid has no arguments.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
    }
    if child < 0 {
        return Err(format!("fork: {}", common::errno()));
    }
    let mut out = Ok(0.0);
    // SAFETY: ptrace requests and waitpid on our own child; nothing of
    // ours is passed but the status pointer.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, child, 0, libc::PTRACE_O_EXITKILL) != 0
            || libc::ptrace(libc::PTRACE_INTERRUPT, child, 0, 0) != 0
        {
            out = Err(format!("ptrace of the stop child: {}", common::errno()));
        }
        let mut st = 0;
        if out.is_ok() {
            libc::waitpid(child, &mut st, libc::__WALL);
            let t = Instant::now();
            for _ in 0..STOPS {
                libc::ptrace(libc::PTRACE_SYSCALL, child, 0, 0);
                libc::waitpid(child, &mut st, libc::__WALL);
            }
            out = Ok(t.elapsed().as_secs_f64() * 1e6 / STOPS as f64);
        }
    }
    kill_and_reap(child);
    drop(held);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasks bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Res<()> {
    // The restored targets reparent to us: we reap them.
    // SAFETY: prctl on ourselves with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let threads = env_usize("CRUST_BENCH_THREADS", 100)?.max(2);
    let runs = env_usize("CRUST_BENCH_RUNS", 5)?.max(1);
    let parent = std::env::var_os("CRUST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let base = tempfile::Builder::new()
        .prefix("crust-bench-tasks-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let bin = compile(base.path())?;
    // One task, N threads, N processes, and the last two again with idle
    // CPUs allowed to halt: alternating within each run.
    const HALT: &[&str] = &["--no-cpu-latency-hint"];
    let shapes: [(usize, Shape, &[&str]); 5] = [
        (1, Shape::Threads, &[]),
        (threads, Shape::Threads, &[]),
        (threads, Shape::Tree, &[]),
        (1, Shape::Threads, HALT),
        (threads, Shape::Tree, HALT),
    ];
    let mut samples: Vec<Vec<Sample>> = shapes.iter().map(|_| Vec::new()).collect();
    let (mut stops_halting, mut stops_polling) = (Vec::new(), Vec::new());
    // Read-mode pre-dumps: frozen ms of one task, of the tree, and the
    // ptrace floor of the tree.
    let (mut pre_one, mut pre_tree, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    let mut creates = Vec::new();
    for run in 0..runs {
        let create = file_create_us(base.path(), run)?;
        // Per run: on a file system where creating a file costs more the
        // more were deleted lately (ext4 without a journal), this moves
        // the tree's total from run to run.
        println!(
            "run {run}: creating a 1 KiB file in the image directory's parent: {create:.1} us"
        );
        creates.push(create);
        stops_halting.push(stop_us(false)?);
        stops_polling.push(stop_us(true)?);
        for (i, &(n, shape, flags)) in shapes.iter().enumerate() {
            let s = one(&bin, base.path(), n, shape, run, flags)?;
            println!(
                "run {run}: {n:>4} {:<9}{}: dump {:.1} ms (frozen {:.1} ms, CPU {:.1} ms), restore {:.1} ms",
                shape.name(),
                if flags.is_empty() {
                    ""
                } else {
                    " (idle CPUs halting)"
                },
                s.dump_ms,
                s.frozen_ms,
                s.dump_cpu_ms,
                s.restore_ms
            );
            samples[i].push(s);
        }
        let (one, _) = one_predump(&bin, base.path(), 1, Shape::Threads, run)?;
        let (tree, floor) = one_predump(&bin, base.path(), threads, Shape::Tree, run)?;
        println!(
            "run {run}: pre-dump (read) frozen: 1 task {one:.1} ms, {threads} processes {tree:.1} ms (ptrace floor {floor:.1} ms)"
        );
        pre_one.push(one);
        pre_tree.push(tree);
        floors.push(floor);
    }
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    println!("medians of {runs} runs, alternating a single task, {threads} threads and {threads} processes:");
    let per = (threads - 1) as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (single, i, shape, how) in [
        (0, 1, Shape::Threads, ""),
        (0, 2, Shape::Tree, ""),
        (
            3,
            4,
            Shape::Tree,
            ", idle CPUs halting (--no-cpu-latency-hint)",
        ),
    ] {
        for (what, f) in [
            ("dump total", (|s: &Sample| s.dump_ms) as fn(&Sample) -> f64),
            ("dump frozen", |s: &Sample| s.frozen_ms),
            ("restore", |s: &Sample| s.restore_ms),
        ] {
            let (one, many) = (med(single, f), med(i, f));
            let each = (many - one) / per;
            println!(
                "  {what:<12} 1 task {one:7.1} ms, {threads} {:<9} {many:7.1} ms: {each:.3} ms per task (target < {TARGET_MS} ms) {}{how}",
                shape.name(),
                if each < TARGET_MS { "met" } else { "NOT met" }
            );
        }
        // What bounds the dump's total: crust's own CPU time, spread at
        // best over every CPU.
        let cpu = |s: &Sample| s.dump_cpu_ms;
        let (one, many) = (med(single, cpu), med(i, cpu));
        let each = (many - one) / per;
        println!(
            "  {:<12} 1 task {one:7.1} ms, {threads} {:<9} {many:7.1} ms: {each:.3} ms per task; on {cpus} CPUs no less than {:.3} ms per task of wall time{how}",
            "dump CPU",
            shape.name(),
            each / cpus as f64
        );
    }
    println!(
        "  machine limit for a ptrace stop and restart (PTRACE_SYSCALL, a child looping on getppid): {:.1} us with idle CPUs halting, {:.1} us with them polling (the CPU latency request crust holds)",
        median(stops_halting),
        median(stops_polling)
    );
    let (one, tree, floor) = (median(pre_one), median(pre_tree), median(floors));
    let each = (tree - one) / per;
    println!(
        "  pre-dump --pre-dump-mode read, frozen: 1 task {one:7.1} ms, {threads} processes {tree:7.1} ms: {each:.3} ms per process (target < {TARGET_MS} ms) {}; machine limit (ptrace seize, interrupt, stop, detach): {:.3} ms per process",
        if each < TARGET_MS { "met" } else { "NOT met" },
        floor / threads as f64
    );
    let create = median(creates);
    println!(
        "  machine limit for image files: creating a 1 KiB file in {}: {create:.1} us; a tree's dump makes 6 whatever its size, {:.3} ms per process of {threads} (format 2 made 3 per process: {:.3} ms)",
        parent.display(),
        6.0 * create / 1e3 / threads as f64,
        3.0 * create / 1e3
    );
    Ok(())
}

/// Creating, writing (1 KiB) and closing a file in a new directory under
/// `base`, in microseconds per file (200 files, then removed).
fn file_create_us(base: &Path, run: usize) -> Res<f64> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = base.join(format!("files-{run}"));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let data = [7u8; 1024];
    let t = Instant::now();
    for i in 0..200 {
        let path = dir.join(i.to_string());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(&data)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / 200.0;
    std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(us)
}
