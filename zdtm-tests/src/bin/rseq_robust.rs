//! Restartable sequences and the robust futex list.
//!
//! glibc registers an rseq area per thread (at thread pointer +
//! `__rseq_offset`); if it did not, the test registers its own. Setup finds
//! the registration length by re-registering (EBUSY means "this exact
//! registration exists"). After restore: re-registering the same area with
//! the same length and signature still gives EBUSY and with another
//! signature EPERM (so area, length and signature were restored), and after
//! sched_yield the kernel keeps cpu_id/cpu_id_start up to date (a valid
//! cpu, equal to sched_getcpu). get_robust_list(0) returns the same head
//! and length as before.

use std::sync::atomic::{AtomicU32, AtomicU64};

use zdtm::{ensure, ensure_eq, test_msg, TestResult};

const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_CPU_ID_UNINITIALIZED: u32 = u32::MAX;

/// Our own area, used only when glibc did not register one. All fields
/// are atomics: the kernel writes them behind the compiler's back.
#[repr(C, align(32))]
struct RseqArea {
    cpu_id_start: AtomicU32,
    cpu_id: AtomicU32,
    rseq_cs: AtomicU64,
    flags: AtomicU32,
    node_id: AtomicU32,
    mm_cid: AtomicU32,
    pad: AtomicU32,
}

static OWN_AREA: RseqArea = RseqArea {
    cpu_id_start: AtomicU32::new(0),
    cpu_id: AtomicU32::new(RSEQ_CPU_ID_UNINITIALIZED),
    rseq_cs: AtomicU64::new(0),
    flags: AtomicU32::new(0),
    node_id: AtomicU32::new(0),
    mm_cid: AtomicU32::new(0),
    pad: AtomicU32::new(0),
};

struct State {
    area: usize,
    len: u32,
    robust: (usize, usize),
}

/// rseq(area, len, flags, sig); Ok(()) or Err(errno).
fn rseq(area: usize, len: u32, sig: u32) -> Result<(), i32> {
    // SAFETY: the area is a registered or registrable rseq area that stays
    // valid for the life of the thread (glibc's TLS or a static).
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, 0, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(zdtm::errno())
    }
}

fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86_64 fs:0 holds the TCB's self pointer (the thread pointer).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    tp
}

/// glibc's rseq area, if glibc registered one.
fn glibc_area() -> Option<usize> {
    // SAFETY: dlsym lookups of data symbols; the results are checked for
    // NULL before being read as the types glibc documents.
    unsafe {
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr());
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr());
        if off.is_null() || size.is_null() || *(size as *const u32) == 0 {
            return None;
        }
        Some(thread_pointer().wrapping_add(*(off as *const isize) as usize))
    }
}

fn robust_list() -> TestResult<(usize, usize)> {
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer and one size_t.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return Err(zdtm::os_err("get_robust_list"));
    }
    Ok((head, len))
}

fn nr_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32
}

/// Checks that cpu_id and cpu_id_start are valid and match sched_getcpu.
fn check_cpu(area: usize) -> TestResult {
    let n = nr_cpus();
    let mut last = (0, 0, 0);
    for _ in 0..100 {
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
        // SAFETY: the registered area is at least 32 bytes; the kernel
        // updates these fields, hence volatile reads.
        let (start, id) = unsafe {
            (
                std::ptr::read_volatile(area as *const u32),
                std::ptr::read_volatile((area + 4) as *const u32),
            )
        };
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        ensure!(
            id != RSEQ_CPU_ID_UNINITIALIZED,
            "rseq cpu_id is uninitialised"
        );
        ensure!(
            id < n && start < n,
            "rseq cpu_id {id}, cpu_id_start {start}, {n} cpus"
        );
        if id as i32 == cpu && start == id {
            return Ok(());
        }
        last = (id, start, cpu);
    }
    Err(format!(
        "rseq (cpu_id, cpu_id_start) vs sched_getcpu: {last:?}"
    ))
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let (area, len) = match glibc_area() {
        Some(area) => {
            let len = [32u32, 64, 128, 256]
                .into_iter()
                .find(|&len| rseq(area, len, RSEQ_SIG) == Err(libc::EBUSY))
                .ok_or("cannot find the length of glibc's rseq registration")?;
            test_msg!("glibc rseq area at {area:#x}, length {len}");
            (area, len)
        }
        None => {
            let area = &OWN_AREA as *const RseqArea as usize;
            rseq(area, 32, RSEQ_SIG)
                .map_err(|e| format!("rseq register: {}", std::io::Error::from_raw_os_error(e)))?;
            test_msg!("registered own rseq area at {area:#x}");
            (area, 32)
        }
    };
    check_cpu(area)?;
    let robust = robust_list()?;
    ensure!(robust.0 != 0, "no robust list head");
    Ok(State { area, len, robust })
}

fn check(s: State) -> TestResult {
    let errno = |r: Result<(), i32>| r.err().unwrap_or(0);
    ensure_eq!(
        errno(rseq(s.area, s.len, RSEQ_SIG)),
        libc::EBUSY,
        "errno re-registering the same rseq area (EBUSY = registered)"
    );
    ensure_eq!(
        errno(rseq(s.area, s.len, RSEQ_SIG ^ 1)),
        libc::EPERM,
        "errno re-registering with another signature"
    );
    check_cpu(s.area)?;
    // SAFETY: rseq_cs is at offset 8 of the registered area.
    let cs = unsafe { std::ptr::read_volatile((s.area + 8) as *const u64) };
    ensure_eq!(cs, 0, "rseq_cs outside a critical section");
    ensure_eq!(robust_list()?, s.robust, "get_robust_list (head, len)");
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
