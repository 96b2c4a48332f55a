//! Restore hands the restored tasks' userfaultfds to the lazy-pages
//! daemon over the unix socket DIR/lazy-pages.socket.
//!
//! The protocol, one connection per restore, any number of tasks on it
//! (little-endian):
//! 1. restore → daemon, once per live process of the tree, parents first:
//!    a 56-byte header (magic "CRLZ", version, pid, number of processes
//!    this restore hands over, eager page counts, number of lazy ranges,
//!    of registered VMAs and of parent ranges) carrying that process's
//!    uffd as SCM_RIGHTS, then the lazy ranges, the registered VMAs and
//!    the parent ranges as (start, end) pairs of image addresses;
//! 2. daemon → restore, for each: one byte `K` once it serves the uffd,
//!    or `E`, a u32 length and the reason it refuses the task (restore
//!    fails either way without `K`: nobody would serve the faults);
//! 3. restore → daemon: one byte `D` once every task runs (the daemon
//!    notes how far it got by then); the connection then closes. A
//!    connection closed without `D` means the restore failed and its
//!    tasks are gone.
//!
//! Version 3 added the number of processes (bytes 12..16) and `E`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const SOCKET_NAME: &str = "lazy-pages.socket";
const MAGIC: u32 = u32::from_le_bytes(*b"CRLZ");
const VERSION: u32 = 3;
const HEADER_LEN: usize = 56;
/// Sanity bound on the ranges of one handoff (a corrupt count).
const MAX_RANGES: u64 = 1 << 28;

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// What the daemon learns about one restored task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handoff {
    pub pid: i32,
    /// How many processes this restore hands over (the tree's live
    /// members), the same in each of its handoffs.
    pub tasks: u32,
    pub eager_dump_pages: u64,
    pub eager_parent_pages: u64,
    /// Lazy image ranges, sorted and disjoint.
    pub lazy: Vec<(u64, u64)>,
    /// Ranges of parent images the daemon delivers first, from the local
    /// images (sorted, disjoint, none in `lazy`).
    pub parent: Vec<(u64, u64)>,
    /// The VMAs registered MISSING, sorted (a UFFDIO_COPY must stay
    /// within one VMA: the daemon's live map starts as these ranges).
    pub registered: Vec<(u64, u64)>,
}

fn io_err(what: &'static str, dir: &Path, e: std::io::Error) -> Error {
    Error::io(what, socket_path(dir), e)
}

/// Runs `f` on a name of DIR/lazy-pages.socket that fits in sun_path
/// (108 bytes, which a deep image dir exceeds: bind and connect refuse
/// it): /proc/self/fd/N/lazy-pages.socket through an O_PATH descriptor of
/// `dir`, which the kernel resolves to the socket file inside `dir`.
fn via_short_path<T>(
    dir: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(SOCKET_NAME);
    f(&short)
}

/// Restore's side: connects to the daemon of `dir`, or says to start one.
pub fn connect(dir: &Path) -> Result<UnixStream> {
    let path = socket_path(dir);
    via_short_path(dir, |p| UnixStream::connect(p)).map_err(|e| {
        Error::Other(format!(
            "no lazy-pages daemon listens on {} ({e}): start `crust lazy-pages -D {}` first",
            path.display(),
            dir.display()
        ))
    })
}

fn encode_header(h: &Handoff) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..12].copy_from_slice(&h.pid.to_le_bytes());
    b[12..16].copy_from_slice(&h.tasks.to_le_bytes());
    b[16..24].copy_from_slice(&h.eager_dump_pages.to_le_bytes());
    b[24..32].copy_from_slice(&h.eager_parent_pages.to_le_bytes());
    b[32..40].copy_from_slice(&(h.lazy.len() as u64).to_le_bytes());
    b[40..48].copy_from_slice(&(h.registered.len() as u64).to_le_bytes());
    b[48..56].copy_from_slice(&(h.parent.len() as u64).to_le_bytes());
    b
}

