//! An absolute clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) interrupted
//! by the checkpoint must be resumed with the same deadline: the test sleeps
//! until start + `--sleep-ms` (default 3000) right after ready(), retrying
//! on EINTR with the same deadline, and checks that it did not wake early.
//! Unlike a relative nanosleep, no remaining time is written to memory.

use std::time::Duration;

use zdtm::{ensure, test_msg, TestResult};
use zdtm_tests::monotonic;

fn sleep_until(deadline: Duration) -> TestResult<u32> {
    let ts = libc::timespec {
        tv_sec: deadline.as_secs() as libc::time_t,
        tv_nsec: deadline.subsec_nanos() as libc::c_long,
    };
    let mut interrupted = 0;
    loop {
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
            0 => return Ok(interrupted),
            libc::EINTR => interrupted += 1,
            e => {
                return Err(format!(
                    "clock_nanosleep: {}",
                    std::io::Error::from_raw_os_error(e)
                ))
            }
        }
    }
}

fn main() {
    let args = zdtm::init();
    let ms = args
        .get_or("sleep-ms", 3000u64)
        .unwrap_or_else(|e| zdtm::fail(&e));
    let start = monotonic().unwrap_or_else(|e| zdtm::fail(&e));
    let deadline = start + Duration::from_millis(ms);
    zdtm::ready();
    let slept = sleep_until(deadline);
    let end = monotonic();
    zdtm::wait_for_sigterm();
    let res = (|| -> TestResult {
        let interrupted = slept?;
        let end = end?;
        test_msg!(
            "woke {:?} after start, deadline {ms} ms, interrupted {interrupted} times",
            end - start
        );
        ensure!(
            end >= deadline,
            "woke at {end:?}, before the deadline {deadline:?}"
        );
        Ok(())
    })();
    zdtm::finish(res)
}
