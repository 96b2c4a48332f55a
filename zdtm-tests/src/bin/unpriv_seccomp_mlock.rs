//! All of it at once, as a hardened service would be: 4 MiB of patterned
//! memory locked with mlock (while still root), then every capability
//! dropped (bounding set emptied), uids and gids 65534, one supplementary
//! group, no_new_privs and a seccomp filter that makes acct(2) fail with
//! errno 42. After restore: the same ids and groups, no capability in any
//! set, NoNewPrivs 1, Seccomp 2 with one filter that still filters, the
//! region still locked (VmFlags `lo`, the same VmLck) with its data, and
//! no way back to root.

use zdtm::{ensure, ensure_eq, mem, pattern, procfs, TestResult};

const LEN: usize = 4 << 20;
const SEED: u64 = 0x10c4_ed5e_cc0b;
const ID: u32 = 65534;
const GROUP: libc::gid_t = 100;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

struct State {
    addr: usize,
    status: Vec<String>,
}

fn sys(r: libc::c_int, what: &str) -> TestResult {
    ensure!(r == 0, "{}", zdtm::os_err(what));
    Ok(())
}

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn install_filter() -> TestResult {
    let mut p = [
        ins(0x20, 0, 0, 4), // ld seccomp_data.arch
        ins(0x15, 1, 0, AUDIT_ARCH_X86_64),
        ins(0x06, 0, 0, RET_KILL_PROCESS),
        ins(0x20, 0, 0, 0), // ld seccomp_data.nr
        ins(0x15, 0, 1, libc::SYS_acct as u32),
        ins(0x06, 0, 0, RET_ERRNO | 42),
        ins(0x06, 0, 0, RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_mut_ptr(),
    };
    // SAFETY: prog points at a live filter array of its length.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1u64, 0u64, &prog as *const _) };
    ensure!(
        r == 0,
        "{}",
        zdtm::os_err("seccomp(SECCOMP_SET_MODE_FILTER)")
    );
    Ok(())
}

/// The status lines that say who the task is and what it may do.
fn privilege_lines() -> TestResult<Vec<String>> {
    let text = procfs::read_string("/proc/self/status")?;
    Ok(text
        .lines()
        .filter(|l| {
            [
                "Uid:",
                "Gid:",
                "Groups:",
                "Cap",
                "NoNewPrivs:",
                "Seccomp",
                "VmLck:",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(String::from)
        .collect())
}

fn region_flags(addr: usize) -> TestResult<Vec<String>> {
    let smaps = procfs::read_string("/proc/self/smaps")?;
    zdtm::maps::parse_vm_flags(&smaps, addr)
        .ok_or_else(|| format!("no VmFlags for the region at {addr:#x}"))
}

fn expect(s: &State) -> TestResult {
    let (mut r, mut e, mut sv) = (0, 0, 0);
    // SAFETY: valid pointers to u32s.
    let rc = unsafe { libc::getresuid(&mut r, &mut e, &mut sv) };
    sys(rc, "getresuid")?;
    ensure_eq!([r, e, sv], [ID; 3], "getresuid");
    // SAFETY: valid pointers to u32s.
    let rc = unsafe { libc::getresgid(&mut r, &mut e, &mut sv) };
    sys(rc, "getresgid")?;
    ensure_eq!([r, e, sv], [ID; 3], "getresgid");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        let line = s
            .status
            .iter()
            .find(|l| l.starts_with(cap))
            .ok_or_else(|| format!("no {cap} line"))?;
        ensure!(
            line.ends_with("0000000000000000"),
            "{line}: a capability is held"
        );
    }
    ensure_eq!(procfs::status_field("NoNewPrivs")?, "1", "NoNewPrivs");
    ensure_eq!(procfs::status_field("Seccomp")?, "2", "Seccomp");
    ensure_eq!(
        procfs::status_field("Seccomp_filters")?,
        "1",
        "Seccomp_filters"
    );
    // SAFETY: acct is filtered before the kernel runs it.
    let rc = unsafe { libc::syscall(libc::SYS_acct, 0u64) };
    ensure!(rc == -1, "acct returned {rc}: the filter is gone");
    ensure_eq!(zdtm::errno(), 42, "acct errno from the filter");
    let flags = region_flags(s.addr)?;
    ensure!(
        flags.iter().any(|f| f == "lo"),
        "the region is not locked: VmFlags {flags:?}"
    );
    // SAFETY: the region is mapped, LEN bytes, and only read here.
    let buf = unsafe { std::slice::from_raw_parts(s.addr as *const u8, LEN) };
    pattern::verify(buf, SEED).map_err(|m| format!("locked region: {m}"))?;
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    zdtm::hold_outfile()?;
    let addr = mem::mmap_anon(LEN, libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the region was just mapped read-write, LEN bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, LEN) };
    pattern::fill(buf, SEED);
    // SAFETY: mlock of our own mapping.
    sys(unsafe { libc::mlock(addr as *const _, LEN) }, "mlock")?;
    let last_cap: i32 = procfs::read_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|e| format!("cap_last_cap: {e}"))?;
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        sys(rc, "PR_CAPBSET_DROP")?;
    }
    // SAFETY: plain credential syscalls on ourselves.
    unsafe {
        sys(libc::setgroups(1, &GROUP), "setgroups")?;
        sys(libc::setresgid(ID, ID, ID), "setresgid")?;
        sys(libc::setresuid(ID, ID, ID), "setresuid")?;
        sys(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "PR_SET_NO_NEW_PRIVS",
        )?;
    }
    install_filter()?;
    let s = State {
        addr,
        status: privilege_lines()?,
    };
    expect(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    ensure_eq!(
        privilege_lines()?,
        s.status,
        "privilege lines of /proc/self/status"
    );
    expect(&s)?;
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
