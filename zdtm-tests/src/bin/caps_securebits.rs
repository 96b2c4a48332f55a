//! A root task with a partial capability set: bounding set cut to
//! {CHOWN, DAC_OVERRIDE, FOWNER, KILL, SETPCAP, NET_BIND_SERVICE, NET_RAW},
//! permitted {CHOWN, DAC_OVERRIDE, KILL, SETPCAP, NET_BIND_SERVICE},
//! effective {CHOWN}, inheritable {KILL, NET_BIND_SERVICE, SYS_TIME} (not
//! in the bounding set), ambient
//! {NET_BIND_SERVICE}, and securebits KEEP_CAPS | NOROOT | NOROOT_LOCKED |
//! NO_CAP_AMBIENT_RAISE. After restore capget, the bounding and ambient
//! sets, PR_GET_SECUREBITS and PR_GET_KEEPCAPS are unchanged, the locked
//! bit still cannot be cleared and ambient raising is still refused.

use zdtm::{ensure, ensure_eq, TestResult};

const CHOWN: u32 = 0;
const DAC_OVERRIDE: u32 = 1;
const FOWNER: u32 = 3;
const KILL: u32 = 5;
const SETPCAP: u32 = 8;
const NET_BIND_SERVICE: u32 = 10;
const NET_RAW: u32 = 13;
const SYS_TIME: u32 = 25;

const SECBIT_NOROOT: i32 = 1 << 0;
const SECBIT_NOROOT_LOCKED: i32 = 1 << 1;
const SECBIT_KEEP_CAPS: i32 = 1 << 4;
const SECBIT_NO_CAP_AMBIENT_RAISE: i32 = 1 << 6;
const SECUREBITS: i32 =
    SECBIT_KEEP_CAPS | SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE;

const fn set(caps: &[u32]) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < caps.len() {
        m |= 1 << caps[i];
        i += 1;
    }
    m
}

const BND: u64 = set(&[
    CHOWN,
    DAC_OVERRIDE,
    FOWNER,
    KILL,
    SETPCAP,
    NET_BIND_SERVICE,
    NET_RAW,
]);
const PRM: u64 = set(&[CHOWN, DAC_OVERRIDE, KILL, SETPCAP, NET_BIND_SERVICE]);
const EFF: u64 = set(&[CHOWN]);
const INH: u64 = set(&[KILL, NET_BIND_SERVICE, SYS_TIME]);
const AMB: u64 = set(&[NET_BIND_SERVICE]);

/// (effective, permitted, inheritable) with capget.
fn capget() -> TestResult<(u64, u64, u64)> {
    let mut hdr = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: header and two cap_user_data_t (6 u32) are valid buffers.
    let r = unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), data.as_mut_ptr()) };
    ensure!(r == 0, "{}", zdtm::os_err("capget"));
    let w = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Ok((
        w(data[0], data[3]),
        w(data[1], data[4]),
        w(data[2], data[5]),
    ))
}

fn capset(eff: u64, prm: u64, inh: u64) -> TestResult {
    let hdr = [0x2008_0522u32, 0];
    let data = [
        eff as u32,
        prm as u32,
        inh as u32,
        (eff >> 32) as u32,
        (prm >> 32) as u32,
        (inh >> 32) as u32,
    ];
    // SAFETY: header and two cap_user_data_t (6 u32) are valid buffers.
    let r = unsafe { libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) };
    ensure!(r == 0, "{}", zdtm::os_err("capset"));
    Ok(())
}

fn prctl(op: i32, a: u64, what: &str) -> TestResult<i32> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(op, a, 0u64, 0u64, 0u64) };
    ensure!(r >= 0, "{}", zdtm::os_err(what));
    Ok(r)
}

fn last_cap() -> TestResult<u32> {
    zdtm::procfs::read_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|e| format!("cap_last_cap: {e}"))
}

fn sets() -> TestResult<(u64, u64)> {
    let (mut bnd, mut amb) = (0, 0);
    for cap in 0..=last_cap()? {
        if prctl(libc::PR_CAPBSET_READ, cap as u64, "PR_CAPBSET_READ")? == 1 {
            bnd |= 1 << cap;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_IS_SET as u64,
                cap as u64,
                0u64,
                0u64,
            )
        };
        ensure!(r >= 0, "{}", zdtm::os_err("PR_CAP_AMBIENT_IS_SET"));
        if r == 1 {
            amb |= 1 << cap;
        }
    }
    Ok((bnd, amb))
}

fn setup(_: &zdtm::Args) -> TestResult<()> {
    // The inheritable set first: it keeps SYS_TIME, which the bounding set
    // then loses (allowed: only raising needs it in the bounding set).
    capset(EFF | (1 << SETPCAP), PRM, INH)?;
    for cap in 0..=last_cap()? {
        if BND & (1 << cap) == 0 {
            prctl(libc::PR_CAPBSET_DROP, cap as u64, "PR_CAPBSET_DROP")?;
        }
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            NET_BIND_SERVICE as u64,
            0u64,
            0u64,
        )
    };
    ensure!(r == 0, "{}", zdtm::os_err("PR_CAP_AMBIENT_RAISE"));
    prctl(
        libc::PR_SET_SECUREBITS,
        SECUREBITS as u64,
        "PR_SET_SECUREBITS",
    )?;
    capset(EFF, PRM, INH)?;
    ensure_eq!(capget()?, (EFF, PRM, INH), "capget after setup");
    ensure_eq!(sets()?, (BND, AMB), "bounding and ambient after setup");
    Ok(())
}

fn check(_: ()) -> TestResult {
    ensure_eq!(capget()?, (EFF, PRM, INH), "capget (eff, prm, inh)");
    ensure_eq!(sets()?, (BND, AMB), "(bounding, ambient) sets");
    let bits = prctl(libc::PR_GET_SECUREBITS, 0, "PR_GET_SECUREBITS")?;
    ensure_eq!(bits, SECUREBITS, "securebits");
    ensure_eq!(
        prctl(libc::PR_GET_KEEPCAPS, 0, "PR_GET_KEEPCAPS")?,
        1,
        "keep-caps"
    );
    // The locks hold: NOROOT cannot be cleared, even with CAP_SETPCAP back
    // in the effective set; ambient raising stays refused.
    capset(EFF | (1 << SETPCAP), PRM, INH)?;
    // SAFETY: prctl with integer arguments; must fail.
    let r = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_KEEP_CAPS as u64, 0, 0, 0) };
    ensure!(
        r != 0,
        "clearing the locked NOROOT bit succeeded after restore"
    );
    // SAFETY: prctl with integer arguments; must fail.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            KILL as u64,
            0u64,
            0u64,
        )
    };
    ensure!(
        r != 0,
        "ambient raise succeeded despite NO_CAP_AMBIENT_RAISE"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
