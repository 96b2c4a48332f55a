//! Remote lazy migration, source side, over a veth pair between the root
//! network namespace and a new one (the destination's side runs in threads
//! moved into it with setns), for a process holding 1 GiB:
//!
//! - the lazy dump's frozen time (target < 20 ms) and the pages it copied
//!   (target: none of the lazy ones);
//! - veth TCP bandwidth, one stream, measured in the same run (the limit);
//! - background transfer of every lazy page through RemotePageSource (bulk
//!   connection), idle (target >= 70% of the link);
//! - fault latency p50/p99 on the urgent connection while a bulk transfer
//!   runs (targets p50 < 150 us, p99 < 1 ms), and that transfer's rate;
//! - how long the source lives after the destination confirms the last
//!   page;
//! - end to end (lazy dump, daemon in the namespace, restore on the same
//!   host): restore time, delivery idle and while the process reads every
//!   page, and pre-copy + post-copy (one pre-dump, 1% rewritten: frozen
//!   time, pages over the link, pages from the parent images).
//!
//! UFFDIO_COPY is not in this loop (the destination daemon is not either):
//! these are the source's and the link's figures.
//!
//! Run as root: `cargo bench -p crust --bench remote_lazy`.
//! Environment: `CRUST_BENCH_MIB` (default 1024).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crust::image::messages::{Inventory, Pagemap, PE_LAZY};
use crust::image::{ImageDir, Kind};
use crust::lazy::remote::{Channel, RemotePageSource};
use crust::pageio::PageSource;

mod common;

use common::{env_usize, errno, kill_and_reap, reap, Res};

const CRUST: &str = env!("CARGO_BIN_EXE_crust");
const LAZYSRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/progs/lazysrc.c");

fn run(cmd: &mut Command) -> Res<String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

fn ip(args: &[&str]) -> Res<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// The veth pair and namespace; removed on drop.
struct Net {
    name: String,
    root_if: String,
    root_ip: String,
}

impl Net {
    fn new() -> Res<Net> {
        let me = std::process::id();
        let name = format!("crlb-{me}");
        let root_if = format!("crlb{}r", me % 100000);
        let ns_if = format!("crlb{}n", me % 100000);
        let x = me % 250;
        let net = Net {
            name: name.clone(),
            root_if: root_if.clone(),
            root_ip: format!("10.214.{x}.1"),
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.root_ip),
            "dev",
            &root_if,
        ])?;
        ip(&["link", "set", &root_if, "up"])?;
        let ns_ip = format!("10.214.{x}.2/30");
        for a in [
            vec!["addr", "add", &ns_ip, "dev", &ns_if],
            vec!["link", "set", &ns_if, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut v = vec!["netns", "exec", &name, "ip"];
            v.extend(a);
            ip(&v)?;
        }
        Ok(net)
    }

    /// Moves the calling thread into the namespace.
    fn enter(name: &str) -> Res<()> {
        let f = std::fs::File::open(format!("/run/netns/{name}")).map_err(|e| e.to_string())?;
        // SAFETY: setns on our namespace descriptor; this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", errno()));
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One TCP stream of `bytes` from the root namespace into the other.
fn veth_bandwidth(net: &Net, bytes: usize) -> Res<f64> {
    let l = TcpListener::bind((net.root_ip.as_str(), 0)).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let name = net.name.clone();
    let reader = std::thread::spawn(move || -> Res<f64> {
        Net::enter(&name)?;
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4 << 20];
        let (mut got, t) = (0usize, Instant::now());
        while got < bytes {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("veth stream ended early".into());
            }
            got += n;
        }
        Ok(got as f64 / t.elapsed().as_secs_f64() / 1e9)
    });
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 4 << 20];
    let mut sent = 0;
    while sent < bytes {
        let n = buf.len().min(bytes - sent);
        s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        sent += n;
    }
    reader.join().map_err(|_| "reader panicked".to_string())?
}

fn lazy_runs(dir: &Path, pid: i32) -> Res<Vec<(u64, u64)>> {
    let pm: Pagemap = ImageDir::open(dir)
        .and_then(|d| d.read_pagemap(pid))
        .map_err(|e| e.to_string())?;
    Ok(pm
        .entries
        .iter()
        .filter(|e| e.flags & PE_LAZY != 0)
        .map(|e| (e.vaddr, e.nr_pages * 4096))
        .collect())
}

