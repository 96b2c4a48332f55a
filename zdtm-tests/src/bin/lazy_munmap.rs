//! munmap right after the restore: the first and last 4 MiB of a 64 MiB
//! region (`--size-mib=N`) and two 2 MiB holes inside it are unmapped
//! before anything of it is read; the rest keeps its data, and fresh
//! memory mapped again into one of the holes reads zeros.
//!
//! After a lazy restore most pages have not arrived yet when they are
//! unmapped: the daemon (UFFD_EVENT_UNMAP) must not fail on them, nor copy
//! them into whatever is mapped there next.

use zdtm::mem;
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SEED: u64 = 0x3a3a_0001;
const MIB: usize = 1 << 20;

fn setup(args: &zdtm::Args) -> TestResult<(usize, usize)> {
    let len = args.get_or("size-mib", 64usize)? << 20;
    zdtm::ensure!(len >= 32 * MIB, "--size-mib must be at least 32");
    let addr = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, SEED);
    Ok((addr, len))
}

fn check((addr, len): (usize, usize)) -> TestResult {
    let holes = [
        (0, 4 * MIB),
        (len / 3 / MIB * MIB, 2 * MIB),
        (2 * len / 3 / MIB * MIB, 2 * MIB),
        (len - 4 * MIB, 4 * MIB),
    ];
    for &(off, n) in &holes {
        mem::munmap(addr + off, n)?;
    }
    // Fresh memory in the second hole (nothing else maps there meanwhile:
    // the test is single-threaded).
    let (off, n) = holes[1];
    mem::mmap_anon_at(addr + off, n, RW, 0)?;
    let mut kept = Vec::new();
    let mut at = 0;
    for &(off, n) in &holes {
        if off > at {
            kept.push((at, off - at));
        }
        at = off + n;
    }
    for &(off, n) in &kept {
        maps::expect_covered(addr + off, addr + off + n, "rw-p")?;
        // SAFETY: checked mapped read-write just above.
        pattern::verify(unsafe { mem::slice(addr + off, n) }, SEED)
            .map_err(|m| format!("kept range at +{off:#x}: {m}"))?;
    }
    for &(off, n) in [holes[0], holes[2], holes[3]].iter() {
        maps::expect_unmapped(addr + off, addr + off + n)?;
    }
    maps::expect_covered(addr + off, addr + off + n, "rw-p")?;
    // SAFETY: the fresh mapping, read-write.
    pattern::verify_zero(unsafe { mem::slice(addr + off, n) })
        .map_err(|m| format!("memory mapped again into a hole: {m}"))?;
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
