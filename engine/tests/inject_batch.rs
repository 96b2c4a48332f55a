//! Batches of injected calls (engine/src/inject/batch.rs): a runner in the
//! task's scratch mapping runs a table of calls and stops at an int3. The
//! state they read is the same as read one call at a time, and SIGTRAP,
//! which the breakpoint raises, is left exactly as the task had it: in the
//! task dumped and in the one restored.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use test_case::test_case;

/// The library's injection counts (`crust::inject::counts`) are global
/// to the test process: the tests that compare them before and after run
/// one at a time.
static COUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn oks(log: &Path) -> usize {
    let text = read_string(log);
    assert!(!text.contains("BAD"), "{text}");
    text.lines().filter(|l| l.starts_with("OK")).count()
}

fn wait_oks(log: &Path, n: usize) {
    wait_until(
        TIMEOUT,
        &format!("{n} OK lines in {}", log.display()),
        || match oks(log) {
            k if k >= n => Ok(()),
            k => Err(format!("{k} OK lines")),
        },
    );
}

/// The sigtrap.c program in `mode`, once it said "ready"; its log.
fn start_sigtrap(tmp: &Path, mode: &str) -> (Proc, std::path::PathBuf) {
    let bin = compile_c(tmp, "sigtrap.c", &[]);
    let log = tmp.join("result.log");
    let p = spawn_daemon(Command::new(bin).arg(mode).arg(&log));
    wait_file_contains(&log, "ready", TIMEOUT);
    (p, log)
}

/// (calls one by one, calls in batches, batch runs) from `-v`'s line.
fn counts(stderr: &str, prefix: &str) -> (u64, u64, u64) {
    let n = all_counts(stderr, prefix);
    (n[0], n[1], n[2])
}

/// [calls one by one, in batches, batch runs, signals held] from `-v`
/// (the count of calls one by one that ran in one stop left out: see
/// `stepped`).
fn all_counts(stderr: &str, prefix: &str) -> [u64; 4] {
    let n = numbers(stderr, prefix);
    [n[0], n[2], n[3], n[4]]
}

/// How many calls one by one ran in one stop (inject/step.rs), from `-v`.
fn stepped(stderr: &str, prefix: &str) -> u64 {
    numbers(stderr, prefix)[1]
}

/// [calls one by one, of them in one stop, in batches, batch runs,
/// signals held] from `-v`.
fn numbers(stderr: &str, prefix: &str) -> [u64; 5] {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains("injected one by one"))
        .unwrap_or_else(|| panic!("no injected-calls line in {stderr}"));
    let tail = &line[line.find("; ").map_or(0, |i| i + 2)..];
    let numbers: Vec<u64> = tail
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = numbers.len();
    assert!(n >= 5, "{line}");
    [
        numbers[n - 5],
        numbers[n - 4],
        numbers[n - 3],
        numbers[n - 2],
        numbers[n - 1],
    ]
}

/// The runner only runs where its breakpoint changes nothing (SIGTRAP
/// neither ignored nor pending: `blocked` is fine, the runner unblocks
/// SIGTRAP for itself); elsewhere the same calls go one by one. Either
/// way the task's SIGTRAP (action, mask, pending, handler never run) is
/// as it was after a dump that leaves it running, and after a restore.
/// The same holds for the calls run in one stop by a single step
/// (inject/step.rs: the scratch area's mmap and munmap), whose SIGTRAP
/// the kernel forces as it does the runner's.
#[test_case("default", true ; "default action")]
#[test_case("blocked", true ; "blocked with a handler")]
#[test_case("ignored", false ; "ignored")]
#[test_case("pending", false ; "pending")]
fn sigtrap_is_left_as_the_task_had_it(mode: &str, batched: bool) {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_sigtrap(tmp.path(), mode);
    let pid = p.pid;
    wait_oks(&log, 1);

    let first = tmp.path().join("first");
    let out = dump(pid, &first, &["--leave-running", "-v"]);
    let (_, in_batches, runs) = counts(&out.stderr, "crust: injected in");
    assert_eq!(runs > 0, batched, "{mode}: {}", out.stderr);
    let one_stop = stepped(&out.stderr, "crust: injected in");
    assert_eq!(
        one_stop,
        if batched { 2 } else { 0 },
        "{mode}: {}",
        out.stderr
    );
    assert_eq!(in_batches > 0, batched, "{mode}: {}", out.stderr);
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);

    let second = tmp.path().join("second");
    dump_and_reap(&mut p, &second);
    let out = crust(["restore", "-d", "-v", "-D", path_str(&second)]);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    let (_, in_batches, _) = counts(&out.stderr, "crust: restore");
    assert!(in_batches > 0, "{mode}: {}", out.stderr);
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 3);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

