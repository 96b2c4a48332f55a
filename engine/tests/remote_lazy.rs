//! Remote lazy migration, the source side: `dump --lazy-pages` leaves the
//! pages of private anonymous memory at the source, kills the task (its
//! pid is free at once), and serves the pages from a twin holding its
//! memory; the client (RemotePageSource) fetches every byte, also across a
//! dropped connection; with no destination, the pages end up in DIR.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crust::image::messages::{Inventory, LazyStats, Pagemap, PE_LAZY};
use crust::image::{ImageDir, Kind};
use crust::lazy::remote::{Channel, RemotePageSource};
use crust::pageio::PageSource;

/// The word lazysrc.c stores at word `word` of page `page`.
fn pattern(page: u64, word: u64, version: u64) -> u64 {
    (page + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ word.wrapping_mul(0xff51_afd7_ed55_8ccd)
        ^ (version << 56)
}

/// A running lazysrc: its pattern region and result file.
struct Src {
    proc: Proc,
    out: PathBuf,
    base: u64,
    pages: u64,
}

/// Where the pattern lies.
#[derive(Clone, Copy)]
struct Region {
    base: u64,
    pages: u64,
}

impl Src {
    fn region(&self) -> Region {
        Region {
            base: self.base,
            pages: self.pages,
        }
    }
}

fn start_src(tmp: &Path, mib: u64) -> Src {
    let bin = compile_c(tmp, "lazysrc.c", &[]);
    let out = tmp.join("lazysrc.out");
    let proc = spawn_daemon(Command::new(bin).arg(&out).arg(mib.to_string()));
    let text = wait_file_contains(&out, "ready", TIMEOUT);
    let line = text.lines().next().expect("ready line");
    let f: Vec<&str> = line.split_whitespace().collect();
    let base = u64::from_str_radix(f[1], 16).expect("base");
    let pages = f[2].parse().expect("pages");
    Src {
        proc,
        out,
        base,
        pages,
    }
}

/// Checks `data`, read at `vaddr`, against the pattern where it lies in
/// the source's region; `version` gives each page's version.
fn check_bytes(src: Region, vaddr: u64, data: &[u8], version: &dyn Fn(u64) -> u64) -> u64 {
    let mut checked = 0;
    for (i, page) in data.chunks(4096).enumerate() {
        let addr = vaddr + i as u64 * 4096;
        if addr < src.base || addr >= src.base + src.pages * 4096 {
            continue;
        }
        let p = (addr - src.base) / 4096;
        for (w, word) in page.chunks(8).enumerate() {
            let got = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let want = pattern(p, w as u64, version(p));
            assert_eq!(got, want, "page {p} word {w} at {addr:#x}");
        }
        checked += 1;
    }
    checked
}

/// The source side after `dump --lazy-pages -d` returned: the serving
/// crust (reparented to us) and the twin holding the memory.
struct Served {
    worker: Proc,
    twin: Proc,
    twin_pid: i32,
}

impl Served {
    /// Waits for the serving crust to exit 0 and the twin to die with it.
    fn wait_exit(mut self) -> Duration {
        let t = Instant::now();
        assert_eq!(self.worker.wait(TIMEOUT), Exit::Code(0), "serving crust");
        let took = t.elapsed();
        assert_eq!(
            self.twin.wait(TIMEOUT),
            Exit::Signal(libc::SIGKILL),
            "the twin dies with the serving crust"
        );
        took
    }
}

/// `crust dump --lazy-pages -d` of `src` into `dir`; checks the task is
/// gone (and its pid free) when the command returns.
fn lazy_dump(src: &mut Src, dir: &Path, extra: &[&str]) -> Served {
    let pid = src.proc.pid.to_string();
    let mut args = vec![
        "dump",
        "-t",
        &pid,
        "-D",
        path_str(dir),
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "-d",
        "--display-stats",
    ];
    args.extend_from_slice(extra);
    let out = crust(&args);
    out.assert_ok();
    assert_eq!(
        src.proc.wait(TIMEOUT),
        Exit::Signal(libc::SIGKILL),
        "the dumped task is killed before -d returns"
    );
    assert_pid_free(src.proc.pid, "after dump --lazy-pages -d");
    let log =
        out.stderr.clone() + &std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
    let twin_pid: i32 = log
        .split("held by pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'held by pid' in: {log}"));
    let tracer: i32 = status_field(twin_pid, "TracerPid")
        .and_then(|t| t.parse().ok())
        .expect("twin's tracer");
    assert_ne!(tracer, 0, "the twin is traced by the serving crust");
    Served {
        worker: Proc::adopt(tracer),
        twin: Proc::adopt(twin_pid),
        twin_pid,
    }
}

