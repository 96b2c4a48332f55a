//! Many threads, two running (not in a system call) when checkpointed:
//! 2 threads iterate a hash chain in registers without pause, 32 more wait
//! on a futex. After restore the busy threads stop on a flag and each
//! checks its chain value against a recomputation of as many steps from
//! its seed (registers and stack caught mid-computation come back exact);
//! the waiting threads check their thread-local value and tid.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Barrier};

use zdtm::{ensure_eq, TestResult};

const BUSY: usize = 2;
const WAITING: usize = 32;

static STOP: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn busy(n: usize, barrier: Arc<Barrier>) -> TestResult {
    let seed = n as u64 * 0x9e37_79b9;
    let mut x = seed;
    let mut steps = 0u64;
    barrier.wait();
    while STOP.load(SeqCst) == 0 {
        for _ in 0..1000 {
            x = zdtm::rng::hash(x, steps);
            steps += 1;
        }
    }
    let mut y = seed;
    for i in 0..steps {
        y = zdtm::rng::hash(y, i);
    }
    ensure_eq!(x, y, "busy thread {n} after {steps} steps");
    Ok(())
}

fn waiting(n: usize, barrier: Arc<Barrier>) -> TestResult {
    MINE.with(|m| m.set(0xbeef_0000 + n as u64));
    let tid = gettid();
    barrier.wait();
    while STOP.load(SeqCst) == 0 {
        // SAFETY: STOP is a live aligned 32-bit word; null timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                STOP.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }
    ensure_eq!(
        MINE.with(|m| m.get()),
        0xbeef_0000 + n as u64,
        "thread {n} TLS"
    );
    ensure_eq!(gettid(), tid, "thread {n} tid");
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<Vec<std::thread::JoinHandle<TestResult>>> {
    // Signals (SIGTERM, step requests) are the main thread's to take: the
    // threads start with every signal blocked.
    let old = zdtm_tests::blocked_mask();
    let all = zdtm_tests::sigset(&(1..=64).filter(|&s| s != 32 && s != 33).collect::<Vec<_>>());
    // SAFETY: valid sigsets.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
    let barrier = Arc::new(Barrier::new(BUSY + WAITING + 1));
    let mut handles = Vec::new();
    for n in 0..BUSY + WAITING {
        let b = barrier.clone();
        let h = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || if n < BUSY { busy(n, b) } else { waiting(n, b) })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    // SAFETY: a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    barrier.wait();
    Ok(handles)
}

fn check(handles: Vec<std::thread::JoinHandle<TestResult>>) -> TestResult {
    STOP.store(1, SeqCst);
    // SAFETY: wakes every waiter on STOP.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            STOP.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
    for (n, h) in handles.into_iter().enumerate() {
        h.join()
            .map_err(|_| format!("thread {n} panicked"))?
            .map_err(|e| format!("thread {n}: {e}"))?;
    }
    Ok(())
}

/// Never quiescent (the busy threads): the step protocol, `continuous`.
fn main() {
    let args = zdtm::init();
    zdtm::init_steps();
    let handles = setup(&args).unwrap_or_else(|e| zdtm::fail(&format!("setup: {e}")));
    zdtm::ready();
    loop {
        match zdtm::wait_event() {
            zdtm::Event::Step(n) => zdtm::step_done(n),
            zdtm::Event::Term => zdtm::finish(check(handles)),
        }
    }
}
