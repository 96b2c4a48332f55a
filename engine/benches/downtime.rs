//! Migration downtime: the frozen time of the final dump after pre-dumps,
//! the figure live-migration users judge by.
//!
//! Per run: a fresh target holding 1 GiB of written anonymous memory is
//! pre-dumped `CRUST_DOWNTIME_PREDUMPS` times (default 3) in read mode with
//! `--track-mem`, each time after writing 1% of its pages (K = 2621 of
//! 262144 pages, distinct, chosen at random, so nearly every one is a run
//! of its own); it writes another K pages, and the final `crust dump
//! --track-mem --prev-images-dir ..` follows. Printed: the final dump's
//! frozen time and its phases (`crust dump -v`), the effective bandwidth
//! of its page copy (bytes written / copy phase), and next to them, in the
//! same run, process_vm_readv bandwidth out of the target for the same
//! scattered page set (sorted, 1024 ranges per call, as the engine reads)
//! and for one contiguous 1 GiB (8 MiB per call into a populated buffer).
//! The dump is restored and the restored task checks every page's first
//! word against the version the steps left there.
//!
//! Targets: frozen < 20 ms; the copy at >= 50% of process_vm_readv's
//! bandwidth over the same scattered pages. Missing a target is reported,
//! not an error; a failed crust command or wrong restored memory is.
//!
//! Run as root: `cargo bench -p crust --bench downtime`.
//! Environment: `CRUST_BENCH_RUNS` (default 5; medians are printed),
//! `CRUST_BENCH_MIB` (default 1024), `CRUST_DOWNTIME_PREDUMPS` (default 3),
//! `CRUST_BENCH_DIR` (parent of the image directories; default the system
//! temporary directory), `CRUST_DOWNTIME_AB` (another crust binary: each
//! run then measures both, in alternating order, and both are reported),
//! `CRUST_DOWNTIME_WRAP` (a command line the final
//! dump runs under, e.g. `perf record -g -o /tmp/dump.perf --`).
//!
//! GB/s means 1e9 bytes per second; MB/s 1e6.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");

std::thread_local! {
    /// The crust binary the current run uses (see CRUST_DOWNTIME_AB).
    static BIN: std::cell::RefCell<String> = std::cell::RefCell::new(CRUST.to_string());
}
const PAGE: usize = 4096;
const SEED: u64 = 0x646f_776e_7469_6d65;
const FROZEN_TARGET_MS: f64 = 20.0;
const COPY_TARGET: f64 = 0.5;
/// process_vm_readv: remote ranges per call (IOV_MAX), and chunk size of
/// the contiguous read (the engine's dump buffer is 8 MiB).
const IOV_MAX: usize = 1024;
const CHUNK: usize = 8 << 20;

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

/// What the target reports back; the bench reads it with process_vm_readv
/// at the same address in the target and in its restored copy.
#[repr(C)]
struct Shared {
    /// Dirty steps completed.
    step: AtomicU64,
    /// Verification on SIGTERM: 0 not done, 1 OK, 2 BAD.
    verdict: AtomicU64,
    bad_page: AtomicU64,
}

static SHARED: Shared = Shared {
    step: AtomicU64::new(0),
    verdict: AtomicU64::new(0),
    bad_page: AtomicU64::new(0),
};

