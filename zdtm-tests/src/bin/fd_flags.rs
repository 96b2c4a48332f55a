//! Open flags, fd flags, signal owners and pipe capacities of every kind
//! of descriptor the engine restores.
//!
//! - files: O_WRONLY|O_APPEND, O_RDWR|O_NOATIME, O_WRONLY|O_SYNC,
//!   O_RDONLY|O_DSYNC, O_RDONLY|O_NONBLOCK|O_CLOEXEC (O_DIRECT, which
//!   tmpfs takes only from 6.6, is test fd_direct);
//! - O_PATH descriptors of a file, a directory, a symlink (O_NOFOLLOW) and
//!   a FIFO;
//! - the stateless devices: /dev/zero, full, random, urandom;
//! - pipes: both ends O_NONBLOCK|O_CLOEXEC; a write-only pipe of 256 KiB
//!   whose reader is gone, with unread bytes; an O_ASYNC pipe whose read
//!   end signals its own thread (F_OWNER_TID) with SIGRTMIN+3 (F_SETSIG)
//!   and whose write end names the process group (F_OWNER_PGRP); an empty
//!   packet-mode (O_DIRECT) pipe with O_NOATIME on its read end.
//!
//! After restore every fd has the same F_GETFL, F_GETFD, F_GETOWN_EX,
//! F_GETSIG, F_GETPIPE_SZ and FIONREAD as before, and the flags still act:
//! a write into the O_ASYNC pipe queues SIGRTMIN+3 with si_fd naming its
//! read end, the packet pipe returns one write per read, the O_NONBLOCK
//! pipe gives EAGAIN, and the O_APPEND file is appended to.

use zdtm::{ensure, ensure_eq, procfs, TempDir, TestResult};
use zdtm_tests::{close, fcntl_get, fd_path, open, pattern_bytes, pipe2, read_some, write_all};

const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PGRP: i32 = 2;
const BIG_PIPE: i32 = 256 << 10;
const UNREAD: usize = 777;

#[repr(C)]
#[derive(Default)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}

/// (fd, path, F_GETFL, F_GETFD, owner (type, pid), F_GETSIG, F_GETPIPE_SZ,
/// FIONREAD); -1 where the query does not apply.
type Info = (i32, String, i32, i32, (i32, i32), i32, i32, i32);

struct State {
    dir: TempDir,
    app: i32,
    nonblock: (i32, i32),
    aio: (i32, i32),
    packet: (i32, i32),
    fds: Vec<i32>,
    infos: Vec<Info>,
    table: Vec<(i32, String)>,
}

fn sig() -> i32 {
    zdtm_tests::sigrt(3)
}

fn path(dir: &TempDir, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn set_owner(fd: i32, kind: i32, pid: i32) -> TestResult {
    let o = OwnerEx { kind, pid };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex.
    if unsafe { libc::fcntl(fd, F_SETOWN_EX, &o as *const OwnerEx) } != 0 {
        return Err(zdtm::os_err(&format!("F_SETOWN_EX on fd {fd}")));
    }
    Ok(())
}

fn owner(fd: i32) -> TestResult<(i32, i32)> {
    let mut o = OwnerEx::default();
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex.
    if unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut o as *mut OwnerEx) } != 0 {
        return Err(zdtm::os_err(&format!("F_GETOWN_EX on fd {fd}")));
    }
    Ok((o.kind, o.pid))
}

fn setfl(fd: i32, add: i32) -> TestResult {
    let fl = fcntl_get(fd, libc::F_GETFL)?;
    // SAFETY: F_SETFL takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl | add) } != 0 {
        return Err(zdtm::os_err(&format!("F_SETFL {add:#o} on fd {fd}")));
    }
    Ok(())
}

fn fionread(fd: i32) -> i32 {
    zdtm_tests::fionread(fd).unwrap_or(-1)
}

