//! The pidfile / outfile / SIGTERM protocol.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::{Args, TestResult};

/// Set to 1 by the SIGTERM handler; the futex word [`wait_for_sigterm`]
/// sleeps on.
static SIGTERM: AtomicU32 = AtomicU32::new(0);
/// Write end of the readiness pipe to the daemonising parent, or -1.
static READY_FD: AtomicI32 = AtomicI32::new(-1);
/// Absolute path of the outfile, once [`init`] ran.
static OUTFILE: OnceLock<PathBuf> = OnceLock::new();
/// The outfile opened in advance by [`hold_outfile`], or -1.
static OUTFILE_FD: AtomicI32 = AtomicI32::new(-1);
/// The test's name (basename of argv\[0\]).
static NAME: OnceLock<String> = OnceLock::new();

/// The readiness pipe is moved to the first free fd at or above this.
const READY_FD_MIN: libc::c_int = 1000;
/// Byte sent over the readiness pipe when setup succeeded.
const MSG_READY: u8 = b'R';
/// Byte sent over the readiness pipe before a setup failure message.
const MSG_FAIL: u8 = b'F';

extern "C" fn sigterm_handler(_sig: libc::c_int) {
    // Keep this trivial: an atomic store only (no vector registers, no
    // allocation, async-signal-safe).
    SIGTERM.store(1, Ordering::SeqCst);
    crate::steps::wake();
}

/// The absolute path of the outfile, once [`init`] ran.
pub(crate) fn outfile() -> Option<&'static Path> {
    OUTFILE.get().map(PathBuf::as_path)
}

/// Whether SIGTERM has been received.
pub fn sigterm_received() -> bool {
    SIGTERM.load(Ordering::SeqCst) != 0
}

/// The flag the SIGTERM handler sets to 1 (0 before). Tests that install
/// their own SIGTERM handler must set it (`store(1, SeqCst)`) from that
/// handler so that [`wait_for_sigterm`] and [`sigterm_received`] keep
/// working. It is a futex word: a test that waits for SIGTERM by itself
/// (in assembly, say) must sleep with `FUTEX_WAIT(word, 0)`, which cannot
/// miss a SIGTERM that lands between its check and its sleep, never with
/// `pause()`, which can.
pub fn sigterm_flag() -> &'static AtomicU32 {
    &SIGTERM
}

/// The fd of the readiness pipe to the daemonising parent, while it is open
/// (between [`init`] and [`ready`]); it is at 1000 or above.
pub fn ready_fd() -> Option<i32> {
    let fd = READY_FD.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// The test's name: the basename of the program.
pub fn test_name() -> &'static str {
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .map(|a| {
                Path::new(&a)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .unwrap_or_else(|| "zdtm-test".to_string())
    })
}

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
fn write_all_fd(fd: libc::c_int, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Writes one log line to stderr (use the [`test_msg!`](crate::test_msg)
/// macro).
pub fn log(args: fmt::Arguments) {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let line = format!("{}[{}]: {}\n", test_name(), pid, args);
    let _ = write_all_fd(2, line.as_bytes());
}

/// Parses the command line, installs the SIGTERM handler and daemonises.
///
/// Only the daemonised child returns from this function; it is a session
/// and process group leader (`setsid()`). The original process waits until
/// the child calls [`ready`], then writes the child's pid to the pidfile
/// (atomically, via a temporary file and `rename`) and exits 0; if the child
/// fails before that (see [`fail`]) or dies, it prints the reason and exits
/// 1. Bad arguments exit with status 2.
pub fn init() -> Args {
    let name = test_name();
    let mut args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: {e}\nusage: {name} --pidfile=PATH --outfile=PATH [--key=value]...");
            std::process::exit(2);
        }
    };
    // Tests may chdir(); keep the paths valid.
    for p in [&mut args.pidfile, &mut args.outfile] {
        match std::path::absolute(&*p) {
            Ok(abs) => *p = abs,
            Err(e) => {
                eprintln!("{name}: bad path {}: {e}", p.display());
                std::process::exit(2);
            }
        }
    }
    let _ = OUTFILE.set(args.outfile.clone());
    install_sigterm_handler();
    daemonize(&args.pidfile);
    args
}

