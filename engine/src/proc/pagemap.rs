//! /proc/PID/pagemap: one u64 per virtual page (Documentation/admin-guide/mm/pagemap.rst).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{pid_path, ProcError, Result};

pub const PAGE_SIZE: u64 = 4096;

/// One pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageEntry(pub u64);

impl PageEntry {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Page is file-backed or shared anonymous (shmem).
    pub fn file_or_shared_anon(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// uffd-wp write-protected (since 5.x, needs CONFIG_PTE_MARKER_UFFD_WP
    /// to be reported for unpopulated pages).
    pub fn uffd_wp(self) -> bool {
        self.0 & (1 << 57) != 0
    }
    /// Mapped exactly once (only this process maps the page).
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Always 0 on kernels without CONFIG_MEM_SOFT_DIRTY.
    pub fn soft_dirty(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// Page frame number when present; 0 unless the reader has
    /// CAP_SYS_ADMIN.
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

/// Reads pagemap entries with pread, in large chunks.
#[derive(Debug)]
pub struct PagemapReader {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
}

/// Entries per pread: 512 KiB of entries, i.e. 256 MiB of address space.
const CHUNK_PAGES: usize = 64 * 1024;

impl PagemapReader {
    pub fn open(pid: i32) -> Result<Self> {
        let path = pid_path(pid, "pagemap");
        let file = File::open(&path).map_err(|e| ProcError::io(&path, e))?;
        Ok(PagemapReader {
            file,
            path,
            buf: Vec::new(),
        })
    }

    /// Replaces `out` with the entries of the `npages` pages starting at
    /// `start` (rounded down to a page).
    pub fn read(&mut self, start: u64, npages: usize, out: &mut Vec<u64>) -> Result<()> {
        out.clear();
        out.reserve(npages);
        let mut page = start / PAGE_SIZE;
        let mut left = npages;
        while left > 0 {
            let n = left.min(CHUNK_PAGES);
            self.buf.resize(n * 8, 0);
            let mut filled = 0;
            while filled < self.buf.len() {
                let off = page * 8 + filled as u64;
                match self.file.read_at(&mut self.buf[filled..], off) {
                    Ok(0) => {
                        return Err(ProcError::io(
                            &self.path,
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("short read at page {:#x}", page * PAGE_SIZE),
                            ),
                        ))
                    }
                    Ok(got) => filled += got,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ProcError::io(&self.path, e)),
                }
            }
            out.extend(self.buf.chunks_exact(8).map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_ne_bytes(b)
            }));
            page += n as u64;
            left -= n;
        }
        Ok(())
    }

    /// The entry of the single page holding `addr`.
    pub fn entry(&mut self, addr: u64) -> Result<PageEntry> {
        let mut out = Vec::with_capacity(1);
        self.read(addr, 1, &mut out)?;
        Ok(PageEntry(out.first().copied().unwrap_or(0)))
    }
}

/// A private anonymous mapping in this process, unmapped on drop.
#[derive(Debug)]
pub(crate) struct AnonMapping {
    pub addr: *mut u8,
    pub len: usize,
}

impl AnonMapping {
    pub(crate) fn new(len: usize) -> std::result::Result<Self, nix::errno::Errno> {
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address
        // touches no existing memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(nix::errno::Errno::last());
        }
        Ok(AnonMapping {
            addr: addr.cast(),
            len,
        })
    }

    pub(crate) fn page(&self, index: usize) -> *mut u8 {
        self.addr.wrapping_add(index * PAGE_SIZE as usize)
    }

    pub(crate) fn read_byte(&self, index: usize) -> u8 {
        assert!(index * (PAGE_SIZE as usize) < self.len);
        // SAFETY: the page lies inside our live read-write mapping.
        unsafe { std::ptr::read_volatile(self.page(index)) }
    }

    pub(crate) fn write_byte(&self, index: usize, value: u8) {
        assert!(index * (PAGE_SIZE as usize) < self.len);
        // SAFETY: the page lies inside our live read-write mapping, which
        // no Rust reference aliases.
        unsafe { std::ptr::write_volatile(self.page(index), value) }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing borrows it past drop.
        unsafe {
            libc::munmap(self.addr.cast(), self.len);
        }
    }
}

/// The pfn of the kernel's shared zero page: a read fault on untouched
/// private anonymous memory maps it. Dumpers skip pages with this pfn.
/// Needs CAP_SYS_ADMIN (otherwise pagemap hides pfns).
pub fn zero_page_pfn() -> Result<u64> {
    let map = AnonMapping::new(PAGE_SIZE as usize).map_err(|source| ProcError::Sys {
        what: "mmap of a probe page".into(),
        source,
    })?;
    let byte = map.read_byte(0);
    let entry = PagemapReader::open(std::process::id() as i32)?.entry(map.addr as u64)?;
    if byte != 0 || !entry.present() {
        return Err(ProcError::Unavailable(
            "zero page probe: page not mapped after a read".into(),
        ));
    }
    if entry.pfn() == 0 {
        return Err(ProcError::Unavailable(
            "pagemap hides pfns (need CAP_SYS_ADMIN)".into(),
        ));
    }
    Ok(entry.pfn())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bits() {
        let e = PageEntry((1 << 63) | (1 << 61) | (1 << 56) | 0x1234);
        assert!(e.present() && e.file_or_shared_anon() && e.exclusive());
        assert!(!e.swapped() && !e.soft_dirty() && !e.uffd_wp());
        assert_eq!(e.pfn(), 0x1234);
        let s = PageEntry((1 << 62) | (1 << 57) | (1 << 55));
        assert!(s.swapped() && s.uffd_wp() && s.soft_dirty() && !s.present());
    }

    #[test]
    fn reads_own_pages() {
        let map = AnonMapping::new(8 * PAGE_SIZE as usize).unwrap();
        map.write_byte(1, 7);
        map.write_byte(6, 7);
        let mut r = PagemapReader::open(std::process::id() as i32).unwrap();
        let mut out = vec![42];
        r.read(map.addr as u64, 8, &mut out).unwrap();
        assert_eq!(out.len(), 8);
        let present: Vec<bool> = out.iter().map(|&e| PageEntry(e).present()).collect();
        assert_eq!(
            present,
            [false, true, false, false, false, false, true, false]
        );
        assert!(PageEntry(out[1]).exclusive());
        assert!(!PageEntry(out[1]).file_or_shared_anon());
    }

    #[test]
    fn reads_across_chunks() {
        let mut r = PagemapReader::open(std::process::id() as i32).unwrap();
        let mut out = Vec::new();
        r.read(0, CHUNK_PAGES + 3, &mut out).unwrap();
        assert_eq!(out.len(), CHUNK_PAGES + 3);
    }

    #[test]
    fn zero_page() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let pfn = zero_page_pfn().unwrap();
        assert_ne!(pfn, 0);
        assert_eq!(zero_page_pfn().unwrap(), pfn);
    }
}