/// xorshift64*: the same sequence in the bench and in the target.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The `k` distinct pages (of `pages`) step `step` writes, in the order
/// drawn. `seen` is scratch of `pages` bytes (all zero on entry and exit).
fn step_pages(step: u64, pages: u64, k: u64, seen: &mut [u8]) -> Vec<u64> {
    let mut rng = Rng((step ^ SEED).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::with_capacity(k as usize);
    while (out.len() as u64) < k {
        let p = rng.next() % pages;
        if seen[p as usize] == 0 {
            seen[p as usize] = 1;
            out.push(p);
        }
    }
    for &p in &out {
        seen[p as usize] = 0;
    }
    out
}

/// The first word of page `page` after step `version` wrote it (0: the
/// initial fill). Never zero.
fn pattern(page: u64, version: u64) -> u64 {
    ((page ^ SEED).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1) ^ (version << 48)
}

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

fn addr_of(field: &AtomicU64) -> u64 {
    field as *const AtomicU64 as u64
}

/// A page-aligned, populated buffer of the benchmark's own.
struct Buffer {
    ptr: *mut u8,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> Res<Buffer> {
        // SAFETY: a fresh anonymous mapping, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of {len} bytes: {}", errno()));
        }
        // SAFETY: advice on the mapping just made: targets forked later do
        // not inherit it.
        unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
        Ok(Buffer { ptr: p.cast(), len })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// process_vm_readv of `remote` (one call per IOV_MAX ranges) into `buf`;
/// returns the bytes read.
fn read_ranges(pid: i32, remote: &[libc::iovec], buf: &Buffer) -> Res<usize> {
    let mut total = 0;
    for batch in remote.chunks(IOV_MAX) {
        let want: usize = batch.iter().map(|v| v.iov_len).sum();
        if want > buf.len {
            return Err("batch larger than the buffer".into());
        }
        let local = libc::iovec {
            iov_base: buf.ptr.cast(),
            iov_len: want,
        };
        // SAFETY: `local` lies inside our mapping; `remote` is only
        // interpreted in the other process.
        let n =
            unsafe { libc::process_vm_readv(pid, &local, 1, batch.as_ptr(), batch.len() as _, 0) };
        if n != want as isize {
            return Err(format!("process_vm_readv of pid {pid}: {n}: {}", errno()));
        }
        total += want;
    }
    Ok(total)
}

/// Best-of-3 bandwidth (GB/s) of reading `remote`.
fn bandwidth(pid: i32, remote: &[libc::iovec], buf: &Buffer) -> Res<f64> {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let n = read_ranges(pid, remote, buf)?;
        best = best.max(n as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

/// The target: a forked child holding `len` written bytes, dirtying K
/// pages on SIGUSR1 and checking every page on SIGTERM.
struct Target {
    pid: i32,
    base: u64,
    pages: u64,
    steps: u64,
    live: bool,
}

impl Target {
    fn spawn(len: usize, k: u64) -> Res<Target> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 with a valid two-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", errno()));
        }
        let [rd, wr] = fds;
        // SAFETY: the benchmark is single-threaded; the child makes raw
        // system calls and writes its own memory, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno()));
        }
        if pid == 0 {
            // SAFETY: child side of the fork of a single-threaded process.
            unsafe { target_main(rd, wr, len, k) }
        }
        let mut t = Target {
            pid,
            base: 0,
            pages: (len / PAGE) as u64,
            steps: 0,
            live: true,
        };
        let mut buf = [0u8; 8];
        // SAFETY: closing our write end, reading the address and then the
        // end of file (the child closed its end: it is ready), closing.
        let (n, eof) = unsafe {
            libc::close(wr);
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len());
            let mut more = [0u8; 1];
            let eof = libc::read(rd, more.as_mut_ptr().cast(), 1);
            libc::close(rd);
            (n, eof)
        };
        if n != 8 || eof != 0 {
            return Err(format!("target {pid} did not become ready: {}", errno()));
        }
        t.base = u64::from_ne_bytes(buf);
        Ok(t)
    }

    fn wait_for(&self, field: &AtomicU64, what: &str, done: impl Fn(u64) -> bool) -> Res<u64> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = read_word(self.pid, addr_of(field))?;
            if done(v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(format!("target {} did not {what} in 120 s", self.pid));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn signal(&self, sig: i32) -> Res<()> {
        // SAFETY: plain kill(2) of the target.
        if unsafe { libc::kill(self.pid, sig) } != 0 {
            return Err(format!("kill({}, {sig}): {}", self.pid, errno()));
        }
        Ok(())
    }

    fn dirty_step(&mut self) -> Res<()> {
        self.signal(libc::SIGUSR1)?;
        self.steps += 1;
        let want = self.steps;
        self.wait_for(&SHARED.step, "finish its dirty step", |v| v >= want)?;
        Ok(())
    }

    fn verify(&self) -> Res<()> {
        let step = read_word(self.pid, addr_of(&SHARED.step))?;
        if step != self.steps {
            return Err(format!(
                "restored task {} has done {step} steps, the dumped one {}",
                self.pid, self.steps
            ));
        }
        self.signal(libc::SIGTERM)?;
        match self.wait_for(&SHARED.verdict, "verify its memory", |v| v != 0)? {
            1 => Ok(()),
            _ => Err(format!(
                "restored memory of pid {} is wrong in page {}",
                self.pid,
                read_word(self.pid, addr_of(&SHARED.bad_page))?
            )),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.live {
            kill_and_reap(self.pid);
        }
    }
}

/// Body of the target child; never returns.
///
/// # Safety
/// Only in a freshly forked child of a single-threaded process.
unsafe fn target_main(rd: i32, wr: i32, len: usize, k: u64) -> ! {
    // SAFETY: raw system calls and writes into the mappings made here.
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
        let pages = (len / PAGE) as u64;
        // Scratch for step_pages, and each page's version for verify.
        let seen = libc::mmap(
            std::ptr::null_mut(),
            pages as usize * 9,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED || seen == libc::MAP_FAILED {
            libc::_exit(2);
        }
        let seen = std::slice::from_raw_parts_mut(seen.cast::<u8>(), pages as usize * 9);
        let (seen, versions) = seen.split_at_mut(pages as usize);
        let word = |page: u64| (p as u64 + page * PAGE as u64) as *mut u64;
        for page in 0..pages {
            word(page).write_volatile(pattern(page, 0));
        }
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
        let wr = wr as u32;
        if wr > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, wr - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, wr + 1, u32::MAX, 0u32);
        let addr = (p as u64).to_ne_bytes();
        if libc::write(wr as i32, addr.as_ptr().cast(), 8) != 8 {
            libc::_exit(3);
        }
        libc::close(wr as i32);
        loop {
            match libc::sigwaitinfo(&set, std::ptr::null_mut()) {
                libc::SIGUSR1 => {
                    let step = SHARED.step.load(Ordering::Relaxed) + 1;
                    for page in step_pages(step, pages, k, seen) {
                        word(page).write_volatile(pattern(page, step));
                    }
                    SHARED.step.store(step, Ordering::Release);
                }
                libc::SIGTERM => {
                    let steps = SHARED.step.load(Ordering::Acquire);
                    versions.fill(0);
                    let v64 = versions.as_mut_ptr().cast::<u64>();
                    for step in 1..=steps {
                        for page in step_pages(step, pages, k, seen) {
                            v64.add(page as usize).write_unaligned(step);
                        }
                    }
                    let mut verdict = 1;
                    for page in 0..pages {
                        let v = v64.add(page as usize).read_unaligned();
                        if word(page).read_volatile() != pattern(page, v) {
                            SHARED.bad_page.store(page, Ordering::Relaxed);
                            verdict = 2;
                            break;
                        }
                    }
                    SHARED.verdict.store(verdict, Ordering::Release);
                }
                _ => {}
            }
        }
    }
}

fn crust(args: &[&str]) -> Res<String> {
    crust_wrapped(&[], args)
}

/// Runs crust under `wrap` (a profiler command line, say), if not empty.
fn crust_wrapped(wrap: &[String], args: &[&str]) -> Res<String> {
    let bin = BIN.with(|b| b.borrow().clone());
    let mut cmd = match wrap.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {bin}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "crust {} failed ({}): {stderr}",
            args.join(" "),
            out.status
        ));
    }
    Ok(format!("{stdout}\n{stderr}"))
}

