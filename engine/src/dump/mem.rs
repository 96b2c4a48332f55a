//! Memory: the VMA list, and the pages worth storing.
//!
//! Stored: pages present in the task's page tables that restore could not
//! get back otherwise: anonymous private pages (not the shared zero page),
//! copy-on-written pages of private file maps, and shared anonymous pages.
//! Never-touched pages, zero-page mappings and file pages are left out.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread;

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{madv, Mm, Pagemap, PagemapEntry, Vma, VmaKind};
use crate::image::{ImageDir, Kind, PagesWriter};
use crate::proc;
use crate::proc::maps::Vma as ProcVma;
use crate::proc::pagemap::{PageEntry, PagemapReader};
use crate::sys::syscalls::{iov, process_vm_read, IOV_MAX};

pub(crate) const PAGE: u64 = 4096;
/// Pagemap entries read per call.
const SCAN_PAGES: usize = 64 * 1024;
/// Page data copied per process_vm_readv batch.
const BUF_BYTES: usize = 8 << 20;
/// Buffers in flight between the reader and the writer thread.
const BUFFERS: usize = 3;

/// How restore must recreate this VMA, or why it cannot.
pub(crate) fn classify(v: &ProcVma) -> std::result::Result<VmaKind, String> {
    let kind = match v.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        p if p.starts_with("/SYSV") => return Err(format!("SysV shared memory at {:#x}", v.start)),
        p if v.shared && (p.starts_with("/dev/zero (deleted)") || p.starts_with("[anon_shmem")) => {
            VmaKind::AnonShared
        }
        p if p.ends_with(" (deleted)") => {
            return Err(format!("mapping of unlinked file {p} at {:#x}", v.start))
        }
        p if v.inode == 0
            && (p.is_empty() || p == "[heap]" || p == "[stack]" || p.starts_with("[anon:")) =>
        {
            if v.shared {
                VmaKind::AnonShared
            } else {
                VmaKind::AnonPrivate
            }
        }
        p if p.starts_with('[') => return Err(format!("special mapping {p} at {:#x}", v.start)),
        p if p.starts_with('/') && v.inode != 0 => {
            if v.shared {
                VmaKind::FileShared
            } else {
                VmaKind::FilePrivate
            }
        }
        p => return Err(format!("mapping {p:?} at {:#x}", v.start)),
    };
    Ok(kind)
}

pub(crate) fn check_vmas(pid: pid_t, vmas: &[ProcVma]) -> Result<()> {
    for v in vmas {
        classify(v).map_err(|what| Error::unsupported(pid, what))?;
        if v.vm_flags.uffd_missing() || v.vm_flags.uffd_wp() {
            return Err(Error::unsupported(
                pid,
                format!("userfaultfd-registered memory at {:#x}", v.start),
            ));
        }
    }
    Ok(())
}

fn madvise_bits(v: &ProcVma) -> u32 {
    let f = &v.vm_flags;
    let mut m = 0;
    for (on, bit) in [
        (f.dont_dump(), madv::DONTDUMP),
        (f.wipe_on_fork(), madv::WIPEONFORK),
        (f.dont_copy(), madv::DONTFORK),
        (f.huge_page(), madv::HUGEPAGE),
        (f.no_huge_page(), madv::NOHUGEPAGE),
        (f.mergeable(), madv::MERGEABLE),
    ] {
        if on {
            m |= bit;
        }
    }
    m
}

fn to_image_vma(v: &ProcVma, kind: VmaKind) -> Vma {
    let mut prot = 0;
    if v.read {
        prot |= libc::PROT_READ as u32;
    }
    if v.write {
        prot |= libc::PROT_WRITE as u32;
    }
    if v.exec {
        prot |= libc::PROT_EXEC as u32;
    }
    let file = matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared);
    Vma {
        start: v.start,
        end: v.end,
        prot,
        kind: kind as i32,
        growsdown: v.vm_flags.growsdown(),
        path: if file { v.path.clone() } else { String::new() },
        pgoff: if file { v.offset } else { 0 },
        dev: libc::makedev(v.dev_major, v.dev_minor),
        inode: v.inode,
        may_write: v.vm_flags.may_write(),
        madvise: madvise_bits(v),
    }
}

/// Whether a page of a VMA of this kind must be stored.
fn wanted(kind: VmaKind, e: PageEntry, zero_pfn: u64) -> bool {
    match kind {
        VmaKind::AnonPrivate => e.swapped() || (e.present() && e.pfn() != zero_pfn),
        // Only copy-on-written (anonymous) pages; file pages come from the file.
        VmaKind::FilePrivate => e.swapped() || (e.present() && !e.file_or_shared_anon()),
        VmaKind::AnonShared => e.present() || e.swapped(),
        _ => false,
    }
}

