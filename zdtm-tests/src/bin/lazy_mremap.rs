//! mremap right after the restore: a whole 128 MiB region (`--size-mib=N`)
//! is moved to a new address and grown to twice its size, and the middle
//! half of a second region is moved elsewhere (splitting it), before
//! anything of them is read.
//!
//! After a lazy restore their pages have mostly not arrived yet: they must
//! follow the mapping to its new address (the daemon follows
//! UFFD_EVENT_REMAP), the grown part must read zeros and the old
//! addresses must stay unmapped.

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const SEED_A: u64 = 0x3e3a_0001;
const SEED_B: u64 = 0x3e3a_0002;

struct State {
    a: usize,
    b: usize,
    len: usize,
}

fn setup(args: &zdtm::Args) -> TestResult<State> {
    let len = args.get_or("size-mib", 128usize)? << 20;
    let a = mem::mmap_guarded(len, RW)?;
    let b = mem::mmap_guarded(len / 4, RW)?;
    // SAFETY: fresh read-write mappings owned by the test.
    pattern::fill(unsafe { mem::slice_mut(a, len) }, SEED_A);
    // SAFETY: as above.
    pattern::fill(unsafe { mem::slice_mut(b, len / 4) }, SEED_B);
    Ok(State { a, b, len })
}

fn verify(what: &str, addr: usize, len: usize, seed: u64, base: usize) -> TestResult {
    // SAFETY: the caller checked the range is mapped read-write.
    pattern::verify_at(unsafe { mem::slice(addr, len) }, seed, base as u64)
        .map_err(|m| format!("{what}: {m}"))
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    let len = s.len;
    // Region A: moved whole and grown to twice its size.
    let to = mem::find_free_area(2 * len + 2 * ps)? + ps;
    let got = mem::mremap(
        s.a,
        len,
        2 * len,
        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
        to,
    )?;
    // Region B: its middle half moved out.
    let blen = len / 4;
    let (mid, mid_len) = (s.b + blen / 4, blen / 2);
    let mid_to = mem::find_free_area(mid_len + 2 * ps)? + ps;
    mem::mremap(
        mid,
        mid_len,
        mid_len,
        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
        mid_to,
    )?;
    zdtm::ensure!(got == to, "mremap moved A to {got:#x}, asked {to:#x}");
    maps::expect_covered(to, to + 2 * len, "rw-p")?;
    verify("A, moved", to, len, SEED_A, s.a)?;
    // SAFETY: the grown part is mapped read-write (checked above).
    pattern::verify_zero(unsafe { mem::slice(to + len, len) })
        .map_err(|m| format!("A, grown part: {m}"))?;
    maps::expect_unmapped(s.a, s.a + len)?;
    maps::expect_vma(s.b, mid, "rw-p")?;
    maps::expect_vma(mid + mid_len, s.b + blen, "rw-p")?;
    maps::expect_covered(mid_to, mid_to + mid_len, "rw-p")?;
    maps::expect_unmapped(mid, mid + mid_len)?;
    verify("B, head", s.b, mid - s.b, SEED_B, s.b)?;
    verify("B, moved middle", mid_to, mid_len, SEED_B, mid)?;
    verify(
        "B, tail",
        mid + mid_len,
        s.b + blen - mid - mid_len,
        SEED_B,
        mid + mid_len,
    )?;
    // Read again at the end: nothing may have been copied to the old or
    // grown ranges meanwhile.
    // SAFETY: as above.
    pattern::verify_zero(unsafe { mem::slice(to + len, len) })
        .map_err(|m| format!("A, grown part, read again: {m}"))
}

fn main() {
    zdtm::run(setup, check)
}