/// Sends `h` and the uffd, then waits for the daemon's acknowledgement.
pub fn send(dir: &Path, conn: &mut UnixStream, h: &Handoff, uffd: &OwnedFd) -> Result<()> {
    let header = encode_header(h);
    let fd = uffd.as_raw_fd();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: header.as_ptr() as *mut libc::c_void,
        iov_len: HEADER_LEN,
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, enough for one cmsg
    // carrying one int; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::copy_nonoverlapping(&fd, libc::CMSG_DATA(c) as *mut i32, 1);
    }
    let mut sent = 0usize;
    while sent == 0 {
        // SAFETY: msg describes the header buffer and the control buffer,
        // both alive for the call.
        let r = unsafe { libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("handing the userfaultfd over", dir, e));
        }
        sent = r as usize;
    }
    let mut rest = header[sent..].to_vec();
    for &(a, b) in h.lazy.iter().chain(&h.registered).chain(&h.parent) {
        rest.extend_from_slice(&a.to_le_bytes());
        rest.extend_from_slice(&b.to_le_bytes());
    }
    conn.write_all(&rest)
        .map_err(|e| io_err("sending the lazy ranges to", dir, e))?;
    let mut ack = [0u8; 1];
    let refused = |why: &str| {
        Error::Other(format!(
            "the lazy-pages daemon on {} refused pid {}: {why}",
            socket_path(dir).display(),
            h.pid
        ))
    };
    match conn.read(&mut ack) {
        Ok(1) if ack[0] == b'K' => Ok(()),
        Ok(1) if ack[0] == b'E' => {
            let mut len = [0u8; 4];
            let mut why = vec![0u8; 0];
            if conn.read_exact(&mut len).is_ok() {
                why.resize((u32::from_le_bytes(len) as usize).min(4096), 0);
                if conn.read_exact(&mut why).is_err() {
                    why.clear();
                }
            }
            Err(refused(&String::from_utf8_lossy(&why)))
        }
        Ok(_) => Err(refused("it closed the connection (see its log)")),
        Err(e) => Err(io_err("waiting for the daemon on", dir, e)),
    }
}

/// Tells the daemon every restored task runs.
pub fn restore_done(conn: &mut UnixStream) {
    let _ = conn.write_all(b"D");
}

