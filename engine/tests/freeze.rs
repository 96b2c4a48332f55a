//! Freezing a task that is receiving signals all the time.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crust::sys::ptrace::Tracee;

/// Freezes of a task flooded with signals (a 50 us timer) end, and the
/// task runs on untraced. A freeze that passed a signal on and waited
/// for its interrupt's own stop waited forever when that stop never came
/// (the kernel drops a pending STOP trap at any trap): seen as a `zdtm
/// posix_timers` pre-dump hung for 30 s, and reproduced with back-to-back
/// `crust pre-dump`s of a 1 ms timer (1 hang in 57-1517); this loop, as
/// tight as it is, did not hit that race in 20,000 cycles before the
/// fix: it guards the behaviour, the fix rests on that reproduction.
#[test]
fn freeze_ends_while_signals_flood_in() {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "sigstorm.c", &[]);
    let task = spawn_daemon(Command::new(bin).arg("50000"));
    let pid = task.pid;
    // A freeze that never ends is the failure: a watchdog kills the task
    // so that the stuck wait returns (with an error) instead of hanging.
    let done = Arc::new(AtomicBool::new(false));
    let stuck = Arc::new(AtomicBool::new(false));
    let (d, s) = (done.clone(), stuck.clone());
    let round = Arc::new(std::sync::Mutex::new(Instant::now()));
    let r = round.clone();
    let watchdog = std::thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            let since = r.lock().map(|t| t.elapsed()).unwrap_or_default();
            if since > Duration::from_secs(10) {
                s.store(true, Ordering::SeqCst);
                // SAFETY: kill(2) of the test's own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut failure = None;
    for k in 0..5000 {
        if let Ok(mut t) = round.lock() {
            *t = Instant::now();
        }
        // As a pre-dump does: freeze, block every signal, park the task
        // in the signal path with its own mask back, let it go.
        let tracee = Tracee::seize(pid, false).expect("seize");
        let cycle = tracee
            .interrupt()
            .and_then(|_| tracee.sigmask())
            .and_then(|mask| {
                tracee.set_sigmask(!0)?;
                tracee.trap_in_signal_path()?;
                tracee.set_sigmask(mask)
            });
        if let Err(e) = cycle {
            failure = Some(format!("freeze {k}: {e}"));
            break;
        }
        tracee.detach().expect("detach");
    }
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    assert!(
        !stuck.load(Ordering::SeqCst),
        "a freeze never ended: {failure:?}"
    );
    assert_eq!(failure, None);
    task.assert_running_untraced();
}
