//! A 512 MiB private anonymous region fully written with a pattern (each
//! 8-byte word derived from its address), verified completely after
//! restore. `--size-mib=N` changes the size.

use zdtm::mem;
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

fn setup(args: &zdtm::Args) -> TestResult<(usize, usize)> {
    let len = args.get_or("size-mib", 512usize)? << 20;
    let addr = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(addr, len) }, 0xb16);
    Ok((addr, len))
}

fn check((addr, len): (usize, usize)) -> TestResult {
    maps::expect_vma(addr, addr + len, "rw-p")?;
    // SAFETY: the region is mapped read-write (checked above).
    pattern::verify(unsafe { mem::slice(addr, len) }, 0xb16).map_err(|m| m.to_string())
}

fn main() {
    zdtm::run(setup, check)
}