/// The daemon's side: binds DIR/lazy-pages.socket, mode 0600. A socket
/// file left by a daemon that died is replaced; one a live daemon
/// listens on is not.
pub fn listen(dir: &Path) -> Result<UnixListener> {
    let path = socket_path(dir);
    if path.exists() {
        if via_short_path(dir, |p| UnixStream::connect(p)).is_ok() {
            return Err(Error::Other(format!(
                "another lazy-pages daemon already listens on {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    // The socket is created with the umask's mode: make that 0600 before
    // any other thread exists, then put the umask back.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = via_short_path(dir, |p| UnixListener::bind(p));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| io_err("listening on", dir, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("setting the mode of", dir, e))?;
    Ok(l)
}

fn word<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&b[at..at + N]);
    w
}

/// What a restore says next on its connection.
pub enum Message {
    /// One task's handoff (header, uffd, ranges).
    Task(Handoff, OwnedFd),
    /// `D`: every task runs.
    Done,
    /// The connection closed.
    Closed,
}

/// Reads the next message of a restore.
pub fn receive(conn: &mut UnixStream) -> std::result::Result<Message, String> {
    let mut header = [0u8; HEADER_LEN];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr() as *mut libc::c_void,
        iov_len: HEADER_LEN,
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: msg describes `header` and `cbuf`, alive for the call;
        // MSG_CMSG_CLOEXEC marks a received descriptor close-on-exec.
        let r = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if r >= 0 {
            break r as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("receiving the handoff: {e}"));
        }
    };
    let mut uffd = None;
    // SAFETY: walking the control messages the kernel wrote into cbuf,
    // within msg_controllen, with the CMSG_* helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let mut fd = -1i32;
                std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c) as *const i32, &mut fd, 1);
                if fd >= 0 {
                    uffd = Some(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    match (n, header[0], &uffd) {
        (0, _, _) => return Ok(Message::Closed),
        (1, b'D', None) => return Ok(Message::Done),
        _ => {}
    }
    let uffd = uffd.ok_or("the handoff carried no userfaultfd")?;
    conn.read_exact(&mut header[n..])
        .map_err(|e| format!("reading the handoff header: {e}"))?;
    if u32::from_le_bytes(word(&header, 0)) != MAGIC {
        return Err("not a crust handoff (bad magic)".into());
    }
    let v = u32::from_le_bytes(word(&header, 4));
    if v != VERSION {
        return Err(format!("handoff version {v}, this daemon speaks {VERSION}"));
    }
    let read_ranges =
        |conn: &mut UnixStream, at: usize| -> std::result::Result<Vec<(u64, u64)>, String> {
            let count = u64::from_le_bytes(word(&header, at));
            if count > MAX_RANGES {
                return Err(format!("{count} ranges: corrupt handoff"));
            }
            let mut raw = vec![0u8; count as usize * 16];
            conn.read_exact(&mut raw)
                .map_err(|e| format!("reading the handoff's ranges: {e}"))?;
            let ranges: Vec<(u64, u64)> = raw
                .chunks_exact(16)
                .map(|c| {
                    (
                        u64::from_le_bytes(word(c, 0)),
                        u64::from_le_bytes(word(c, 8)),
                    )
                })
                .collect();
            let mut prev = 0;
            for &(a, b) in &ranges {
                if a < prev || a >= b || a % 4096 != 0 || b % 4096 != 0 {
                    return Err(format!("range {a:#x}-{b:#x} is misaligned or out of order"));
                }
                prev = b;
            }
            Ok(ranges)
        };
    let lazy = read_ranges(conn, 32)?;
    let registered = read_ranges(conn, 40)?;
    let parent = read_ranges(conn, 48)?;
    Ok(Message::Task(
        Handoff {
            pid: i32::from_le_bytes(word(&header, 8)),
            tasks: u32::from_le_bytes(word(&header, 12)),
            eager_dump_pages: u64::from_le_bytes(word(&header, 16)),
            eager_parent_pages: u64::from_le_bytes(word(&header, 24)),
            lazy,
            parent,
            registered,
        },
        uffd,
    ))
}

/// The daemon serves the uffd.
pub fn ack(conn: &mut UnixStream) -> std::io::Result<()> {
    conn.write_all(b"K")
}

/// The daemon refuses the task handed over, saying why.
pub fn refuse(conn: &mut UnixStream, why: &str) -> std::io::Result<()> {
    let mut m = vec![b'E'];
    m.extend_from_slice(&(why.len() as u32).to_le_bytes());
    m.extend_from_slice(why.as_bytes());
    conn.write_all(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(pid: i32) -> Handoff {
        Handoff {
            pid,
            tasks: 2,
            eager_dump_pages: 3,
            eager_parent_pages: 4,
            lazy: vec![(0x1000, 0x3000), (0x5000, 0x6000)],
            parent: vec![(0x7000, 0x8000)],
            registered: vec![(0x1000, 0x8000)],
        }
    }

    /// A daemon listens, and a restore connects, in an image dir whose
    /// socket path is longer than sun_path's 108 bytes (a zdtm work dir
    /// under a long log dir: `lazy-pages` failed there with "path must be
    /// shorter than SUN_LEN").
    #[test]
    fn socket_in_a_deep_directory() {
        let base = std::env::temp_dir().join(format!("crust-handoff-{}", std::process::id()));
        let deep = base
            .join("a-long-directory-name-for-the-log-dir-of-a-test-run")
            .join("another-long-directory-name-for-the-flavor")
            .join("img");
        std::fs::create_dir_all(&deep).expect("mkdir");
        assert!(socket_path(&deep).as_os_str().len() > 108);
        let listener = listen(&deep).expect("listen in a deep dir");
        let mode = std::fs::metadata(socket_path(&deep)).expect("socket file");
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        assert!(mode.file_type().is_socket());
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let mut restore = connect(&deep).expect("connect in a deep dir");
        let (mut daemon, _) = listener.accept().expect("accept");
        restore.write_all(b"D").expect("write");
        let mut b = [0u8; 1];
        daemon.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"D");
        // A second daemon is refused while the first listens.
        let e = listen(&deep).expect_err("a second daemon");
        assert!(e.to_string().contains("already listens"), "{e}");
        drop(listener);
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    /// Two tasks on one connection: the first acknowledged, the second
    /// refused with its reason (which restore reports), then `D` and the
    /// close, each told apart by the daemon.
    #[test]
    fn several_tasks_on_one_connection() {
        let (mut restore, mut daemon) = UnixStream::pair().expect("socketpair");
        let dir = Path::new("/nonexistent");
        let side = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match receive(&mut daemon).expect("a message") {
                    Message::Task(h, _fd) => {
                        match h.pid {
                            10 => ack(&mut daemon).expect("ack"),
                            _ => refuse(&mut daemon, "pid 11 was handed over already")
                                .expect("refuse"),
                        }
                        got.push(format!("task {:?}", h));
                    }
                    Message::Done => got.push("done".into()),
                    Message::Closed => return got,
                }
            }
        });
        let fd: OwnedFd = std::fs::File::open("/dev/null").expect("open").into();
        send(dir, &mut restore, &handoff(10), &fd).expect("first task taken");
        let e = send(dir, &mut restore, &handoff(11), &fd).expect_err("second refused");
        assert!(
            e.to_string().contains("pid 11 was handed over already"),
            "{e}"
        );
        restore_done(&mut restore);
        drop(restore);
        let got = side.join().expect("daemon side");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], format!("task {:?}", handoff(10)));
        assert_eq!(got[1], format!("task {:?}", handoff(11)));
        assert_eq!(got[2], "done");
    }
}
