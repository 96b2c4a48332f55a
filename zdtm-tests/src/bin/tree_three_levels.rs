//! A three-level process tree: the test (a session leader) and
//!   A   a process group of its own, with
//!       A1  in A's group, stopped by SIGSTOP
//!       A2  a zombie that exited with status 7
//!       A3  in the test's process group
//!       A5  in the group of A4, which A killed and reaped: a process group
//!           whose leader is gone
//!   B   a session of its own, with
//!       B1  a process group of its own in B's session
//!       B2  a zombie killed by SIGTERM
//! A pipe runs from the test (its write end, O_NONBLOCK) to B (the read
//! end), with "in flight" buffered in it when dumped; after restore the test
//! writes " after" and closes its end, and B reads both up to EOF.
//! Each live process writes its own pattern over half of a private region
//! the test filled before forking (copy-on-write), and records its pid,
//! ppid, pgid and sid. After restore the test checks its own, continues
//! A1 and sends SIGUSR1 to every member: each checks its region and its
//! ids, A and B reap their children (the zombies with their statuses) and
//! exit 0 only if all is well.

use zdtm::mem::{self, page_size};
use zdtm::{ensure_eq, pattern, TestResult};
use zdtm_tests::tree::{self, ids};
use zdtm_tests::{close, pipe2};

const PAGES: usize = 64;
const ROOT_SEED: u64 = 0x7ee0_0001;

struct Region {
    addr: usize,
    len: usize,
}

impl Region {
    fn half(&self) -> usize {
        self.len / 2
    }

    /// This member's pattern over the second half.
    fn mark(&self, seed: u64) {
        // SAFETY: the second half of the test's read-write region.
        pattern::fill(
            unsafe { mem::slice_mut(self.addr + self.half(), self.half()) },
            seed,
        );
    }

    /// The root's pattern in the first half, `seed`'s in the second.
    fn check(&self, seed: u64) -> TestResult {
        // SAFETY: the region is mapped read-write.
        pattern::verify(unsafe { mem::slice(self.addr, self.half()) }, ROOT_SEED)
            .map_err(|m| format!("first half: {m}"))?;
        // SAFETY: as above.
        pattern::verify(
            unsafe { mem::slice(self.addr + self.half(), self.half()) },
            seed,
        )
        .map_err(|m| format!("second half: {m}"))
    }
}

