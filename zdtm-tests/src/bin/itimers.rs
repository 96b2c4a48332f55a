//! Interval timers: ITIMER_REAL firing every 20 ms (SIGALRM counted by a
//! handler) and ITIMER_PROF armed for 1000 s with a 500 s interval. After
//! restore ITIMER_REAL keeps firing (the count grows) with its interval
//! unchanged, and ITIMER_PROF has its interval exactly and a remaining
//! time no larger than at dump time and still plausible.

use std::sync::atomic::{AtomicU64, Ordering};

use zdtm::{ensure, ensure_eq, TestResult};

static ALARMS: AtomicU64 = AtomicU64::new(0);

const REAL_US: i64 = 20_000;
const PROF_VALUE_S: i64 = 1000;
const PROF_INTERVAL_S: i64 = 500;

extern "C" fn on_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, Ordering::Relaxed);
}

fn get(which: libc::c_int) -> TestResult<libc::itimerval> {
    // SAFETY: an all-zero itimerval is valid; the kernel fills it.
    let mut t: libc::itimerval = unsafe { std::mem::zeroed() };
    // SAFETY: t is a writable itimerval.
    if unsafe { libc::getitimer(which, &mut t) } != 0 {
        return Err(zdtm::os_err("getitimer"));
    }
    Ok(t)
}

fn set(which: libc::c_int, value_us: i64, interval_us: i64) -> TestResult {
    let tv = |us: i64| libc::timeval {
        tv_sec: us / 1_000_000,
        tv_usec: us % 1_000_000,
    };
    let t = libc::itimerval {
        it_interval: tv(interval_us),
        it_value: tv(value_us),
    };
    // SAFETY: t is a valid itimerval; the old value is not wanted.
    if unsafe { libc::setitimer(which, &t, std::ptr::null_mut()) } != 0 {
        return Err(zdtm::os_err("setitimer"));
    }
    Ok(())
}

fn us(t: &libc::timeval) -> i64 {
    t.tv_sec * 1_000_000 + t.tv_usec
}

/// Waits (blocking, no polling) until SIGALRM has run the handler `n`
/// more times, at most 5 s.
fn wait_alarms(n: u64) -> TestResult {
    let start = ALARMS.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ALARMS.load(Ordering::Relaxed) < start + n {
        ensure!(
            std::time::Instant::now() < deadline,
            "ITIMER_REAL fired {} times in 5 s, wanted {n}",
            ALARMS.load(Ordering::Relaxed) - start
        );
        // SAFETY: an all-zero sigset is valid; sigsuspend with the empty
        // mask returns after a handler ran (SIGALRM comes every 20 ms).
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigsuspend(&empty);
        }
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<i64> {
    // SAFETY: installs an async-signal-safe handler (one atomic add).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) != 0 {
            return Err(zdtm::os_err("sigaction"));
        }
    }
    set(libc::ITIMER_REAL, REAL_US, REAL_US)?;
    set(
        libc::ITIMER_PROF,
        PROF_VALUE_S * 1_000_000,
        PROF_INTERVAL_S * 1_000_000,
    )?;
    wait_alarms(2)?;
    Ok(us(&get(libc::ITIMER_PROF)?.it_value))
}

fn check(prof_before: i64) -> TestResult {
    let real = get(libc::ITIMER_REAL)?;
    ensure_eq!(us(&real.it_interval), REAL_US, "ITIMER_REAL interval");
    ensure!(
        us(&real.it_value) > 0 && us(&real.it_value) <= REAL_US,
        "ITIMER_REAL remaining {} us",
        us(&real.it_value)
    );
    wait_alarms(3)?;
    let prof = get(libc::ITIMER_PROF)?;
    ensure_eq!(
        us(&prof.it_interval),
        PROF_INTERVAL_S * 1_000_000,
        "ITIMER_PROF interval"
    );
    let left = us(&prof.it_value);
    ensure!(
        left > 0 && left <= prof_before && left > (PROF_VALUE_S - 60) * 1_000_000,
        "ITIMER_PROF remaining {left} us (was {prof_before} us at setup)"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
