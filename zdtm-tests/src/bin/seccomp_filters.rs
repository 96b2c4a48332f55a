//! no_new_privs and three stacked seccomp filters that really filter:
//! the oldest makes acct(2) fail with errno 42 and swapoff(2) with 7, the
//! next (installed with SECCOMP_FILTER_FLAG_LOG) makes acct fail with 43
//! (the newer filter wins a tie of actions, so the order shows) and
//! vhangup(2) with 44, the newest sethostname(2) with 45. After restore
//! the same calls fail with the same errnos, NoNewPrivs is 1, Seccomp 2
//! and Seccomp_filters 3.

use zdtm::{ensure, ensure_eq, procfs, TestResult};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const FLAG_LOG: u64 = 1 << 1;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A filter: kill on a foreign arch, `nr -> errno` for each rule, else allow.
fn program(rules: &[(i64, u32)]) -> Vec<libc::sock_filter> {
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    for &(nr, errno) in rules {
        p.push(ins(JEQ_K, 0, 1, nr as u32));
        p.push(ins(RET_K, 0, 0, RET_ERRNO | errno));
    }
    p.push(ins(RET_K, 0, 0, RET_ALLOW));
    p
}

fn install(rules: &[(i64, u32)], flags: u64) -> TestResult {
    let mut p = program(rules);
    let prog = libc::sock_fprog {
        len: p.len() as u16,
        filter: p.as_mut_ptr(),
    };
    // SAFETY: prog points at a live filter array of its length.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1u64, flags, &prog as *const _) };
    ensure!(
        r == 0,
        "{}",
        zdtm::os_err("seccomp(SECCOMP_SET_MODE_FILTER)")
    );
    Ok(())
}

/// The errno of a filtered call (which must fail).
fn errno_of(nr: i64, what: &str) -> TestResult<i32> {
    // SAFETY: every call here is filtered before the kernel runs it; the
    // null/zero arguments would be harmless anyway.
    let r = unsafe { libc::syscall(nr, 0u64, 0u64) };
    ensure!(r == -1, "{what} returned {r}, not an error");
    Ok(zdtm::errno())
}

fn expect() -> TestResult {
    ensure_eq!(errno_of(libc::SYS_acct, "acct")?, 43, "acct errno");
    ensure_eq!(errno_of(libc::SYS_swapoff, "swapoff")?, 7, "swapoff errno");
    ensure_eq!(errno_of(libc::SYS_vhangup, "vhangup")?, 44, "vhangup errno");
    ensure_eq!(
        errno_of(libc::SYS_sethostname, "sethostname")?,
        45,
        "sethostname errno"
    );
    ensure_eq!(procfs::status_field("NoNewPrivs")?, "1", "NoNewPrivs");
    ensure_eq!(procfs::status_field("Seccomp")?, "2", "Seccomp");
    ensure_eq!(
        procfs::status_field("Seccomp_filters")?,
        "3",
        "Seccomp_filters"
    );
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) };
    ensure!(r == 0, "{}", zdtm::os_err("PR_SET_NO_NEW_PRIVS"));
    install(&[(libc::SYS_acct, 42), (libc::SYS_swapoff, 7)], 0)?;
    install(&[(libc::SYS_acct, 43), (libc::SYS_vhangup, 44)], FLAG_LOG)?;
    install(&[(libc::SYS_sethostname, 45)], 0)?;
    expect()
}

fn check(_: ()) -> TestResult {
    expect()
}

fn main() {
    zdtm::run(setup, check)
}
