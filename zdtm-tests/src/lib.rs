//! Shared helpers for the zdtm test programs (signals, fds, clocks).
//!
//! Each test is one binary in `src/bin/<name>.rs`, listed with a
//! metadata file `meta/NAME.toml` (what the runner reads).
//! `smoke.sh` runs them without checkpoint/restore (start, SIGTERM, expect
//! PASS) and checks that they are single-threaded, sleeping and hold no
//! sockets or anonymous-inode fds while waiting; tests with steps first
//! get a few step requests.
//!
//! The `trans_*` tests follow the step protocol (`zdtm::steps`): they
//! change their memory between the dumps of an iterative flavor and keep a
//! model of what must be there after restore ([`logical`], [`fill_page`],
//! [`check_page`] describe pages of such models).
//!
//! The protocol, memory patterns and procfs helpers live in the `zdtm`
//! library; this crate only adds small wrappers that several test programs
//! use, and the FPU test shared by `fpu_avx` and `fpu_sse` ([`fpu`]).

pub mod fpu;
pub mod threads;
pub mod tree;

use std::ffi::CString;
use std::time::Duration;

use zdtm::{os_err, TestResult};

/// A signal set containing exactly `sigs`.
pub fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is valid; sigaddset rejects invalid numbers with EINVAL.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// The signals of `set` as a bit mask: bit `n - 1` for signal `n` (1..=64),
/// the same layout as the `SigBlk`/`SigPnd` lines of `/proc/PID/status`.
pub fn sigset_bits(set: &libc::sigset_t) -> u64 {
    (1..=64)
        // SAFETY: set is a valid sigset_t; sigismember only reads it.
        .filter(|&s| unsafe { libc::sigismember(set, s) } == 1)
        .fold(0u64, |acc, s| acc | 1 << (s - 1))
}

/// The bit mask (see [`sigset_bits`]) for a list of signals.
pub fn sig_bits(sigs: &[i32]) -> u64 {
    sigs.iter().fold(0u64, |acc, s| acc | 1 << (s - 1))
}

/// The current blocked signal mask.
pub fn blocked_mask() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid storage.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new set only queries the mask into `set`.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) };
    set
}

/// `sigprocmask(how, sigs)`.
pub fn sigprocmask(how: i32, sigs: &[i32]) -> TestResult {
    let set = sigset(sigs);
    // SAFETY: set is a valid sigset_t; the old set is not requested.
    if unsafe { libc::sigprocmask(how, &set, std::ptr::null_mut()) } != 0 {
        return Err(os_err("sigprocmask"));
    }
    Ok(())
}

/// The pending signals (`sigpending`) as a bit mask.
pub fn pending_bits() -> TestResult<u64> {
    // SAFETY: a zeroed sigset_t is valid storage.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is valid writable storage.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return Err(os_err("sigpending"));
    }
    Ok(sigset_bits(&set))
}

/// Queries the current action of `sig`.
pub fn get_sigaction(sig: i32) -> TestResult<libc::sigaction> {
    // SAFETY: a zeroed sigaction is valid storage.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries into `sa`.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut sa) } != 0 {
        return Err(os_err(&format!("sigaction({sig}) query")));
    }
    Ok(sa)
}

/// Installs `handler` (an address, `SIG_IGN` or `SIG_DFL`) for `sig` with
/// `flags` and the signals of `mask` blocked during the handler.
pub fn set_sigaction(sig: i32, handler: usize, flags: i32, mask: &[i32]) -> TestResult {
    // SAFETY: a zeroed sigaction is a valid initial value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    sa.sa_mask = sigset(mask);
    // SAFETY: sa is fully initialised; the handler addresses passed by the
    // tests are `extern "C"` functions with the matching signature.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        return Err(os_err(&format!("sigaction({sig})")));
    }
    Ok(())
}

/// A printable summary of a sigaction: handler, flags, mask bits, restorer.
pub fn fmt_sigaction(sa: &libc::sigaction) -> String {
    format!(
        "handler {:#x} flags {:#x} mask {:#018x} restorer {:#x}",
        sa.sa_sigaction,
        sa.sa_flags,
        sigset_bits(&sa.sa_mask),
        sa.sa_restorer.map_or(0, |f| f as usize)
    )
}

/// `SIGRTMIN + n` as numbered by the C library.
pub fn sigrt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

