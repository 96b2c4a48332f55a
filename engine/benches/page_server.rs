//! Diskless migration: how fast dump and pre-dump (read and splice mode)
//! move page data to a page server on loopback, next to the loopback TCP
//! bandwidth measured in the same run (1 GiB through a plain socket pair
//! in this process, buffer to buffer) and the same dump to a local pages
//! file.
//!
//! Per run: a forked target holds SIZE of written anonymous memory; a
//! `crust page-server -d` on 127.0.0.1 (kernel-chosen port) receives one
//! pre-dump or dump from `crust ... --page-server`; the figure is the page
//! data sent over the client command's wall time (process start to exit,
//! the server's confirmation of the inventory included). The last dump is
//! restored from the server's directory and the restored task checks every
//! word of its memory.
//!
//! Run as root: `cargo bench -p crust --bench page_server`.
//! Environment: `CRUST_PS_MIB` (default 1024), `CRUST_PS_RUNS` (best of,
//! default 3), `CRUST_BENCH_DIR` (parent of the image directories;
//! default the system temporary directory).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");

fn pattern(addr: u64) -> u64 {
    (addr ^ 0x7061_6765_7365_7276).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// A forked child holding `len` bytes of written memory; on SIGTERM it
/// checks every word and exits 0 (all right) or 1.
struct Target {
    pid: i32,
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
        // SAFETY: the benchmark is single-threaded here; the child makes
        // raw system calls and memory writes only, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno()));
        }
        if pid == 0 {
            // SAFETY: child side of the fork of a single-threaded process.
            unsafe { target_main(rd, wr, len) }
        }
        let mut b = [0u8; 1];
        // SAFETY: close our write end, then wait for the child's end of
        // file (it closes the pipe once its memory is written).
        let n = unsafe {
            libc::close(wr);
            let n = libc::read(rd, b.as_mut_ptr().cast(), 1);
            libc::close(rd);
            n
        };
        if n != 0 {
            kill_and_reap(pid);
            return Err(format!("target {pid} did not become ready"));
        }
        Ok(Target { pid, live: true })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.live {
            kill_and_reap(self.pid);
        }
    }
}

/// # Safety
/// Only in a freshly forked child of a single-threaded process.
unsafe fn target_main(rd: i32, wr: i32, len: usize) -> ! {
    // SAFETY: raw system calls and writes within the mapping made here.
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
        let words = p as *mut u64;
        for w in 0..len / 8 {
            words
                .add(w)
                .write_volatile(pattern(p as u64 + w as u64 * 8));
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
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
        libc::close(wr as i32);
        loop {
            if libc::sigwaitinfo(&set, std::ptr::null_mut()) == libc::SIGTERM {
                for w in 0..len / 8 {
                    if words.add(w).read_volatile() != pattern(p as u64 + w as u64 * 8) {
                        libc::_exit(1);
                    }
                }
                libc::_exit(0);
            }
        }
    }
}

fn crust(args: &[&str]) -> Res<String> {
    let out = Command::new(CRUST)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {CRUST}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "crust {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(stdout)
}

/// Starts `crust page-server -d` into `dir`; returns its pid and port.
fn server(dir: &Path) -> Res<(i32, String)> {
    let pidfile = dir.with_extension("pid");
    let line = crust(&[
        "page-server",
        "-D",
        &dir.to_string_lossy(),
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "--pidfile",
        &pidfile.to_string_lossy(),
    ])?;
    let port = line
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .ok_or_else(|| format!("page-server printed {line:?}"))?;
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {}", pidfile.display()))?;
    Ok((pid, port))
}

/// 1 GiB (or `bytes`) through a loopback TCP connection, buffer to buffer.
fn loopback(bytes: usize) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let rx = std::thread::spawn(move || -> Res<usize> {
        let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let mut buf = vec![0u8; 8 << 20];
        let mut got = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    });
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let buf = vec![0x5au8; 8 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        s.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
        left -= n;
    }
    drop(s);
    let got = rx.join().map_err(|_| "receiver panicked".to_string())??;
    let secs = t.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!("loopback: {got} of {bytes} bytes arrived"));
    }
    Ok(bytes as f64 / secs / 1e9)
}

/// Writing `bytes` from a buffer into a new file under `dir` (page cache,
/// no fsync): what the page server does with what it receives.
fn file_write(dir: &Path, bytes: usize) -> Res<f64> {
    let path = dir.join("write-limit");
    let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let buf = vec![0x5au8; 8 << 20];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).map_err(|e| format!("write: {e}"))?;
        left -= n;
    }
    drop(f);
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(bytes as f64 / secs / 1e9)
}

struct Case {
    name: &'static str,
    cmd: &'static str,
    extra: &'static [&'static str],
    to_server: bool,
}

