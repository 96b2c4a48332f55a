//! An unprivileged task: real/effective/saved/fs uids 65534/65533/65532/65532
//! and gids likewise, supplementary groups 4 24 100, no capabilities at all
//! (the bounding set cut to CAP_NET_BIND_SERVICE), and dumpable 0. It
//! holds its outfile open, since it cannot reach the runner's directory by
//! path. After restore: getresuid/getresgid,
//! getgroups, capget, the bounding set, PR_GET_DUMPABLE and the status
//! lines are unchanged, and setuid(0) / setgroups are still refused.

use zdtm::{ensure, ensure_eq, TestResult};

const GROUPS: [libc::gid_t; 3] = [4, 24, 100];
const IDS: [u32; 3] = [65534, 65533, 65532];
const CAP_NET_BIND_SERVICE: i32 = 10;

struct State {
    status: Vec<String>,
}

fn sys(r: libc::c_int, what: &str) -> TestResult {
    if r != 0 {
        return Err(zdtm::os_err(what));
    }
    Ok(())
}

fn cred_lines() -> TestResult<Vec<String>> {
    let text = zdtm::procfs::read_string("/proc/self/status")?;
    Ok(text
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:", "Seccomp"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(String::from)
        .collect())
}

fn last_cap() -> TestResult<i32> {
    zdtm::procfs::read_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|e| format!("cap_last_cap: {e}"))
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    zdtm::hold_outfile()?;
    for cap in 0..=last_cap()? {
        if cap != CAP_NET_BIND_SERVICE {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            sys(r, "PR_CAPBSET_DROP")?;
        }
    }
    // SAFETY: GROUPS is a valid array of its length.
    let r = unsafe { libc::setgroups(GROUPS.len(), GROUPS.as_ptr()) };
    sys(r, "setgroups")?;
    // SAFETY: plain id syscalls.
    unsafe {
        sys(libc::setresgid(IDS[0], IDS[1], IDS[2]), "setresgid")?;
        sys(libc::setresuid(IDS[0], IDS[1], IDS[2]), "setresuid")?;
        libc::setfsgid(IDS[2]);
        libc::setfsuid(IDS[2]);
        // What the uid change left depends on fs.suid_dumpable: make it 0.
        sys(
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            "PR_SET_DUMPABLE",
        )?;
    }
    Ok(State {
        status: cred_lines()?,
    })
}

fn check(s: State) -> TestResult {
    let (mut r, mut e, mut sv) = (0, 0, 0);
    // SAFETY: valid pointers to u32s.
    let rc = unsafe { libc::getresuid(&mut r, &mut e, &mut sv) };
    sys(rc, "getresuid")?;
    ensure_eq!([r, e, sv], IDS, "getresuid");
    // SAFETY: valid pointers to u32s.
    let rc = unsafe { libc::getresgid(&mut r, &mut e, &mut sv) };
    sys(rc, "getresgid")?;
    ensure_eq!([r, e, sv], IDS, "getresgid");
    // SAFETY: setfsuid/setfsgid(-1) only query.
    let fs = unsafe { [libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)] };
    ensure_eq!(fs.map(|v| v as u32), [IDS[2], IDS[2]], "fsuid, fsgid");
    let mut groups = [0 as libc::gid_t; 16];
    // SAFETY: groups is a valid buffer of 16 gids.
    let n = unsafe { libc::getgroups(16, groups.as_mut_ptr()) };
    ensure!(n >= 0, "{}", zdtm::os_err("getgroups"));
    ensure_eq!(&groups[..n as usize], &GROUPS[..], "getgroups");
    // SAFETY: prctl with integer arguments.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    ensure_eq!(dumpable, 0, "PR_GET_DUMPABLE");
    for cap in 0..=last_cap()? {
        // SAFETY: prctl with integer arguments.
        let inb = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        ensure_eq!(
            inb,
            (cap == CAP_NET_BIND_SERVICE) as i32,
            "bounding cap {}",
            cap
        );
    }
    ensure_eq!(
        cred_lines()?,
        s.status,
        "credential lines of /proc/self/status"
    );
    // No privilege came back with the restore.
    // SAFETY: plain id syscalls that must fail.
    unsafe {
        ensure!(libc::setuid(0) != 0, "setuid(0) succeeded after restore");
        ensure!(
            libc::setgroups(0, std::ptr::null()) != 0,
            "setgroups succeeded after restore"
        );
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
