//! Diskless migration: `crust page-server` receives the images of a
//! pre-dump or dump over TCP; `--page-server` on the sending side keeps
//! only the small images locally. Real processes, real sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use test_case::test_case;

/// A page server listening on 127.0.0.1 (kernel-chosen port), started
/// with -d: the command returns once it listens. Killed and reaped on drop.
struct Server {
    proc: Proc,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Server {
    fn start(dir: &Path, log: &Path) -> Server {
        let pidfile = log.with_extension("pid");
        let out = crust([
            "page-server",
            "-D",
            path_str(dir),
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "-d",
            "--pidfile",
            path_str(&pidfile),
            "-o",
            path_str(log),
            "-v",
        ]);
        out.assert_ok();
        let line = out.stdout.trim();
        let port = line
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("page-server printed {line:?}, not 127.0.0.1:PORT"));
        let pid: i32 = read_string(&pidfile)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid in {}", pidfile.display()));
        Server {
            proc: Proc::adopt(pid),
            port,
            log: log.to_path_buf(),
            dir: dir.to_path_buf(),
        }
    }

    fn port(&self) -> String {
        self.port.to_string()
    }

    /// Waits for the server to exit; returns its exit and its log.
    fn finish(&mut self) -> (Exit, String) {
        let exit = self.proc.wait(TIMEOUT);
        (exit, read_string(&self.log))
    }

    fn assert_no_inventory(&self) {
        assert!(
            !self.dir.join("inventory.img").exists(),
            "the page server left an inventory in {} after a failed transfer",
            self.dir.display()
        );
    }
}

fn start_writer(tmp: &Path, pages: u32, pause_us: u32) -> (Proc, PathBuf) {
    let bin = compile_c(tmp, "writer.c", &[]);
    let pidfile = tmp.join("writer.pid");
    let result = tmp.join("result");
    let p = spawn_daemon(
        Command::new(bin)
            .arg(&pidfile)
            .arg(&result)
            .arg(pages.to_string())
            .arg(pause_us.to_string()),
    );
    wait_file_contains(&pidfile, "\n", TIMEOUT);
    (p, result)
}

/// `crust pre-dump|dump` to a page server; returns the run's output.
fn to_server(cmd: &str, pid: i32, dir: &Path, server: &Server, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let port = server.port();
    let mut args = vec![
        cmd,
        "-t",
        &pid,
        "-D",
        path_str(dir),
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "--display-stats",
    ];
    args.extend_from_slice(extra);
    crust(&args)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// A writing task is pre-dumped in read mode, then in splice mode, then
/// dumped, each to its own page server: the source side keeps only small
/// images (no pages file), each server writes a complete image directory
/// (0700, files 0600), the chain at the servers restores with every page
/// at its last written version, and the source-side directory, whose
/// pages are elsewhere, is refused by restore with the server's address.
#[test]
fn pre_dumps_and_dump_to_page_servers_restore_every_byte() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 16384, 2000);
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let steps = [
        (
            "pre1",
            "pre-dump",
            vec!["--pre-dump-mode", "read", "--track-mem"],
        ),
        (
            "pre2",
            "pre-dump",
            vec![
                "--pre-dump-mode",
                "splice",
                "--track-mem",
                "--prev-images-dir",
                "../pre1",
            ],
        ),
        (
            "dump",
            "dump",
            vec!["--track-mem", "--prev-images-dir", "../pre2"],
        ),
    ];
    let mut ports = Vec::new();
    for (name, cmd, extra) in &steps {
        let mut server = Server::start(&dst.join(name), &tmp.path().join(format!("{name}.log")));
        let out = to_server(cmd, p.pid, &src.join(name), &server, extra);
        out.assert_ok();
        let (exit, log) = server.finish();
        assert_eq!(exit, Exit::Code(0), "page server for {name}: {log}");
        assert!(log.contains("received the"), "{log}");
        ports.push(server.port);
        let pages = format!("pages-{}.img", p.pid);
        let local = names(&src.join(name));
        assert!(
            !local.contains(&pages),
            "{name}: a local pages file: {local:?}"
        );
        for f in ["inventory.img", &format!("task-{}.img", p.pid)] {
            assert!(
                local.iter().any(|n| n == f),
                "{name}: no local {f}: {local:?}"
            );
        }
        let remote = names(&dst.join(name));
        assert!(
            remote.contains(&pages),
            "{name}: no pages at the server: {remote:?}"
        );
        assert_eq!(
            remote,
            local
                .iter()
                .cloned()
                .chain([pages])
                .collect::<Vec<_>>()
                .tap_sort()
        );
        assert_eq!(mode(&dst.join(name)), 0o700);
        for f in &remote {
            assert_eq!(mode(&dst.join(name).join(f)), 0o600, "{name}/{f}");
        }
        if *cmd == "pre-dump" {
            p.assert_running_untraced();
        }
    }
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let refused = crust(["restore", "-D", path_str(&src.join("dump"))]);
    refused
        .assert_failed()
        .stderr_has(&format!("page server at 127.0.0.1:{}", ports[2]));
    let mut r = restore_detached(&dst.join("dump"), p.pid);
    r.signal(libc::SIGTERM);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&result);
    assert!(text.starts_with("OK"), "{text}");
}

