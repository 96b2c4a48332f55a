//! Iterative pre-copy: frozen time and pages written per pre-dump of a
//! process of which 1% of the memory is dirtied between iterations, for
//! every pre-dump mode and dirty tracker crust offers, next to a full dump
//! of the same process.
//!
//! Per size (256 MiB, 1 GiB and 2 GiB by default), tracker (those `crust
//! check --json` lists, chosen with `--tracker` when crust has it) and mode
//! (`read`, `splice`): a fresh target is pre-dumped (iteration 1 copies
//! everything), then, N-1 times, it writes exactly K pages (K = 1% of its
//! pages, distinct, spread pseudo-randomly) and is pre-dumped on top of
//! the previous pre-dump; it writes K pages once more and the final dump
//! goes on top of the last pre-dump. The final dump is restored and the
//! restored task, on SIGTERM, checks every word of its memory against the
//! steps it has done (which pages each step wrote is a function of the
//! step number). Then a fresh target of the same size gets a plain full
//! dump. The target reports back through a static the bench reads with
//! `process_vm_readv` (same address in the child and in its restored copy),
//! so it holds no descriptor besides stdio at /dev/null.
//!
//! Targets: pre-dump frozen time under 10 ms and independent of the size;
//! the second pre-dump writes no more than K + 1% of the pages. Missing a
//! target is reported, not an error; a failed crust command, or restored
//! memory that differs from what the task wrote, is. A mode or tracker
//! crust does not offer is printed as unavailable, with the reason.
//!
//! Run as root: `cargo bench -p crust --bench predump`.
//! Environment: `CRUST_PREDUMP_SIZES` (MiB, comma-separated; default
//! `256,1024,2048`), `CRUST_PREDUMP_ITERS` (pre-dumps per run, default 5),
//! `CRUST_PREDUMP_DIRTY_PCT` (default 1), `CRUST_BENCH_DIR` (parent of the
//! image directories; default the system temporary directory),
//! `CRUST_PREDUMP_KEEP=1` (keep the image directories for inspection).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
const PAGE: usize = 4096;
const SEED: u64 = 0x6372_7573_7470_7265;
const FROZEN_TARGET_MS: f64 = 10.0;
const TRACKER_PREFIX: &str = "pre-dump tracker ";

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

/// What the target reports back, read by the bench with
/// `process_vm_readv` at the same address in the target (a forked child,
/// or that child restored): a static has the same address in both.
#[repr(C)]
struct Shared {
    /// Dirty steps completed (stored after the step's page writes).
    step: AtomicU64,
    /// Verification on SIGTERM: 0 not done, 1 OK, 2 BAD.
    verdict: AtomicU64,
    /// The first word found wrong, when BAD.
    bad_addr: AtomicU64,
    /// What it held.
    bad_value: AtomicU64,
}

static SHARED: Shared = Shared {
    step: AtomicU64::new(0),
    verdict: AtomicU64::new(0),
    bad_addr: AtomicU64::new(0),
    bad_value: AtomicU64::new(0),
};

const VERDICT_OK: u64 = 1;
const VERDICT_BAD: u64 = 2;

fn env_f64(name: &str, default: f64) -> Res<f64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(default),
    }
}

