//! The vDSO: getauxval(AT_SYSINFO_EHDR) and the `[vdso]`/`[vvar]`/`[vvar_vclock]`
//! maps lines must be identical after restore, the vDSO must still be an
//! ELF image there, and the vDSO time functions must work:
//! clock_gettime(CLOCK_MONOTONIC) does not go backwards, CLOCK_REALTIME and
//! gettimeofday are sane and agree.

use std::time::Duration;

use zdtm::{ensure, ensure_eq, maps, TestResult};
use zdtm_tests::clock;

struct State {
    ehdr: u64,
    lines: Vec<maps::MapEntry>,
    mono: Duration,
    real: Duration,
}

fn vdso_lines() -> TestResult<Vec<maps::MapEntry>> {
    Ok(maps::read_maps()?
        .into_iter()
        .filter(|e| e.path.starts_with("[vdso") || e.path.starts_with("[vvar"))
        .collect())
}

fn ehdr() -> u64 {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) }
}

fn check_vdso_image(ehdr: u64, lines: &[maps::MapEntry]) -> TestResult {
    ensure!(ehdr != 0, "no AT_SYSINFO_EHDR");
    let vdso = lines
        .iter()
        .find(|e| e.path == "[vdso]")
        .ok_or("no [vdso] in maps")?;
    ensure_eq!(vdso.start as u64, ehdr, "[vdso] start vs AT_SYSINFO_EHDR");
    ensure!(vdso.perms == "r-xp", "[vdso] perms {}", vdso.perms);
    // SAFETY: the [vdso] mapping is readable and at least one page long.
    let magic = unsafe { zdtm::mem::slice(ehdr as usize, 4) };
    ensure_eq!(magic, b"\x7fELF", "vDSO ELF magic");
    Ok(())
}

fn gettimeofday() -> TestResult<Duration> {
    // SAFETY: a zeroed timeval is valid storage.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    // SAFETY: tv is valid storage; the timezone argument may be null.
    if unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) } != 0 {
        return Err(zdtm::os_err("gettimeofday"));
    }
    Ok(Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000))
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let s = State {
        ehdr: ehdr(),
        lines: vdso_lines()?,
        mono: clock(libc::CLOCK_MONOTONIC)?,
        real: clock(libc::CLOCK_REALTIME)?,
    };
    check_vdso_image(s.ehdr, &s.lines)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    ensure_eq!(ehdr(), s.ehdr, "AT_SYSINFO_EHDR");
    ensure_eq!(vdso_lines()?, s.lines, "vdso/vvar maps lines");
    check_vdso_image(s.ehdr, &s.lines)?;

    let mut last = clock(libc::CLOCK_MONOTONIC)?;
    ensure!(
        last >= s.mono,
        "CLOCK_MONOTONIC went backwards: {last:?} < {:?}",
        s.mono
    );
    for _ in 0..1000 {
        let now = clock(libc::CLOCK_MONOTONIC)?;
        ensure!(
            now >= last,
            "CLOCK_MONOTONIC not monotonic: {now:?} < {last:?}"
        );
        last = now;
    }
    let real = clock(libc::CLOCK_REALTIME)?;
    // Not before 2020 and not before the recorded time (minus slack for NTP).
    ensure!(real.as_secs() > 1_577_836_800, "CLOCK_REALTIME {real:?}");
    ensure!(
        real + Duration::from_secs(60) >= s.real,
        "CLOCK_REALTIME {real:?} long before the checkpoint's {:?}",
        s.real
    );
    let tod = gettimeofday()?;
    let diff = tod.max(real) - tod.min(real);
    ensure!(
        diff < Duration::from_secs(2),
        "gettimeofday {tod:?} vs CLOCK_REALTIME {real:?}"
    );
    for id in [
        libc::CLOCK_MONOTONIC_COARSE,
        libc::CLOCK_REALTIME_COARSE,
        libc::CLOCK_BOOTTIME,
    ] {
        clock(id)?;
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
