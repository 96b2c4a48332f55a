//! `zdtm-dummy`: the smallest program that follows the zdtm test protocol
//! (docs/test-protocol.md). The runner's own tests drive it, and it is a
//! smoke test of crust and the harness together:
//! `zdtm run --bin target/debug/zdtm-dummy`.
//!
//! `zdtm-dummy --pidfile=P --outfile=O [--mode=M] [--threads=N] [--steps] [--foreground]`
//!
//! Modes: `pass` (default: write PASS on SIGTERM), `fail` (say so on
//! stderr and write `FAIL: asked to`), `launcher-fail` (the launcher exits 3), `no-pidfile` (the
//! launcher exits 0 without writing the pidfile), `launcher-hang` (the
//! launcher never exits, its daemon runs), `busy` (a thread keeps
//! writing memory: the task is not quiescent), `vfork` (once ready, the main
//! thread sits in `vfork()`, in uninterruptible sleep (state `D`), until its
//! vfork child, which loops in `pause()`, is killed: a task that is blocked
//! but not settled). `--threads=N` starts N extra
//! threads that sleep in `pause()` with SIGTERM blocked. `--foreground`
//! does not daemonise: the process writes its own pidfile and waits.
//! `--steps` follows the step protocol (manifest `steps = true`): on each
//! ZDTM_STEP_SIGNAL (SIGRTMAX-1) it rewrites a 4 KiB buffer with the step
//! number, then writes that number to `<outfile>.step` (temporary file,
//! then rename); on SIGTERM it checks that the buffer holds the last step.
//! With `--mode=busy` too, it is a `continuous` test.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

/// 0 until SIGTERM: the futex word the main thread waits on.
static TERMINATED: AtomicU32 = AtomicU32::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Steps taken so far.
static STEPS: AtomicU32 = AtomicU32::new(0);
/// Rewritten with the step number at each step: memory that changes
/// between pre-dumps.
static STEP_BUF: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];
/// `<outfile>.step` and its temporary file, set before the handler is
/// installed.
static STEP_FILES: OnceLock<(CString, CString)> = OnceLock::new();

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(1, Ordering::SeqCst);
}

/// Sleeps until SIGTERM's handler has run, without a lost wake-up: the
/// futex wait only sleeps while the word still holds 0, so a SIGTERM that
/// lands between the check and the call makes it return at once (a
/// `while !flag { pause() }` loop would sleep for ever then).
fn wait_for_sigterm() {
    while TERMINATED.load(Ordering::SeqCst) == 0 {
        // SAFETY: TERMINATED is a live, aligned 32-bit word for the whole
        // program; FUTEX_WAIT only reads it; a null timeout waits forever.
        // EINTR (a handler ran) and EAGAIN (the word changed) both mean:
        // look again.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                TERMINATED.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }
}

/// `--mode=vfork`: vfork a child that loops in `pause()` without touching
/// memory; this thread waits in the kernel, uninterruptibly (state `D`),
/// until the child dies. Returns then.
fn hold_in_vfork() {
    let ret: i64;
    // SAFETY: a raw vfork: the child shares our memory and stack, so it
    // runs only the instructions below, which touch neither (a `pause`
    // syscall in a loop), until it is killed. The parent resumes once the
    // child is gone, with rax = the child's pid (or -errno); syscall
    // clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "3:",
            "mov eax, 34", // SYS_pause, in the child
            "syscall",
            "jmp 3b",
            "2:",
            inout("rax") libc::SYS_vfork => ret,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        die("vfork", std::io::Error::from_raw_os_error(-ret as i32));
    }
}

/// The step signal's handler: takes the step and acknowledges it. Only
/// async-signal-safe calls (atomics, open, write, close, rename).
extern "C" fn on_step(_: libc::c_int) {
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    for word in &STEP_BUF {
        word.store(u64::from(n), Ordering::SeqCst);
    }
    let Some((file, tmp)) = STEP_FILES.get() else {
        return;
    };
    // The decimal digits of n, without allocating.
    let mut digits = [0u8; 11];
    let mut at = digits.len() - 1;
    digits[at] = b'\n';
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let text = &digits[at..];
    // SAFETY: open, write, close and rename are async-signal-safe; the
    // paths are NUL-terminated strings that live for the whole process and
    // `text` outlives the write.
    unsafe {
        let fd = libc::open(
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        );
        if fd < 0 {
            return;
        }
        let written = libc::write(fd, text.as_ptr().cast(), text.len());
        libc::close(fd);
        if usize::try_from(written).ok() == Some(text.len()) {
            libc::rename(tmp.as_ptr(), file.as_ptr());
        }
    }
}

/// The verdict about the steps: the buffer holds the last step everywhere.
fn check_steps() -> Result<(), String> {
    let n = u64::from(STEPS.load(Ordering::SeqCst));
    for (i, word) in STEP_BUF.iter().enumerate() {
        let v = word.load(Ordering::SeqCst);
        if v != n {
            return Err(format!("step buffer word {i} holds {v}, expected {n}"));
        }
    }
    Ok(())
}