fn env_sizes() -> Res<Vec<usize>> {
    let v = std::env::var("CRUST_PREDUMP_SIZES").unwrap_or_else(|_| "256,1024,2048".into());
    v.split(',')
        .map(|s| {
            let mib: usize = s
                .trim()
                .parse()
                .map_err(|e| format!("CRUST_PREDUMP_SIZES={v:?}: {e}"))?;
            if mib == 0 {
                return Err("CRUST_PREDUMP_SIZES: sizes must be at least 1 MiB".into());
            }
            Ok(mib)
        })
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Which pages the target writes: in step `s`, pages
/// `(offset(s) + i * mult) mod pages` for `i < per_step`, distinct because
/// `mult` is coprime with `pages` and `per_step <= pages`; consecutive
/// ones lie far apart, so every written page is a run of its own.
#[derive(Clone, Copy)]
struct Dirt {
    base: u64,
    pages: u64,
    per_step: u64,
    mult: u64,
}

impl Dirt {
    fn new(base: u64, pages: u64, per_step: u64) -> Dirt {
        let mut mult = (0x9e37_79b9_7f4a_7c15 % pages) | 1;
        while gcd(mult, pages) != 1 {
            mult += 2;
        }
        Dirt {
            base,
            pages,
            per_step,
            mult: mult % pages,
        }
    }

    fn offset(&self, step: u64) -> u64 {
        (step ^ SEED).wrapping_mul(0xbf58_476d_1ce4_e5b9) % self.pages
    }

    /// The `i`th page written in step `step`.
    fn page(&self, step: u64, i: u64) -> u64 {
        ((self.offset(step) as u128 + i as u128 * self.mult as u128) % self.pages as u128) as u64
    }
}

/// The word at `addr` after the page was last written in step `version`
/// (0: the initial fill). Odd, so never zero.
fn pattern(addr: u64, version: u64) -> u64 {
    ((addr ^ SEED).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        ^ version.wrapping_mul(0x94d0_49bb_1331_11ea)
}

/// Fills page `page` with the words of `version`.
///
/// # Safety
/// `d.base` must map `d.pages` writable pages and `page < d.pages`.
unsafe fn fill_page(d: &Dirt, page: u64, version: u64) {
    let addr = d.base + page * PAGE as u64;
    let words = addr as *mut u64;
    for w in 0..PAGE / 8 {
        // SAFETY: within the page, by the caller's contract.
        unsafe {
            words
                .add(w)
                .write_volatile(pattern(addr + w as u64 * 8, version))
        };
    }
}

/// Reads the word at `addr` in `pid`.
fn read_word(pid: i32, addr: u64) -> Res<u64> {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: `local` covers a buffer we own; `remote` is only interpreted
    // in the other process.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if r != 8 {
        return Err(format!(
            "process_vm_readv of pid {pid} at {addr:#x}: {}",
            errno()
        ));
    }
    Ok(u64::from_ne_bytes(buf))
}

fn shared_addr(field: &AtomicU64) -> u64 {
    field as *const AtomicU64 as u64
}

/// The process being pre-dumped: a forked child holding written anonymous
/// memory, waiting for SIGUSR1 (write the next K pages) or SIGTERM
/// (verify all of its memory).
struct Target {
    pid: i32,
    dirt: Dirt,
    /// Dirty steps asked for.
    steps: u64,
    /// Still to be killed and reaped by us.
    live: bool,
}

impl Target {
    fn spawn(len: usize, per_step: u64) -> Res<Target> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 with a valid two-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", errno()));
        }
        let [rd, wr] = fds;
        // SAFETY: the benchmark is single-threaded; the child only makes
        // raw system calls and plain memory writes, then never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno()));
        }
        if pid == 0 {
            // SAFETY: child side of the fork of a single-threaded process.
            unsafe { target_main(rd, wr, len, per_step) }
        }
        let mut t = Target {
            pid,
            dirt: Dirt::new(0, (len / PAGE) as u64, per_step),
            steps: 0,
            live: true,
        };
        let mut buf = [0u8; 8];
        // SAFETY: closing our copy of the write end; reading into local
        // buffers of the sizes given (the address, then the end of file:
        // the child has closed the pipe, its last step before waiting);
        // closing the read end afterwards.
        let (n, eof) = unsafe {
            libc::close(wr);
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len());
            let mut more = [0u8; 1];
            let eof = libc::read(rd, more.as_mut_ptr().cast(), 1);
            libc::close(rd);
            (n, eof)
        };
        if n != 8 || eof != 0 {
            return Err(format!(
                "target {pid} did not become ready (read {n}, then {eof}): {}",
                errno()
            ));
        }
        t.dirt.base = u64::from_ne_bytes(buf);
        Ok(t)
    }

    /// Polls the target's word `field` until `done` holds.
    fn wait_for(&self, field: &AtomicU64, what: &str, done: impl Fn(u64) -> bool) -> Res<u64> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = read_word(self.pid, shared_addr(field))?;
            if done(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("target {} did not {what} in 120 s", self.pid));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Makes the target write the next K pages and waits until it has.
    fn dirty_step(&mut self) -> Res<()> {
        // SAFETY: plain kill(2) of the target.
        if unsafe { libc::kill(self.pid, libc::SIGUSR1) } != 0 {
            return Err(format!("kill({}, SIGUSR1): {}", self.pid, errno()));
        }
        self.steps += 1;
        let want = self.steps;
        self.wait_for(&SHARED.step, "finish its dirty step", |v| v >= want)?;
        Ok(())
    }

    /// Makes the (restored) target check all of its memory.
    fn verify(&self) -> Res<()> {
        let step = read_word(self.pid, shared_addr(&SHARED.step))?;
        if step != self.steps {
            return Err(format!(
                "restored task {} has done {step} dirty steps, the dumped one {}",
                self.pid, self.steps
            ));
        }
        // SAFETY: plain kill(2) of the target.
        if unsafe { libc::kill(self.pid, libc::SIGTERM) } != 0 {
            return Err(format!("kill({}, SIGTERM): {}", self.pid, errno()));
        }
        let v = self.wait_for(&SHARED.verdict, "verify its memory", |v| v != 0)?;
        if v == VERDICT_OK {
            return Ok(());
        }
        let addr = read_word(self.pid, shared_addr(&SHARED.bad_addr))?;
        let got = read_word(self.pid, shared_addr(&SHARED.bad_value))?;
        Err(format!(
            "restored memory of pid {} is wrong at {addr:#x}: {got:#x}",
            self.pid
        ))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.live {
            kill_and_reap(self.pid);
        }
    }
}