fn inventory(dir: &Path) -> Inventory {
    ImageDir::open(dir)
        .and_then(|d| d.read(Kind::Inventory, None))
        .expect("inventory")
}

fn pagemap(dir: &Path, pid: i32) -> Pagemap {
    ImageDir::open(dir)
        .and_then(|d| d.read_pagemap(pid))
        .expect("pagemap")
}

fn lazy_runs(pm: &Pagemap) -> Vec<(u64, u64)> {
    pm.entries
        .iter()
        .filter(|e| e.flags & PE_LAZY != 0)
        .map(|e| (e.vaddr, e.nr_pages * 4096))
        .collect()
}

/// Reads every lazy run through `src` in `chunk`-byte requests, checks
/// the pattern; returns the pattern pages checked.
fn fetch_all(
    client: &mut RemotePageSource,
    pid: i32,
    runs: &[(u64, u64)],
    chunk: u64,
    src: Region,
    version: &dyn Fn(u64) -> u64,
) -> u64 {
    let mut buf = vec![0u8; chunk as usize];
    let mut checked = 0;
    for &(start, len) in runs {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk);
            let b = &mut buf[..n as usize];
            client
                .read_pages(pid, start + at, b)
                .unwrap_or_else(|e| panic!("read {:#x}+{n:#x}: {e}", start + at));
            checked += check_bytes(src, start + at, b, version);
            at += n;
        }
    }
    checked
}

/// (a) 64 MiB served after the task is gone: -d returns with the pid
/// free, the frozen part copied no lazy page, the twin holds no
/// descriptor, every byte arrives over the bulk and the urgent
/// connections, and the source exits as soon as it is told.
#[test]
fn lazy_pages_are_served_after_the_source_is_gone() {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 64);
    let pid = src.proc.pid;
    let dir = tmp.path().join("img");
    let served = lazy_dump(&mut src, &dir, &["--lazy-timeout", "60"]);

    let inv = inventory(&dir);
    assert!(inv.lazy_address.starts_with("127.0.0.1:"), "{inv:?}");
    let pm = pagemap(&dir, pid);
    let runs = lazy_runs(&pm);
    let lazy_bytes: u64 = runs.iter().map(|r| r.1).sum();
    assert_eq!(inv.lazy_pages * 4096, lazy_bytes);
    let region = (src.base, src.base + src.pages * 4096);
    assert!(
        runs.iter()
            .any(|&(s, l)| s <= region.0 && region.1 <= s + l),
        "the 64 MiB region is one lazy run: {runs:x?}"
    );
    let pages_file = std::fs::metadata(dir.join(&pm.pages_file))
        .expect("pages file")
        .len();
    assert!(
        pages_file < 1 << 20,
        "the pages file holds only eager pages, {pages_file} bytes"
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", served.twin_pid))
        .expect("twin fd dir")
        .collect();
    assert!(fds.is_empty(), "the twin holds descriptors: {fds:?}");

    let mut bulk = RemotePageSource::for_images(&dir, Channel::Bulk, None).expect("bulk");
    let mut urgent = RemotePageSource::for_images(&dir, Channel::Urgent, None).expect("urgent");
    assert_eq!(bulk.pid, pid);
    // Faults while the background reads: single pages, at random places.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut page = vec![0u8; 4096];
    let mut faults = 0;
    for _ in 0..256 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let p = seed % src.pages;
        let addr = src.base + p * 4096;
        urgent.read_pages(pid, addr, &mut page).expect("fault read");
        faults += check_bytes(src.region(), addr, &page, &|_| 0);
    }
    assert_eq!(faults, 256);
    let checked = fetch_all(&mut bulk, pid, &runs, 4 << 20, src.region(), &|_| 0);
    assert_eq!(checked, src.pages, "every page of the region was checked");
    // A range the dump never listed is refused, not served.
    let mut one = vec![0u8; 4096];
    assert!(urgent.read_pages(pid, 0x1000, &mut one).is_err());
    let mut urgent = RemotePageSource::for_images(&dir, Channel::Urgent, None).expect("urgent");
    let told = Instant::now();
    urgent.all_delivered().expect("all delivered");
    let lifetime = told.elapsed() + served.wait_exit();
    eprintln!(
        "source gone {:.1} ms after the confirmation",
        lifetime.as_secs_f64() * 1e3
    );
    assert!(
        lifetime < Duration::from_secs(2),
        "source lingered {lifetime:?}"
    );
}

