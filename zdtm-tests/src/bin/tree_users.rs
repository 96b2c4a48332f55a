//! A tree whose members run as different users. The test stays root and is
//! a child subreaper;
//!   A   groups {100, 200}, every uid and gid 65534 (no capability left),
//!       a child subreaper, and a parent death signal (SIGUSR2) set after
//!       its setresuid (which clears it);
//!   B   uids 1000/1001/1002, gids 2000/2001/2002, groups {300}, a bounding
//!       set without CAP_SYS_ADMIN, CAP_KILL and CAP_NET_BIND_SERVICE
//!       permitted (kept through PR_SET_KEEPCAPS), CAP_KILL effective;
//!       it forks
//!       B1  which inherits all of that and sets its fs ids to 1000/2000.
//! Each records its credentials (/proc/self/status: ids, groups, the five
//! capability sets, no_new_privs), its parent death signal and subreaper
//! flag; after restore each compares them on SIGUSR1 (exit 0 if equal), so
//! no member holds a privilege it did not hold, and none lost one.

use zdtm::{ensure_eq, TestResult};
use zdtm_tests::tree;
use zdtm_tests::{close, pipe2};

const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_ADMIN: u64 = 21;

/// What a member must find again after restore.
fn creds() -> TestResult<String> {
    let status = zdtm::procfs::read_string("/proc/self/status")?;
    let keys = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapInh:",
        "CapPrm:",
        "CapEff:",
        "CapBnd:",
        "CapAmb:",
        "NoNewPrivs:",
    ];
    let mut out: Vec<String> = status
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let (mut pdeath, mut reaper) = (0i32, 0i32);
    // SAFETY: the getters write one int each to valid pointers.
    unsafe {
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut i32);
        libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut reaper as *mut i32);
    }
    out.push(format!("pdeath {pdeath}; subreaper {reaper}"));
    Ok(out.join("; "))
}

fn check_os(r: i64, what: &str) -> TestResult {
    if r != 0 {
        return Err(zdtm::os_err(what));
    }
    Ok(())
}

/// A member set up: records its credentials, closes `ready`, and after
/// SIGUSR1 compares them; then `then`.
fn member(ready: i32, then: impl FnOnce() -> TestResult) -> TestResult {
    let before = creds()?;
    close(ready)?;
    tree::wait_go();
    ensure_eq!(creds()?, before, "credentials");
    then()
}

fn become_a() -> TestResult {
    let groups = [100, 200];
    // SAFETY: plain credential calls with valid arguments.
    unsafe {
        check_os(libc::setgroups(2, groups.as_ptr()) as i64, "setgroups")?;
        check_os(libc::setresgid(65534, 65534, 65534) as i64, "setresgid")?;
        check_os(libc::setresuid(65534, 65534, 65534) as i64, "setresuid")?;
        check_os(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2 as libc::c_ulong) as i64,
            "PR_SET_PDEATHSIG",
        )?;
        check_os(
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) as i64,
            "PR_SET_CHILD_SUBREAPER",
        )
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn become_b() -> TestResult {
    let groups = [300];
    // SAFETY: plain credential calls with valid arguments.
    unsafe {
        check_os(
            libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_ADMIN as libc::c_ulong) as i64,
            "PR_CAPBSET_DROP",
        )?;
        check_os(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong) as i64,
            "PR_SET_KEEPCAPS",
        )?;
        check_os(libc::setgroups(1, groups.as_ptr()) as i64, "setgroups")?;
        check_os(libc::setresgid(2000, 2001, 2002) as i64, "setresgid")?;
        check_os(libc::setresuid(1000, 1001, 1002) as i64, "setresuid")?;
    }
    let head = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    data[0].permitted = (1 << CAP_KILL) | (1 << CAP_NET_BIND_SERVICE);
    data[0].effective = 1 << CAP_KILL;
    // SAFETY: capset reads a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &head, data.as_ptr()) };
    check_os(r, "capset")
}

struct State {
    a: i32,
    b: i32,
    b1: i32,
    before: String,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    tree::prepare()?;
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    check_os(r as i64, "PR_SET_CHILD_SUBREAPER")?;
    let (rd, wr) = pipe2(libc::O_CLOEXEC)?;
    let a = tree::fork(|| {
        close(rd)?;
        become_a()?;
        member(wr, || Ok(()))
    })?;
    let b = tree::fork(|| {
        close(rd)?;
        become_b()?;
        let b1 = tree::fork(|| {
            // SAFETY: setfsuid/setfsgid have no memory-safety preconditions
            // (they return the previous id).
            unsafe {
                libc::setfsgid(2000);
                libc::setfsuid(1000);
            }
            member(wr, || Ok(()))
        })?;
        member(wr, || tree::reap(b1, 0, "B1"))
    })?;
    close(wr)?;
    tree::wait_eof(rd)?;
    let kids = zdtm::procfs::read_string(&format!("/proc/{b}/task/{b}/children"))?;
    let b1: i32 = kids
        .split_whitespace()
        .next()
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| format!("B has no child: {kids:?}"))?;
    Ok(State {
        a,
        b,
        b1,
        before: creds()?,
    })
}

fn check(s: State) -> TestResult {
    ensure_eq!(creds()?, s.before, "the test's credentials");
    // SAFETY: kill of our own descendants.
    unsafe {
        for m in [s.a, s.b, s.b1] {
            libc::kill(m, libc::SIGUSR1);
        }
    }
    tree::reap(s.a, 0, "A")?;
    tree::reap(s.b, 0, "B")
}

fn main() {
    zdtm::run(setup, check)
}