/// Body of the target child: maps and fills `len` bytes, reports the
/// address through the pipe, then serves SIGUSR1 (dirty step) and SIGTERM
/// (verify) forever.
///
/// # Safety
/// Only to be called in a freshly forked child of a single-threaded
/// process; never returns.
unsafe fn target_main(rd: i32, wr: i32, len: usize, per_step: u64) -> ! {
    // SAFETY: raw system calls and writes to the mapping made here; the
    // child is single-threaded and never returns.
    unsafe {
        libc::close(rd);
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            libc::_exit(2);
        }
        let d = Dirt::new(p as u64, (len / PAGE) as u64, per_step);
        for page in 0..d.pages {
            fill_page(&d, page, 0);
        }
        // Signals wait, blocked, for sigwaitinfo: no handler runs.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null < 0 {
            libc::_exit(4);
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        // Whatever else the benchmark inherited (a jobserver pipe, say) goes,
        // all but the pipe, and before the bench is told: a pre-dump may
        // start as soon as it is (and put its tracker at a high fd).
        let wr = wr as u32;
        if wr > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, wr - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, wr + 1, u32::MAX, 0u32);
        let addr = (p as u64).to_ne_bytes();
        if libc::write(wr as i32, addr.as_ptr().cast(), addr.len()) != addr.len() as isize {
            libc::_exit(3);
        }
        // The bench waits for the end of file: nothing runs after this but
        // the wait for signals.
        libc::close(wr as i32);
        loop {
            // EINTR (a freeze, a dump) just waits again.
            match libc::sigwaitinfo(&set, std::ptr::null_mut()) {
                libc::SIGUSR1 => {
                    let step = SHARED.step.load(Ordering::Relaxed) + 1;
                    for i in 0..d.per_step {
                        fill_page(&d, d.page(step, i), step);
                    }
                    SHARED.step.store(step, Ordering::Release);
                }
                libc::SIGTERM => target_verify(&d),
                _ => {}
            }
        }
    }
}