/// (b) The destination never comes: after --lazy-timeout the source
/// writes the pages it holds into DIR, which a plain restore then restores
/// with every byte right.
#[test]
fn pages_are_written_back_when_no_destination_comes() {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 16);
    let pid = src.proc.pid;
    let dir = tmp.path().join("img");
    let served = lazy_dump(&mut src, &dir, &["--lazy-timeout", "1", "-o", "dump.log"]);
    served.wait_exit();
    let log = read_string(&dir.join("dump.log"));
    assert!(log.contains("into"), "{log}");
    assert!(log.contains("restores without --lazy-pages"), "{log}");
    let inv = inventory(&dir);
    assert_eq!((inv.lazy_address.as_str(), inv.lazy_pages), ("", 0));
    assert!(lazy_runs(&pagemap(&dir, pid)).is_empty());
    let restored = restore_detached(&dir, pid);
    restored.signal(libc::SIGTERM);
    let text = wait_file_contains(&src.out, "OK", TIMEOUT);
    assert!(!text.contains("BAD"), "{text}");
    let mut restored = restored;
    assert_eq!(restored.wait(TIMEOUT), Exit::Code(0));
}

/// A TCP forwarder between the client and the server that cuts the first
/// connection after `cut_after` bytes went from the server to the client.
struct CuttingProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicU64>,
}

fn cutting_proxy(bind: &str, upstream: SocketAddr, cut_after: u64) -> CuttingProxy {
    let l = TcpListener::bind((bind, 0)).expect("proxy listen");
    let addr = l.local_addr().expect("proxy addr");
    let cuts = Arc::new(AtomicU64::new(0));
    let cut_done = Arc::new(AtomicBool::new(false));
    let c = cuts.clone();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            let (d2, u2) = (
                down.try_clone().expect("clone"),
                up.try_clone().expect("clone"),
            );
            // Client to server: plain copy.
            std::thread::spawn(move || {
                let (mut from, mut to) = (d2, u2);
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
            let (cut_done, c) = (cut_done.clone(), c.clone());
            std::thread::spawn(move || {
                let (mut from, mut to) = (up, down);
                let mut buf = vec![0u8; 64 << 10];
                let mut sent = 0u64;
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    if sent >= cut_after && !cut_done.swap(true, Ordering::SeqCst) {
                        // The link breaks mid-transfer: both sides see it.
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        c.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            });
        }
    });
    CuttingProxy { addr, cuts }
}

/// (c) The connection drops mid-transfer: the client reconnects, asks
/// again, and every byte arrives; the source then exits when told.
#[test]
fn a_dropped_connection_loses_nothing() {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 32);
    let pid = src.proc.pid;
    let dir = tmp.path().join("img");
    let served = lazy_dump(&mut src, &dir, &["--lazy-timeout", "30"]);
    let server: SocketAddr = inventory(&dir).lazy_address.parse().expect("address");
    let proxy = cutting_proxy("127.0.0.1", server, 10 << 20);
    let mut bulk =
        RemotePageSource::for_images(&dir, Channel::Bulk, Some(proxy.addr)).expect("connect");
    let runs = lazy_runs(&pagemap(&dir, pid));
    let checked = fetch_all(&mut bulk, pid, &runs, 1 << 20, src.region(), &|_| 0);
    assert_eq!(checked, src.pages);
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the link was cut once"
    );
    assert!(bulk.reconnects >= 1, "the client reconnected");
    bulk.all_delivered().expect("all delivered");
    served.wait_exit();
}