fn info(fd: i32) -> TestResult<Info> {
    let fl = fcntl_get(fd, libc::F_GETFL)?;
    let o_path = fl & libc::O_PATH != 0;
    let p = fd_path(fd)?;
    let pipe = p.starts_with("pipe:");
    Ok((
        fd,
        // Pipe inode numbers may change; the kind may not.
        if pipe { "pipe".into() } else { p },
        fl,
        fcntl_get(fd, libc::F_GETFD)?,
        if o_path { (-1, -1) } else { owner(fd)? },
        if o_path { -1 } else { fcntl_get(fd, F_GETSIG)? },
        if pipe {
            fcntl_get(fd, libc::F_GETPIPE_SZ)?
        } else {
            -1
        },
        if pipe { fionread(fd) } else { -1 },
    ))
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    // SAFETY: ignoring SIGPIPE; the write-only pipe has no reader.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The O_ASYNC signal stays queued, never delivered; the write end's
    // plain SIGIO (sent to the group when the reader reads) is ignored.
    zdtm_tests::sigprocmask(libc::SIG_BLOCK, &[sig()])?;
    // SAFETY: ignoring SIGIO.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let dir = TempDir::new()?;
    for name in ["app", "noatime", "sync", "dsync", "nonblock"] {
        zdtm_tests::create_file(&path(&dir, name), &pattern_bytes(7, 0, 8192))?;
    }
    std::os::unix::fs::symlink(path(&dir, "app"), path(&dir, "link"))
        .map_err(|e| format!("symlink: {e}"))?;
    let fifo = std::ffi::CString::new(path(&dir, "fifo")).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) } != 0 {
        return Err(zdtm::os_err("mkfifo"));
    }

    let mut fds = Vec::new();
    let app = open(&path(&dir, "app"), libc::O_WRONLY | libc::O_APPEND)?;
    fds.push(app);
    for (name, flags) in [
        ("noatime", libc::O_RDWR | libc::O_NOATIME),
        ("sync", libc::O_WRONLY | libc::O_SYNC),
        ("dsync", libc::O_RDONLY | libc::O_DSYNC),
        (
            "nonblock",
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        ),
        ("app", libc::O_PATH),
        ("link", libc::O_PATH | libc::O_NOFOLLOW),
        ("fifo", libc::O_PATH | libc::O_CLOEXEC),
    ] {
        fds.push(open(&path(&dir, name), flags)?);
    }
    fds.push(open(
        &dir.path().to_string_lossy(),
        libc::O_PATH | libc::O_DIRECTORY,
    )?);
    for (dev, flags) in [
        ("/dev/zero", libc::O_RDONLY),
        ("/dev/full", libc::O_WRONLY | libc::O_CLOEXEC),
        ("/dev/random", libc::O_RDONLY | libc::O_NONBLOCK),
        ("/dev/urandom", libc::O_RDWR),
    ] {
        fds.push(open(dev, flags)?);
    }

    let nonblock = pipe2(libc::O_NONBLOCK | libc::O_CLOEXEC)?;
    fds.extend([nonblock.0, nonblock.1]);

    let (r, w) = pipe2(0)?;
    // SAFETY: F_SETPIPE_SZ takes an int argument.
    if unsafe { libc::fcntl(w, libc::F_SETPIPE_SZ, BIG_PIPE) } < BIG_PIPE {
        return Err(zdtm::os_err("F_SETPIPE_SZ"));
    }
    write_all(w, &pattern_bytes(8, 0, UNREAD))?;
    close(r)?;
    fds.push(w);

    let aio = pipe2(0)?;
    // SAFETY: gettid and getpid have no preconditions.
    let (tid, pid) = (unsafe { libc::gettid() }, unsafe { libc::getpid() });
    set_owner(aio.0, F_OWNER_TID, tid)?;
    // SAFETY: F_SETSIG takes an int argument.
    if unsafe { libc::fcntl(aio.0, F_SETSIG, sig()) } != 0 {
        return Err(zdtm::os_err("F_SETSIG"));
    }
    setfl(aio.0, libc::O_ASYNC)?;
    // The test leads its process group (zdtm daemonises with setsid).
    set_owner(aio.1, F_OWNER_PGRP, pid)?;
    setfl(aio.1, libc::O_ASYNC)?;
    fds.extend([aio.0, aio.1]);

    let packet = pipe2(libc::O_DIRECT)?;
    setfl(packet.0, libc::O_NOATIME)?;
    fds.extend([packet.0, packet.1]);

    let infos = fds.iter().map(|&fd| info(fd)).collect::<TestResult<_>>()?;
    let table = procfs::list_fds()?
        .into_iter()
        .map(|(fd, p)| {
            (
                fd,
                if p.starts_with("pipe:[") {
                    "pipe".into()
                } else {
                    p
                },
            )
        })
        .collect();
    Ok(State {
        dir,
        app,
        nonblock,
        aio,
        packet,
        fds,
        infos,
        table,
    })
}