/// Reads every run in `chunk`-byte requests; returns bytes read.
fn fetch(c: &mut RemotePageSource, pid: i32, runs: &[(u64, u64)], chunk: u64) -> Res<u64> {
    let mut buf = vec![0u8; chunk as usize];
    let mut total = 0;
    for &(s, len) in runs {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk);
            c.read_pages(pid, s + at, &mut buf[..n as usize])
                .map_err(|e| e.to_string())?;
            at += n;
            total += n;
        }
    }
    Ok(total)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn pidfd(pid: i32) -> Res<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(format!("pidfd_open({pid}): {}", errno()));
    }
    // SAFETY: a fresh descriptor, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Starts lazysrc holding `mib` MiB and lazily dumps it into tmp/NAME,
/// serving on the veth's root side; returns its pid, the images dir and
/// the dump's output.
fn start_and_dump(
    bin: &Path,
    tmp: &Path,
    out: &Path,
    mib: usize,
    net: &Net,
    name: &str,
    precopy: bool,
) -> Res<(i32, PathBuf, String)> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new(bin);
    cmd.arg(out)
        .arg(mib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let t = Instant::now();
    while !std::fs::read_to_string(out)
        .unwrap_or_default()
        .contains("ready")
    {
        if t.elapsed() > Duration::from_secs(120) {
            kill_and_reap(pid);
            return Err("lazysrc never got ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = tmp.join(name);
    let pids = pid.to_string();
    let mut extra: Vec<String> = Vec::new();
    if precopy {
        // Pre-copy: one read-mode pre-dump with tracking, then 1% of the
        // pages rewritten (lazysrc: every 100th page on SIGUSR1).
        let pre = tmp.join(format!("{name}-pre"));
        let r = run(Command::new(CRUST).args([
            "pre-dump",
            "-t",
            &pids,
            "-D",
            pre.to_str().unwrap_or_default(),
            "--track-mem",
            "--pre-dump-mode",
            "read",
        ]));
        if let Err(e) = r {
            kill_and_reap(pid);
            return Err(e);
        }
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let t = Instant::now();
        while !std::fs::read_to_string(out)
            .unwrap_or_default()
            .contains("dirtied")
        {
            if t.elapsed() > Duration::from_secs(60) {
                kill_and_reap(pid);
                return Err("lazysrc never dirtied its pages".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        extra = vec![
            "--track-mem".into(),
            "--prev-images-dir".into(),
            format!("../{name}-pre"),
        ];
    }
    let log = run(Command::new(CRUST)
        .args([
            "dump",
            "-t",
            &pids,
            "-D",
            dir.to_str().unwrap_or_default(),
            "--lazy-pages",
            "--address",
            &net.root_ip,
            "--port",
            "0",
            "-d",
            "-v",
            "-o",
            "dump.log",
            "--lazy-timeout",
            "120",
        ])
        .args(&extra));
    let log = match log {
        Ok(l) => l,
        Err(e) => {
            kill_and_reap(pid);
            return Err(e);
        }
    };
    reap(pid)?;
    Ok((pid, dir, log))
}

fn bench() -> Res<()> {
    let mib = env_usize("CRUST_BENCH_MIB", 1024)?;
    // SAFETY: prctl with integer arguments: the serving crust (orphaned
    // when `dump -d` returns) and the twin become our children to reap.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tmp = std::env::temp_dir().join(format!("crust-rlbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let _cleanup = Cleanup(tmp.clone());
    let bin = tmp.join("lazysrc");
    run(Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(LAZYSRC))?;
    let net = Net::new()?;
    let link = veth_bandwidth(&net, mib << 20)?;

    let out = tmp.join("src.out");
    let (pid, dir, log) = start_and_dump(&bin, &tmp, &out, mib, &net, "img", false)?;
    let field = |after: &str, until: char| -> String {
        log.split(after)
            .nth(1)
            .and_then(|r| r.split(until).next())
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let frozen = field("frozen ", 'm');
    let written = field("for lazy migration: ", ' ');
    let lazy = field("pages written, ", ' ');
    let holder = field("holder ", 'm');
    let twin: i32 = field("held by pid ", ')')
        .parse()
        .map_err(|_| log.clone())?;
    let worker: i32 = std::fs::read_to_string(format!("/proc/{twin}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .ok_or("no tracer of the twin")?;
    let worker_fd = pidfd(worker)?;
    let _procs = Reap(vec![worker, twin]);
    let inv: Inventory = ImageDir::open(&dir)
        .and_then(|d| d.read(Kind::Inventory, None))
        .map_err(|e| e.to_string())?;
    let runs = lazy_runs(&dir, pid)?;
    let total: u64 = runs.iter().map(|r| r.1).sum();
    println!(
        "remote lazy, {mib} MiB over veth ({} -> netns {})",
        inv.lazy_address, net.name
    );
    println!("  veth TCP, one stream:            {link:.2} GB/s");
    println!(
        "  lazy dump: frozen {frozen} ms (holder {holder} ms), {written} pages copied, {lazy} lazy"
    );

    // Idle background transfer.
    let (name, d2, r2) = (net.name.clone(), dir.clone(), runs.clone());
    let idle = std::thread::spawn(move || -> Res<f64> {
        Net::enter(&name)?;
        let mut c =
            RemotePageSource::for_images(&d2, Channel::Bulk, None).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let n = fetch(&mut c, pid, &r2, 4 << 20)?;
        Ok(n as f64 / t.elapsed().as_secs_f64() / 1e9)
    })
    .join()
    .map_err(|_| "panicked".to_string())??;
    println!(
        "  all delivered, idle:             {idle:.2} GB/s = {:.0}% of the link ({:.0} ms for {} MiB)",
        idle / link * 100.0,
        total as f64 / idle / 1e6,
        total >> 20
    );

    // Faults while a bulk transfer runs.
    let busy = Arc::new(AtomicBool::new(true));
    let (name, d2, r2, b2) = (net.name.clone(), dir.clone(), runs.clone(), busy.clone());
    let bulk = std::thread::spawn(move || -> Res<f64> {
        Net::enter(&name)?;
        let mut c =
            RemotePageSource::for_images(&d2, Channel::Bulk, None).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let n = fetch(&mut c, pid, &r2, 4 << 20)?;
        b2.store(false, Ordering::SeqCst);
        Ok(n as f64 / t.elapsed().as_secs_f64() / 1e9)
    });
    let (name, d2, r2, b2) = (net.name.clone(), dir.clone(), runs.clone(), busy.clone());
    let faults = std::thread::spawn(move || -> Res<(Vec<f64>, RemotePageSource)> {
        Net::enter(&name)?;
        let mut c =
            RemotePageSource::for_images(&d2, Channel::Urgent, None).map_err(|e| e.to_string())?;
        let pages: Vec<u64> = r2
            .iter()
            .flat_map(|&(s, l)| (0..l / 4096).map(move |i| s + i * 4096))
            .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut lat = Vec::new();
        let mut page = vec![0u8; 4096];
        while b2.load(Ordering::SeqCst) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let a = pages[(seed % pages.len() as u64) as usize];
            let t = Instant::now();
            c.read_pages(pid, a, &mut page).map_err(|e| e.to_string())?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok((lat, c))
    });
    let under_load = bulk.join().map_err(|_| "panicked".to_string())??;
    let (mut lat, mut urgent) = faults.join().map_err(|_| "panicked".to_string())??;
    let n = lat.len();
    println!(
        "  faults during bulk ({n}): p50 {:.0} us, p99 {:.0} us, max {:.0} us; bulk meanwhile {under_load:.2} GB/s = {:.0}% of the link",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
        under_load / link * 100.0
    );

    // The source's lifetime after the confirmation.
    let (tx, rx) = std::sync::mpsc::channel();
    let name = net.name.clone();
    std::thread::spawn(move || {
        let r = Net::enter(&name).map_err(|e| e.to_string()).and_then(|_| {
            let t = Instant::now();
            urgent.all_delivered().map_err(|e| e.to_string())?;
            Ok(t)
        });
        let _ = tx.send(r);
    });
    let confirmed = rx.recv().map_err(|e| e.to_string())??;
    let acked = confirmed.elapsed();
    let mut pfd = libc::pollfd {
        fd: worker_fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 10_000) };
    let gone = confirmed.elapsed();
    println!(
        "  source exit after DONE sent: {:.2} ms (DONE_ACK received after {:.2} ms)",
        gone.as_secs_f64() * 1e3,
        acked.as_secs_f64() * 1e3
    );
    end_to_end(&bin, &tmp, mib, &net, link, false, false)?;
    end_to_end(&bin, &tmp, mib, &net, link, true, false)?;
    end_to_end(&bin, &tmp, mib, &net, link, false, true)?;
    Ok(())
}

/// The whole migration: lazy dump, `crust lazy-pages --page-server` in the
/// namespace, `crust restore --lazy-pages` (same host, same pid). `busy`:
/// the restored process reads every page at once (SIGTERM makes lazysrc
/// check them all), so faults race the background transfer.
///
/// `precopy`: a read-mode pre-dump and 1% of the pages rewritten come
/// first; the lazy dump then leaves only those to the network, and the
/// parent's pages are delivered by the daemon from the local images.
fn end_to_end(
    bin: &Path,
    tmp: &Path,
    mib: usize,
    net: &Net,
    link: f64,
    busy: bool,
    precopy: bool,
) -> Res<()> {
    let name = match (busy, precopy) {
        (_, true) => "e2e-precopy",
        (true, false) => "e2e-busy",
        (false, false) => "e2e-idle",
    };
    let out = tmp.join(format!("{name}.out"));
    let (pid, dir, log) = start_and_dump(bin, tmp, &out, mib, net, name, precopy)?;
    let frozen = log
        .split("frozen ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?")
        .to_string();
    let d = dir.to_str().unwrap_or_default();
    let twin: i32 = log
        .split("held by pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .ok_or("no holder pid in the dump's output")?;
    let worker: i32 = std::fs::read_to_string(format!("/proc/{twin}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse().ok())
        .ok_or("no tracer of the twin")?;
    let lpid = tmp.join(format!("{name}.lazy.pid"));
    run(Command::new("ip")
        .args(["netns", "exec", &net.name, CRUST, "lazy-pages", "-D", d])
        .args(["--page-server", "-d", "-o", "lazy.log", "--pidfile"])
        .arg(&lpid)
        .stdin(Stdio::null()))?;
    let daemon: i32 = std::fs::read_to_string(&lpid)
        .map_err(|e| e.to_string())?
        .trim()
        .parse()
        .map_err(|_| "daemon pidfile".to_string())?;
    let _procs = Reap(vec![worker, twin, daemon, pid]);
    let rpid = tmp.join(format!("{name}.restored.pid"));
    let t = Instant::now();
    let rlog = run(Command::new(CRUST)
        .args([
            "restore",
            "-D",
            d,
            "--lazy-pages",
            "-d",
            "-v",
            "--pid-wait",
            "30",
            "--pidfile",
        ])
        .arg(&rpid)
        .stdin(Stdio::null()))?;
    let restored_in = t.elapsed();
    // restore's own clock: from its start until the task was let go.
    let runs_after = rlog
        .split("restored pid ")
        .nth(1)
        .and_then(|r| r.split(" in ").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?")
        .to_string();
    if busy {
        // SAFETY: kill(2) of the process we just restored (our child).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    reap(daemon)?;
    let stats: crust::image::messages::LazyStats = ImageDir::open(&dir)
        .and_then(|i| i.read(Kind::LazyStats, None))
        .map_err(|e| e.to_string())?;
    reap(worker)?;
    if !busy {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    reap(pid)?;
    let verdict = std::fs::read_to_string(&out).unwrap_or_default();
    if !verdict.contains("OK") {
        return Err(format!("{name}: restored memory differs: {verdict}"));
    }
    let dlog = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
    let after = dlog
        .split("exiting ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or("?")
        .to_string();
    let bytes = stats.pages_lazy as f64 * 4096.0;
    let gbs = bytes / (stats.total_us as f64 / 1e6) / 1e9;
    if precopy {
        println!(
            "  pre-copy + post-copy, 1% dirtied after the pre-dump: lazy dump frozen {frozen} ms; task running after {runs_after} ms (restore command returned after {:.1} ms); {} pages over the link (lazy), {} from the parent images by the daemon, {} filled by restore; all delivered {:.0} ms after the handoff; memory checked OK",
            restored_in.as_secs_f64() * 1e3,
            stats.pages_lazy,
            stats.pages_parent,
            stats.pages_eager_dump + stats.pages_eager_parent,
            stats.total_us as f64 / 1e3,
        );
        return Ok(());
    }
    println!(
        "  end to end, {}: task running after {runs_after} ms (restore command returned after {:.1} ms); all {} MiB delivered in {:.0} ms = {gbs:.2} GB/s = {:.0}% of the link; {} faults p50 {:.0} us p99 {:.0} us; source exited {after} us after the confirmation; memory checked OK",
        if busy { "process reading every page" } else { "process idle" },
        restored_in.as_secs_f64() * 1e3,
        stats.pages_lazy >> 8,
        stats.total_us as f64 / 1e3,
        gbs / link * 100.0,
        stats.faults,
        stats.fault_p50_ns as f64 / 1e3,
        stats.fault_p99_ns as f64 / 1e3,
    );
    Ok(())
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps the serving crust and the twin, whatever happened.
struct Reap(Vec<i32>);
impl Drop for Reap {
    fn drop(&mut self) {
        for &p in &self.0 {
            kill_and_reap(p);
        }
    }
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remote_lazy bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
