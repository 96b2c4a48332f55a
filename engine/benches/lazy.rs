//! Local lazy restore (post-copy): how soon the process runs, how fast a
//! fault is served while the background transfer runs, and how long until
//! every page is delivered, idle and with the process touching pages at
//! random, each next to the UFFDIO_COPY bandwidth measured in the same run
//! (4 MiB chunks into a registered region, from the image's mapped pages
//! file, what the daemon copies from; and from a warm buffer).
//!
//! Per size (1 GiB and 4 GiB by default): a target (tests/progs/lazymem.c)
//! fills its memory with a pseudo-random pattern and is dumped; then, twice
//! (idle, touching), `crust lazy-pages -D DIR -d` and `crust restore -D DIR
//! --lazy-pages -d` run, the daemon exits by itself once every page is
//! delivered, and the restored task checks every page of its memory.
//! Touching: the task's command file asks it, before the restore, to touch
//! N pages at random as soon as it runs and to time each first touch.
//!
//! Targets: restore < 10 ms and flat in size; fault p50 < 50 us; delivery
//! ≥ 70% of the UFFDIO_COPY bandwidth. A missed target is reported, not an
//! error; a failed crust command or wrong memory is.
//!
//! Run as root: `cargo bench -p crust --bench lazy`.
//! Environment: `CRUST_LAZY_SIZES` (MiB, comma-separated; default
//! `1024,4096`), `CRUST_LAZY_TOUCHES` (default 20000), `CRUST_BENCH_DIR`
//! (parent of the image directories; default the system temporary
//! directory).

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
const PROGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/progs");
const RESTORE_TARGET_MS: f64 = 10.0;
const FAULT_P50_TARGET_US: f64 = 50.0;
const DELIVERY_TARGET: f64 = 0.70;
const TIMEOUT: Duration = Duration::from_secs(300);

fn crust(args: &[&str]) -> Res<(String, Duration)> {
    let t = Instant::now();
    let out = Command::new(CRUST)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running crust: {e}"))?;
    let elapsed = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("crust {args:?} failed ({}): {stderr}", out.status));
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned() + &stderr,
        elapsed,
    ))
}

fn wait_for(what: &str, mut f: impl FnMut() -> Option<String>) -> Res<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The line of command `n` in the target's output after byte `from`,
/// without "n ".
fn result(out: &Path, n: u32, from: usize) -> Res<String> {
    let prefix = format!("{n} ");
    wait_for(&format!("command {n} of the target"), || {
        let text = std::fs::read_to_string(out).ok()?;
        let text = text.get(from..)?;
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .filter(|_| text.ends_with('\n'))
            .map(|l| l[prefix.len()..].to_string())
    })
}

fn commands(cmd: &Path, lines: &[String]) -> Res<()> {
    let tmp = cmd.with_extension("new");
    std::fs::write(&tmp, lines.join("\n") + "\n").map_err(|e| format!("{e}"))?;
    std::fs::rename(&tmp, cmd).map_err(|e| format!("{e}"))
}

/// UFFDIO_COPY bandwidth (GB/s): `size` bytes into a registered region,
/// 4 MiB per call, from `from` (the image's mapped pages file) or, if
/// None, from a warm 4 MiB buffer used again and again.
fn uffdio_copy_bandwidth(size: usize, from: Option<&[u8]>) -> Res<f64> {
    use crust::sys::uffd;
    const CHUNK: usize = 4 << 20;
    // SAFETY: userfaultfd takes flags; 1 = UFFD_USER_MODE_ONLY.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1) };
    if fd < 0 {
        return Err(format!("userfaultfd: {}", errno()));
    }
    // SAFETY: fresh descriptor, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    uffd::api(&fd, 0).map_err(|e| format!("UFFDIO_API: {e}"))?;
    // SAFETY: anonymous mapping, checked below, unmapped at the end.
    let dst = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if dst == libc::MAP_FAILED {
        return Err(format!("mmap: {}", errno()));
    }
    let src: Vec<u8> = (0..CHUNK).map(|i| (i * 7) as u8).collect();
    let r = (|| {
        uffd::register_missing(&fd, dst as u64, size as u64)
            .map_err(|e| format!("UFFDIO_REGISTER: {e}"))?;
        let t = Instant::now();
        let mut at = 0;
        while at < size {
            let len = CHUNK.min(size - at);
            let p = match from {
                Some(f) => f[at..at + len].as_ptr(),
                None => src.as_ptr(),
            };
            // SAFETY: p points at len readable bytes (src holds CHUNK,
            // `from` holds `size`).
            unsafe { uffd::copy(fd.as_fd(), dst as u64 + at as u64, p, len as u64, false) }
                .map_err(|(_, e)| format!("UFFDIO_COPY: {e}"))?;
            at += len;
        }
        Ok(size as f64 / t.elapsed().as_secs_f64() / 1e9)
    })();
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(dst, size) };
    r
}