pub(crate) struct MemStats {
    pub pages: u64,
}

/// A zeroed, page-aligned buffer. process_vm_readv copies from
/// page-aligned sources; with a destination a few bytes off a page
/// boundary (where a plain Vec lands) the kernel's copy runs about three
/// times slower on this machine's CPUs.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, PAGE as usize)
            .unwrap_or_else(|_| std::alloc::Layout::new::<u8>())
    }

    fn new(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (BUF_BYTES).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: layout.size(),
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points at len initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Writes filled buffers to the pages file on its own thread, so that
/// reading the task (process_vm_readv) and writing the image overlap.
struct PageSink {
    filled: Option<mpsc::SyncSender<(AlignedBuf, usize)>>,
    free: mpsc::Receiver<AlignedBuf>,
    writer: Option<thread::JoinHandle<Result<PagesWriter>>>,
}

impl PageSink {
    fn start(mut out: PagesWriter) -> PageSink {
        let (filled_tx, filled_rx) = mpsc::sync_channel::<(AlignedBuf, usize)>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(BUFFERS);
        for _ in 0..BUFFERS - 1 {
            let _ = free_tx.send(AlignedBuf::new(BUF_BYTES));
        }
        let writer = thread::spawn(move || {
            for (buf, len) in filled_rx {
                out.write(&buf[..len])?;
                // The reader may be gone after an error; then nobody needs it.
                let _ = free_tx.send(buf);
            }
            Ok(out)
        });
        PageSink {
            filled: Some(filled_tx),
            free: free_rx,
            writer: Some(writer),
        }
    }

    /// Hands the filled buffer to the writer, putting an empty one in its place.
    fn swap(&mut self, buf: &mut AlignedBuf, len: usize) -> Result<()> {
        let Ok(empty) = self.free.recv() else {
            return Err(self.join_error());
        };
        let full = std::mem::replace(buf, empty);
        match self.filled.as_ref().map(|tx| tx.send((full, len))) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.join_error()),
        }
    }

    fn join_error(&mut self) -> Error {
        self.filled = None;
        match self.writer.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e,
            _ => Error::Other("the page writer thread stopped".into()),
        }
    }

    fn finish(mut self) -> Result<u64> {
        self.filled = None;
        match self.writer.take().map(|h| h.join()) {
            Some(Ok(Ok(out))) => Ok(out.finish()?),
            Some(Ok(Err(e))) => Err(e),
            _ => Err(Error::Other("the page writer thread panicked".into())),
        }
    }
}

/// Copies page runs out of the task into buffers for the sink.
struct PageCopier<'a> {
    pid: pid_t,
    mem: &'a File,
    sink: PageSink,
    buf: AlignedBuf,
    used: usize,
    remote: Vec<libc::iovec>,
}

impl PageCopier<'_> {
    fn add(&mut self, mut addr: u64, mut len: u64, readable: bool) -> Result<()> {
        while len > 0 {
            let room = (self.buf.len() - self.used) as u64;
            if room == 0 || self.remote.len() == IOV_MAX {
                self.flush()?;
                continue;
            }
            let n = len.min(room);
            if readable {
                self.remote.push(iov(addr as _, n as usize));
            } else {
                // PROT_NONE and other unreadable pages: /proc/PID/mem reads
                // with FOLL_FORCE, which process_vm_readv does not.
                self.flush_remote()?;
                let dst = &mut self.buf[self.used..self.used + n as usize];
                self.mem.read_exact_at(dst, addr).map_err(|e| {
                    Error::io(
                        "reading memory through",
                        format!("/proc/{}/mem at {addr:#x}", self.pid),
                        e,
                    )
                })?;
            }
            self.used += n as usize;
            addr += n;
            len -= n;
        }
        Ok(())
    }

    /// Reads the queued remote ranges into the tail of the buffer.
    fn flush_remote(&mut self) -> Result<()> {
        if self.remote.is_empty() {
            return Ok(());
        }
        let total: usize = self.remote.iter().map(|v| v.iov_len).sum();
        let start = self.used - total;
        let local = [iov(self.buf[start..].as_mut_ptr() as _, total)];
        let n = process_vm_read(self.pid, &local, &self.remote)
            .map_err(|e| Error::sys("process_vm_readv", self.pid, e))?;
        if n != total {
            return Err(Error::task(
                self.pid,
                format!("short process_vm_readv: {n} of {total} bytes"),
            ));
        }
        self.remote.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_remote()?;
        if self.used > 0 {
            self.sink.swap(&mut self.buf, self.used)?;
            self.used = 0;
        }
        Ok(())
    }
}