/// Checks every word of the target's memory against the pattern of the
/// step that last wrote its page, replayed from the step count.
///
/// # Safety
/// In the target only, with `d` describing its mapping.
unsafe fn target_verify(d: &Dirt) {
    let steps = SHARED.step.load(Ordering::Acquire);
    let vlen = d.pages as usize * 8;
    // SAFETY: a fresh anonymous mapping for the replayed versions, checked
    // for failure, unmapped at the end; the target's memory is read within
    // its mapping.
    unsafe {
        let v = libc::mmap(
            std::ptr::null_mut(),
            vlen,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if v == libc::MAP_FAILED {
            SHARED.bad_addr.store(0, Ordering::Relaxed);
            SHARED.verdict.store(VERDICT_BAD, Ordering::Release);
            return;
        }
        let versions = v.cast::<u64>();
        for step in 1..=steps {
            for i in 0..d.per_step {
                versions.add(d.page(step, i) as usize).write(step);
            }
        }
        let mut verdict = VERDICT_OK;
        'pages: for page in 0..d.pages {
            let version = versions.add(page as usize).read();
            let addr = d.base + page * PAGE as u64;
            for w in 0..(PAGE / 8) as u64 {
                let a = addr + w * 8;
                let got = (a as *const u64).read_volatile();
                if got != pattern(a, version) {
                    SHARED.bad_addr.store(a, Ordering::Relaxed);
                    SHARED.bad_value.store(got, Ordering::Relaxed);
                    verdict = VERDICT_BAD;
                    break 'pages;
                }
            }
        }
        libc::munmap(v, vlen);
        SHARED.verdict.store(verdict, Ordering::Release);
    }
}

/// A crust command that exited non-zero.
struct Failed {
    msg: String,
    stderr: String,
}

/// Runs crust with `args`; returns its stdout and stderr.
fn crust(args: &[&str]) -> Result<(String, String), Failed> {
    let out = Command::new(CRUST)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Failed {
            msg: format!("running {CRUST}: {e}"),
            stderr: String::new(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(Failed {
            msg: format!("crust {} failed ({}): {stderr}", args.join(" "), out.status),
            stderr,
        });
    }
    Ok((stdout, stderr))
}

fn crust_ok(args: &[&str]) -> Res<(String, String)> {
    crust(args).map_err(|f| f.msg)
}

/// Whether crust refused the way of pre-dumping itself: a mode or tracker
/// not implemented, or a combination it does not support (it then names
/// the mode to use instead).
fn refused(f: &Failed) -> bool {
    ["not implemented", "use --pre-dump-mode"]
        .iter()
        .any(|m| f.stderr.contains(m))
}

#[derive(Debug, Clone, Default)]
struct Stats {
    frozen_ms: f64,
    total_ms: f64,
    scanned: u64,
    in_parent: u64,
    written: u64,
    /// The engine's phase line (`-v`), without its prefix.
    phases: String,
    /// As the engine recorded them.
    mode: String,
    tracker: String,
}

fn u64_field(m: &serde_json::Value, name: &str, file: &Path) -> Res<u64> {
    m[name]
        .as_u64()
        .ok_or_else(|| format!("{}: no integer {name:?} in {m}", file.display()))
}

/// Reads DIR/stats.img through `crust show`.
fn read_stats(dir: &Path, stderr: &str) -> Res<Stats> {
    let file = dir.join("stats.img");
    let (out, _) = crust_ok(&["show", path_str(&file)?])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("crust show {}: {e}", file.display()))?;
    let m = &v["message"];
    let phases = stderr
        .lines()
        .find_map(|l| l.split_once("phases: ").map(|(_, p)| p.to_string()))
        .unwrap_or_default();
    Ok(Stats {
        frozen_ms: u64_field(m, "frozen_us", &file)? as f64 / 1e3,
        total_ms: u64_field(m, "total_us", &file)? as f64 / 1e3,
        scanned: u64_field(m, "pages_scanned", &file)?,
        in_parent: u64_field(m, "pages_in_parent", &file)?,
        written: u64_field(m, "pages_written", &file)?,
        phases,
        mode: m["mode"].as_str().unwrap_or_default().to_string(),
        tracker: m["tracker"].as_str().unwrap_or_default().to_string(),
    })
}