fn check(s: State) -> TestResult {
    let table: Vec<(i32, String)> = procfs::list_fds()?
        .into_iter()
        .map(|(fd, p)| {
            (
                fd,
                if p.starts_with("pipe:[") {
                    "pipe".into()
                } else {
                    p
                },
            )
        })
        .collect();
    ensure_eq!(table, s.table, "fd table");
    for (&fd, want) in s.fds.iter().zip(&s.infos) {
        ensure_eq!(
            info(fd)?,
            *want,
            "fd {fd} (fd, path, F_GETFL, F_GETFD, F_GETOWN_EX, F_GETSIG, F_GETPIPE_SZ, FIONREAD)"
        );
    }

    // O_ASYNC: a write queues the owner's signal, naming the read end.
    ensure_eq!(
        zdtm_tests::pending_bits()? & zdtm_tests::sig_bits(&[sig()]),
        0,
        "SIGRTMIN+3 pending before any write"
    );
    write_all(s.aio.1, b"io")?;
    let set = zdtm_tests::sigset(&[sig()]);
    // SAFETY: a zeroed siginfo_t is valid storage.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid set, siginfo storage and timeout.
    let got = unsafe { libc::sigtimedwait(&set, &mut si, &zero) };
    ensure_eq!(got, sig(), "signal queued by the O_ASYNC pipe");
    // si_fd follows si_band in the poll member of the siginfo union.
    // SAFETY: the kernel filled a SIGIO-style siginfo for this signal.
    let si_fd = unsafe {
        let base = (&si as *const libc::siginfo_t).cast::<u8>();
        std::ptr::read_unaligned(base.add(16 + 8).cast::<i32>())
    };
    ensure_eq!(si_fd, s.aio.0, "si_fd of the O_ASYNC signal");
    ensure_eq!(
        read_some(s.aio.0, 8)?,
        b"io".to_vec(),
        "data through the O_ASYNC pipe"
    );

    // Packet mode: one write per read.
    write_all(s.packet.1, b"one")?;
    write_all(s.packet.1, b"two")?;
    ensure_eq!(read_some(s.packet.0, 64)?, b"one".to_vec(), "first packet");
    ensure_eq!(read_some(s.packet.0, 64)?, b"two".to_vec(), "second packet");

    // O_NONBLOCK: an empty read gives EAGAIN.
    let mut b = [0u8; 4];
    // SAFETY: reading into a valid buffer.
    let n = unsafe { libc::read(s.nonblock.0, b.as_mut_ptr().cast(), b.len()) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EAGAIN,
        "read from an empty O_NONBLOCK pipe: {n}, {}",
        std::io::Error::last_os_error()
    );

    // O_APPEND: writes go to the end.
    write_all(s.app, b"tail")?;
    let data = std::fs::read(path(&s.dir, "app")).map_err(|e| format!("app: {e}"))?;
    ensure_eq!(data.len(), 8196, "length of the O_APPEND file");
    ensure!(data.ends_with(b"tail"), "O_APPEND write not at the end");

    for fd in s.fds {
        close(fd)?;
    }
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