fn install_sigterm_handler() {
    // SAFETY: an all-zero sigaction is a valid initial value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = sigterm_handler as *const () as usize;
    sa.sa_flags = 0; // no SA_RESTART: interrupt blocking syscalls
                     // SAFETY: sa is initialised; sigemptyset only writes to sa.sa_mask.
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        eprintln!("{}: {}", test_name(), crate::os_err("sigaction(SIGTERM)"));
        std::process::exit(1);
    }
}

fn daemonize(pidfile: &Path) {
    let mut fds = [-1; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("{}: {}", test_name(), crate::os_err("pipe2"));
        std::process::exit(1);
    }
    // SAFETY: the process is single-threaded, so the child may continue
    // running arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("{}: {}", test_name(), crate::os_err("fork"));
        std::process::exit(1);
    }
    if pid == 0 {
        // SAFETY: closing our copy of the read end, which nothing else uses.
        unsafe { libc::close(fds[0]) };
        // Move the write end out of the way, so that the fds the test opens
        // during setup get the same numbers as after ready().
        // SAFETY: F_DUPFD_CLOEXEC takes an int argument; fds[1] is ours.
        let high = unsafe { libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, READY_FD_MIN) };
        if high >= 0 {
            // SAFETY: closing the original, now duplicated, descriptor.
            unsafe { libc::close(fds[1]) };
            fds[1] = high;
        }
        // SAFETY: setsid has no memory-safety preconditions.
        if unsafe { libc::setsid() } < 0 {
            READY_FD.store(fds[1], Ordering::SeqCst);
            fail(&crate::os_err("setsid"));
        }
        READY_FD.store(fds[1], Ordering::SeqCst);
        return;
    }
    // Parent: wait for the child's verdict, never return.
    // SAFETY: closing our copy of the write end so that EOF is seen when
    // the child closes or dies.
    unsafe { libc::close(fds[1]) };
    let msg = read_until_ready(fds[0]);
    let code = if msg.first() == Some(&MSG_READY) {
        match write_pidfile(pidfile, pid) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!(
                    "{}: writing pidfile {}: {e}",
                    test_name(),
                    pidfile.display()
                );
                1
            }
        }
    } else {
        let reason = if msg.len() > 1 {
            String::from_utf8_lossy(&msg[1..]).into_owned()
        } else {
            "the test exited before it was ready".to_string()
        };
        eprintln!("{}: setup failed: {reason}", test_name());
        1
    };
    // SAFETY: _exit is always safe to call; skipping atexit handlers and
    // stdio flushing is intended in the parent.
    unsafe { libc::_exit(code) }
}

/// Reads from the readiness pipe until EOF: the ready byte (or a failure
/// message) comes first, then EOF once the daemon closed its end. Waiting
/// for EOF, not just the byte, makes sure the daemon no longer holds the
/// readiness fd when the pidfile appears: the runner's "before" snapshot
/// must not see a descriptor the dump will not (a child forked before
/// [`ready`] must close [`ready_fd`] too, or the launcher waits for it).
fn read_until_ready(fd: libc::c_int) -> Vec<u8> {
    let mut msg = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            if crate::errno() == libc::EINTR {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        msg.extend_from_slice(&buf[..n as usize]);
    }
    msg
}

fn write_pidfile(pidfile: &Path, pid: libc::pid_t) -> std::io::Result<()> {
    let mut tmp_name = pidfile
        .file_name()
        .map(|f| f.to_os_string())
        .unwrap_or_default();
    // SAFETY: getpid has no preconditions.
    tmp_name.push(format!(".{}.tmp", unsafe { libc::getpid() }));
    let tmp = pidfile.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, pidfile).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Tells the daemonising parent that setup is complete: it then writes the
/// pidfile and exits. The pipe to the parent is closed, so the test holds
/// no extra file descriptor afterwards.
pub fn ready() {
    let fd = READY_FD.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        test_msg!("ready() called twice or without init()");
        return;
    }
    let res = write_all_fd(fd, &[MSG_READY]);
    // SAFETY: fd is the readiness pipe, owned by this module.
    unsafe { libc::close(fd) };
    if let Err(e) = res {
        test_msg!("cannot report readiness: {e}");
        std::process::exit(1);
    }
}

