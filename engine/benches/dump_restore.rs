//! Dump/restore throughput of a process holding 1 GiB of anonymous memory,
//! printed next to this machine's limits measured in the same run:
//!
//! - `process_vm_readv` bandwidth out of the running target,
//! - writing the same bytes to a fresh file in the image directory,
//! - fresh-page materialisation (`MAP_POPULATE` + `memcpy`),
//! - plain `memcpy` between populated buffers (reference only).
//!
//! Targets: dump >= 50% of the slower of the first two; restore >= 70% of
//! the third. Missing a target is reported, not an error; a failed dump or
//! restore, or restored memory that differs from the original, is.
//!
//! Run as root: `cargo bench -p crust --bench dump_restore`.
//! Environment: `CRUST_BENCH_MIB` (default 1024), `CRUST_BENCH_RUNS`
//! (default 3), `CRUST_BENCH_DIR` (parent of the image directory; default
//! the system temporary directory).
//!
//! GB/s means 1e9 bytes per second throughout.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
/// Chunk size of every streamed copy (the engine's dump buffer is 8 MiB).
const CHUNK: usize = 8 << 20;
const SEED: u64 = 0x6372_7573_7462_6e63;

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

/// The word the target stores at `addr`: never zero, different per word.
fn pattern(addr: u64) -> u64 {
    (addr ^ SEED).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// A private anonymous mapping owned by the benchmark. It is marked
/// MADV_DONTFORK so that targets forked later do not inherit it (and the
/// dump does not store it).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, populate: bool) -> Res<Mapping> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: fresh anonymous mapping at an address of the kernel's
        // choosing; the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of {len} bytes: {}", errno()));
        }
        let m = Mapping { ptr: p.cast(), len };
        // SAFETY: advice on the mapping just created.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
            return Err(format!("madvise(MADV_DONTFORK): {}", errno()));
        }
        Ok(m)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable, `len` bytes long and lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`; no slice into it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The process being dumped: a forked child holding written anonymous
/// memory at `addr`, blocked in pause().
struct Target {
    pid: i32,
    addr: u64,
    /// Still to be killed and reaped by us.
    live: bool,
}

impl Target {
    fn spawn(len: usize) -> Res<Target> {
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
            // SAFETY: child side; only async-signal-safe calls, then pause()
            // forever (or _exit on failure).
            unsafe { target_main(rd, wr, len) }
        }
        let mut t = Target {
            pid,
            addr: 0,
            live: true,
        };
        let mut buf = [0u8; 8];
        // SAFETY: closing our copy of the write end; reading into a local
        // buffer of the size given; closing the read end afterwards.
        let n = unsafe {
            libc::close(wr);
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(rd);
            n
        };
        if n != 8 {
            return Err(format!(
                "target {pid} did not become ready (read {n}): {}",
                errno()
            ));
        }
        t.addr = u64::from_ne_bytes(buf);
        Ok(t)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.live {
            kill_and_reap(self.pid);
        }
    }
}

/// Body of the target child.
///
/// # Safety
/// Only to be called in a freshly forked child of a single-threaded
/// process; never returns.
unsafe fn target_main(rd: i32, wr: i32, len: usize) -> ! {
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
    let words = p.cast::<u64>();
    for i in 0..len / 8 {
        let a = p as u64 + (i * 8) as u64;
        words.add(i).write(pattern(a));
    }
    let addr = (p as u64).to_ne_bytes();
    if libc::write(wr, addr.as_ptr().cast(), addr.len()) != addr.len() as isize {
        libc::_exit(3);
    }
    libc::close(wr);
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if null < 0 {
        libc::_exit(4);
    }
    for fd in 0..3 {
        libc::dup2(null, fd);
    }
    // Whatever else the benchmark inherited (a jobserver pipe, say) goes.
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    loop {
        libc::pause();
    }
}

/// Copies `len` bytes of `pid` starting at `addr` into `dst` (which may be
/// shorter than `len`: it is then reused, chunk after chunk), calling
/// `check(offset, chunk)` after each chunk.
fn read_remote(
    pid: i32,
    addr: u64,
    len: usize,
    dst: &mut [u8],
    mut check: impl FnMut(usize, &[u8]) -> Res<()>,
) -> Res<()> {
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        let at = if dst.len() >= len { off } else { 0 };
        let chunk = &mut dst[at..at + n];
        let local = libc::iovec {
            iov_base: chunk.as_mut_ptr().cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: (addr + off as u64) as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: `local` covers a buffer we own and may write; `remote` is
        // only interpreted in the other process.
        let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if r != n as isize {
            return Err(format!(
                "process_vm_readv of pid {pid} at {:#x}: got {r} of {n} bytes: {}",
                addr + off as u64,
                errno()
            ));
        }
        check(off, chunk)?;
        off += n;
    }
    Ok(())
}

/// Checks the whole region of a (restored) target against the pattern.
fn verify(pid: i32, addr: u64, len: usize, buf: &mut [u8]) -> Res<()> {
    read_remote(pid, addr, len, buf, |off, chunk| {
        for (i, w) in chunk.chunks_exact(8).enumerate() {
            let a = addr + (off + i * 8) as u64;
            let got = u64::from_ne_bytes(w.try_into().map_err(|_| "short word")?);
            if got != pattern(a) {
                return Err(format!(
                    "restored memory of pid {pid} differs at {a:#x}: {got:#x}, expected {:#x}",
                    pattern(a)
                ));
            }
        }
        Ok(())
    })
}

/// Writes `data` to a fresh file in `dir` (8 MiB writes, no fsync, like
/// the dump), then removes it. Returns the seconds from open to last write.
fn file_write(dir: &Path, data: &[u8]) -> Res<f64> {
    let path = dir.join("bench-write-limit.img");
    let t = Instant::now();
    let mut f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for chunk in data.chunks(CHUNK) {
        f.write_all(chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    drop(f);
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(secs)
}

/// Fresh-page materialisation: MAP_POPULATE + memcpy of `src` (timed
/// together), then a second memcpy into the now-populated mapping.
fn materialise(src: &[u8]) -> Res<(f64, f64)> {
    let t = Instant::now();
    let mut dst = Mapping::new(src.len(), true)?;
    dst.bytes_mut().copy_from_slice(src);
    let fresh = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dst.bytes_mut().copy_from_slice(src);
    let populated = t.elapsed().as_secs_f64();
    std::hint::black_box(dst.bytes()[src.len() / 2]);
    Ok((fresh, populated))
}

/// Runs crust with `args`; returns wall-clock seconds and its stderr.
fn crust(args: &[&str]) -> Res<(f64, String)> {
    let t = Instant::now();
    let out = Command::new(CRUST)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {CRUST}: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "crust {} failed ({}): {stderr}",
            args.join(" "),
            out.status
        ));
    }
    Ok((secs, stderr))
}

#[derive(Default)]
struct Samples {
    pvr: Vec<f64>,
    write: Vec<f64>,
    populate: Vec<f64>,
    memcpy: Vec<f64>,
    /// The page-run checksum (xxh3) over the same bytes: what the dump
    /// adds to compute it, and restore to verify it.
    checksum: Vec<f64>,
    dump: Vec<f64>,
    restore: Vec<f64>,
}

/// One target: limits, dump, reap, restore, verify, kill.
fn run_once(
    len: usize,
    root: &Path,
    run: usize,
    copy: &mut Mapping,
    s: &mut Samples,
    logs: &mut Vec<String>,
) -> Res<()> {
    let mut target = Target::spawn(len)?;
    let (pid, addr) = (target.pid, target.addr);

    let t = Instant::now();
    read_remote(pid, addr, len, copy.bytes_mut(), |_, _| Ok(()))?;
    s.pvr.push(t.elapsed().as_secs_f64());

    let dir = root.join(format!("images-{run}"));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    s.write.push(file_write(&dir, copy.bytes())?);

    let (fresh, populated) = materialise(copy.bytes())?;
    s.populate.push(fresh);
    s.memcpy.push(populated);

    let t = Instant::now();
    std::hint::black_box(crust::image::chain::run_checksum(addr, copy.bytes()));
    s.checksum.push(t.elapsed().as_secs_f64());

    let dir_s = dir.to_str().ok_or("image directory path is not UTF-8")?;
    let pid_s = pid.to_string();
    let (secs, log) = crust(&["dump", "-t", &pid_s, "-D", dir_s, "--display-stats", "-v"])?;
    s.dump.push(secs);
    logs.push(log);
    // crust killed it; we reap it so the pid is free for restore at once.
    target.live = false;
    reap(pid)?;

    let pidfile = root.join(format!("restore-{run}.pid"));
    let pidfile_s = pidfile.to_str().ok_or("pidfile path is not UTF-8")?;
    let restored = crust(&[
        "restore",
        "-D",
        dir_s,
        "-d",
        "--pidfile",
        pidfile_s,
        "--display-stats",
        "-v",
    ]);
    // On failure crust killed its half-built task itself; the pid is not
    // ours to kill then.
    let (secs, log) = restored?;
    target.live = true;
    s.restore.push(secs);
    logs.push(log);
    let got =
        std::fs::read_to_string(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
    if got.trim() != pid_s {
        return Err(format!("restored pid {} but dumped {pid}", got.trim()));
    }
    // SAFETY: kill with signal 0 only checks that the task exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return Err(format!("restored pid {pid} is gone: {}", errno()));
    }
    verify(pid, addr, len, copy.bytes_mut())?;
    drop(target);
    std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::remove_file(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
    Ok(())
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
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

/// The type of the filesystem holding `dir`, from /proc/self/mounts.
fn fs_name(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found = ("", "unknown");
    for line in mounts.lines() {
        let mut f = line.split_whitespace().skip(1);
        if let (Some(at), Some(ty)) = (f.next(), f.next()) {
            if dir.starts_with(at) && at.len() >= found.0.len() {
                found = (at, ty);
            }
        }
    }
    found.1.to_string()
}

fn bench() -> Res<()> {
    let mib = env_usize("CRUST_BENCH_MIB", 1024)?;
    let runs = env_usize("CRUST_BENCH_RUNS", 3)?.max(1);
    if mib == 0 {
        return Err("CRUST_BENCH_MIB must be at least 1".into());
    }
    let len = mib << 20;
    let parent = std::env::var_os("CRUST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_CHILD_SUBREAPER): {}", errno()));
    }
    let root = tempfile::Builder::new()
        .prefix("crust-bench-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let mut copy = Mapping::new(len, true)?;
    let mut s = Samples::default();
    let mut logs = Vec::new();
    for run in 0..runs {
        run_once(len, root.path(), run, &mut copy, &mut s, &mut logs)?;
        eprintln!(
            "run {}/{runs}: readv {:.3} s, write {:.3} s, populate+memcpy {:.3} s, \
             dump {:.3} s, restore {:.3} s; restored memory verified",
            run + 1,
            s.pvr[run],
            s.write[run],
            s.populate[run],
            s.dump[run],
            s.restore[run]
        );
    }
    report(&Report {
        mib,
        runs,
        parent: &parent,
        s: &s,
        logs: &logs,
    });
    Ok(())
}

struct Report<'a> {
    mib: usize,
    runs: usize,
    parent: &'a Path,
    s: &'a Samples,
    logs: &'a [String],
}

/// Best and median throughput of a series of timings, in GB/s.
#[derive(Clone, Copy)]
struct Rate {
    best: f64,
    median: f64,
}

impl Rate {
    fn of(bytes: f64, secs: &[f64]) -> Rate {
        Rate {
            best: bytes / best(secs) / 1e9,
            median: bytes / median(secs) / 1e9,
        }
    }

    fn min(self, o: Rate) -> Rate {
        Rate {
            best: self.best.min(o.best),
            median: self.median.min(o.median),
        }
    }
}

fn row(kind: &str, name: &str, r: Rate, secs: &[f64]) {
    println!(
        "{kind:<8}{name:<28}{:>7.2} GB/s {:>7.2} GB/s   ({:.3} s / {:.3} s)",
        r.best,
        r.median,
        best(secs),
        median(secs)
    );
}

/// Best against best decides: the best run of each series is the one
/// least disturbed by other work on the machine. Median against median is
/// shown too.
fn verdict(name: &str, r: Rate, limit: Rate, limit_name: &str, target: f64) {
    let best = r.best / limit.best * 100.0;
    let median = r.median / limit.median * 100.0;
    let ok = if best >= target { "PASS" } else { "MISS" };
    println!(
        "{name:<8}{best:>5.1}% of {limit_name} (median vs median: {median:.0}%), \
         target >= {target:.0}%  {ok}"
    );
}

fn report(r: &Report) {
    let s = r.s;
    let bytes = (r.mib << 20) as f64;
    let rate = |v: &[f64]| Rate::of(bytes, v);
    println!();
    println!(
        "crust dump/restore benchmark: {} MiB anonymous, {} runs; image dir in {} ({})",
        r.mib,
        r.runs,
        r.parent.display(),
        fs_name(r.parent)
    );
    println!(
        "GB/s = 1e9 bytes/s of process memory ({} bytes)",
        bytes as u64
    );
    println!("{:<36}{:>12} {:>12}", "", "best", "median");
    row("limit", "process_vm_readv", rate(&s.pvr), &s.pvr);
    row("limit", "file write (image dir)", rate(&s.write), &s.write);
    row(
        "limit",
        "MAP_POPULATE + memcpy",
        rate(&s.populate),
        &s.populate,
    );
    row("ref", "memcpy (populated)", rate(&s.memcpy), &s.memcpy);
    row(
        "ref",
        "page checksum (xxh3)",
        rate(&s.checksum),
        &s.checksum,
    );
    row("crust", "dump", rate(&s.dump), &s.dump);
    row("crust", "restore", rate(&s.restore), &s.restore);
    println!();
    let slower = rate(&s.pvr).min(rate(&s.write));
    verdict("dump", rate(&s.dump), slower, "slower of readv/write", 50.0);
    verdict(
        "restore",
        rate(&s.restore),
        rate(&s.populate),
        "materialisation",
        70.0,
    );
    println!(
        "checksums: computing them is {:.1}% of the dump's time, verifying them {:.1}% of the \
         restore's (best runs; the dump computes them on its page writer thread as it writes, \
         overlapping the copy; restore verifies them in \"read images\")",
        best(&s.checksum) / best(&s.dump) * 100.0,
        best(&s.checksum) / best(&s.restore) * 100.0
    );
    println!();
    println!("engine stats (last run):");
    for l in r.logs.iter().rev().take(2).rev() {
        println!("  {l}");
    }
    println!("(page cache not dropped: restore reads the images the dump just wrote)");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "(load average at the end: {}; other work on the CPUs makes the figures noisy)",
        load.join(" ")
    );
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump_restore benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
