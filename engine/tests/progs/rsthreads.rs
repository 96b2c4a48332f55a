//! rsthreads OUTFILE
//!
//! Rust std::thread for dump/restore: four threads, each with its own
//! thread-local value, a Vec of patterned data and a name; two wait on a
//! Condvar (futex), one in a channel recv, one sleeps in a loop. The main
//! thread writes "blocking" once all run, then sleeps in a loop until the
//! file OUTFILE.go exists, and wakes them. Each thread checks its state
//! (name, comm, thread-local, data); the main thread writes "OK all"
//! (exit 0) or "BAD some thread" (exit 1).
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

thread_local! {
    static MINE: Cell<u64> = const { Cell::new(0) };
}

fn pattern(n: u64) -> Vec<u64> {
    (0..100_000u64).map(|i| i.wrapping_mul(2654435761) ^ n).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args[1].clone();
    let out = Arc::new(Mutex::new(
        std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap(),
    ));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(5));
    let (tx, rx) = mpsc::channel::<u64>();
    let mut rx = Some(rx);
    let mut handles = Vec::new();
    for n in 0..4u64 {
        let (gate, stop, barrier) = (gate.clone(), stop.clone(), barrier.clone());
        let rx = if n == 2 { rx.take() } else { None };
        let h = std::thread::Builder::new()
            .name(format!("rs-worker{n}"))
            .spawn(move || {
                MINE.with(|m| m.set(0x5000 + n));
                let data = pattern(n);
                barrier.wait();
                match n {
                    0 | 1 => {
                        let (m, c) = &*gate;
                        let mut open = m.lock().unwrap();
                        while !*open {
                            open = c.wait(open).unwrap();
                        }
                    }
                    2 => {
                        if rx.unwrap().recv().ok() != Some(42) {
                            return false;
                        }
                    }
                    _ => {
                        while !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                let name_ok = std::thread::current().name() == Some(&format!("rs-worker{n}")[..]);
                let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
                name_ok
                    && comm.trim() == format!("rs-worker{n}")
                    && MINE.with(|m| m.get()) == 0x5000 + n
                    && data == pattern(n)
            })
            .unwrap();
        handles.push(h);
    }
    barrier.wait();
    writeln!(out.lock().unwrap(), "blocking").unwrap();
    let go = format!("{path}.go");
    while !std::path::Path::new(&go).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    stop.store(true, Ordering::SeqCst);
    tx.send(42).unwrap();
    let ok = handles.into_iter().all(|h| h.join().unwrap_or(false));
    writeln!(out.lock().unwrap(), "{}", if ok { "OK all" } else { "BAD some thread" }).unwrap();
    std::process::exit(if ok { 0 } else { 1 });
}