/// A dump of a single-threaded process runs two calls one by one, the
/// scratch area's mmap and munmap: the mprotect that makes the area
/// writable is the batch's first entry (inject/batch.rs), and the batch
/// reads what it must all the same (the restore checks the rest).
#[test]
fn the_scratch_area_is_made_writable_inside_the_first_batch() {
    init();
    let tmp = tempdir();
    let (mut p, log) = start_sigtrap(tmp.path(), "default");
    let pid = p.pid;
    wait_oks(&log, 1);
    let images = tmp.path().join("images");
    let out = dump(pid, &images, &["--leave-running", "-v"]);
    let (one_by_one, in_batches, runs) = counts(&out.stderr, "crust: injected in");
    assert_eq!((one_by_one, runs), (2, 1), "{}", out.stderr);
    assert!(in_batches > 60, "{}", out.stderr);
    let core = core_of(&images, pid);
    assert!(core["sigactions"].is_array(), "{core}");
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);
    p.signal(libc::SIGUSR2);
    assert_eq!(p.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

fn core_of(dir: &Path, pid: i32) -> Value {
    let out = crust(["show", path_str(&dir.join(format!("task-{pid}.img")))]);
    out.assert_ok();
    out.json()["message"]["core"].clone()
}

/// What a dump reads with injected calls (signal actions, altstack,
/// clear_child_tid, personality, pdeath signal, prctl and arch_prctl
/// state, timers, the prctl-only credentials) is the same whether the
/// calls run in a batch or one by one (CRUST_INJECT_BATCH=0).
#[test]
fn a_batch_reads_what_one_by_one_reads() {
    init();
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "blocked");

    let batched = tmp.path().join("batched");
    let out = dump(p.pid, &batched, &["--leave-running", "-v"]);
    assert!(
        counts(&out.stderr, "crust: injected in").2 > 0,
        "{}",
        out.stderr
    );
    let single = tmp.path().join("single");
    let pid = p.pid.to_string();
    let out = crust_spawn_env(
        [
            "dump",
            "-t",
            &pid,
            "-D",
            path_str(&single),
            "--leave-running",
            "-v",
        ],
        &[("CRUST_INJECT_BATCH", "0".as_ref())],
    )
    .wait(TIMEOUT);
    out.assert_ok();
    assert_eq!(
        counts(&out.stderr, "crust: injected in").2,
        0,
        "{}",
        out.stderr
    );

    let (a, b) = (core_of(&batched, p.pid), core_of(&single, p.pid));
    for key in [
        "sigactions",
        "altstack",
        "clear_child_tid",
        "personality",
        "pdeath_signal",
        "attrs",
        "creds",
        "sigmask",
        "pending",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key} differs between batched and one-by-one"
        );
    }
    let actions = a["sigactions"].as_array().map_or(0, |v| v.len());
    assert!(
        actions >= 15,
        "the test program sets many actions: {actions}"
    );
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);

    // And restored one call at a time (the vDSO moved by single mremaps,
    // the gadget following it).
    let mut p = p;
    let pid = p.pid;
    let last = tmp.path().join("last");
    dump_and_reap(&mut p, &last);
    let out = crust_spawn_env(
        ["restore", "-d", "-v", "-D", path_str(&last)],
        &[("CRUST_INJECT_BATCH", "0".as_ref())],
    )
    .wait(TIMEOUT);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    assert_eq!(counts(&out.stderr, "crust: restore").2, 0, "{}", out.stderr);
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 3);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

