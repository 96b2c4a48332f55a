//! Memory contents: a hash of every page, per VMA, `PROT_NONE` ones
//! included.
//!
//! Pages are read through `/proc/PID/mem`, which reads with `FOLL_FORCE`:
//! the contents of a `PROT_NONE` (or write-only) mapping are read as well
//! as any other, and must survive a restore as well (a task may
//! `mprotect` them readable later). For private anonymous VMAs (`[heap]`,
//! `[stack]`, `[anon:...]`, plain anonymous) only the pages
//! `/proc/PID/pagemap` reports present (bit 63) or swapped (bit 62) are
//! read; the others count as zero pages and are not read, since reading
//! would fault them in. Other VMAs (file-backed, shared, `[vdso]`) are read
//! whole. `[vvar]`, `[vvar_vclock]` and `[vsyscall]` are skipped: their
//! contents are the kernel's, not the task's. A guard region page
//! (`MADV_GUARD_INSTALL`, pagemap bit 58) gets the marker [`GUARD`]: a
//! restore must keep it a guard page, not turn it into a zero page.
//!
//! Each page is hashed with XXH3-64. Pages whose contents are all zero (or
//! that were not read) are not stored, so "absent" and "present but zero"
//! compare equal, as they must: a restore need not recreate zero pages.
//! Pages that `/proc/PID/mem` cannot read (e.g. past the end of a mapped
//! file) get the hash [`UNREADABLE`].
//!
//! After a lazy (post-copy) restore, pages not delivered yet are absent
//! from pagemap although the task has them: the capture is then given the
//! pages that held data before the dump ([`digest_with`]), and reads those
//! too, with `process_vm_readv` when `/proc/PID/mem` cannot (a read of a
//! page registered missing on a userfaultfd makes the kernel ask the
//! lazy-pages daemon for it, which is what the task itself would get).
//!
//! Bytes the kernel rewrites on its own are masked (zeroed) before hashing:
//! the CPU and node fields of each thread's rseq area
//! ([`crate::freeze::Rseq::kernel_written`]), which change whenever the
//! task runs on another CPU, as it may after a restore.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::unistd::Pid;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::maps::MapEntry;
use super::CaptureError;

/// Pseudo-hash of a page `/proc/PID/mem` could not read.
pub const UNREADABLE: u64 = u64::MAX;
/// Pseudo-hash of a guard region page.
pub const GUARD: u64 = u64::MAX - 1;
/// Pagemap bit: the PTE is a guard region marker (since Linux 6.15).
pub const PAGEMAP_GUARD: u64 = 1 << 58;
/// Pagemap bit: page present in RAM.
pub const PAGEMAP_PRESENT: u64 = 1 << 63;
/// Pagemap bit: page swapped out.
pub const PAGEMAP_SWAPPED: u64 = 1 << 62;
/// Pseudo-paths whose contents are not compared.
pub const SKIPPED_PATHS: &[&str] = &["[vvar]", "[vvar_vclock]", "[vsyscall]"];

/// Pages read from `/proc/PID/mem` per `pread`.
const CHUNK_PAGES: usize = 256;
/// Pagemap entries read per `pread`.
const PAGEMAP_CHUNK: usize = 4096;

/// How the pages of a VMA were selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Only present or swapped pages (private anonymous memory).
    Pagemap,
    /// The whole range.
    Whole,
}

/// The page hashes of one (normalised) VMA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmaDigest {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Perms of the VMA (for reports).
    pub perms: String,
    /// Path of the VMA (for reports).
    pub path: String,
    /// How pages were selected.
    pub source: Source,
    /// `(address, hash)` of every page that is not all zeros, by address.
    pub pages: Vec<(u64, u64)>,
    /// Hash of `pages`, for the state dump.
    pub digest: u64,
}

/// Whether the contents of this VMA are compared: all but the kernel's
/// pseudo-VMAs, unreadable ones included (read with `FOLL_FORCE`).
pub fn wants_digest(entry: &MapEntry) -> bool {
    !SKIPPED_PATHS.contains(&entry.path.as_str())
}