/// CRUST_PREDUMP_KEEP=1: leave the image directories behind.
fn keep() -> bool {
    std::env::var("CRUST_PREDUMP_KEEP").is_ok_and(|v| v == "1")
}

fn path_str(p: &Path) -> Res<&str> {
    p.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}

/// One way of pre-dumping: a mode with a tracker.
#[derive(Clone)]
struct Way {
    mode: &'static str,
    tracker: String,
    /// Extra crust arguments selecting the tracker (none for the default).
    tracker_args: Vec<String>,
}

impl Way {
    fn name(&self) -> String {
        format!("mode {}, tracker {}", self.mode, self.tracker)
    }
}

/// What one way of pre-dumping gave for one size.
enum Outcome {
    Ran(Run),
    Unavailable(String),
}

struct Run {
    iters: Vec<Stats>,
    /// Pages the target wrote before each iteration (none before the
    /// first).
    dirtied: Vec<Option<u64>>,
    last: Stats,
    last_dirtied: u64,
}

/// Pre-dumps a fresh target `iters` times (dirtying K pages in between),
/// dumps it on top, restores and verifies. `Unavailable` when crust
/// refuses the way (see [`refused`]).
fn run_way(len: usize, per_step: u64, iters: usize, way: &Way, root: &Path) -> Res<Outcome> {
    let mut target = Target::spawn(len, per_step)?;
    let pid = target.pid.to_string();
    let base = root.join(format!("{}m-{}-{}", len >> 20, way.mode, way.tracker));
    std::fs::create_dir(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let mut out = Run {
        iters: Vec::new(),
        dirtied: Vec::new(),
        last: Stats::default(),
        last_dirtied: 0,
    };
    for i in 1..=iters {
        let dirtied = if i > 1 {
            target.dirty_step()?;
            Some(per_step)
        } else {
            None
        };
        let dir = base.join(format!("pre{i}"));
        let prev = format!("../pre{}", i - 1);
        let mut args = vec![
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&dir)?,
            "--pre-dump-mode",
            way.mode,
            "--track-mem",
            "-v",
        ];
        args.extend(way.tracker_args.iter().map(String::as_str));
        if i > 1 {
            args.extend(["--prev-images-dir", &prev]);
        }
        let stderr = match crust(&args) {
            Ok((_, e)) => e,
            Err(f) if i == 1 && refused(&f) => {
                let line = f.stderr.lines().last().unwrap_or_default();
                let why = line.split_once(" failed: ").map_or(line, |(_, w)| w);
                let why = why.trim_end_matches("; the process was left running");
                drop(target);
                let _ = std::fs::remove_dir_all(&base);
                return Ok(Outcome::Unavailable(why.to_string()));
            }
            Err(f) => return Err(f.msg),
        };
        out.iters.push(read_stats(&dir, &stderr)?);
        out.dirtied.push(dirtied);
    }
    target.dirty_step()?;
    out.last_dirtied = per_step;
    let dir = base.join("dump");
    let prev = format!("../pre{iters}");
    let mut args = vec!["dump", "-t", &pid, "-D", path_str(&dir)?, "-v"];
    args.extend(["--track-mem", "--prev-images-dir", &prev]);
    args.extend(way.tracker_args.iter().map(String::as_str));
    let (_, stderr) = crust_ok(&args)?;
    // crust killed it; we reap it so the pid is free for restore at once.
    target.live = false;
    reap(target.pid)?;
    out.last = read_stats(&dir, &stderr)?;

    let pidfile = base.join("restore.pid");
    crust_ok(&[
        "restore",
        "-D",
        path_str(&dir)?,
        "-d",
        "--pidfile",
        path_str(&pidfile)?,
    ])?;
    target.live = true;
    let got =
        std::fs::read_to_string(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
    if got.trim() != pid {
        return Err(format!("restored pid {} but dumped {pid}", got.trim()));
    }
    target.verify()?;
    drop(target);
    if !keep() {
        std::fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    }
    Ok(Outcome::Ran(out))
}

/// A plain full dump of a fresh target of `len` bytes.
fn full_dump(len: usize, root: &Path) -> Res<Stats> {
    let mut target = Target::spawn(len, 1)?;
    let pid = target.pid.to_string();
    let dir = root.join(format!("{}m-full", len >> 20));
    let (_, stderr) = crust_ok(&["dump", "-t", &pid, "-D", path_str(&dir)?, "-v"])?;
    target.live = false;
    reap(target.pid)?;
    let s = read_stats(&dir, &stderr)?;
    if !keep() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(s)
}

/// The pre-dump trackers `crust check --json` lists, each as a way to run
/// or the reason it cannot run.
fn trackers() -> Res<Vec<(String, Result<Way, String>)>> {
    let (out, _) = crust_ok(&["check", "--json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("crust check --json: {e}"))?;
    let empty = Vec::new();
    let features = v["features"].as_array().unwrap_or(&empty);
    let detail = |name: &str| {
        features
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["detail"].as_str())
            .map(str::to_string)
    };
    let (help, _) = crust_ok(&["pre-dump", "--help"])?;
    let selectable = help.contains("--tracker");
    let mut list = Vec::new();
    for m in v["modes"].as_array().unwrap_or(&empty) {
        let Some(name) = m["name"]
            .as_str()
            .and_then(|n| n.strip_prefix(TRACKER_PREFIX))
        else {
            continue;
        };
        let why = m["why"].as_str().unwrap_or_default();
        let way = if m["runnable"] != true {
            // "missing X, Y": add each feature's own detail.
            let details: Vec<String> = why
                .strip_prefix("missing ")
                .unwrap_or_default()
                .split(", ")
                .filter_map(|f| detail(f).map(|d| format!("{f}: {d}")))
                .collect();
            Err(if details.is_empty() {
                why.to_string()
            } else {
                format!("{why} ({})", details.join("; "))
            })
        } else if selectable {
            Ok(Way {
                mode: "",
                tracker: name.to_string(),
                tracker_args: vec!["--tracker".into(), name.to_string()],
            })
        } else if name == "uffd-wp" {
            // Before --tracker existed, --track-mem meant uffd-wp.
            Ok(Way {
                mode: "",
                tracker: name.to_string(),
                tracker_args: Vec::new(),
            })
        } else {
            Err("not implemented (crust pre-dump has no way to select it: \
                 --track-mem always uses uffd-wp)"
                .to_string())
        };
        list.push((name.to_string(), way));
    }
    if !list.iter().any(|(n, _)| n == "uffd-wp") {
        return Err("crust check --json lists no uffd-wp pre-dump tracker".into());
    }
    Ok(list)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    // SAFETY: sysconf with a valid name.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!(
        "{cpu}, {cpus} CPUs, Linux {}, THP {}",
        kernel.trim(),
        thp.trim()
    )
}

/// Prints one run's table.
fn print_run(mib: usize, pages: u64, per_step: u64, way: &Way, r: &Run, full: &Stats) {
    println!();
    let engine: Vec<String> = r
        .iters
        .iter()
        .map(|s| format!("mode {}, tracker {}", s.mode, s.tracker))
        .collect();
    let mut engine_says = engine.last().cloned().unwrap_or_default();
    if engine.iter().any(|e| *e != engine_says) {
        engine_says = format!("per iteration: {}", engine.join("; "));
    }
    println!(
        "{mib} MiB ({pages} pages), {}: {per_step} pages dirtied per step (stats.img: {engine_says})",
        way.name()
    );
    println!(
        "  {:<5} {:>10} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}  {:<11} {:<13} phases",
        "iter",
        "frozen ms",
        "scanned",
        "parent",
        "written",
        "dirtied",
        "over %",
        "total ms",
        "frozen<10ms",
        "written<=K+1%"
    );
    for (i, (s, d)) in r.iters.iter().zip(&r.dirtied).enumerate() {
        let (dirt, over, frozen_ok, written_ok) = match d {
            Some(k) => {
                let over = (s.written as f64 - *k as f64) / pages as f64 * 100.0;
                let frozen_ok = pass(s.frozen_ms < FROZEN_TARGET_MS);
                let written_ok = if i == 1 {
                    pass(s.written as f64 <= *k as f64 + pages as f64 / 100.0)
                } else {
                    "-"
                };
                (k.to_string(), format!("{over:.3}"), frozen_ok, written_ok)
            }
            None => ("all".to_string(), "-".to_string(), "-", "-"),
        };
        println!(
            "  {:<5} {:>10.2} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9.1}  {:<11} {:<13} {}",
            i + 1,
            s.frozen_ms,
            s.scanned,
            s.in_parent,
            s.written,
            dirt,
            over,
            s.total_ms,
            frozen_ok,
            written_ok,
            s.phases
        );
    }
    let l = &r.last;
    let over = (l.written as f64 - r.last_dirtied as f64) / pages as f64 * 100.0;
    println!(
        "  {:<5} {:>10.2} {:>9} {:>9} {:>9} {:>8} {:>9.3} {:>9}  {:<11} {:<13} {}",
        "dump",
        l.frozen_ms,
        l.scanned,
        l.in_parent,
        l.written,
        r.last_dirtied,
        over,
        "-",
        "-",
        "-",
        l.phases
    );
    println!(
        "  {:<5} {:>10.2} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}  {:<11} {:<13} {}",
        "full",
        full.frozen_ms,
        full.scanned,
        full.in_parent,
        full.written,
        "-",
        "-",
        "-",
        "-",
        "-",
        full.phases
    );
    println!("  (dump: final dump on top of pre{}, restored and verified; full: plain dump of a fresh target of the same size)", r.iters.len());
}

struct Sized {
    mib: usize,
    full: Stats,
    ways: Vec<(Way, Outcome)>,
}

fn bench() -> Res<()> {
    let sizes = env_sizes()?;
    let iters = env_usize("CRUST_PREDUMP_ITERS", 5)?.max(2);
    let pct = env_f64("CRUST_PREDUMP_DIRTY_PCT", 1.0)?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(format!("CRUST_PREDUMP_DIRTY_PCT={pct}: not a percentage"));
    }
    let parent = std::env::var_os("CRUST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_CHILD_SUBREAPER): {}", errno()));
    }
    let root = tempfile::Builder::new()
        .prefix("crust-predump-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;

    println!("crust pre-copy benchmark: {}", machine());
    println!(
        "sizes {} MiB; {iters} pre-dumps then the final dump; {pct}% of the pages dirtied \
         before each but the first; images in {}; load average at start {}",
        sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        parent.display(),
        load_average()
    );
    let mut ways = Vec::new();
    for (name, way) in trackers()? {
        match way {
            Ok(w) => {
                for mode in ["read", "splice"] {
                    ways.push(Way { mode, ..w.clone() });
                }
            }
            Err(why) => println!("tracker {name}: unavailable: {why}"),
        }
    }

    let mut results: Vec<Sized> = Vec::new();
    // Ways found unimplemented are not tried again at the next size.
    let mut unavailable: Vec<(String, String)> = Vec::new();
    for &mib in &sizes {
        let len = mib << 20;
        let pages = (len / PAGE) as u64;
        let per_step = ((pages as f64 * pct / 100.0).round() as u64).clamp(1, pages);
        let mut sized = Sized {
            mib,
            full: Stats::default(),
            ways: Vec::new(),
        };
        for way in &ways {
            if let Some((_, why)) = unavailable.iter().find(|(n, _)| *n == way.name()) {
                sized
                    .ways
                    .push((way.clone(), Outcome::Unavailable(why.clone())));
                continue;
            }
            let t = Instant::now();
            let outcome = run_way(len, per_step, iters, way, root.path())?;
            match &outcome {
                Outcome::Ran(_) => eprintln!(
                    "{mib} MiB, {}: {iters} pre-dumps, dump, restore: memory verified ({:.1} s)",
                    way.name(),
                    t.elapsed().as_secs_f64()
                ),
                Outcome::Unavailable(why) => {
                    eprintln!("{mib} MiB, {}: unavailable: {why}", way.name());
                    unavailable.push((way.name(), why.clone()));
                }
            }
            sized.ways.push((way.clone(), outcome));
        }
        sized.full = full_dump(len, root.path())?;
        eprintln!("{mib} MiB: full dump done");
        results.push(sized);
    }

    for s in &results {
        let pages = (s.mib << 20) as u64 / PAGE as u64;
        let per_step = ((pages as f64 * pct / 100.0).round() as u64).clamp(1, pages);
        for (way, o) in &s.ways {
            if let Outcome::Ran(r) = o {
                print_run(s.mib, pages, per_step, way, r, &s.full);
            }
        }
    }
    if !unavailable.is_empty() {
        println!();
    }
    for (name, why) in &unavailable {
        println!("{name}: unavailable: {why}");
    }
    println!();
    println!(
        "frozen time of pre-dumps 2..{iters} by size (median, max), against the target < {FROZEN_TARGET_MS} ms \
         at every size:"
    );
    for way in &ways {
        let mut cells = Vec::new();
        let mut medians = Vec::new();
        let mut under = true;
        for s in &results {
            let Some(Outcome::Ran(r)) = s
                .ways
                .iter()
                .find(|(w, _)| w.name() == way.name())
                .map(|(_, o)| o)
            else {
                continue;
            };
            let f: Vec<f64> = r.iters[1..].iter().map(|s| s.frozen_ms).collect();
            let max = f.iter().copied().fold(0.0, f64::max);
            under &= max < FROZEN_TARGET_MS;
            medians.push((s.mib, median(&f)));
            cells.push(format!(
                "{} MiB {:.2}/{:.2} ms (full dump {:.0} ms)",
                s.mib,
                median(&f),
                max,
                s.full.frozen_ms
            ));
        }
        if cells.is_empty() {
            println!("  {}: unavailable", way.name());
            continue;
        }
        let growth = match (medians.first(), medians.last()) {
            (Some(a), Some(b)) if medians.len() > 1 => format!(
                "; x{:.1} for x{:.0} the memory ({:.2} ms per GiB)",
                b.1 / a.1,
                b.0 as f64 / a.0 as f64,
                (b.1 - a.1) / ((b.0 - a.0) as f64 / 1024.0)
            ),
            _ => String::new(),
        };
        println!(
            "  {}: {}{growth}  {}",
            way.name(),
            cells.join(", "),
            pass(under)
        );
    }
    println!(
        "(frozen = from freeze to resume, from stats.img; over % = (written - dirtied) / all \
         pages; the task's stack and .bss pages are written too and count as overhead)"
    );
    println!("load average at the end: {}", load_average());
    if keep() {
        println!("images kept in {}", root.keep().display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        // Missing a target is reported above, not an error.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("predump benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