/// 300 files restored: reopened in batches of as many paths as the
/// scratch area holds, each batch run in tables of 128 calls, every
/// descriptor at its number with its file, offset and flags; batched and
/// one by one.
#[test_case(true ; "in batches")]
#[test_case(false ; "one by one")]
fn many_files_are_reopened_in_batches(batched: bool) {
    init();
    let tmp = tempdir();
    let bin = compile_c(tmp.path(), "manyfiles.c", &[]);
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).expect("mkdir");
    let log = tmp.path().join("result.log");
    let mut p = spawn_daemon(Command::new(bin).arg("300").arg(&files).arg(&log));
    let pid = p.pid;
    wait_file_contains(&log, "ready", TIMEOUT);
    wait_oks(&log, 1);
    let images = tmp.path().join("images");
    dump_and_reap(&mut p, &images);
    let env: &[(&str, &std::ffi::OsStr)] = match batched {
        true => &[],
        false => &[("CRUST_INJECT_BATCH", "0".as_ref())],
    };
    let out = crust_spawn_env(["restore", "-d", "-v", "-D", path_str(&images)], env).wait(TIMEOUT);
    out.assert_ok();
    let mut r = Proc::adopt(pid);
    let (_, in_batches, runs) = counts(&out.stderr, "crust: restore");
    match batched {
        // 300 openat, 300 F_DUPFD, 300 close + 300 lseek at least: more
        // than one table each.
        true => assert!(in_batches >= 1200 && runs >= 10, "{}", out.stderr),
        false => assert_eq!(runs, 0, "{}", out.stderr),
    }
    r.signal(libc::SIGUSR1);
    wait_oks(&log, 2);
    r.signal(libc::SIGUSR2);
    assert_eq!(r.wait(TIMEOUT), Exit::Code(0), "{}", read_string(&log));
}

/// SIGTRAPs sent to the task from outside all through its dumps (its
/// handler counts them): a pending one makes a batch run one by one, one
/// that arrives while the runner runs is held and queued again (that
/// window is narrow: see the next test). Every dump succeeds, the handler
/// still runs, and nothing else of the task changes.
#[test]
fn sigtraps_from_outside_during_batches() {
    use std::sync::atomic::{AtomicBool, Ordering};
    init();
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "handled");
    let pid = p.pid;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: kill(2) of our own child with a constant signal.
                if unsafe { libc::kill(pid, libc::SIGTRAP) } == 0 {
                    sent += 1;
                }
                std::thread::yield_now();
            }
            sent
        })
    };
    let mut held = 0;
    for i in 0..20 {
        let dir = tmp.path().join(format!("img{i}"));
        let out = dump(pid, &dir, &["--leave-running", "-v"]);
        held += all_counts(&out.stderr, "crust: injected in")[3];
        std::fs::remove_dir_all(&dir).ok();
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap_or(0);
    eprintln!("{sent} SIGTRAPs sent, {held} held during a batch and queued again");
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);
    let last = read_string(&log);
    // "OK n traps T from PID code C"
    let traps: u64 = last
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    assert!(traps > 0, "the handler never ran: {last}");
}