/// Pre-copy + post-copy: pre-dump with tracking, dirty 1% of the pages,
/// then the lazy dump on top: only the dirtied pages (and the few the
/// program itself touched) are lazy, the rest is left to the parent; the
/// lazy ones carry the new versions. With no destination they are written
/// back, and the chain restores with every byte right.
#[test]
fn precopy_then_lazy_leaves_only_dirty_pages_lazy() {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 64);
    let pid = src.proc.pid;
    let pre = tmp.path().join("pre1");
    let pids = pid.to_string();
    crust([
        "pre-dump",
        "-t",
        &pids,
        "-D",
        path_str(&pre),
        "--track-mem",
        "--pre-dump-mode",
        "read",
    ])
    .assert_ok();
    src.proc.signal(libc::SIGUSR1);
    wait_file_contains(&src.out, "dirtied", TIMEOUT);
    let dirtied = src.pages.div_ceil(100);
    let dir = tmp.path().join("img");
    let served = lazy_dump(
        &mut src,
        &dir,
        &[
            "--track-mem",
            "--prev-images-dir",
            "../pre1",
            "--lazy-timeout",
            "30",
        ],
    );
    let inv = inventory(&dir);
    assert!(
        inv.lazy_pages >= dirtied && inv.lazy_pages < dirtied + 64,
        "{} lazy pages, {dirtied} dirtied",
        inv.lazy_pages
    );
    let runs = lazy_runs(&pagemap(&dir, pid));
    let mut bulk = RemotePageSource::for_images(&dir, Channel::Bulk, None).expect("connect");
    let checked = fetch_all(&mut bulk, pid, &runs, 1 << 20, src.region(), &|p| {
        u64::from(p % 100 == 0)
    });
    assert_eq!(
        checked, dirtied,
        "exactly the dirtied region pages are lazy"
    );
    drop(bulk);
    // The destination goes away: the pages are written back after 30 s of
    // nobody connected, which this test does not wait for: it stops the
    // source instead (SIGTERM: the same write-back).
    served.worker.signal(libc::SIGTERM);
    served.wait_exit();
    assert!(lazy_runs(&pagemap(&dir, pid)).is_empty());
    let mut restored = restore_detached(&dir, pid);
    restored.signal(libc::SIGTERM);
    let text = wait_file_contains(&src.out, "OK", TIMEOUT);
    assert!(!text.contains("BAD"), "{text}");
    assert_eq!(restored.wait(TIMEOUT), Exit::Code(0));
}

/// A network namespace joined to the root one by a veth pair, with a /30
/// of its own; torn down on drop.
struct Netns {
    name: String,
    root_if: String,
    root_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    fn new(tag: u32) -> Netns {
        let me = std::process::id();
        let name = format!("crl-{me}-{tag}");
        // Unique per process and test: 10.213.X.Y/30.
        let (x, y) = ((me % 250) as u8, (tag * 4 % 252) as u8);
        let root_if = format!("crl{}r{tag}", me % 100000);
        let ns_if = format!("crl{}n{tag}", me % 100000);
        let n = Netns {
            name: name.clone(),
            root_if: root_if.clone(),
            root_ip: format!("10.213.{x}.{}", y + 1),
            ns_ip: format!("10.213.{x}.{}", y + 2),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{}/30", n.root_ip), "dev", &root_if]);
        ip(&["link", "set", &root_if, "up"]);
        let ns = |a: &[&str]| {
            let mut v = vec!["netns", "exec", &name, "ip"];
            v.extend_from_slice(a);
            ip(&v);
        };
        ns(&["addr", "add", &format!("{}/30", n.ns_ip), "dev", &ns_if]);
        ns(&["link", "set", &ns_if, "up"]);
        ns(&["link", "set", "lo", "up"]);
        n
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.root_if, if up { "up" } else { "down" }]);
    }
}

/// Moves the calling thread into the network namespace `name` (sockets it
/// makes from now on live there).
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
    // SAFETY: setns on a namespace descriptor we opened; it affects only
    // the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// (c) over a real interface: the client lives in another network
