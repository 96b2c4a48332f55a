//! PROT_NONE memory: a region written then made inaccessible, a region
//! partially written then made inaccessible, and a PROT_NONE mapping never
//! written. After restore all are still `---p` VMAs, and once made readable
//! they hold the data (or zeros).

use zdtm::mem::{self, page_size};
use zdtm::{maps, pattern, TestResult};

const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PAGES: usize = 16;
const PARTIAL_WRITTEN: usize = 4;

struct State {
    written: usize,
    partial: usize,
    never: usize,
}

fn check_maps(s: &State) -> TestResult {
    let len = PAGES * page_size();
    for a in [s.written, s.partial, s.never] {
        maps::expect_vma(a, a + len, "---p")?;
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    let len = PAGES * ps;
    let written = mem::mmap_guarded(len, RW)?;
    // SAFETY: fresh read-write mapping owned by the test.
    pattern::fill(unsafe { mem::slice_mut(written, len) }, 1);
    mem::mprotect(written, len, libc::PROT_NONE)?;

    let partial = mem::mmap_guarded(len, RW)?;
    // SAFETY: the first pages of a fresh read-write mapping.
    pattern::fill(unsafe { mem::slice_mut(partial, PARTIAL_WRITTEN * ps) }, 2);
    mem::mprotect(partial, len, libc::PROT_NONE)?;

    let never = mem::mmap_guarded(len, libc::PROT_NONE)?;

    // The regions' PROT_NONE guard pages could merge with them: make the
    // guards readable (r--) so that each region is exactly one VMA.
    for a in [written, partial, never] {
        mem::mprotect(a - ps, ps, libc::PROT_READ)?;
        mem::mprotect(a + len, ps, libc::PROT_READ)?;
    }

    let s = State {
        written,
        partial,
        never,
    };
    check_maps(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    let ps = page_size();
    let len = PAGES * ps;
    check_maps(&s)?;
    for a in [s.written, s.partial, s.never] {
        mem::mprotect(a, len, libc::PROT_READ)?;
    }
    // SAFETY: the regions are readable now.
    unsafe {
        pattern::verify(mem::slice(s.written, len), 1).map_err(|m| format!("written: {m}"))?;
        pattern::verify(mem::slice(s.partial, PARTIAL_WRITTEN * ps), 2)
            .map_err(|m| format!("partial, written part: {m}"))?;
        pattern::verify_zero(mem::slice(
            s.partial + PARTIAL_WRITTEN * ps,
            len - PARTIAL_WRITTEN * ps,
        ))
        .map_err(|m| format!("partial, untouched part: {m}"))?;
        pattern::verify_zero(mem::slice(s.never, len))
            .map_err(|m| format!("never written: {m}"))?;
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