/// The runner is stopped by a signal from outside mid-batch (a SIGTRAP
/// sent while one of its calls, a nanosleep, sleeps): the signal is taken
/// at its delivery stop and held, the interrupted call restarts and the
/// batch completes, and the signal is queued again to the task, whose
/// handler runs once it is let go. Driven through the library (the
/// window is too short to hit from a dump).
#[test]
fn a_signal_that_gets_through_the_runner_is_queued_again() {
    use crust::inject::{counts, Call};
    init();
    let _counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "handled");
    let pid = p.pid;

    let held = Held::seize(pid);
    let before = counts();
    let mut inj = held.injector();
    let buf = inj.map_batch_scratch(None, 4096).expect("scratch").addr;
    // struct timespec { 0 s, 300 ms }
    let mut ts = 0u64.to_le_bytes().to_vec();
    ts.extend_from_slice(&300_000_000u64.to_le_bytes());
    inj.put(0, &ts).expect("put");
    // The sender waits until the task sleeps in nanosleep (/proc/PID/syscall
    // names the call a task is blocked in), then sends SIGTRAP once.
    let sender = std::thread::spawn(move || {
        wait_until(
            TIMEOUT,
            "the runner's nanosleep",
            || match blocked_syscall(pid) {
                Some(nr) if nr == libc::SYS_nanosleep => Ok(()),
                other => Err(format!("in {other:?}")),
            },
        );
        // SAFETY: kill(2) of our own child with a constant signal.
        unsafe { libc::kill(pid, libc::SIGTRAP) }
    });
    let r = inj
        .batch(&[
            Call::checked("getpid", libc::SYS_getpid, &[]),
            Call::checked("nanosleep", libc::SYS_nanosleep, &[buf, 0]),
            Call::checked("getppid", libc::SYS_getppid, &[]),
        ])
        .expect("batch");
    assert_eq!(sender.join().expect("sender"), 0, "kill failed");
    assert_eq!(r[0], pid as i64);
    assert_eq!(r[1], 0, "the interrupted nanosleep restarts and completes");
    let after = counts();
    assert_eq!(after.batch_runs - before.batch_runs, 1, "{after:?}");
    assert_eq!(
        after.held - before.held,
        1,
        "the SIGTRAP was held once: {after:?}"
    );
    assert_sigtrap_pending(pid, &["SigPnd:"]);
    inj.unmap_scratch().expect("unmap");
    drop(inj);
    held.release();
    handler_ran_once_for_our_kill(&p, &log);
}

/// SIGTRAP is queued again: in the union of the signal sets `keys`
/// ("SigPnd:", "ShdPnd:") of /proc/PID/status.
fn assert_sigtrap_pending(pid: i32, keys: &[&str]) {
    let status = read_string(Path::new(&format!("/proc/{pid}/status")));
    let pending = keys
        .iter()
        .map(|key| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {key} in {status}"))
        })
        .fold(0, |a, b| a | b);
    assert_ne!(
        pending & (1 << (libc::SIGTRAP - 1)),
        0,
        "queued again: {status}"
    );
}

/// Once the sigtrap program (mode "handled") is let go and asked to
/// check: its SIGTRAP handler ran once, for this test's own kill().
fn handler_ran_once_for_our_kill(p: &Proc, log: &Path) {
    p.signal(libc::SIGUSR1);
    wait_oks(log, 2);
    let last = read_string(log);
    let ours = format!("traps 1 from {} code 0", std::process::id());
    assert!(
        last.trim_end().ends_with(&ours),
        "the handler ran once, for our kill(): {last}"
    );
}

