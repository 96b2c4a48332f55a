//! POSIX timers: a periodic CLOCK_MONOTONIC timer signalling SIGUSR1 every
//! 20 ms with a sigev_value (a handler counts it and checks the value), a
//! SIGEV_NONE CLOCK_REALTIME timer with 1000 s left and a 300 s interval,
//! a thread-directed (SIGEV_THREAD_ID) CLOCK_BOOTTIME timer, disarmed, and
//! a timer on the process CPU clock. After restore every timer answers
//! under its old id with its interval, a plausible remaining time and its
//! clock, and the periodic one keeps firing with its value.

use std::sync::atomic::{AtomicU64, Ordering};

use zdtm::{ensure, ensure_eq, TestResult};

static FIRED: AtomicU64 = AtomicU64::new(0);
static BAD_VALUE: AtomicU64 = AtomicU64::new(0);
const VALUE: usize = 0x5eed_1234;
const PERIOD_NS: i64 = 20_000_000;
const NONE_LEFT_S: i64 = 1000;
const NONE_INTERVAL_S: i64 = 300;

extern "C" fn on_usr1(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let v = unsafe { (*info).si_value().sival_ptr } as usize;
    if v != VALUE {
        BAD_VALUE.store(v as u64, Ordering::Relaxed);
    }
    FIRED.fetch_add(1, Ordering::Relaxed);
}

struct Timers {
    periodic: libc::timer_t,
    none: libc::timer_t,
    thread: libc::timer_t,
    cpu: libc::timer_t,
    none_left: i64,
}

fn create(clock: libc::clockid_t, ev: &mut libc::sigevent) -> TestResult<libc::timer_t> {
    let mut t: libc::timer_t = std::ptr::null_mut();
    // SAFETY: ev is a valid sigevent and t a writable timer_t.
    if unsafe { libc::timer_create(clock, ev, &mut t) } != 0 {
        return Err(zdtm::os_err("timer_create"));
    }
    Ok(t)
}

fn arm(t: libc::timer_t, value_ns: i64, interval_ns: i64) -> TestResult {
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    let spec = libc::itimerspec {
        it_interval: ts(interval_ns),
        it_value: ts(value_ns),
    };
    // SAFETY: t is our timer, spec a valid itimerspec.
    if unsafe { libc::timer_settime(t, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(zdtm::os_err("timer_settime"));
    }
    Ok(())
}

fn get(t: libc::timer_t) -> TestResult<(i64, i64)> {
    // SAFETY: all-zero itimerspec is valid; the kernel fills it.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: t is a timer id of this process, spec writable.
    if unsafe { libc::timer_gettime(t, &mut spec) } != 0 {
        return Err(zdtm::os_err(&format!("timer_gettime({t:?})")));
    }
    let ns = |ts: &libc::timespec| ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
    Ok((ns(&spec.it_value), ns(&spec.it_interval)))
}

fn wait_fired(n: u64) -> TestResult {
    let start = FIRED.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while FIRED.load(Ordering::Relaxed) < start + n {
        ensure!(
            std::time::Instant::now() < deadline,
            "periodic timer fired {} times in 5 s, wanted {n}",
            FIRED.load(Ordering::Relaxed) - start
        );
        // SAFETY: sigsuspend with an empty mask returns after a handler
        // ran; the timer fires every 20 ms.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigsuspend(&empty);
        }
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<Timers> {
    // SAFETY: installs an async-signal-safe handler (atomics only).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            return Err(zdtm::os_err("sigaction"));
        }
        // The thread-directed timer is never armed; ignore its signal anyway.
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    // SAFETY: an all-zero sigevent is valid; fields set below.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    ev.sigev_signo = libc::SIGUSR1;
    ev.sigev_value = libc::sigval {
        sival_ptr: VALUE as *mut libc::c_void,
    };
    let periodic = create(libc::CLOCK_MONOTONIC, &mut ev)?;
    // SAFETY: as above.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_NONE;
    let none = create(libc::CLOCK_REALTIME, &mut ev)?;
    // SAFETY: as above.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_THREAD_ID;
    ev.sigev_signo = libc::SIGUSR2;
    // SAFETY: gettid has no preconditions.
    ev.sigev_notify_thread_id = unsafe { libc::gettid() };
    let thread = create(libc::CLOCK_BOOTTIME, &mut ev)?;
    // SAFETY: as above.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_NONE;
    let cpu = create(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ev)?;

    arm(periodic, PERIOD_NS, PERIOD_NS)?;
    arm(
        none,
        NONE_LEFT_S * 1_000_000_000,
        NONE_INTERVAL_S * 1_000_000_000,
    )?;
    arm(cpu, 3600 * 1_000_000_000, 0)?;
    wait_fired(2)?;
    let none_left = get(none)?.0;
    Ok(Timers {
        periodic,
        none,
        thread,
        cpu,
        none_left,
    })
}

fn check(t: Timers) -> TestResult {
    let (left, interval) = get(t.periodic)?;
    ensure_eq!(interval, PERIOD_NS, "periodic timer interval");
    ensure!(
        left > 0 && left <= PERIOD_NS,
        "periodic timer remaining {left} ns"
    );
    wait_fired(3)?;
    let bad = BAD_VALUE.load(Ordering::Relaxed);
    ensure!(
        bad == 0,
        "a SIGUSR1 carried sigev_value {bad:#x}, not {VALUE:#x}"
    );

    let (left, interval) = get(t.none)?;
    ensure_eq!(
        interval,
        NONE_INTERVAL_S * 1_000_000_000,
        "SIGEV_NONE timer interval"
    );
    ensure!(
        left > 0 && left <= t.none_left && left > (NONE_LEFT_S - 60) * 1_000_000_000,
        "SIGEV_NONE timer remaining {left} ns (was {} ns)",
        t.none_left
    );
    ensure_eq!(get(t.thread)?, (0, 0), "thread-directed timer (disarmed)");
    let (left, _) = get(t.cpu)?;
    ensure!(
        left > 3500 * 1_000_000_000 && left <= 3600 * 1_000_000_000,
        "CPU-clock timer remaining {left} ns"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