/// Whether only the pages pagemap reports are read.
pub fn uses_pagemap(entry: &MapEntry) -> bool {
    entry.is_private() && entry.is_anon() && entry.path != "[vdso]"
}

/// The system page size.
pub fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => usize::try_from(size).unwrap_or(4096),
        _ => 4096,
    }
}

/// Reads and hashes pages of one task.
struct PageReader {
    pid: Pid,
    mem: File,
    pagemap: File,
    page: usize,
    zero: u64,
    buf: Vec<u8>,
    masks: Vec<(u64, u64)>,
    /// Pages to read even where pagemap says absent (sorted).
    also: Vec<u64>,
}

/// Reads `buf.len()` bytes at `addr` of `pid` with `process_vm_readv`
/// (which may wait for a userfaultfd's handler to provide the pages).
fn read_remote(pid: Pid, buf: &mut [u8], addr: u64) -> bool {
    let mut done = 0usize;
    while done < buf.len() {
        let Ok(at) = usize::try_from(addr + done as u64) else {
            return false;
        };
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` covers the rest of `buf`, which we own mutably;
        // the remote iovec is only read by the kernel in the other task.
        let n = unsafe { libc::process_vm_readv(pid.as_raw(), &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// Zeroes the bytes of `buf` (read from address `addr`) that fall in one of
/// the `[start, end)` ranges of `masks`.
pub fn apply_masks(masks: &[(u64, u64)], buf: &mut [u8], addr: u64) {
    let buf_end = addr + buf.len() as u64;
    for &(start, end) in masks {
        let (from, to) = (start.max(addr), end.min(buf_end));
        if from < to {
            let (from, to) = ((from - addr) as usize, (to - addr) as usize);
            buf[from..to].fill(0);
        }
    }
}

impl PageReader {
    fn record(zero: u64, out: &mut Vec<(u64, u64)>, addr: u64, hash: u64) {
        if hash != zero {
            out.push((addr, hash));
        }
    }

    /// Hashes every page of `[start, end)`.
    fn hash_range(&mut self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
        let page = self.page;
        let mut addr = start;
        while addr < end {
            let len = usize::try_from(end - addr)
                .unwrap_or(usize::MAX)
                .min(CHUNK_PAGES * page);
            let buf = &mut self.buf[..len];
            if self.mem.read_exact_at(buf, addr).is_ok()
                || (!self.also.is_empty() && read_remote(self.pid, buf, addr))
            {
                apply_masks(&self.masks, buf, addr);
                for (i, chunk) in buf.chunks_exact(page).enumerate() {
                    Self::record(self.zero, out, addr + (i * page) as u64, xxh3_64(chunk));
                }
            } else {
                // Something in the chunk is unreadable: go page by page.
                for i in 0..len / page {
                    let at = addr + (i * page) as u64;
                    let one = &mut self.buf[..page];
                    let read = self.mem.read_exact_at(one, at).is_ok()
                        || (!self.also.is_empty() && read_remote(self.pid, one, at));
                    let hash = match read {
                        true => {
                            apply_masks(&self.masks, one, at);
                            xxh3_64(one)
                        }
                        false if self.is_guard(at) => GUARD,
                        false => UNREADABLE,
                    };
                    Self::record(self.zero, out, at, hash);
                }
            }
            addr += len as u64;
        }
    }

    /// Whether pagemap says the page at `addr` is a guard region.
    fn is_guard(&self, addr: u64) -> bool {
        let mut raw = [0u8; 8];
        let at = addr / self.page as u64 * 8;
        self.pagemap.read_exact_at(&mut raw, at).is_ok()
            && u64::from_ne_bytes(raw) & PAGEMAP_GUARD != 0
    }

    /// Hashes the present or swapped pages of `[start, end)`; guard pages
    /// get [`GUARD`].
    fn hash_pagemap(
        &mut self,
        start: u64,
        end: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> std::io::Result<()> {
        let pagemap = self.pagemap.try_clone()?;
        let page = self.page as u64;
        let total = (end - start) / page;
        let mut entries = vec![0u8; PAGEMAP_CHUNK * 8];
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(PAGEMAP_CHUNK as u64) as usize;
            let bytes = &mut entries[..n * 8];
            pagemap.read_exact_at(bytes, (start / page + done) * 8)?;
            let entries: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|b| {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(b);
                    u64::from_ne_bytes(raw)
                })
                .collect();
            let first = start + done * page;
            let present: Vec<bool> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
                        || (!self.also.is_empty()
                            && self.also.binary_search(&(first + i as u64 * page)).is_ok())
                })
                .collect();
            let mut i = 0;
            while i < n {
                if !present[i] {
                    if entries[i] & PAGEMAP_GUARD != 0 {
                        out.push((start + (done + i as u64) * page, GUARD));
                    }
                    i += 1;
                    continue;
                }
                let run = i;
                while i < n && present[i] {
                    i += 1;
                }
                let from = start + (done + run as u64) * page;
                let to = start + (done + i as u64) * page;
                self.hash_range(from, to, out);
            }
            done += n as u64;
        }
        Ok(())
    }
}

/// Hashes the pages of every VMA of `maps` that [`wants_digest`], with the
/// `[start, end)` byte ranges of `masks` zeroed first.
pub fn digest(
    pid: Pid,
    maps: &[MapEntry],
    masks: &[(u64, u64)],
) -> Result<Vec<VmaDigest>, CaptureError> {
    digest_with(pid, maps, masks, Vec::new())
}

/// [`digest`], also reading the pages at the addresses of `also` where
/// pagemap says absent (for a lazily restored task: the non-zero pages of
/// the capture before the dump).
pub fn digest_with(
    pid: Pid,
    maps: &[MapEntry],
    masks: &[(u64, u64)],
    mut also: Vec<u64>,
) -> Result<Vec<VmaDigest>, CaptureError> {
    also.sort_unstable();
    also.dedup();
    let mem_path = format!("/proc/{pid}/mem");
    let pagemap_path = format!("/proc/{pid}/pagemap");
    let mem = File::open(&mem_path).map_err(|e| CaptureError::io(&mem_path, e))?;
    let pagemap = File::open(&pagemap_path).map_err(|e| CaptureError::io(&pagemap_path, e))?;
    let page = page_size();
    let mut reader = PageReader {
        pid,
        mem,
        pagemap,
        page,
        zero: xxh3_64(&vec![0u8; page]),
        buf: vec![0u8; CHUNK_PAGES * page],
        masks: masks.to_vec(),
        also,
    };
    let mut out = Vec::new();
    for entry in maps.iter().filter(|e| wants_digest(e)) {
        let mut pages = Vec::new();
        let source = if uses_pagemap(entry) {
            reader
                .hash_pagemap(entry.start, entry.end, &mut pages)
                .map_err(|e| CaptureError::io(&pagemap_path, e))?;
            Source::Pagemap
        } else {
            reader.hash_range(entry.start, entry.end, &mut pages);
            Source::Whole
        };
        let mut hasher = Xxh3::new();
        for (addr, hash) in &pages {
            hasher.update(&addr.to_le_bytes());
            hasher.update(&hash.to_le_bytes());
        }
        out.push(VmaDigest {
            start: entry.start,
            end: entry.end,
            perms: entry.perms.clone(),
            path: entry.path.clone(),
            source,
            pages,
            digest: hasher.digest(),
        });
    }
    Ok(out)
}

/// How two page lists of the same VMA differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageDiff {
    /// Number of pages that differ.
    pub count: usize,
    /// The first differing page, with its hash before and after (`None`:
    /// zero page).
    pub first: (u64, Option<u64>, Option<u64>),
}

/// Compares two sorted `(address, hash)` lists; `None` if equal.
pub fn diff_pages(before: &[(u64, u64)], after: &[(u64, u64)]) -> Option<PageDiff> {
    let (mut i, mut j) = (0, 0);
    let mut count = 0;
    let mut first = None;
    let mut note = |addr, b, a| {
        count += 1;
        if first.is_none() {
            first = Some((addr, b, a));
        }
    };
    while i < before.len() || j < after.len() {
        match (before.get(i), after.get(j)) {
            (Some(&(ab, hb)), Some(&(aa, ha))) if ab == aa => {
                if hb != ha {
                    note(ab, Some(hb), Some(ha));
                }
                i += 1;
                j += 1;
            }
            (Some(&(ab, hb)), Some(&(aa, _))) if ab < aa => {
                note(ab, Some(hb), None);
                i += 1;
            }
            (Some(&(ab, hb)), None) => {
                note(ab, Some(hb), None);
                i += 1;
            }
            (_, Some(&(aa, ha))) => {
                note(aa, None, Some(ha));
                j += 1;
            }
            (None, None) => break,
        }
    }
    first.map(|first| PageDiff { count, first })
}

/// "zero page", "unreadable", "guard page" or "data (hash ...)".
pub fn describe_page(hash: Option<u64>) -> String {
    match hash {
        None => "zero page".to_string(),
        Some(UNREADABLE) => "unreadable".to_string(),
        Some(GUARD) => "guard page".to_string(),
        Some(h) => format!("data {h:016x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lists_have_no_diff() {
        let pages = [(0x1000, 1), (0x3000, 2)];
        assert_eq!(diff_pages(&pages, &pages), None);
        assert_eq!(diff_pages(&[], &[]), None);
    }

    #[test]
    fn finds_first_difference_and_counts() {
        let before = [(0x1000, 1), (0x2000, 2), (0x5000, 5)];
        let after = [(0x1000, 1), (0x2000, 9), (0x4000, 4)];
        assert_eq!(
            diff_pages(&before, &after),
            Some(PageDiff {
                count: 3,
                first: (0x2000, Some(2), Some(9))
            })
        );
        // A page only present after: before it was a zero page.
        assert_eq!(
            diff_pages(&[], &[(0x7000, 3)]),
            Some(PageDiff {
                count: 1,
                first: (0x7000, None, Some(3))
            })
        );
        assert_eq!(
            diff_pages(&[(0x7000, 3)], &[]),
            Some(PageDiff {
                count: 1,
                first: (0x7000, Some(3), None)
            })
        );
    }

    #[test]
    fn digests_own_memory() {
        let page = page_size();
        // A private anonymous mapping with two touched pages, one of them
        // left zero, and an untouched one.
        let len = 3 * page;
        let mut buf = vec![0u8; len + page];
        let offset = buf.as_ptr().align_offset(page);
        let region = &mut buf[offset..offset + len];
        region[0] = 0xAA;
        region[page] = 0;
        let start = region.as_ptr() as u64;
        let entry = MapEntry {
            start,
            end: start + len as u64,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: String::new(),
        };
        let pid = nix::unistd::getpid();
        let digests = digest(pid, std::slice::from_ref(&entry), &[]).expect("digest");
        assert_eq!(digests.len(), 1);
        let d = &digests[0];
        assert_eq!(d.source, Source::Pagemap);
        // The first page holds 0xAA: stored. The others are zero: not stored
        // (whether or not they are present).
        assert_eq!(d.pages.len(), 1, "{:?}", d.pages);
        assert_eq!(d.pages[0].0, start);
        assert_eq!(d.pages[0].1, xxh3_64(&region[..page]));

        // Read whole: same result.
        let mut shared = entry.clone();
        shared.perms = "rw-s".into();
        shared.inode = 1;
        let whole = digest(pid, std::slice::from_ref(&shared), &[]).expect("digest");
        assert_eq!(whole[0].source, Source::Whole);
        assert_eq!(whole[0].pages, d.pages);
        assert_eq!(whole[0].digest, d.digest);

        // Masking the only non-zero byte makes every page zero.
        let masked =
            digest(pid, std::slice::from_ref(&entry), &[(start, start + 1)]).expect("digest");
        assert!(masked[0].pages.is_empty(), "{:?}", masked[0].pages);
    }

    /// A private anonymous mapping of `pages` pages of this process,
    /// unmapped on drop.
    struct Mapping {
        addr: *mut libc::c_void,
        len: usize,
    }

    impl Mapping {
        fn new(pages: usize) -> Mapping {
            let len = pages * page_size();
            // SAFETY: a fresh anonymous mapping; no existing memory is touched.
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
            assert_ne!(addr, libc::MAP_FAILED, "mmap");
            Mapping { addr, len }
        }

        fn start(&self) -> u64 {
            self.addr as u64
        }

        fn entry(&self, perms: &str) -> MapEntry {
            MapEntry {
                start: self.start(),
                end: self.start() + self.len as u64,
                perms: perms.into(),
                offset: 0,
                dev: "00:00".into(),
                inode: 0,
                path: String::new(),
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: our own mapping, no longer referenced.
            unsafe { libc::munmap(self.addr, self.len) };
        }
    }

    #[test]
    fn prot_none_contents_are_read() {
        let page = page_size();
        let m = Mapping::new(2);
        // SAFETY: the mapping is ours, read-write, 2 pages long.
        unsafe { std::ptr::write_bytes(m.addr.cast::<u8>(), 0x5a, page) };
        // SAFETY: changing the protection of our own mapping.
        assert_eq!(unsafe { libc::mprotect(m.addr, m.len, libc::PROT_NONE) }, 0);
        let pid = nix::unistd::getpid();
        let d = digest(pid, &[m.entry("---p")], &[]).expect("digest");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].pages, vec![(m.start(), xxh3_64(&vec![0x5a; page]))]);
    }

    #[test]
    fn guard_pages_are_marked() {
        const MADV_GUARD_INSTALL: libc::c_int = 102;
        let page = page_size();
        let m = Mapping::new(3);
        // SAFETY: the mapping is ours, read-write, 3 pages long.
        unsafe { std::ptr::write_bytes(m.addr.cast::<u8>(), 1, 3 * page) };
        // SAFETY: installs a guard marker on the middle page of our own
        // mapping (its contents are dropped); nothing references it.
        let rc = unsafe {
            libc::madvise(
                m.addr.cast::<u8>().add(page).cast(),
                page,
                MADV_GUARD_INSTALL,
            )
        };
        assert_eq!(
            rc,
            0,
            "MADV_GUARD_INSTALL: {}",
            std::io::Error::last_os_error()
        );
        let pid = nix::unistd::getpid();
        let d = digest(pid, &[m.entry("rw-p")], &[]).expect("digest");
        let ones = xxh3_64(&vec![1u8; page]);
        assert_eq!(
            d[0].pages,
            vec![
                (m.start(), ones),
                (m.start() + page as u64, GUARD),
                (m.start() + 2 * page as u64, ones)
            ]
        );
        assert_eq!(describe_page(Some(GUARD)), "guard page");
    }

    #[test]
    fn masks_zero_only_the_overlap() {
        let mut buf = [1u8; 8];
        apply_masks(
            &[(0x0, 0x1002), (0x1006, 0x2000), (0x3000, 0x4000)],
            &mut buf,
            0x1000,
        );
        assert_eq!(buf, [0, 0, 1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn skips_kernel_pseudo_vmas() {
        let mut e = MapEntry {
            start: 0,
            end: 0x1000,
            perms: "r--p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: "[vvar]".into(),
        };
        assert!(!wants_digest(&e));
        e.path = "[vdso]".into();
        assert!(wants_digest(&e));
        assert!(!uses_pagemap(&e));
        e.path = "[stack]".into();
        assert!(uses_pagemap(&e));
        // PROT_NONE contents are compared too (read with FOLL_FORCE).
        e.perms = "---p".into();
        assert!(wants_digest(&e));
    }
}
