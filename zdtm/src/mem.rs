//! Raw memory mapping helpers. Addresses are plain `usize` values.

use crate::{os_err, TestResult};

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        ps as usize
    } else {
        4096
    }
}

/// `mmap(addr, len, prot, flags, fd, offset)`; returns the address.
pub fn mmap(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    offset: i64,
) -> TestResult<usize> {
    // SAFETY: mmap does not touch existing memory unless MAP_FIXED is set,
    // in which case the caller asks to replace that range on purpose.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, offset) };
    if p == libc::MAP_FAILED {
        return Err(os_err(&format!(
            "mmap({addr:#x}, {len:#x}, prot {prot:#x}, flags {flags:#x})"
        )));
    }
    Ok(p as usize)
}

/// Maps `len` bytes of private anonymous memory anywhere.
pub fn mmap_anon(len: usize, prot: i32) -> TestResult<usize> {
    mmap(0, len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
}

/// Maps private anonymous memory exactly at `addr`, failing if anything is
/// already mapped there (`MAP_FIXED_NOREPLACE`). `extra_flags` are or-ed in.
pub fn mmap_anon_at(addr: usize, len: usize, prot: i32, extra_flags: i32) -> TestResult<usize> {
    let got = mmap(
        addr,
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | extra_flags,
        -1,
        0,
    )?;
    if got != addr {
        return Err(format!("mmap at {addr:#x} returned {got:#x}"));
    }
    Ok(got)
}

/// `munmap(addr, len)`.
pub fn munmap(addr: usize, len: usize) -> TestResult {
    // SAFETY: unmapping is memory-safe for the process as long as no Rust
    // reference points into the range; callers only unmap their own raw
    // test mappings.
    if unsafe { libc::munmap(addr as *mut libc::c_void, len) } != 0 {
        return Err(os_err(&format!("munmap({addr:#x}, {len:#x})")));
    }
    Ok(())
}

/// `mprotect(addr, len, prot)`.
pub fn mprotect(addr: usize, len: usize, prot: i32) -> TestResult {
    // SAFETY: changing protection of the caller's own test mapping.
    if unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) } != 0 {
        return Err(os_err(&format!("mprotect({addr:#x}, {len:#x}, {prot:#x})")));
    }
    Ok(())
}

/// Reserves `len` bytes of address space as an inaccessible
/// (`PROT_NONE`, `MAP_NORESERVE`) private mapping and returns its address.
/// Parts of it can later be replaced with `MAP_FIXED` mappings or unmapped.
pub fn reserve(len: usize) -> TestResult<usize> {
    mmap(
        0,
        len,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    )
}

/// Finds a free area of `len` bytes (reserve, then unmap). The area stays
/// free only until the next mapping is created.
pub fn find_free_area(len: usize) -> TestResult<usize> {
    let addr = reserve(len)?;
    munmap(addr, len)?;
    Ok(addr)
}

/// Maps `len` bytes of private anonymous memory with `prot`, surrounded by
/// one inaccessible guard page on each side, so that the VMA can never be
/// merged with a neighbour: its maps entry is exactly `[addr, addr + len)`.
pub fn mmap_guarded(len: usize, prot: i32) -> TestResult<usize> {
    let ps = page_size();
    let base = reserve(len + 2 * ps)?;
    let addr = base + ps;
    let got = mmap(
        addr,
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
        -1,
        0,
    )?;
    if got != addr {
        return Err(format!("mmap at {addr:#x} returned {got:#x}"));
    }
    Ok(addr)
}

/// Like [`mmap_guarded`] for any kind of mapping: `mmap(len, prot, flags
/// | MAP_FIXED, fd, offset)` between two inaccessible guard pages.
pub fn mmap_guarded_with(
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    offset: i64,
) -> TestResult<usize> {
    let ps = page_size();
    let base = reserve(len + 2 * ps)?;
    let addr = base + ps;
    let got = mmap(addr, len, prot, flags | libc::MAP_FIXED, fd, offset)?;
    if got != addr {
        return Err(format!("mmap at {addr:#x} returned {got:#x}"));
    }
    Ok(addr)
}

/// Maps an inaccessible placeholder (`PROT_NONE`, `MAP_NORESERVE`) exactly
/// at `addr`, failing if anything is mapped there: it keeps a hole of a
/// test's layout from being filled by unrelated mappings.
pub fn placeholder_at(addr: usize, len: usize) -> TestResult {
    mmap_anon_at(addr, len, libc::PROT_NONE, libc::MAP_NORESERVE).map(|_| ())
}

/// `mremap(old, old_len, new_len, flags, new)` (lengths in bytes); returns
/// the new address.
pub fn mremap(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: i32,
    new: usize,
) -> TestResult<usize> {
    // SAFETY: callers remap their own raw test mappings; no Rust reference
    // points into them across this call.
    let p = unsafe {
        libc::mremap(
            old as *mut libc::c_void,
            old_len,
            new_len,
            flags,
            new as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err(&format!(
            "mremap({old:#x}, {old_len:#x} -> {new_len:#x}, flags {flags:#x}, {new:#x})"
        )));
    }
    Ok(p as usize)
}

/// `madvise(addr, len, advice)`.
pub fn madvise(addr: usize, len: usize, advice: i32) -> TestResult {
    // SAFETY: advising on the caller's own raw test mapping; MADV_DONTNEED
    // and the like only change its contents, which no Rust reference holds.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
        return Err(os_err(&format!("madvise({addr:#x}, {len:#x}, {advice})")));
    }
    Ok(())
}

/// A byte slice over raw memory.
///
/// # Safety
///
/// `[addr, addr + len)` must be mapped readable for the lifetime of the
/// slice and not be written through other pointers meanwhile.
pub unsafe fn slice<'a>(addr: usize, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
}

/// A mutable byte slice over raw memory.
///
/// # Safety
///
/// `[addr, addr + len)` must be mapped readable and writable for the
/// lifetime of the slice and not be accessed through other pointers
/// meanwhile.
pub unsafe fn slice_mut<'a>(addr: usize, len: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Reads one byte with a volatile load (e.g. to fault a page in without
/// writing to it).
///
/// # Safety
///
/// `addr` must be mapped readable.
pub unsafe fn read_byte(addr: usize) -> u8 {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

/// Writes one byte with a volatile store.
///
/// # Safety
///
/// `addr` must be mapped writable and not aliased by a live Rust reference.
pub unsafe fn write_byte(addr: usize, val: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::write_volatile(addr as *mut u8, val) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps;

    #[test]
    fn fixed_noreplace() {
        let ps = page_size();
        // The other tests run on threads of this process and map memory
        // too: an area found free may be taken before we map it (then the
        // first map fails with EEXIST, rightly). Setup, not the behaviour
        // tested: look for another free area then.
        let a = (0..100)
            .find_map(|_| {
                let a = find_free_area(4 * ps).ok()?;
                mmap_anon_at(a + ps, ps, libc::PROT_READ, 0).ok().map(|_| a)
            })
            .expect("no free area stayed free long enough to map it");
        assert!(mmap_anon_at(a + ps, ps, libc::PROT_READ, 0).is_err());
        maps::expect_vma(a + ps, a + 2 * ps, "r--p").unwrap();
        munmap(a + ps, ps).unwrap();
    }
}
