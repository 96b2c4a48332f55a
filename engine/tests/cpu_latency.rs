//! The CPU latency request (sys/cpu_latency.rs): dump and restore hold
//! /dev/cpu_dma_latency open at 0 us while they work, not with
//! --no-cpu-latency-hint, and no restored task inherits it.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;

use common::*;

const DEVICE: &str = "/dev/cpu_dma_latency";

/// Whether process `pid` has the CPU latency device open.
fn holds_request(pid: i32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new(DEVICE)))
}

/// `pid` and its children (dump works in a child of the crust command).
fn with_children(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let kids = read_string(Path::new(&format!("/proc/{pid}/task/{pid}/children")));
    all.extend(
        kids.split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok()),
    );
    all
}

/// The latency in force (the device reads as a binary s32).
fn latency_in_force() -> i32 {
    let bytes = std::fs::read(DEVICE).expect("read /dev/cpu_dma_latency");
    i32::from_ne_bytes(bytes[..4].try_into().expect("four bytes"))
}

/// A dump sending to a page server that never answers its hello: crust
/// waits for the answer, after its request was made and before the task
/// is touched. With the hint the dumping process holds the device and the
/// latency in force is 0; without, no process of crust's holds it. Either
/// way the task runs on untouched when the server goes away.
#[test]
fn dump_holds_the_request_unless_told_not_to() {
    init();
    let tmp = tempdir();
    let (p, log) = small_ticker(tmp.path());
    for hint in [true, false] {
        let server = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = server.local_addr().expect("address").port().to_string();
        let images = tmp.path().join(format!("images-{hint}"));
        let mut args = vec!["dump", "-t", "", "-D", path_str(&images)];
        let pid = p.pid.to_string();
        args[2] = &pid;
        args.extend(["--page-server", "--address", "127.0.0.1", "--port", &port]);
        if !hint {
            args.push("--no-cpu-latency-hint");
        }
        let running = crust_spawn(&args);
        let (mut conn, _) = server.accept().expect("crust connects");
        // Its hello came: crust now waits for the answer.
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).expect("the hello");
        let holders: Vec<i32> = with_children(running.pid())
            .into_iter()
            .filter(|&q| holds_request(q))
            .collect();
        match hint {
            true => {
                assert!(!holders.is_empty(), "no crust process holds {DEVICE}");
                assert_eq!(latency_in_force(), 0);
            }
            false => assert!(
                holders.is_empty(),
                "{holders:?} hold {DEVICE} despite --no-cpu-latency-hint"
            ),
        }
        drop(conn);
        running
            .wait(TIMEOUT)
            .assert_failed()
            .stderr_has("page server");
        p.assert_running_untraced();
    }
    let at = last_tick(&log);
    wait_tick(&log, at + 2);
}

/// A restore waiting for its pid (held by the dumped task's zombie) holds
/// the request, or not with --no-cpu-latency-hint; the restored task does
/// not inherit it.
#[test]
fn restore_holds_the_request_and_the_restored_task_does_not() {
    init();
    let tmp = tempdir();
    let (mut p, log) = small_ticker(tmp.path());
    let pid = p.pid;
    let images = tmp.path().join("images");
    dump(pid, &images, &[]).assert_ok();
    // Not reaped yet: the zombie keeps the pid, restore waits for it.
    wait_state(pid, 'Z', "the dumped task to be a zombie");
    let waiting = |r: &Running| {
        wait_until(
            TIMEOUT,
            "restore to wait for the pid",
            || match blocked_syscall(r.pid()) {
                Some(libc::SYS_clock_nanosleep) | Some(libc::SYS_nanosleep) => Ok(()),
                s => Err(format!("in syscall {s:?}")),
            },
        )
    };
    let dir = path_str(&images);
    let off = crust_spawn([
        "restore",
        "-d",
        "--pid-wait",
        "60",
        "--no-cpu-latency-hint",
        "-D",
        dir,
    ]);
    waiting(&off);
    assert!(
        !holds_request(off.pid()),
        "restore holds {DEVICE} despite --no-cpu-latency-hint"
    );
    drop(off);

    let on = crust_spawn(["restore", "-d", "--pid-wait", "60", "-D", dir]);
    waiting(&on);
    assert!(holds_request(on.pid()), "restore does not hold {DEVICE}");
    assert_eq!(latency_in_force(), 0);
    // The pid comes free: the restore goes on.
    assert_eq!(p.wait(TIMEOUT), Exit::Signal(libc::SIGKILL));
    on.wait(TIMEOUT).assert_ok();
    let mut restored = Proc::adopt(pid);
    assert!(!holds_request(pid), "the restored task holds {DEVICE}");
    let at = last_tick(&log);
    wait_tick(&log, at + 2);
    restored.signal(libc::SIGTERM);
    assert_eq!(restored.wait(TIMEOUT), Exit::Code(0));
    assert_ticker_ok(&log);
}