/// Reads a clock.
pub fn clock(id: libc::clockid_t) -> TestResult<Duration> {
    // SAFETY: a zeroed timespec is valid storage.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is valid writable storage.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Err(os_err(&format!("clock_gettime({id})")));
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// `CLOCK_MONOTONIC` now.
pub fn monotonic() -> TestResult<Duration> {
    clock(libc::CLOCK_MONOTONIC)
}

/// prctl(op, arg, 0, 0, 0): a getter's value or a setter's 0.
pub fn prctl(op: i32, arg: libc::c_ulong) -> TestResult<i32> {
    // SAFETY: getter/setter prctls with integer or output-pointer arguments
    // (a pointer argument is the caller's live buffer).
    let r = unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(os_err(&format!("prctl({op})")));
    }
    Ok(r)
}

/// `pipe2(flags)`; returns `(read_end, write_end)`.
pub fn pipe2(flags: i32) -> TestResult<(i32, i32)> {
    let mut fds = [-1; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(os_err("pipe2"));
    }
    Ok((fds[0], fds[1]))
}

/// Writes all of `buf` to `fd`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> TestResult {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if zdtm::errno() == libc::EINTR {
                continue;
            }
            return Err(os_err(&format!("write(fd {fd})")));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// One `read(fd)` of up to `len` bytes.
pub fn read_some(fd: i32, len: usize) -> TestResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    loop {
        // SAFETY: buf is a valid writable buffer of len bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) };
        if n < 0 {
            if zdtm::errno() == libc::EINTR {
                continue;
            }
            return Err(os_err(&format!("read(fd {fd})")));
        }
        buf.truncate(n as usize);
        return Ok(buf);
    }
}

/// Reads exactly `len` bytes (fails on EOF).
pub fn read_exact(fd: i32, len: usize) -> TestResult<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let chunk = read_some(fd, len - out.len())?;
        if chunk.is_empty() {
            return Err(format!(
                "read(fd {fd}): EOF after {} of {len} bytes",
                out.len()
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `pread(fd, len, offset)`, exactly `len` bytes.
pub fn pread_exact(fd: i32, len: usize, offset: u64) -> TestResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: the destination range lies inside buf.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            return Err(os_err(&format!("pread(fd {fd})")));
        }
        if n == 0 {
            return Err(format!("pread(fd {fd}): EOF at {}", offset + done as u64));
        }
        done += n as usize;
    }
    Ok(buf)
}

/// `socketpair(AF_UNIX, kind)`; returns both ends.
pub fn socketpair(kind: i32) -> TestResult<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
        return Err(os_err("socketpair"));
    }
    Ok((fds[0], fds[1]))
}

/// One `send(fd, data, MSG_DONTWAIT)`, which must take all of `data` (one
/// message on a datagram or seqpacket socket).
pub fn send_dontwait(fd: i32, data: &[u8]) -> TestResult {
    // SAFETY: sending from a valid buffer.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT) };
    if n != data.len() as isize {
        return Err(format!(
            "send of {} bytes on fd {fd}: {n} ({})",
            data.len(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One `recv(fd, max, MSG_DONTWAIT)`: a whole message on a datagram or
/// seqpacket socket.
pub fn recv_dontwait(fd: i32, max: usize) -> TestResult<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: receiving into a valid buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), max, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(os_err(&format!("recv on fd {fd}")));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `open(path, flags, 0o644)`.
pub fn open(path: &str, flags: i32) -> TestResult<i32> {
    let c = CString::new(path).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(os_err(&format!("open {path}")));
    }
    Ok(fd)
}

/// `close(fd)`.
pub fn close(fd: i32) -> TestResult {
    // SAFETY: closing a descriptor the test owns.
    if unsafe { libc::close(fd) } != 0 {
        return Err(os_err(&format!("close({fd})")));
    }
    Ok(())
}

/// The current file offset: `lseek(fd, 0, SEEK_CUR)`.
pub fn tell(fd: i32) -> TestResult<i64> {
    lseek(fd, 0, libc::SEEK_CUR)
}

/// `lseek(fd, off, whence)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> TestResult<i64> {
    // SAFETY: lseek has no memory-safety preconditions.
    let r = unsafe { libc::lseek(fd, off, whence) };
    if r < 0 {
        return Err(os_err(&format!("lseek(fd {fd})")));
    }
    Ok(r)
}

/// `fcntl(fd, cmd)` for the query commands (F_GETFL, F_GETFD...).
pub fn fcntl_get(fd: i32, cmd: i32) -> TestResult<i32> {
    // SAFETY: query commands take no pointer argument.
    let r = unsafe { libc::fcntl(fd, cmd) };
    if r < 0 {
        return Err(os_err(&format!("fcntl(fd {fd}, {cmd})")));
    }
    Ok(r)
}

/// `fstat(fd)`.
pub fn fstat(fd: i32) -> TestResult<libc::stat> {
    // SAFETY: a zeroed stat is valid storage.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid writable storage.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(os_err(&format!("fstat(fd {fd})")));
    }
    Ok(st)
}

/// `/proc/self/fd/N` link target.
/// FIONREAD: bytes waiting to be read (a pipe, either end; a socket).
pub fn fionread(fd: i32) -> TestResult<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return Err(os_err(&format!("FIONREAD on fd {fd}")));
    }
    Ok(n)
}

