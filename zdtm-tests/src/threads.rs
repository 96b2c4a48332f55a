//! A multi-threaded process whose threads are blocked in different places
//! when it is checkpointed: two in a futex wait, one in read() on a pipe,
//! one in an absolute clock_nanosleep, one in a futex wait with a signal
//! pending in its own queue. Each thread has its own name, signal mask
//! (SIGTERM and one real-time signal of its own blocked), altstack,
//! thread-local value and patterned memory. After restore each wakes and
//! checks all of it, its tid and that its credentials are the leader's;
//! the main thread joins them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

use zdtm::{ensure_eq, TestResult};

use crate::{pipe2, sigrt};

const THREADS: usize = 5;
const ALTSTACK: usize = 64 << 10;

static GO: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn on_usr2(_: i32) {}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn data(n: usize) -> Vec<u64> {
    (0..50_000u64)
        .map(|i| zdtm::rng::hash(i, n as u64))
        .collect()
}

fn futex_wait_go() {
    while GO.load(SeqCst) == 0 {
        // SAFETY: GO is a live aligned 32-bit word; null timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                GO.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }
}

fn thread_mask(n: usize) -> Vec<i32> {
    vec![libc::SIGTERM, sigrt(n as i32 + 1)]
}

fn comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The credential lines of a status file.
fn creds(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "CapEff:", "CapPrm:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// One thread's life: set up, tell the barrier, block, check.
fn body(n: usize, barrier: Arc<Barrier>, read_fd: i32, tid_out: Arc<AtomicU32>) -> TestResult {
    let name = format!("zdtm-thr{n}");
    let cname = std::ffi::CString::new(name.clone()).map_err(|e| e.to_string())?;
    // SAFETY: PR_SET_NAME with a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
    let mask = crate::sigset(&thread_mask(n));
    // SAFETY: a valid sigset; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };
    let stack = vec![0u8; ALTSTACK];
    let ss = libc::stack_t {
        ss_sp: stack.as_ptr() as *mut libc::c_void,
        ss_flags: 0,
        ss_size: ALTSTACK,
    };
    // SAFETY: the stack lives as long as this thread's body.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(zdtm::os_err("sigaltstack"));
    }
    MINE.with(|m| m.set(0x7000 + n as u64));
    let mine = data(n);
    let tid = gettid();
    tid_out.store(tid as u32, SeqCst);
    barrier.wait();
    match n {
        2 => {
            let got = crate::read_exact(read_fd, 1)?;
            ensure_eq!(got, b"g".to_vec(), "byte read by thread 2");
        }
        3 => {
            let mut now: libc::timespec = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid timespec pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
            let until = libc::timespec {
                tv_sec: now.tv_sec + 3600,
                tv_nsec: 0,
            };
            while GO.load(SeqCst) == 0 {
                // SAFETY: absolute sleep; no remaining time is written.
                unsafe {
                    libc::clock_nanosleep(
                        libc::CLOCK_MONOTONIC,
                        libc::TIMER_ABSTIME,
                        &until,
                        std::ptr::null_mut(),
                    )
                };
            }
        }
        _ => futex_wait_go(),
    }
    ensure_eq!(comm(), name, "thread {n} name");
    ensure_eq!(
        creds("/proc/thread-self/status"),
        creds("/proc/self/status"),
        "thread {n} credentials (vs the leader's)"
    );
    ensure_eq!(gettid(), tid, "thread {n} tid");
    ensure_eq!(MINE.with(|m| m.get()), 0x7000 + n as u64, "thread {n} TLS");
    ensure_eq!(mine == data(n), true, "thread {n} memory");
    let now = crate::sigset_bits(&crate::blocked_mask());
    ensure_eq!(now, crate::sig_bits(&thread_mask(n)), "thread {n} mask");
    let mut cur: libc::stack_t = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: query only.
    unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) };
    ensure_eq!(
        (cur.ss_sp as usize, cur.ss_size),
        (stack.as_ptr() as usize, ALTSTACK),
        "thread {n} altstack"
    );
    if n == 4 {
        let pending = crate::pending_bits()?;
        ensure_eq!(
            pending & crate::sig_bits(&[sigrt(5)]),
            crate::sig_bits(&[sigrt(5)]),
            "thread 4 pending signal"
        );
        let set = crate::sigset(&[sigrt(5)]);
        let mut sig = 0;
        // SAFETY: valid set and output.
        unsafe { libc::sigwait(&set, &mut sig) };
        ensure_eq!(sig, sigrt(5), "signal taken by thread 4");
    }
    Ok(())
}

struct State {
    handles: Vec<std::thread::JoinHandle<TestResult>>,
    tids: Vec<Arc<AtomicU32>>,
    write_fd: i32,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    crate::set_sigaction(libc::SIGUSR2, on_usr2 as *const () as usize, 0, &[])?;
    let (r, w) = pipe2(0)?;
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let mut handles = Vec::new();
    let mut tids = Vec::new();
    for n in 0..THREADS {
        let (b, t) = (barrier.clone(), Arc::new(AtomicU32::new(0)));
        tids.push(t.clone());
        handles.push(
            std::thread::Builder::new()
                .spawn(move || body(n, b, r, t))
                .map_err(|e| e.to_string())?,
        );
    }
    barrier.wait();
    // A signal in thread 4's own queue, blocked there.
    // SAFETY: tgkill of our own thread.
    let tid4 = tids[4].load(SeqCst) as i32;
    // SAFETY: getpid has no preconditions; tgkill to our own thread.
    if unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid4, sigrt(5)) } != 0 {
        return Err(zdtm::os_err("tgkill"));
    }
    Ok(State {
        handles,
        tids,
        write_fd: w,
    })
}

fn check(s: State) -> TestResult {
    GO.store(1, SeqCst);
    // SAFETY: wakes every waiter on GO.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            GO.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
    crate::write_all(s.write_fd, b"g")?;
    let tid3 = s.tids[3].load(SeqCst) as i32;
    // SAFETY: getpid has no preconditions; tgkill to our own thread.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid3, libc::SIGUSR2) };
    for (n, h) in s.handles.into_iter().enumerate() {
        h.join()
            .map_err(|_| format!("thread {n} panicked"))?
            .map_err(|e| format!("thread {n}: {e}"))?;
    }
    Ok(())
}

/// The whole test (the `threads_blocked` and `threads_nobody` binaries).
pub fn main() {
    zdtm::run(setup, check)
}