/// Sleeps until `word` is no longer 0, without a lost wake-up: the futex
/// wait only sleeps while the word still holds 0, so a signal handler that
/// sets it between the check and the call makes the call return at once
/// (`EAGAIN`), and one that runs during the sleep interrupts it (`EINTR`,
/// or a restart that finds the word changed). `between` runs between the
/// check and the sleep: the worst moment for a signal, where the tests
/// deliver one.
pub(crate) fn wait_until_set(word: &AtomicU32, mut between: impl FnMut()) {
    while word.load(Ordering::SeqCst) == 0 {
        between();
        // SAFETY: `word` is a live, aligned 32-bit atomic for the duration
        // of the call; FUTEX_WAIT only reads it; a null timeout waits
        // forever.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                std::ptr::null::<libc::timespec>(),
            )
        };
        if rc != 0 {
            let e = crate::errno();
            if e != libc::EINTR && e != libc::EAGAIN {
                fail(&crate::os_err("futex wait for SIGTERM"));
            }
        }
    }
}

/// Blocks until SIGTERM has been received.
///
/// The process sleeps in `futex(FUTEX_WAIT)` on the SIGTERM flag (no CPU
/// use, no memory writes), which the SIGTERM handler interrupts; a SIGTERM
/// that arrives just before the sleep is not lost ([`sigterm_flag`]). A
/// checkpoint restarts the wait transparently. SIGTERM must not be
/// blocked; this fails the test instead of hanging if it is.
pub fn wait_for_sigterm() {
    // SAFETY: a zeroed sigset_t is valid storage; sigprocmask with a null
    // new set only queries the mask.
    let blocked = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        libc::sigismember(&set, libc::SIGTERM) == 1
    };
    if blocked {
        fail("SIGTERM is blocked, the test cannot wait for it");
    }
    wait_until_set(&SIGTERM, || {});
}

/// Opens the outfile now and keeps it open, for a test that will lose
/// the right to open it by path (it drops its credentials after [`init`]).
/// The verdict is then written through this descriptor, which the test
/// holds (and crust dumps) like any other open file. Call it before
/// [`ready`], so that the descriptor exists in the dumped state.
pub fn hold_outfile() -> TestResult<i32> {
    let path = OUTFILE.get().ok_or("hold_outfile before init")?;
    let cpath =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| "bad outfile path".to_string())?;
    // SAFETY: cpath is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(crate::os_err(&format!("open {}", path.display())));
    }
    OUTFILE_FD.store(fd, Ordering::SeqCst);
    Ok(fd)
}

fn write_outfile(text: &str) {
    let held = OUTFILE_FD.swap(-1, Ordering::SeqCst);
    if held >= 0 {
        // SAFETY: held is the outfile descriptor opened by hold_outfile.
        let res = if unsafe { libc::ftruncate(held, 0) } == 0 {
            // SAFETY: lseek on our own descriptor.
            unsafe { libc::lseek(held, 0, libc::SEEK_SET) };
            write_all_fd(held, text.as_bytes())
        } else {
            Err(std::io::Error::last_os_error())
        };
        // SAFETY: held is owned here.
        unsafe { libc::close(held) };
        if let Err(e) = res {
            test_msg!("writing the held outfile: {e}");
            std::process::exit(1);
        }
        return;
    }
    let Some(path) = OUTFILE.get() else {
        test_msg!("no outfile (init() not called): {}", text.trim_end());
        return;
    };
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        test_msg!("bad outfile path {}", path.display());
        std::process::exit(1);
    };
    // SAFETY: cpath is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        test_msg!("{}", crate::os_err(&format!("open {}", path.display())));
        std::process::exit(1);
    }
    let res = write_all_fd(fd, text.as_bytes());
    // SAFETY: fd was opened above and is owned here.
    unsafe { libc::close(fd) };
    if let Err(e) = res {
        test_msg!("writing {}: {e}", path.display());
        std::process::exit(1);
    }
}