/// A live member: marks its memory, records its ids, says it is set up
/// (closes `ready`), optionally stops itself, and after SIGUSR1 checks.
fn member(
    r: &Region,
    seed: u64,
    ready: i32,
    stop: bool,
    then: impl FnOnce() -> TestResult,
) -> TestResult {
    r.mark(seed);
    let before = ids();
    close(ready)?;
    if stop {
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
    tree::wait_go();
    r.check(seed)?;
    ensure_eq!(ids(), before, "(pid, ppid, pgid, sid)");
    then()
}

fn setpgid(pgid: i32) -> TestResult {
    // SAFETY: setpgid has no memory-safety preconditions.
    if unsafe { libc::setpgid(0, pgid) } != 0 {
        return Err(zdtm::os_err("setpgid"));
    }
    Ok(())
}

struct State {
    region: Region,
    data_w: i32,
    members: Vec<i32>,
    a1: i32,
    a: i32,
    b: i32,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    tree::prepare()?;
    let len = PAGES * page_size();
    let addr = mem::mmap_guarded(len, libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the fresh read-write region.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, ROOT_SEED);
    let region = Region { addr, len };
    let r = &region;
    let root = ids().0;
    let (rd, wr) = pipe2(libc::O_CLOEXEC)?;
    let (data_r, data_w) = pipe2(libc::O_CLOEXEC)?;
    let a = tree::fork(|| {
        close(rd)?;
        close(data_r)?;
        close(data_w)?;
        setpgid(0)?;
        let a1 = tree::fork(|| member(r, 11, wr, true, || Ok(())))?;
        let a2 = tree::fork(|| {
            close(wr)?;
            // SAFETY: _exit ends this member with status 7.
            unsafe { libc::_exit(7) }
        })?;
        let a3 = tree::fork(|| {
            setpgid(root)?;
            member(r, 13, wr, false, || Ok(()))
        })?;
        // A4 leads a group A5 joins, then dies and is reaped.
        let a4 = tree::fork(|| {
            close(wr)?;
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        })?;
        // SAFETY: setpgid of our own children, in our session.
        if unsafe { libc::setpgid(a4, a4) } != 0 {
            return Err(zdtm::os_err("setpgid(A4)"));
        }
        let a5 = tree::fork(|| {
            setpgid(a4)?;
            member(r, 15, wr, false, || Ok(()))
        })?;
        // SAFETY: as above (EACCES: A5 already did it).
        if unsafe { libc::setpgid(a5, a4) } != 0 && zdtm::errno() != libc::EACCES {
            return Err(zdtm::os_err("setpgid(A5)"));
        }
        // SAFETY: kill of our own child.
        unsafe { libc::kill(a4, libc::SIGKILL) };
        tree::reap(a4, libc::SIGKILL, "A4")?;
        member(r, 10, wr, false, || {
            tree::reap(a2, 7 << 8, "zombie A2")?;
            tree::reap(a1, 0, "A1")?;
            tree::reap(a3, 0, "A3")?;
            tree::reap(a5, 0, "A5")
        })
    })?;
    let b = tree::fork(|| {
        close(rd)?;
        close(data_w)?;
        // SAFETY: setsid has no preconditions.
        if unsafe { libc::setsid() } < 0 {
            return Err(zdtm::os_err("setsid"));
        }
        let b1 = tree::fork(|| {
            close(data_r)?;
            setpgid(0)?;
            member(r, 21, wr, false, || Ok(()))
        })?;
        let b2 = tree::fork(|| {
            close(data_r)?;
            // SAFETY: the default action, then death by SIGTERM.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_DFL) };
            close(wr)?;
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGTERM) };
            Err("still alive after SIGTERM".into())
        })?;
        member(r, 20, wr, false, || {
            let mut got = Vec::new();
            loop {
                let chunk = zdtm_tests::read_some(data_r, 64)?;
                if chunk.is_empty() {
                    break;
                }
                got.extend_from_slice(&chunk);
            }
            ensure_eq!(
                String::from_utf8_lossy(&got).as_ref(),
                "in flight after",
                "what B read from the pipe"
            );
            tree::reap(b2, libc::SIGTERM, "zombie B2")?;
            tree::reap(b1, 0, "B1")
        })
    })?;
    close(wr)?;
    tree::wait_eof(rd)?;
    close(data_r)?;
    // SAFETY: F_SETFL on our own pipe end.
    if unsafe { libc::fcntl(data_w, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(zdtm::os_err("fcntl(O_NONBLOCK)"));
    }
    zdtm_tests::write_all(data_w, b"in flight")?;
    // Every member set up: find the grandchildren, wait for the stop and
    // the zombies.
    let kids = |p: i32| -> TestResult<Vec<i32>> {
        let t = zdtm::procfs::read_string(&format!("/proc/{p}/task/{p}/children"))?;
        Ok(t.split_whitespace()
            .filter_map(|k| k.parse().ok())
            .collect())
    };
    let (ak, bk) = (kids(a)?, kids(b)?);
    ensure_eq!((ak.len(), bk.len()), (4, 2), "grandchildren of A and B");
    tree::wait_state(ak[0], 'T')?;
    tree::wait_state(ak[1], 'Z')?;
    tree::wait_state(bk[1], 'Z')?;
    let members = vec![a, ak[0], ak[2], ak[3], b, bk[0]];
    Ok(State {
        data_w,
        a1: ak[0],
        region,
        members,
        a,
        b,
    })
}

fn check(s: State) -> TestResult {
    s.region.check(ROOT_SEED)?;
    ensure_eq!(tree::state(s.a1)?, 'T', "state of the stopped A1");
    zdtm_tests::write_all(s.data_w, b" after")?;
    close(s.data_w)?;
    // SAFETY: kill of our own descendants.
    unsafe {
        libc::kill(s.a1, libc::SIGCONT);
        for &m in &s.members {
            libc::kill(m, libc::SIGUSR1);
        }
    }
    tree::reap(s.a, 0, "A")?;
    tree::reap(s.b, 0, "B")
}

fn main() {
    zdtm::run(setup, check)
}
