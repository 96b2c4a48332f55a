//! A relative nanosleep interrupted by the checkpoint must be resumed: the
//! test sleeps `--sleep-ms` (default 3000) with nanosleep in an EINTR loop
//! that continues with the remaining time (like std::thread::sleep), right
//! after ready(), so the runner checkpoints it during the sleep. The sleep
//! must complete (total CLOCK_MONOTONIC elapsed >= requested); a SIGTERM
//! during the sleep only sets the flag and the sleep goes on.

use std::time::Duration;

use zdtm::{ensure, test_msg, TestResult};
use zdtm_tests::monotonic;

/// nanosleep for `d`, resuming after interruptions; counts them.
fn sleep(d: Duration) -> TestResult<u32> {
    let mut req = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let mut interrupted = 0;
    loop {
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: req and rem are valid timespecs.
        if unsafe { libc::nanosleep(&req, &mut rem) } == 0 {
            return Ok(interrupted);
        }
        if zdtm::errno() != libc::EINTR {
            return Err(zdtm::os_err("nanosleep"));
        }
        interrupted += 1;
        req = rem;
    }
}

fn main() {
    let args = zdtm::init();
    let ms = args
        .get_or("sleep-ms", 3000u64)
        .unwrap_or_else(|e| zdtm::fail(&e));
    let want = Duration::from_millis(ms);
    let start = monotonic().unwrap_or_else(|e| zdtm::fail(&e));
    zdtm::ready();
    let slept = sleep(want);
    let end = monotonic();
    zdtm::wait_for_sigterm();
    let res = (|| -> TestResult {
        let interrupted = slept?;
        let elapsed = end? - start;
        test_msg!("slept {elapsed:?} for {want:?}, interrupted {interrupted} times");
        ensure!(elapsed >= want, "sleep of {want:?} ended after {elapsed:?}");
        Ok(())
    })();
    zdtm::finish(res)
}