/// A SIGTRAP from outside that is pending when a call runs by a single
/// step (inject/step.rs) is taken before the call: it is queued again as
/// it was (the kernel's own siginfo, its sender's pid), the call runs
/// with its two stops instead and completes, and the task's handler runs
/// once, when it is let go. Driven through the library: the first call
/// finds SIGTRAP free, the signal comes between it and the next.
#[test]
fn a_sigtrap_taken_before_a_single_step_is_queued_again() {
    use crust::inject::counts;
    init();
    let _counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "handled");
    let pid = p.pid;
    wait_oks(&log, 1);

    let held = Held::seize(pid);
    let before = counts();
    let mut inj = held.injector();
    let area = inj.map_scratch(None, 4096).expect("scratch");
    let stepped = counts().stepped - before.stepped;
    assert_eq!(stepped, 1, "the mmap ran in one stop");
    // SAFETY: kill(2) of our own child with a constant signal; it stays
    // pending in the stopped task.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTRAP) }, 0);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let r = inj
        .call("mprotect", libc::SYS_mprotect, &[area.addr, area.len, rw])
        .expect("mprotect");
    assert_eq!(r, 0);
    let after = counts();
    assert_eq!(
        (
            after.one_by_one - before.one_by_one,
            after.stepped - before.stepped
        ),
        (2, 1),
        "the mprotect ran with its two stops: {after:?}"
    );
    assert_sigtrap_pending(pid, &["SigPnd:", "ShdPnd:"]);
    inj.unmap_scratch().expect("unmap");
    drop(inj);
    held.release();
    handler_ran_once_for_our_kill(&p, &log);
}

/// A checked call that fails inside the first batch (the one whose first
/// entry made the scratch area writable) stops it with an error naming
/// the call and its errno, taken from the runner's registers (a failed
/// entry's result is not stored); the calls before it ran, and the
/// scratch area is writable afterwards, for batches and for calls one by
/// one alike.
#[test]
fn a_failed_call_in_the_first_batch_is_named_and_the_area_stays_usable() {
    use crust::inject::Call;
    init();
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "default");
    let pid = p.pid;

    let held = Held::seize(pid);
    let mut inj = held.injector();
    let buf = inj.map_batch_scratch(None, 4096).expect("scratch").addr;
    let err = inj
        .batch(&[
            Call::checked("getpid", libc::SYS_getpid, &[]),
            Call::checked("close", libc::SYS_close, &[u64::MAX]),
            Call::checked("getppid", libc::SYS_getppid, &[]),
        ])
        .expect_err("close(-1) fails")
        .to_string();
    assert!(err.contains("close") && err.contains("EBADF"), "{err}");
    // The table is writable: a second batch stores its results.
    let r = inj
        .batch(&[
            Call::checked("getpid", libc::SYS_getpid, &[]),
            Call::raw("close", libc::SYS_close, &[u64::MAX]),
            Call::checked("sigaltstack", libc::SYS_sigaltstack, &[0, buf]),
        ])
        .expect("second batch");
    assert_eq!(r[0], pid as i64);
    assert_eq!(r[1], -(libc::EBADF as i64));
    assert_eq!(r[2], 0);
    // And the scratch area: a call one by one writes its result there.
    inj.call("sigaltstack", libc::SYS_sigaltstack, &[0, buf + 64])
        .expect("sigaltstack one by one");
    assert_eq!(inj.get(0, 24).expect("get"), inj.get(64, 24).expect("get"));
    inj.unmap_scratch().expect("unmap");
    drop(inj);
    held.release();

    p.signal(libc::SIGUSR1);
    wait_oks(&log, 1);
}

/// A test process held as the engine holds one for injected calls:
/// seized, stopped, every signal blocked; with its own registers and
/// mask, to put back, and the vDSO's syscall gadget calls run from.
struct Held {
    tracee: crust::sys::Tracee,
    regs: crust::sys::Regs,
    mask: u64,
    gadget: u64,
}

impl Held {
    fn seize(pid: i32) -> Held {
        let tracee = crust::sys::Tracee::seize(pid, false).expect("seize");
        tracee.interrupt().expect("interrupt");
        let regs = tracee.regs().expect("regs");
        let mask = tracee.sigmask().expect("sigmask");
        let vdso = crust::proc::read_maps(pid)
            .expect("maps")
            .into_iter()
            .find(|v| v.path == "[vdso]")
            .expect("vdso");
        let gadget = crust::inject::find_syscall_gadget(pid, vdso.start, vdso.end).expect("gadget");
        tracee.set_sigmask(!0).expect("block all");
        Held {
            tracee,
            regs,
            mask,
            gadget,
        }
    }