/// Reports success: writes `PASS` to the outfile and exits 0.
pub fn pass() -> ! {
    crate::tempdir::remove_leftovers();
    write_outfile("PASS\n");
    test_msg!("PASS");
    std::process::exit(0)
}

/// Reports failure: writes `FAIL: msg` to the outfile and exits.
///
/// Before [`ready`] (a setup failure) the message is also sent to the
/// daemonising parent, which prints it and exits 1 without writing the
/// pidfile; the test exits 1. After [`ready`] the test exits 0, as the
/// verdict is in the outfile.
pub fn fail(msg: &str) -> ! {
    let msg = msg.replace('\n', "; ");
    crate::tempdir::remove_leftovers();
    write_outfile(&format!("FAIL: {msg}\n"));
    test_msg!("FAIL: {msg}");
    let fd = READY_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        let mut buf = vec![MSG_FAIL];
        buf.extend_from_slice(msg.as_bytes());
        let _ = write_all_fd(fd, &buf);
        // SAFETY: fd is the readiness pipe, owned by this module.
        unsafe { libc::close(fd) };
        std::process::exit(1);
    }
    std::process::exit(0)
}

/// Reports `Ok(())` as [`pass`] and `Err(reason)` as [`fail`].
pub fn finish(result: TestResult) -> ! {
    match result {
        Ok(()) => pass(),
        Err(e) => fail(&e),
    }
}

/// Runs the whole test cycle: [`init`], `setup`, [`ready`],
/// [`wait_for_sigterm`], `check`, [`finish`].
///
/// A setup error is reported with [`fail`] (before readiness).
pub fn run<S>(
    setup: impl FnOnce(&Args) -> TestResult<S>,
    check: impl FnOnce(S) -> TestResult,
) -> ! {
    let args = init();
    let state = match setup(&args) {
        Ok(s) => s,
        Err(e) => fail(&format!("setup: {e}")),
    };
    ready();
    wait_for_sigterm();
    finish(check(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Set by the SIGUSR1 handler of these tests (SIGTERM's flag belongs
    /// to the library, and other tests of this crate read it).
    static WORD: AtomicU32 = AtomicU32::new(0);

    extern "C" fn set_word(_sig: libc::c_int) {
        WORD.store(1, Ordering::SeqCst);
    }

    fn install_usr1() {
        // SAFETY: an all-zero sigaction is valid; the handler only stores
        // to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = set_word as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// One test at a time owns WORD and SIGUSR1.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_signal_between_check_and_sleep_is_not_lost() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        install_usr1();
        for _ in 0..100 {
            WORD.store(0, Ordering::SeqCst);
            // The signal arrives after the flag was seen clear and before
            // the sleep: `while !flag { pause() }` sleeps for ever here.
            let (done, finished) = mpsc::channel();
            let waiter = std::thread::spawn(move || {
                wait_until_set(&WORD, || {
                    // SAFETY: raise sends SIGUSR1 to this thread, whose
                    // handler only stores to an atomic.
                    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
                });
                let _ = done.send(());
            });
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("the wait missed a signal delivered between its check and its sleep");
            waiter.join().expect("waiter");
        }
    }

    #[test]
    fn signals_at_random_moments_always_end_the_wait() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        install_usr1();
        let mut rng = crate::rng::Rng::new(0x5eed_7e57);
        for round in 0..2000 {
            WORD.store(0, Ordering::SeqCst);
            let (tid_tx, tid_rx) = mpsc::channel();
            let (done, finished) = mpsc::channel();
            let waiter = std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                wait_until_set(&WORD, || {});
                let _ = done.send(());
            });
            let tid = tid_rx.recv().expect("tid");
            // A few hundred nanoseconds to a few microseconds: around the
            // waiter's check and its entry into the kernel.
            let spins = rng.below(4000);
            for _ in 0..spins {
                std::hint::spin_loop();
            }
            // SAFETY: tgkill to a live thread of ours (it cannot exit
            // before the flag is set); the handler only stores an atomic.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
            assert_eq!(rc, 0, "tgkill");
            finished
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| {
                    panic!("round {round} (seed 0x5eed7e57, {spins} spins): the wait never ended")
                });
            waiter.join().expect("waiter");
        }
    }
}