trait TapSort {
    fn tap_sort(self) -> Self;
}
impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}

/// The page server dies (SIGKILL) in the middle of the page data: the
/// client fails with status 1 naming the page server, the source runs on
/// untraced with every page intact, and nothing restorable is left at
/// either end.
#[test_case("pre-dump", "read" ; "pre-dump read mode")]
#[test_case("pre-dump", "splice" ; "pre-dump splice mode")]
#[test_case("dump", "" ; "dump")]
fn server_killed_mid_transfer_leaves_the_source_unharmed(cmd: &str, mode: &str) {
    init();
    let tmp = tempdir();
    // 256 MiB: far more than the socket buffers hold.
    let (mut p, result) = start_writer(tmp.path(), 65536, 20000);
    let mut server = Server::start(&tmp.path().join("dst"), &tmp.path().join("server.log"));
    let pid = p.pid.to_string();
    let port = server.port();
    let src = tmp.path().join("src");
    let mut args = vec![
        cmd,
        "-t",
        &pid,
        "-D",
        path_str(&src),
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
    ];
    if !mode.is_empty() {
        args.extend_from_slice(&["--pre-dump-mode", mode]);
    }
    let client = crust_spawn(&args);
    // Page data is flowing once the pages file exists at the server: stop
    // the server there (the client then blocks on full socket buffers,
    // far from the end), then kill it.
    let pages = tmp.path().join("dst").join(format!("pages-{pid}.img"));
    wait_until(TIMEOUT, "page data at the server", || {
        match pages.exists() {
            true => Ok(()),
            false => Err("no pages file yet".into()),
        }
    });
    server.proc.signal(libc::SIGSTOP);
    let received = std::fs::metadata(&pages).map(|m| m.len()).unwrap_or(0);
    assert!(
        received < 128 << 20,
        "the transfer was nearly done ({received} bytes) before the server stopped"
    );
    server.proc.signal(libc::SIGKILL);
    assert_eq!(server.proc.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    let out = client.wait(TIMEOUT);
    out.assert_failed().stderr_has("page server at 127.0.0.1:");
    p.assert_running_untraced();
    server.assert_no_inventory();
    assert!(
        !src.join("inventory.img").exists(),
        "a local inventory after a failed transfer"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    let text = read_string(&result);
    assert!(text.starts_with("OK"), "{text}");
}

/// Protocol pieces for hand-made streams.
fn frame(kind: u16, arg: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"CRPF");
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&arg.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn hello(version: u32) -> Vec<u8> {
    let mut p = b"CRPS".to_vec();
    p.extend_from_slice(&version.to_le_bytes());
    frame(1, 0, &p)
}

/// An image file's bytes as the engine writes them: header + payload.
fn image_bytes(magic: &[u8; 4], payload: &[u8], crc: u32) -> Vec<u8> {
    let mut b = b"CRST".to_vec();
    b.extend_from_slice(magic);
    b.extend_from_slice(&crust::image::FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&32u32.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(payload);
    b
}

fn file_frame(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut p = (name.len() as u16).to_le_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(bytes);
    frame(2, 0, &p)
}

/// Garbage, truncated and out-of-order streams: the server answers with
/// an error, exits with status 1 naming what was wrong (never a panic),
/// and leaves no inventory nor any image file.
#[test_case(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "bad frame magic" ; "http request")]
#[test_case(hello(7), "version 7" ; "other protocol version")]
#[test_case([hello(1), b"CRPF\x04".to_vec()].concat(), "inside a frame header" ; "truncated header")]
#[test_case([hello(1), frame(3, 77, &[]), frame(4, 77, &[0; 4096])[..2000].to_vec()].concat(), "inside a page data frame" ; "truncated page data")]
#[test_case([hello(1), frame(4, 77, &[0; 4096])].concat(), "not open" ; "page data before begin")]
#[test_case([hello(1), frame(3, 77, &[]), frame(4, 77, &[0; 100])].concat(), "not whole pages" ; "partial page")]
#[test_case([hello(1), frame(3, 77, &[]), frame(4, 77, &[0; 4096]), frame(5, 77, &8192u64.to_le_bytes())].concat(), "8192 bytes, 4096 arrived" ; "wrong page total")]
#[test_case([hello(1), file_frame("stats.img", &image_bytes(b"STAT", b"\x08\x01", 1))].concat(), "checksum mismatch" ; "corrupt image")]
#[test_case([hello(1), file_frame("../evil.img", b"x")].concat(), "not an image file name" ; "path in a name")]
#[test_case([hello(1), file_frame("inventory.img", b"x")].concat(), "cannot be sent" ; "inventory as a file")]
#[test_case([hello(1), frame(6, 0, &image_bytes(b"INVN", &[], 0))].concat(), "without the pagemap" ; "commit of nothing")]
#[test_case([hello(1), frame(2, 0, &[0; 2])].concat(), "names a file of 0 bytes" ; "empty name")]
#[test_case([hello(1), frame(4, 1, &[])[..12].to_vec(), 0xffff_ffffu32.to_le_bytes().to_vec()].concat(), "over its limit" ; "huge frame")]
#[test_case(hello(1), "closed the connection before the image was complete" ; "hello then nothing")]
fn bad_streams_are_refused_cleanly(stream: Vec<u8>, why: &str) {
    init();
    let tmp = tempdir();
    let mut server = Server::start(&tmp.path().join("dst"), &tmp.path().join("server.log"));
    let mut sock = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    // The server may refuse before it read everything: a reset here is fine.
    let _ = sock.write_all(&stream);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let (exit, log) = server.finish();
    assert_eq!(exit, Exit::Code(1), "server log: {log}");
    assert!(log.contains(why), "the server's log lacks {why:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
    server.assert_no_inventory();
    let left: Vec<String> = names(&server.dir)
        .into_iter()
        .filter(|n| n.ends_with(".img"))
        .collect();
    assert!(left.is_empty(), "image files left behind: {left:?}");
    // What the client heard: the error, as an ERROR frame (kind 8).
    if answer.len() >= 16 && answer[4] == 8 {
        let text = String::from_utf8_lossy(&answer[16..]);
        assert!(text.contains(why), "ERROR frame says {text:?}");
    }
}

/// Without a page server there, dump and pre-dump fail before touching
/// the task (status 1, the address named), and nothing is written.
#[test]
fn no_server_fails_before_the_task_is_touched() {
    init();
    let tmp = tempdir();
    let (mut p, result) = start_writer(tmp.path(), 64, 2000);
    // A port nobody listens on: bound, never listening.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    drop(holder);
    let pid = p.pid.to_string();
    let src = tmp.path().join("src");
    for cmd in ["pre-dump", "dump"] {
        let out = crust([
            cmd,
            "-t",
            &pid,
            "-D",
            path_str(&src),
            "--page-server",
            "--address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
        out.assert_failed()
            .stderr_has(&format!("page server at 127.0.0.1:{port}"));
        p.assert_running_untraced();
        assert!(!src.join("inventory.img").exists());
    }
    let usage = crust(["dump", "-t", &pid, "-D", path_str(&src), "--page-server"]);
    usage.assert_code(2);
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0));
    assert!(read_string(&result).starts_with("OK"));
}
