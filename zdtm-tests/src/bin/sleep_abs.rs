//! An absolute clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) interrupted
//! by the checkpoint must be resumed with the same deadline. Right after
//! ready() the test sleeps until start + `--sleep-ms` (default one hour, so
//! that the checkpoint always comes during the sleep and the test writes no
//! memory between the runner's two captures); the runner's SIGTERM ends it.
//!
//! Checks: the sleep never returns 0 before its deadline (a restore that
//! lost the deadline wakes it at once), and it returns EINTR only when the
//! SIGTERM handler ran (the kernel restarts an absolute sleep interrupted
//! without a handler: the freeze and the restore must do the same). Unlike
//! a relative nanosleep, no remaining time is written to memory.
//!
//! The SIGTERM handler also arms a 20 ms interval timer: a SIGTERM that
//! lands after the flag check and before the syscall (the restored task
//! resumes there if the checkpoint came between ready() and the sleep)
//! would otherwise leave the test asleep until the deadline.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use zdtm::{ensure, test_msg, TestResult};
use zdtm_tests::{monotonic, set_sigaction};

extern "C" fn on_sigterm(_sig: i32) {
    zdtm::sigterm_flag().store(1, SeqCst);
    set_interval_timer(Duration::from_millis(20));
}

extern "C" fn on_sigalrm(_sig: i32) {}

/// setitimer(ITIMER_REAL) with `every` as value and interval (zero disarms).
fn set_interval_timer(every: Duration) {
    let tv = libc::timeval {
        tv_sec: every.as_secs() as libc::time_t,
        tv_usec: every.subsec_micros() as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: it is a valid itimerval; setitimer is a plain system call
    // (used from the signal handler too).
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

/// How the sleep ended.
enum Woke {
    /// clock_nanosleep returned 0.
    Deadline,
    /// EINTR after the SIGTERM handler ran.
    Sigterm,
}

fn sleep_until(deadline: Duration) -> TestResult<Woke> {
    let ts = libc::timespec {
        tv_sec: deadline.as_secs() as libc::time_t,
        tv_nsec: deadline.subsec_nanos() as libc::c_long,
    };
    if zdtm::sigterm_received() {
        return Ok(Woke::Sigterm);
    }
    // SAFETY: ts is a valid timespec; no remainder is requested.
    let r = unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
    match r {
        0 => Ok(Woke::Deadline),
        libc::EINTR if zdtm::sigterm_received() => Ok(Woke::Sigterm),
        libc::EINTR => Err(
            "clock_nanosleep returned EINTR though no signal handler ran: \
             the interrupted sleep was not restarted"
                .into(),
        ),
        e => Err(format!(
            "clock_nanosleep: {}",
            std::io::Error::from_raw_os_error(e)
        )),
    }
}

fn main() {
    let args = zdtm::init();
    let ms = args
        .get_or("sleep-ms", 3_600_000u64)
        .unwrap_or_else(|e| zdtm::fail(&e));
    let setup = (|| -> TestResult<Duration> {
        set_sigaction(libc::SIGALRM, on_sigalrm as *const () as usize, 0, &[])?;
        // No SA_RESTART: the handler must end the sleep with EINTR.
        set_sigaction(libc::SIGTERM, on_sigterm as *const () as usize, 0, &[])?;
        monotonic()
    })();
    let start = setup.unwrap_or_else(|e| zdtm::fail(&format!("setup: {e}")));
    let deadline = start + Duration::from_millis(ms);
    zdtm::ready();
    let woke = sleep_until(deadline);
    let end = monotonic();
    zdtm::wait_for_sigterm();
    set_interval_timer(Duration::ZERO);
    let res = (|| -> TestResult {
        let woke = woke?;
        let end = end?;
        match woke {
            Woke::Deadline => {
                test_msg!("woke {:?} after start, deadline {ms} ms", end - start);
                ensure!(
                    end >= deadline,
                    "woke at {end:?}, before the deadline {deadline:?}"
                );
            }
            Woke::Sigterm => {
                test_msg!("SIGTERM ended the sleep {:?} after start", end - start)
            }
        }
        Ok(())
    })();
    zdtm::finish(res)
}