struct Args {
    pidfile: PathBuf,
    outfile: PathBuf,
    mode: String,
    threads: usize,
    foreground: bool,
    steps: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("zdtm-dummy: {msg}");
    eprintln!(
        "usage: zdtm-dummy --pidfile=P --outfile=O \
         [--mode=pass|fail|launcher-fail|launcher-hang|no-pidfile|busy|vfork] \
         [--threads=N] [--steps] [--foreground]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut pidfile = None;
    let mut outfile = None;
    let mut mode = "pass".to_string();
    let mut threads = 0;
    let mut foreground = false;
    let mut steps = false;
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--pidfile=") {
            pidfile = Some(PathBuf::from(v));
        } else if let Some(v) = arg.strip_prefix("--outfile=") {
            outfile = Some(PathBuf::from(v));
        } else if let Some(v) = arg.strip_prefix("--mode=") {
            mode = v.to_string();
        } else if let Some(v) = arg.strip_prefix("--threads=") {
            threads = v.parse().unwrap_or_else(|_| usage("bad --threads"));
        } else if arg == "--foreground" {
            foreground = true;
        } else if arg == "--steps" {
            steps = true;
        } else {
            usage(&format!("unknown argument {arg:?}"));
        }
    }
    Args {
        pidfile: pidfile.unwrap_or_else(|| usage("--pidfile is required")),
        outfile: outfile.unwrap_or_else(|| usage("--outfile is required")),
        mode,
        threads,
        foreground,
        steps,
    }
}

/// Writes `pid` to `path` atomically (temporary file, then rename).
fn write_pidfile(path: &Path, pid: i32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

fn die(what: &str, err: impl std::fmt::Display) -> ! {
    eprintln!("zdtm-dummy: {what}: {err}");
    std::process::exit(1);
}

fn block_sigterm_in_this_thread() {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        die("pthread_sigmask", e);
    }
}

/// The daemon: set up, tell the launcher (or write the pidfile), wait for
/// SIGTERM, write the verdict.
fn daemon(args: &Args, ready: impl FnOnce()) -> ! {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_sigterm),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let installed =
        unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action) };
    if let Err(e) = installed {
        die("sigaction", e);
    }
    if args.steps {
        let mut tmp = args.outfile.as_os_str().to_owned();
        tmp.push(".step.tmp");
        let mut file = args.outfile.as_os_str().to_owned();
        file.push(".step");
        let cstring = |s: &std::ffi::OsStr| {
            CString::new(s.as_bytes()).unwrap_or_else(|e| die("outfile path", e))
        };
        let _ = STEP_FILES.set((cstring(&file), cstring(&tmp)));
        // nix's Signal cannot name a real-time signal: libc's sigaction.
        // SAFETY: an all-zero sigaction is valid (SIG_DFL, empty flags);
        // sigemptyset initialises the mask; the handler only makes
        // async-signal-safe calls (see on_step).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_step as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGRTMAX() - 1, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            die("sigaction(SIGRTMAX-1)", std::io::Error::last_os_error());
        }
    }
    for _ in 0..args.threads {
        std::thread::spawn(|| {
            block_sigterm_in_this_thread();
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        });
    }
    if args.mode == "busy" {
        std::thread::spawn(|| {
            block_sigterm_in_this_thread();
            loop {
                COUNTER.fetch_add(1, Ordering::Relaxed);
                std::hint::spin_loop();
            }
        });
    }
    // Let the threads reach their steady state before declaring readiness.
    loop {
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        if threads > args.threads + usize::from(args.mode == "busy") {
            break;
        }
        std::thread::yield_now();
    }
    ready();
    if args.mode == "vfork" {
        hold_in_vfork();
    }
    wait_for_sigterm();
    let verdict = if args.mode == "fail" {
        // On stderr, the runner's test.log: a failure shows its tail.
        eprintln!("zdtm-dummy: reporting FAIL as asked (--mode=fail)");
        "FAIL: asked to\n".to_string()
    } else if let Err(reason) = check_steps() {
        format!("FAIL: {reason}\n")
    } else {
        "PASS\n".to_string()
    };
    if let Err(e) = std::fs::write(&args.outfile, verdict) {
        die("writing the outfile", e);
    }
    std::process::exit(0);
}

fn main() {
    let args = parse_args();
    if args.foreground {
        // Its own session, as a daemon would be: a stopped task in its
        // parent's session but another process group gets SIGHUP and
        // SIGCONT when that group becomes orphaned.
        if let Err(e) = nix::unistd::setsid() {
            die("setsid", e);
        }
        daemon(&args, || {
            if let Err(e) = write_pidfile(&args.pidfile, nix::unistd::getpid().as_raw()) {
                die("writing the pidfile", e);
            }
        });
    }
    match args.mode.as_str() {
        "launcher-fail" => std::process::exit(3),
        "no-pidfile" => std::process::exit(0),
        _ => {}
    }
    let (read_end, write_end) = nix::unistd::pipe().unwrap_or_else(|e| die("pipe", e));
    // SAFETY: single-threaded so far, so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => die("fork", e),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read_end);
            if let Err(e) = nix::unistd::setsid() {
                die("setsid", e);
            }
            daemon(&args, move || {
                if let Err(e) = nix::unistd::write(&write_end, b"R") {
                    die("telling the launcher", e);
                }
                drop(write_end);
            });
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(write_end);
            // The ready byte, then EOF: the daemon closed its end (so the
            // runner's snapshot cannot see it) before the pidfile exists.
            let mut seen = Vec::new();
            loop {
                let mut buf = [0u8; 16];
                match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&read_end), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => die("reading the readiness pipe", e),
                }
            }
            if seen.first() != Some(&b'R') {
                die("daemon", "exited before it was ready");
            }
            if args.mode == "launcher-hang" {
                loop {
                    // SAFETY: pause has no preconditions.
                    unsafe { libc::pause() };
                }
            }
            if let Err(e) = write_pidfile(&args.pidfile, child.as_raw()) {
                die("writing the pidfile", e);
            }
            std::process::exit(0);
        }
    }
}
