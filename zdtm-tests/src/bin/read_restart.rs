//! A blocking read() restarted after checkpoint/restore.
//!
//! The test holds both ends of a pipe and blocks in read() on the empty read
//! end (its quiescent state). Its SIGTERM handler has SA_RESTART and writes
//! one byte 'x' into the pipe. After restore the runner's SIGTERM runs the
//! handler; the read must then be restarted and return exactly that byte:
//! not EINTR (SA_RESTART lost), not garbage, not a premature return.

use std::sync::atomic::{AtomicI32, Ordering::SeqCst};

use zdtm::{ensure_eq, TestResult};
use zdtm_tests::{get_sigaction, pipe2, set_sigaction};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_sig: i32) {
    let fd = WRITE_FD.load(SeqCst);
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte.
    unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    zdtm::sigterm_flag().store(1, SeqCst);
}

fn setup() -> TestResult<i32> {
    let (r, w) = pipe2(0)?;
    WRITE_FD.store(w, SeqCst);
    set_sigaction(
        libc::SIGTERM,
        on_sigterm as *const () as usize,
        libc::SA_RESTART,
        &[],
    )?;
    let sa = get_sigaction(libc::SIGTERM)?;
    ensure_eq!(
        sa.sa_flags & libc::SA_RESTART,
        libc::SA_RESTART,
        "SA_RESTART set"
    );
    Ok(r)
}

fn main() {
    zdtm::init();
    let r = setup().unwrap_or_else(|e| zdtm::fail(&format!("setup: {e}")));
    zdtm::ready();
    let mut buf = [0u8; 16];
    // SAFETY: buf is a valid writable buffer.
    let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
    let err = std::io::Error::last_os_error();
    let res = (|| -> TestResult {
        if n < 0 {
            return Err(format!("read: {err}"));
        }
        ensure_eq!(&buf[..n as usize], b"x", "bytes read");
        ensure_eq!(
            zdtm::sigterm_received(),
            true,
            "SIGTERM received when read returned"
        );
        Ok(())
    })();
    zdtm::finish(res)
}