/// namespace, joined by a veth pair; the link goes down mid-transfer for
/// longer than TCP_USER_TIMEOUT; both ends notice within seconds, the
/// client reconnects once the link is back, and nothing is lost.
#[test]
fn a_link_cut_over_veth_loses_nothing() {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 32);
    let pid = src.proc.pid;
    let net = Netns::new(1);
    let dir = tmp.path().join("img");
    let pids = pid.to_string();
    let out = crust([
        "dump",
        "-t",
        &pids,
        "-D",
        path_str(&dir),
        "--lazy-pages",
        "--address",
        &net.root_ip,
        "--port",
        "0",
        "-d",
        "--lazy-timeout",
        "30",
    ]);
    out.assert_ok();
    assert_eq!(src.proc.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let twin_pid: i32 = out
        .stderr
        .split("held by pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("twin pid");
    let tracer: i32 = status_field(twin_pid, "TracerPid")
        .and_then(|t| t.parse().ok())
        .expect("tracer");
    let served = Served {
        worker: Proc::adopt(tracer),
        twin: Proc::adopt(twin_pid),
        twin_pid,
    };
    let runs = lazy_runs(&pagemap(&dir, pid));
    let (half_tx, half_rx) = std::sync::mpsc::channel::<Arc<AtomicU64>>();
    let (cut_tx, cut_rx) = std::sync::mpsc::channel::<()>();
    let (base, pages) = (src.base, src.pages);
    let net_name = net.name.clone();
    let dir2 = dir.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&net_name);
        let src = Region { base, pages };
        let mut bulk = RemotePageSource::for_images(&dir2, Channel::Bulk, None).expect("connect");
        let failures = bulk.failures();
        let (first, rest): (Vec<_>, Vec<_>) = runs.iter().partition(|r| r.0 != base);
        let mut checked = fetch_all(&mut bulk, pid, &first, 1 << 20, src, &|_| 0);
        // The big region: half, then the link goes down, then the rest.
        let region = rest[0];
        let half = (region.1 / 2) & !4095;
        checked += fetch_all(&mut bulk, pid, &[(region.0, half)], 1 << 20, src, &|_| 0);
        half_tx.send(failures).expect("send");
        cut_rx.recv().expect("cut");
        let t = Instant::now();
        checked += fetch_all(
            &mut bulk,
            pid,
            &[(region.0 + half, region.1 - half)],
            1 << 20,
            src,
            &|_| 0,
        );
        let reconnects = bulk.reconnects;
        bulk.all_delivered().expect("all delivered");
        (checked, reconnects, t.elapsed())
    });
    let failures = half_rx.recv().expect("half way");
    net.link(false);
    let down = Instant::now();
    cut_tx.send(()).expect("cut");
    wait_until(
        Duration::from_secs(15),
        "the dead link to be noticed",
        || match failures.load(Ordering::SeqCst) {
            0 => Err("no failed attempt yet".into()),
            _ => Ok(()),
        },
    );
    let noticed = down.elapsed();
    net.link(true);
    let (checked, reconnects, _) = client.join().expect("client thread");
    assert_eq!(checked, src.pages, "every page of the region arrived");
    assert!(reconnects >= 1, "the client reconnected");
    assert!(
        noticed < Duration::from_secs(8),
        "the dead link was noticed after {noticed:?}"
    );
    eprintln!("dead link noticed after {:.1} s", noticed.as_secs_f64());
    served.wait_exit();
}

