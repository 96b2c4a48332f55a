//! `zdtm-dummy`: the smallest program that follows the zdtm test protocol
//! (docs/test-protocol.md). The runner's own tests drive it, and it is a
//! smoke test of crust and the harness together:
//! `zdtm run --bin target/debug/zdtm-dummy`.
//!
//! `zdtm-dummy --pidfile=P --outfile=O [--mode=M] [--threads=N] [--foreground]`
//!
//! Modes: `pass` (default: write PASS on SIGTERM), `fail` (write `FAIL:
//! asked to`), `launcher-fail` (the launcher exits 3), `no-pidfile` (the
//! launcher exits 0 without writing the pidfile), `launcher-hang` (the
//! launcher never exits, its daemon runs), `busy` (a thread keeps
//! writing memory: the task is not quiescent). `--threads=N` starts N extra
//! threads that sleep in `pause()` with SIGTERM blocked. `--foreground`
//! does not daemonise: the process writes its own pidfile and waits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static TERMINATED: AtomicBool = AtomicBool::new(false);
static COUNTER: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

struct Args {
    pidfile: PathBuf,
    outfile: PathBuf,
    mode: String,
    threads: usize,
    foreground: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("zdtm-dummy: {msg}");
    eprintln!(
        "usage: zdtm-dummy --pidfile=P --outfile=O \
         [--mode=pass|fail|launcher-fail|launcher-hang|no-pidfile|busy] \
         [--threads=N] [--foreground]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut pidfile = None;
    let mut outfile = None;
    let mut mode = "pass".to_string();
    let mut threads = 0;
    let mut foreground = false;
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
    while !TERMINATED.load(Ordering::SeqCst) {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
    let verdict = if args.mode == "fail" {
        "FAIL: asked to\n"
    } else {
        "PASS\n"
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
            let mut byte = [0u8; 1];
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&read_end), &mut byte) {
                Ok(1) => {}
                _ => die("daemon", "exited before it was ready"),
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