/// The fd table with the inode numbers of pipes and sockets hidden
/// (`pipe:[123]` -> `pipe`): restore makes new ones.
pub fn fd_table_without_inodes() -> TestResult<Vec<(i32, String)>> {
    Ok(zdtm::procfs::list_fds()?
        .into_iter()
        .map(|(fd, p)| match p.split_once(":[") {
            Some((kind @ ("pipe" | "socket"), _)) => (fd, kind.to_string()),
            _ => (fd, p),
        })
        .collect())
}

pub fn fd_path(fd: i32) -> TestResult<String> {
    zdtm::procfs::readlink(&format!("/proc/self/fd/{fd}"))
}

/// Creates a file with `data` (and fsyncs nothing: page cache is enough).
pub fn create_file(path: &str, data: &[u8]) -> TestResult {
    std::fs::write(path, data).map_err(|e| format!("writing {path}: {e}"))
}

/// A buffer of `len` pattern bytes for logical addresses `base..`.
pub fn pattern_bytes(seed: u64, base: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    zdtm::pattern::fill_at(&mut v, seed, base);
    v
}

/// Describes the first difference between two byte strings.
pub fn diff_bytes(what: &str, got: &[u8], want: &[u8]) -> TestResult {
    if got == want {
        return Ok(());
    }
    if got.len() != want.len() {
        return Err(format!(
            "{what}: length {} instead of {}",
            got.len(),
            want.len()
        ));
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!(
        "{what}: byte {i:#x} is {:#04x}, expected {:#04x}",
        got[i], want[i]
    ))
}

/// The logical address of page `page` of the content named `id`: patterns
/// filled at it are unique per (id, page) and do not depend on where the
/// page is mapped, so content can be checked after it was moved.
pub fn logical(id: u64, page: usize) -> u64 {
    (id << 40) | (page * zdtm::mem::page_size()) as u64
}

/// Fills the page at `addr` with the pattern of `seed` for logical address
/// `logical` (seed 0: zeroes). `addr` must be a writable test page.
pub fn fill_page(addr: usize, seed: u64, logical: u64) {
    // SAFETY: callers pass a page of their own read-write raw mappings,
    // which no Rust reference aliases.
    let page = unsafe { zdtm::mem::slice_mut(addr, zdtm::mem::page_size()) };
    if seed == 0 {
        page.fill(0);
    } else {
        zdtm::pattern::fill_at(page, seed, logical);
    }
}

/// Checks pages 0.. of the mapping at `addr` against `seeds`, each as
/// [`fill_page`] wrote it at its own offset (`page * page_size`, seed 0:
/// zeroes), except the pages in `skip`; an error names `what` and the page.
/// The mapping must be readable.
pub fn check_pages(what: &str, addr: usize, seeds: &[u64], skip: &[usize]) -> TestResult {
    let ps = zdtm::mem::page_size();
    for (p, &seed) in seeds.iter().enumerate().filter(|(p, _)| !skip.contains(p)) {
        check_page(addr + p * ps, seed, (p * ps) as u64)
            .map_err(|m| format!("{what} page {p} (seed {seed:#x}): {m}"))?;
    }
    Ok(())
}

/// futex(2) on a word of shared memory, no timeout (FUTEX_WAIT, FUTEX_WAKE
/// between processes).
pub fn futex(w: &std::sync::atomic::AtomicU32, op: i32, val: u32) {
    // SAFETY: a futex call on a valid, aligned word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Waits until `w` is no longer `seen` and returns its new value
/// (spurious wakes and EINTR loop).
pub fn wait_change(w: &std::sync::atomic::AtomicU32, seen: u32) -> u32 {
    loop {
        let v = w.load(std::sync::atomic::Ordering::SeqCst);
        if v != seen {
            return v;
        }
        futex(w, libc::FUTEX_WAIT, seen);
    }
}

/// Checks the page at `addr` against [`fill_page`]`(addr, seed, logical)`.
/// `addr` must be a readable test page.
pub fn check_page(addr: usize, seed: u64, logical: u64) -> Result<(), zdtm::pattern::Mismatch> {
    // SAFETY: callers pass a page of their own readable raw mappings.
    let page = unsafe { zdtm::mem::slice(addr, zdtm::mem::page_size()) };
    if seed == 0 {
        zdtm::pattern::verify_zero(page)
    } else {
        zdtm::pattern::verify_at(page, seed, logical)
    }
}