struct Run {
    /// crust restore's own figure, and the command's wall time.
    restore_ms: f64,
    restore_wall_ms: f64,
    delivery_ms: f64,
    lazy_bytes: u64,
    delivered_at_restore_end: u64,
    daemon_p50_us: f64,
    daemon_p99_us: f64,
    /// From the task: first-touch latency of its random pages.
    touch: Option<(u64, f64, f64)>,
}

fn stats(dir: &Path) -> Res<serde_json::Value> {
    let (out, _) = crust(&["show", dir.join("lazy-stats.img").to_str().unwrap_or("")])?;
    let json = out
        .find('{')
        .map(|i| &out[i..])
        .ok_or("crust show printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("{e}"))?;
    Ok(v["message"].clone())
}

/// One lazy restore of `dir`: daemon, restore, wait for the daemon, check
/// the memory, kill the task.
fn one_run(dir: &Path, pid: i32, out: &Path, cmd: &Path, touches: usize) -> Res<Run> {
    // The task appends to `out` (restored as it was: restore runs with
    // --skip-file-checks, as the first run's task wrote to it since).
    let from = std::fs::metadata(out)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let _ = std::fs::remove_file(cmd);
    let d = dir.to_str().ok_or("path")?;
    let dpid_file = dir.with_extension("daemon.pid");
    crust(&[
        "lazy-pages",
        "-D",
        d,
        "-d",
        "--pidfile",
        dpid_file.to_str().ok_or("path")?,
    ])?;
    let dpid: i32 = std::fs::read_to_string(&dpid_file)
        .map_err(|e| format!("daemon pidfile: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("daemon pid: {e}"))?;
    let mut next = 1;
    if touches > 0 {
        commands(cmd, &[format!("1 touch {touches}")])?;
        next = 2;
    }
    let (text, wall) = match crust(&[
        "restore",
        "-D",
        d,
        "--lazy-pages",
        "-d",
        "-v",
        "--skip-file-checks",
    ]) {
        Ok(r) => r,
        Err(e) => {
            kill_and_reap(dpid);
            return Err(e);
        }
    };
    let restore_ms: f64 = text
        .split("restored pid ")
        .nth(1)
        .and_then(|r| r.split(" in ").nth(1))
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no restore time in: {text}"))?;
    let status = reap(dpid)?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        kill_and_reap(pid);
        return Err(format!("the daemon ended with status {status:#x}"));
    }
    let s = stats(dir)?;
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let touch = if touches > 0 {
        let r = result(out, 1, from)?;
        let w: Vec<&str> = r.split_whitespace().collect();
        match w.as_slice() {
            ["touch", _, "faults", count, "p50", p50, "p99", p99] => Some((
                count.parse().unwrap_or(0),
                p50.parse::<f64>().unwrap_or(0.0) / 1e3,
                p99.parse::<f64>().unwrap_or(0.0) / 1e3,
            )),
            _ => {
                kill_and_reap(pid);
                return Err(format!("target: {r}"));
            }
        }
    } else {
        None
    };
    let mut lines = if touches > 0 {
        vec![format!("1 touch {touches}")]
    } else {
        vec![]
    };
    lines.push(format!("{next} check"));
    commands(cmd, &lines)?;
    let check = result(out, next, from);
    kill_and_reap(pid);
    let check = check?;
    if check != "check ok" {
        return Err(format!("restored memory is wrong: {check}"));
    }
    Ok(Run {
        restore_ms,
        restore_wall_ms: wall.as_secs_f64() * 1e3,
        delivery_ms: n("total_us") as f64 / 1e3,
        lazy_bytes: n("pages_lazy") * 4096,
        delivered_at_restore_end: n("delivered_at_restore_end"),
        daemon_p50_us: n("fault_p50_ns") as f64 / 1e3,
        daemon_p99_us: n("fault_p99_ns") as f64 / 1e3,
        touch,
    })
}

fn bench_size(base: &Path, bin: &Path, mib: usize, touches: usize) -> Res<()> {
    let tmp = base.join(format!("crust-lazy-bench-{}-{mib}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{e}"))?;
    let r = (|| {
        let out = tmp.join("out");
        let cmd = tmp.join("cmd");
        let mut c = Command::new(bin);
        c.arg(mib.to_string())
            .arg("777")
            .arg(&out)
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid and close_range are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| format!("spawn lazymem: {e}"))?;
        let pid = child.id() as i32;
        if let Err(e) = wait_for("the target to fill its memory", || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|t| t.contains("ready"))
                .map(|_| String::new())
        }) {
            kill_and_reap(pid);
            return Err(e);
        }
        let dir = tmp.join("img");
        let dumped = crust(&[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            dir.to_str().ok_or("path")?,
        ]);
        kill_and_reap(pid);
        dumped?;
        // The limits: best of three, from the image's pages file, mapped
        // and read once (as the daemon's checksum pass at start leaves
        // it), and from a warm buffer.
        let mut warm_bw: f64 = 0.0;
        let mut copy_bw: f64 = 0.0;
        let pages = std::fs::read_dir(&dir)
            .map_err(|e| format!("{e}"))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
            })
            .ok_or("no pages file")?;
        let reader = crust::image::PagesReader::open(&pages).map_err(|e| format!("{e}"))?;
        let data = reader.bytes(0, reader.data_len()).ok_or("pages file")?;
        let size = data.len().min(mib << 20) & !4095;
        let sum = data.iter().step_by(4096).fold(0u64, |a, &b| a + b as u64);
        std::hint::black_box(sum);
        for _ in 0..3 {
            warm_bw = warm_bw.max(uffdio_copy_bandwidth(mib << 20, None)?);
            copy_bw = copy_bw.max(uffdio_copy_bandwidth(size, Some(&data[..size]))?);
        }
        drop(reader);
        let idle = one_run(&dir, pid, &out, &cmd, 0)?;
        let busy = one_run(&dir, pid, &out, &cmd, touches)?;
        let gbs = |r: &Run| r.lazy_bytes as f64 / (r.delivery_ms / 1e3) / 1e9;
        let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
        println!(
            "\n{mib} MiB: UFFDIO_COPY (4 MiB chunks, best of 3) from the mapped pages file {copy_bw:.2} GB/s (the limit below), from a warm 4 MiB buffer {warm_bw:.2} GB/s"
        );
        for (name, r) in [("idle", &idle), ("touching", &busy)] {
            println!(
                "  {name:<9} restore {:.1} ms (command {:.1} ms) [{}]; all {} MiB delivered {:.0} ms after the handoff: {:.2} GB/s = {:.0}% of UFFDIO_COPY [{}]; {} pages delivered when restore returned",
                r.restore_ms,
                r.restore_wall_ms,
                mark(r.restore_ms < RESTORE_TARGET_MS),
                r.lazy_bytes >> 20,
                r.delivery_ms,
                gbs(r),
                100.0 * gbs(r) / copy_bw,
                mark(gbs(r) >= DELIVERY_TARGET * copy_bw),
                r.delivered_at_restore_end,
            );
            if let Some((count, p50, p99)) = r.touch {
                println!(
                    "            {count} faults among {touches} random first touches during the transfer: p50 {p50:.1} us, p99 {p99:.1} us [{}]; daemon service p50 {:.1} us, p99 {:.1} us",
                    mark(p50 < FAULT_P50_TARGET_US),
                    r.daemon_p50_us,
                    r.daemon_p99_us
                );
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    // SAFETY: prctl with integer arguments: restored tasks and the daemon
    // reparent to us, to be reaped.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let run = || -> Res<()> {
        let sizes: Vec<usize> = std::env::var("CRUST_LAZY_SIZES")
            .unwrap_or_else(|_| "1024,4096".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|e| format!("CRUST_LAZY_SIZES: {e}"))
            })
            .collect::<Res<_>>()?;
        let touches = env_usize("CRUST_LAZY_TOUCHES", 20000)?;
        let base = std::env::var("CRUST_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let bin = base.join(format!("crust-lazymem-{}", std::process::id()));
        let cc = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(Path::new(PROGS).join("lazymem.c"))
            .status()
            .map_err(|e| format!("cc: {e}"))?;
        if !cc.success() {
            return Err("cc lazymem.c failed".into());
        }
        let r = sizes
            .iter()
            .try_for_each(|&mib| bench_size(&base, &bin, mib, touches));
        let _ = std::fs::remove_file(&bin);
        r
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazy bench: {e}");
            ExitCode::FAILURE
        }
    }
}