const CASES: [Case; 6] = [
    Case {
        name: "pre-dump read  -> page server",
        cmd: "pre-dump",
        extra: &["--pre-dump-mode", "read"],
        to_server: true,
    },
    Case {
        name: "pre-dump splice -> page server",
        cmd: "pre-dump",
        extra: &["--pre-dump-mode", "splice"],
        to_server: true,
    },
    Case {
        name: "dump           -> page server",
        cmd: "dump",
        extra: &[],
        to_server: true,
    },
    Case {
        name: "pre-dump read  -> local file",
        cmd: "pre-dump",
        extra: &["--pre-dump-mode", "read"],
        to_server: false,
    },
    Case {
        name: "pre-dump splice -> local file",
        cmd: "pre-dump",
        extra: &["--pre-dump-mode", "splice"],
        to_server: false,
    },
    Case {
        name: "dump           -> local file",
        cmd: "dump",
        extra: &[],
        to_server: false,
    },
];

/// One run of `case` against `target`; returns seconds. A dump kills the
/// target (reaped here).
fn run(case: &Case, target: &mut Target, root: &Path, keep: bool) -> Res<f64> {
    let src = root.join("src");
    let dst = root.join("dst");
    for d in [&src, &dst] {
        let _ = std::fs::remove_dir_all(d);
    }
    let pid = target.pid.to_string();
    let srv = if case.to_server {
        Some(server(&dst)?)
    } else {
        None
    };
    let mut args = vec![case.cmd, "-t", &pid, "-D", src.to_str().unwrap_or_default()];
    args.extend_from_slice(case.extra);
    if let Some((_, port)) = &srv {
        args.extend_from_slice(&["--page-server", "--address", "127.0.0.1", "--port", port]);
    }
    let t = Instant::now();
    let out = crust(&args);
    let secs = t.elapsed().as_secs_f64();
    if let Some((spid, _)) = srv {
        if out.is_err() {
            kill_and_reap(spid);
        } else {
            let st = reap(spid)?;
            if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
                return Err(format!("page server exited with status {st:#x}"));
            }
        }
    }
    out?;
    if case.cmd == "dump" {
        reap(target.pid)?;
        target.live = false;
        if keep {
            verify_restore(&dst, target.pid)?;
        }
    }
    Ok(secs)
}

/// Restores the server's copy and lets the restored task check its memory.
fn verify_restore(dir: &Path, pid: i32) -> Res<()> {
    crust(&["restore", "-d", "-D", &dir.to_string_lossy()])?;
    // SAFETY: kill(2) of the restored task, reparented to us (subreaper).
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!("kill({pid}): {}", errno()));
    }
    let st = reap(pid)?;
    if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
        return Err(format!(
            "the task restored from the page server's images found its memory wrong (status {st:#x})"
        ));
    }
    Ok(())
}

fn bench() -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("run as root".into());
    }
    // SAFETY: prctl with integer arguments: restored tasks and page-server
    // daemons reparent to us.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mib = env_usize("CRUST_PS_MIB", 1024)?;
    let runs = env_usize("CRUST_PS_RUNS", 3)?.max(1);
    let base = std::env::var_os("CRUST_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let root = base.join(format!("crust-ps-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let len = mib << 20;
    let (mut lo, mut fw) = (0f64, 0f64);
    for _ in 0..runs {
        lo = lo.max(loopback(1 << 30)?);
        fw = fw.max(file_write(&root, 1 << 30)?);
    }
    println!("page server benchmark: {mib} MiB target, best of {runs} runs");
    println!("loopback TCP, one stream, 1 GiB buffer to buffer: {lo:.2} GB/s");
    println!(
        "1 GiB buffer to a new file in {} (page cache): {fw:.2} GB/s",
        root.display()
    );
    println!(
        "{:<32} {:>9} {:>8} {:>12}",
        "case", "time ms", "GB/s", "of loopback"
    );
    let result = (|| -> Res<()> {
        let mut pre_target: Option<Target> = None;
        for case in &CASES {
            let mut best = f64::MAX;
            for i in 0..runs {
                let secs = if case.cmd == "dump" {
                    let mut t = Target::spawn(len)?;
                    run(case, &mut t, &root, case.to_server && i == runs - 1)?
                } else {
                    if pre_target.is_none() {
                        pre_target = Some(Target::spawn(len)?);
                    }
                    let t = pre_target.as_mut().ok_or("no target")?;
                    run(case, t, &root, false)?
                };
                best = best.min(secs);
            }
            let gbs = len as f64 / best / 1e9;
            println!(
                "{:<32} {:>9.1} {:>8.2} {:>11.0}%",
                case.name,
                best * 1e3,
                gbs,
                gbs / lo * 100.0
            );
        }
        println!("(the last dump to a page server was restored from the server's directory and checked word by word)");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("page_server benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