fn path_str(p: &Path) -> Res<&str> {
    p.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", p.display()))
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    frozen_ms: f64,
    phases: Vec<(String, f64)>,
    written: u64,
    in_parent: u64,
    bursts: String,
    /// Bytes written / the dump's copy phase.
    copy_gbs: f64,
    pvr_scattered_gbs: f64,
    pvr_contiguous_gbs: f64,
}

/// "a 1.2ms, b c 0.3ms" -> [("a", 1.2), ("b c", 0.3)].
fn parse_phases(line: &str) -> Vec<(String, f64)> {
    line.split(", ")
        .filter_map(|p| {
            let (name, ms) = p.rsplit_once(' ')?;
            Some((name.to_string(), ms.strip_suffix("ms")?.parse().ok()?))
        })
        .collect()
}

/// The phase of the dump that copies pages.
const COPY_PHASE: &str = "copy";

fn run(len: usize, k: u64, predumps: usize, root: &Path, index: usize) -> Res<Sample> {
    let mut target = Target::spawn(len, k)?;
    let pid = target.pid.to_string();
    let base = root.join(format!("run{index}"));
    std::fs::create_dir(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    for i in 1..=predumps {
        target.dirty_step()?;
        let dir = base.join(format!("pre{i}"));
        let prev = format!("../pre{}", i - 1);
        let mut args = vec![
            "pre-dump",
            "-t",
            &pid,
            "-D",
            path_str(&dir)?,
            "--pre-dump-mode",
            "read",
            "--track-mem",
        ];
        if i > 1 {
            args.extend(["--prev-images-dir", &prev]);
        }
        crust(&args)?;
    }
    target.dirty_step()?;
    // The limits, on the same pages the final dump copies.
    let mut seen = vec![0u8; target.pages as usize];
    let mut pages = step_pages(target.steps, target.pages, k, &mut seen);
    pages.sort_unstable();
    let iov = |addr: u64, len: usize| libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    let scattered: Vec<libc::iovec> = pages
        .iter()
        .map(|&p| iov(target.base + p * PAGE as u64, PAGE))
        .collect();
    let contiguous: Vec<libc::iovec> = (0..len / CHUNK)
        .map(|c| iov(target.base + (c * CHUNK) as u64, CHUNK))
        .collect();
    let buf = Buffer::new(IOV_MAX * PAGE.max(CHUNK / IOV_MAX))?;
    let pvr_scattered_gbs = bandwidth(target.pid, &scattered, &buf)?;
    let mut pvr_contiguous_gbs = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0;
        for c in &contiguous {
            n += read_ranges(target.pid, std::slice::from_ref(c), &buf)?;
        }
        pvr_contiguous_gbs = pvr_contiguous_gbs.max(n as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    drop(buf);

    let dir = base.join("dump");
    let prev = format!("../pre{predumps}");
    let wrap: Vec<String> = std::env::var("CRUST_DOWNTIME_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let out = crust_wrapped(
        &wrap,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&dir)?,
            "-v",
            "--track-mem",
            "--prev-images-dir",
            &prev,
        ],
    )?;
    target.live = false;
    reap(target.pid)?;
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, r)| r.to_string()))
            .ok_or_else(|| format!("no {prefix:?} in crust's output:\n{out}"))
    };
    let phases = parse_phases(&field("dump phases: ")?);
    let bursts = field("injected in ")?;
    let stats = crust(&["show", path_str(&dir.join("stats.img"))?])?;
    let v: serde_json::Value = serde_json::from_str(stats.trim())
        .map_err(|e| format!("crust show stats.img: {e}: {stats}"))?;
    let m = &v["message"];
    let num = |n: &str| {
        m[n].as_u64()
            .ok_or_else(|| format!("stats.img has no {n}: {m}"))
    };
    let written = num("pages_written")?;
    let copy_ms = phases
        .iter()
        .find(|(n, _)| n == COPY_PHASE)
        .map(|p| p.1)
        .unwrap_or(f64::NAN);
    let sample = Sample {
        frozen_ms: num("frozen_us")? as f64 / 1e3,
        written,
        in_parent: num("pages_in_parent")?,
        bursts,
        copy_gbs: (written * PAGE as u64) as f64 / (copy_ms / 1e3) / 1e9,
        phases,
        pvr_scattered_gbs,
        pvr_contiguous_gbs,
    };

    let pidfile = base.join("restore.pid");
    crust(&[
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
    std::fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    Ok(sample)
}

fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
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

fn bench() -> Res<()> {
    let runs = env_usize("CRUST_BENCH_RUNS", 5)?.max(1);
    let mib = env_usize("CRUST_BENCH_MIB", 1024)?.max(8);
    let predumps = env_usize("CRUST_DOWNTIME_PREDUMPS", 3)?.max(1);
    let len = mib << 20;
    let pages = (len / PAGE) as u64;
    let k = (pages / 100).max(1);
    let parent = std::env::var_os("CRUST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("crust-downtime-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    println!(
        "crust migration downtime: {mib} MiB target, {predumps} read-mode pre-dumps with \
         --track-mem, {k} random pages (1%) dirtied before each and before the final dump; \
         {runs} runs; images in {}; load average {}",
        parent.display(),
        load_average()
    );
    let mut builds = vec![("this build".to_string(), CRUST.to_string())];
    if let Ok(other) = std::env::var("CRUST_DOWNTIME_AB") {
        builds.push((other.clone(), other));
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); builds.len()];
    for i in 0..runs {
        // Alternating: A B, B A, A B...
        let mut order: Vec<usize> = (0..builds.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for b in order {
            BIN.with(|bin| *bin.borrow_mut() = builds[b].1.clone());
            let s = run(len, k, predumps, root.path(), i)?;
            eprintln!(
                "run {} ({}): frozen {:.2} ms, copy {:.2} GB/s, process_vm_readv scattered \
                 {:.2} GB/s, contiguous {:.2} GB/s; restored and verified",
                i + 1,
                builds[b].0,
                s.frozen_ms,
                s.copy_gbs,
                s.pvr_scattered_gbs,
                s.pvr_contiguous_gbs
            );
            samples[b].push(s);
        }
    }
    for ((name, _), samples) in builds.iter().zip(&samples) {
        report(name, runs, samples);
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}

fn report(build: &str, runs: usize, samples: &[Sample]) {
    println!();
    println!("{build}:");
    println!(
        "{:<5} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10}  phases (ms) / bursts",
        "run", "frozen ms", "written", "parent", "copy GB/s", "pvr scat", "pvr 1GiB"
    );
    for (i, s) in samples.iter().enumerate() {
        let phases: Vec<String> = s
            .phases
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.1}"))
            .collect();
        println!(
            "{:<5} {:>10.2} {:>8} {:>8} {:>10.2} {:>10.2} {:>10.2}  {} / {}",
            i + 1,
            s.frozen_ms,
            s.written,
            s.in_parent,
            s.copy_gbs,
            s.pvr_scattered_gbs,
            s.pvr_contiguous_gbs,
            phases.join(", "),
            s.bursts
        );
    }
    let frozen = median(samples.iter().map(|s| s.frozen_ms));
    let copy = median(samples.iter().map(|s| s.copy_gbs));
    let scat = median(samples.iter().map(|s| s.pvr_scattered_gbs));
    let contig = median(samples.iter().map(|s| s.pvr_contiguous_gbs));
    let names: Vec<String> = samples
        .first()
        .map(|s| s.phases.iter().map(|p| p.0.clone()).collect())
        .unwrap_or_default();
    let phase_medians: Vec<String> = names
        .iter()
        .map(|n| {
            let m = median(
                samples
                    .iter()
                    .filter_map(|s| s.phases.iter().find(|p| &p.0 == n).map(|p| p.1)),
            );
            format!("{n} {m:.1}")
        })
        .collect();
    println!("medians of {runs} runs ({build}):");
    println!(
        "  frozen time of the final dump: {frozen:.2} ms (target < {FROZEN_TARGET_MS} ms) {}",
        pass(frozen < FROZEN_TARGET_MS)
    );
    println!("  phases (ms): {}", phase_medians.join(", "));
    println!(
        "  page copy: {:.0} MB/s = {:.0}% of process_vm_readv over the same scattered pages \
         ({:.0} MB/s; target >= {:.0}%) {}; contiguous 1 GiB: {:.0} MB/s",
        copy * 1e3,
        copy / scat * 100.0,
        scat * 1e3,
        COPY_TARGET * 100.0,
        pass(copy >= COPY_TARGET * scat),
        contig * 1e3
    );
}

fn main() -> ExitCode {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("downtime benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
