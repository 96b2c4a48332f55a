//! `mem::mmap_guarded` maps exactly the area asked for between two guard
//! pages, and `mem::munmap` of the whole leaves nothing.
//!
//! Alone in its test binary: it checks the layout in /proc/self/maps, and
//! in a process where other tests run, their threads map memory (their
//! stacks, their own areas) that can land in the hole munmap leaves (seen:
//! 10 failures in 200 runs of the library's tests, a stack's guard page or
//! another test's area found there).

use zdtm::{maps, mem, pattern};

#[test]
fn guarded_mapping_is_exact() {
    let ps = mem::page_size();
    let a = mem::mmap_guarded(3 * ps, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    maps::expect_vma(a, a + 3 * ps, "rw-p").unwrap();
    maps::expect_vma(a - ps, a, "---p").unwrap();
    maps::expect_vma(a + 3 * ps, a + 4 * ps, "---p").unwrap();
    // SAFETY: freshly mapped read-write region owned by the test.
    let buf = unsafe { mem::slice_mut(a, 3 * ps) };
    pattern::verify_zero(buf).unwrap();
    pattern::fill(buf, 1);
    pattern::verify(buf, 1).unwrap();
    mem::munmap(a - ps, 5 * ps).unwrap();
    maps::expect_unmapped(a - ps, a + 4 * ps).unwrap();
}