    fn injector(&self) -> crust::inject::Injector<'_> {
        crust::inject::Injector::new(&self.tracee, self.regs, self.gadget)
    }

    /// Parked in its own registers and mask, and let go.
    fn release(self) {
        self.tracee.set_regs(&self.regs).expect("regs back");
        self.tracee.trap_in_signal_path().expect("park");
        self.tracee.set_sigmask(self.mask).expect("mask back");
        self.tracee.detach().expect("detach");
    }
}

/// The state letter of /proc/PID/stat (R, S, T, t...).
fn state_letter(pid: i32) -> char {
    let stat = read_string(Path::new(&format!("/proc/{pid}/stat")));
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.trim_start().chars().next())
        .unwrap_or('?')
}

/// A SIGSTOP sent from outside while an injected call runs one by one (a
/// nanosleep, interrupted by it) and another while a batch runs: neither
/// fails its call nor is lost. Each is taken at its delivery stop, the
/// interrupted call runs again to completion, and the SIGSTOP is sent
/// again when the injector is done, so the task, once let go, stops as
/// it would have, and goes on after SIGCONT. Before, the one-by-one call
/// failed with "unexpected stop" and a SIGSTOP held by a batch and queued
/// again made the next call fail the same way.
#[test_case(false ; "one by one")]
#[test_case(true ; "in a batch")]
fn a_sigstop_during_injected_calls_is_held_and_sent_again(batched: bool) {
    use crust::inject::{counts, Call};
    init();
    let _counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempdir();
    let (p, log) = start_sigtrap(tmp.path(), "handled");
    let pid = p.pid;

    let held = Held::seize(pid);
    let before = counts();
    {
        let mut inj = held.injector();
        let buf = inj.map_batch_scratch(None, 4096).expect("scratch").addr;
        // struct timespec { 0 s, 300 ms }
        let mut ts = 0u64.to_le_bytes().to_vec();
        ts.extend_from_slice(&300_000_000u64.to_le_bytes());
        inj.put(0, &ts).expect("put");
        let sender = std::thread::spawn(move || {
            wait_until(
                TIMEOUT,
                "the injected nanosleep",
                || match blocked_syscall(pid) {
                    Some(nr) if nr == libc::SYS_nanosleep => Ok(()),
                    other => Err(format!("in {other:?}")),
                },
            );
            // SAFETY: kill(2) of our own child with a constant signal.
            unsafe { libc::kill(pid, libc::SIGSTOP) }
        });
        if batched {
            let r = inj
                .batch(&[
                    Call::checked("nanosleep", libc::SYS_nanosleep, &[buf, 0]),
                    Call::checked("getpid", libc::SYS_getpid, &[]),
                ])
                .expect("batch");
            assert_eq!(r, vec![0, pid as i64]);
        } else {
            let r = inj
                .call("nanosleep", libc::SYS_nanosleep, &[buf, 0])
                .expect("the interrupted nanosleep runs again");
            assert_eq!(r, 0);
        }
        assert_eq!(sender.join().expect("sender"), 0, "kill failed");
        // Calls one by one after it are not tripped by it.
        let r = inj
            .call("getppid", libc::SYS_getppid, &[])
            .expect("the next call");
        assert!(r > 0);
        inj.unmap_scratch().expect("unmap");
        let after = counts();
        assert_eq!(after.held - before.held, 1, "held once: {after:?}");
    }
    held.release();
    wait_until(
        TIMEOUT,
        "the task stopped by the SIGSTOP",
        || match state_letter(pid) {
            'T' => Ok(()),
            s => Err(format!("state {s}")),
        },
    );
    p.signal(libc::SIGCONT);
    p.signal(libc::SIGUSR1);
    wait_oks(&log, 2);
}