/// (d) The whole remote migration, as a user runs it: the source dumped
/// with --lazy-pages (optionally on top of a pre-dump, after 1% of its
/// pages were dirtied), `crust lazy-pages --page-server` inside another
/// network namespace joined by a veth pair, `crust restore --lazy-pages`
/// with the same pid while the source still serves; the connection is
/// cut once mid-transfer (a forwarder on the root side of the veth closes
/// it after a third of the lazy bytes); every byte arrives, the daemon and the source exit 0
/// by themselves. With the pre-dump, only the dirtied pages travel lazily;
/// the others come from the parent images (delivered by the daemon).
#[test_case::test_case(false ; "dump only")]
#[test_case::test_case(true ; "pre-copy then post-copy")]
fn remote_lazy_migration_over_veth_with_a_cut(precopy: bool) {
    init();
    let tmp = tempdir();
    let mut src = start_src(tmp.path(), 64);
    let pid = src.proc.pid;
    let pids = pid.to_string();
    let net = Netns::new(if precopy { 3 } else { 2 });
    let mut extra: Vec<&str> = Vec::new();
    if precopy {
        crust([
            "pre-dump",
            "-t",
            &pids,
            "-D",
            path_str(&tmp.path().join("pre1")),
            "--track-mem",
        ])
        .assert_ok();
        src.proc.signal(libc::SIGUSR1);
        wait_file_contains(&src.out, "dirtied", TIMEOUT);
        extra.extend(["--track-mem", "--prev-images-dir", "../pre1"]);
    }
    let dir = tmp.path().join("img");
    let out = crust(
        [
            "dump",
            "-t",
            &pids,
            "-D",
            path_str(&dir),
            "--lazy-pages",
            "--address",
            &net.root_ip,
            "--port",
            "0",
            "-d",
            "--lazy-timeout",
            "30",
            "-o",
            "dump.log",
            "-v",
        ]
        .iter()
        .copied()
        .chain(extra.iter().copied()),
    );
    out.assert_ok();
    assert_eq!(src.proc.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let twin_pid: i32 = out
        .stderr
        .split("held by pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("twin pid");
    let tracer: i32 = status_field(twin_pid, "TracerPid")
        .and_then(|t| t.parse().ok())
        .expect("tracer");
    let served = Served {
        worker: Proc::adopt(tracer),
        twin: Proc::adopt(twin_pid),
        twin_pid,
    };
    let inv = inventory(&dir);
    if precopy {
        let dirtied = src.pages.div_ceil(100);
        assert!(
            inv.lazy_pages >= dirtied && inv.lazy_pages < dirtied + 64,
            "{} lazy pages for {dirtied} dirtied",
            inv.lazy_pages
        );
    }
    let server: SocketAddr = inv.lazy_address.parse().expect("address");
    // Cut once a third of the lazy bytes went through.
    let proxy = cutting_proxy(&net.root_ip, server, inv.lazy_pages * 4096 / 3);
    let pidfile = tmp.path().join("lazy.pid");
    let port = proxy.addr.port().to_string();
    let o = Command::new("ip")
        .args(["netns", "exec", &net.name, CRUST, "lazy-pages", "-D"])
        .arg(&dir)
        .args(["--page-server", "--address", &net.root_ip, "--port", &port])
        .args(["-d", "-o", "lazy.log", "--pidfile"])
        .arg(&pidfile)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run lazy-pages");
    assert!(
        o.status.success(),
        "lazy-pages: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut daemon = Proc::adopt(read_string(&pidfile).trim().parse().expect("daemon pid"));
    let rpid = tmp.path().join("restored.pid");
    let r = crust([
        "restore",
        "-D",
        path_str(&dir),
        "--lazy-pages",
        "-d",
        "--pidfile",
        path_str(&rpid),
    ]);
    r.assert_ok();
    let mut restored = Proc::adopt(pid);
    assert_eq!(read_string(&rpid).trim(), pids);
    assert_eq!(
        daemon.wait(TIMEOUT),
        Exit::Code(0),
        "lazy-pages: {}",
        std::fs::read_to_string(dir.join("lazy.log")).unwrap_or_default()
    );
    served.wait_exit();
    assert!(
        proxy.cuts.load(Ordering::SeqCst) >= 1,
        "the connection was cut"
    );
    let stats: LazyStats = ImageDir::open(&dir)
        .and_then(|d| d.read(Kind::LazyStats, None))
        .expect("lazy stats");
    assert_eq!(stats.pages_lazy, inv.lazy_pages, "{stats:?}");
    if precopy {
        assert!(
            stats.pages_parent >= src.pages - src.pages.div_ceil(100),
            "unchanged pages came from the parent: {stats:?}"
        );
    }
    restored.signal(libc::SIGTERM);
    let text = wait_file_contains(&src.out, "OK", TIMEOUT);
    assert!(!text.contains("BAD"), "{text}");
    assert_eq!(restored.wait(TIMEOUT), Exit::Code(0));
    let log = read_string(&dir.join("dump.log"));
    assert!(log.contains("every lazy page"), "{log}");
}