/// Dumps the memory layout and contents of `pid`.
pub(crate) fn dump(
    pid: pid_t,
    vmas: &[ProcVma],
    images: &ImageDir,
    brk: u64,
) -> Result<(Mm, Pagemap, MemStats)> {
    let stat = proc::stat::read_stat(pid)?;
    let auxv_bytes = proc::auxv::read_auxv(pid)?;
    let auxv = auxv_bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let exe_path = proc::read_link(format!("/proc/{pid}/exe"))?;
    if exe_path.ends_with(" (deleted)") {
        return Err(Error::unsupported(
            pid,
            format!("executable was removed: {exe_path}"),
        ));
    }
    let mut mm = Mm {
        vmas: Vec::with_capacity(vmas.len()),
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv,
        exe_path,
    };

    let pages_name = Kind::Pages.file_name(Some(pid));
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| Error::io("opening", &mem_path, e))?;
    let mut copier = PageCopier {
        pid,
        mem: &mem,
        sink: PageSink::start(PagesWriter::create(&images.path.join(&pages_name))?),
        buf: AlignedBuf::new(BUF_BYTES),
        used: 0,
        remote: Vec::with_capacity(IOV_MAX),
    };
    let mut pagemap = Pagemap {
        pages_file: pages_name,
        entries: Vec::new(),
    };
    let mut reader = PagemapReader::open(pid)?;
    let zero_pfn = proc::pagemap::zero_page_pfn()?;
    let mut entries = Vec::with_capacity(SCAN_PAGES);

    for v in vmas {
        let kind = classify(v).map_err(|what| Error::unsupported(pid, what))?;
        mm.vmas.push(to_image_vma(v, kind));
        // Runs never cross a VMA boundary: restore checks each lies in one.
        let first_of_vma = pagemap.entries.len();
        if !matches!(
            kind,
            VmaKind::AnonPrivate | VmaKind::FilePrivate | VmaKind::AnonShared
        ) {
            continue;
        }
        let mut addr = v.start;
        while addr < v.end {
            let n = (((v.end - addr) / PAGE) as usize).min(SCAN_PAGES);
            entries.clear();
            reader.read(addr, n, &mut entries)?;
            let mut i = 0;
            while i < entries.len() {
                if !wanted(kind, PageEntry(entries[i]), zero_pfn) {
                    i += 1;
                    continue;
                }
                let run_start = i;
                while i < entries.len() && wanted(kind, PageEntry(entries[i]), zero_pfn) {
                    i += 1;
                }
                let vaddr = addr + run_start as u64 * PAGE;
                let nr = (i - run_start) as u64;
                push_run(&mut pagemap.entries, first_of_vma, vaddr, nr);
                copier.add(vaddr, nr * PAGE, v.read)?;
            }
            addr += n as u64 * PAGE;
        }
    }
    copier.flush()?;
    let written = copier.sink.finish()?;
    Ok((
        mm,
        pagemap,
        MemStats {
            pages: written / PAGE,
        },
    ))
}

/// Appends a run, merging it with the previous one (at or after index
/// `floor`) when contiguous.
fn push_run(entries: &mut Vec<PagemapEntry>, floor: usize, vaddr: u64, nr_pages: u64) {
    let mergeable = entries.len() > floor;
    if let Some(last) = entries.last_mut().filter(|_| mergeable) {
        if last.vaddr + last.nr_pages * PAGE == vaddr && last.flags == 0 {
            last.nr_pages += nr_pages;
            return;
        }
    }
    entries.push(PagemapEntry {
        vaddr,
        nr_pages,
        flags: 0,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_when_contiguous() {
        let mut e = Vec::new();
        push_run(&mut e, 0, 0x1000, 2);
        push_run(&mut e, 0, 0x3000, 1);
        push_run(&mut e, 0, 0x5000, 1);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].vaddr, e[0].nr_pages), (0x1000, 3));
        // A new VMA starts a new run even when contiguous.
        push_run(&mut e, 2, 0x6000, 1);
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn stored_pages_by_kind() {
        let present = PageEntry(1 << 63 | 1234);
        let zero = PageEntry(1 << 63 | 77);
        let file_page = PageEntry(1 << 63 | 1 << 61 | 55);
        let absent = PageEntry(0);
        assert!(wanted(VmaKind::AnonPrivate, present, 77));
        assert!(!wanted(VmaKind::AnonPrivate, zero, 77));
        assert!(!wanted(VmaKind::AnonPrivate, absent, 77));
        assert!(!wanted(VmaKind::FilePrivate, file_page, 77));
        assert!(wanted(VmaKind::FilePrivate, present, 77));
        assert!(wanted(VmaKind::AnonShared, file_page, 77));
        assert!(!wanted(VmaKind::FileShared, present, 77));
    }
}
