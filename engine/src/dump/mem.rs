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
use crate::image::chain::{run_hasher, LayerMap};
use crate::image::messages::{
    madv, Digests, Mm, Pagemap, PagemapEntry, Vma, VmaKind, PE_IN_PARENT, PE_LAZY,
};
use crate::image::Kind;
use crate::pageio::PageSink;
use crate::proc;
use crate::proc::maps::{VmFlags, Vma as ProcVma};
use crate::proc::pagemap::{PageEntry, PagemapReader};
use crate::ranges::{self, Range};
use crate::sys::syscalls::{iov, process_vm_read, IOV_MAX};
use crate::track::content::{digest, ParentDigests};
use crate::track::{DirtyTracker, Knowledge};

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
        _ if shared_object(v) => match v.shared {
            true => VmaKind::FileShared,
            false => VmaKind::FilePrivate,
        },
        p if p.starts_with("/SYSV") => {
            return Err(format!("SysV shared memory at {:#x} ({p})", v.start))
        }
        p if v.shared && (p.starts_with("/dev/zero (deleted)") || p.starts_with("[anon_shmem")) => {
            VmaKind::AnonShared
        }
        _ if unlinked_tmpfs_file(v) => match v.shared {
            true => VmaKind::FileShared,
            false => VmaKind::FilePrivate,
        },
        p if p.ends_with(" (deleted)") => {
            return Err(format!(
                "mapping of unlinked file {p} at {:#x} (unlinked files are restored on tmpfs only)",
                v.start
            ))
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

/// Whether this VMA maps a memfd (shared or private) or attaches a SysV
/// segment (shared): objects of the kernel's internal shmem mount, dumped
/// once each by `dump::shared` and restored from it. Hugetlb ones (another
/// device) are not.
pub(crate) fn shared_object(v: &ProcVma) -> bool {
    let on_shmem = crate::sys::shm::memfd_dev() == Some(libc::makedev(v.dev_major, v.dev_minor));
    let deleted = v.path.ends_with(" (deleted)");
    on_shmem
        && deleted
        && (v.path.starts_with("/memfd:") || (v.shared && v.path.starts_with("/SYSV")))
}

/// Whether this VMA maps an unlinked ("ghost") regular file on a tmpfs
/// mount (a POSIX named semaphore or shm_open object after its
/// sem_unlink/shm_unlink, say): a shmem object, stored whole once by
/// `dump::shared` and made again at its path, then unlinked, at restore.
pub(crate) fn unlinked_tmpfs_file(v: &ProcVma) -> bool {
    let dev = libc::makedev(v.dev_major, v.dev_minor);
    v.path.starts_with('/')
        && v.path.ends_with(" (deleted)")
        && v.inode != 0
        && crate::sys::shm::memfd_dev() != Some(dev)
        && crate::sys::shm::tmpfs_dev(dev)
}

/// smaps VmFlags that restore reproduces, by how it maps the VMA (rd wr
/// ex sh mr mw me ms gd ac), by madvise (dc dd wf sr rr hg nh mg), by
/// mmap flags (nr), by mlock (lo lf), by mseal (sl), by guard regions
/// (gu), or that are not the task's state (sd: the soft-dirty tracker).
/// Every other code is refused by name.
const RESTORED_VM_FLAGS: u64 = VmFlags::READ
    | VmFlags::WRITE
    | VmFlags::EXEC
    | VmFlags::SHARED
    | VmFlags::MAYREAD
    | VmFlags::MAYWRITE
    | VmFlags::MAYEXEC
    | VmFlags::MAYSHARE
    | VmFlags::GROWSDOWN
    | VmFlags::ACCOUNT
    | VmFlags::DONTCOPY
    | VmFlags::DONTDUMP
    | VmFlags::WIPEONFORK
    | VmFlags::SEQ_READ
    | VmFlags::RAND_READ
    | VmFlags::HUGEPAGE
    | VmFlags::NOHUGEPAGE
    | VmFlags::MERGEABLE
    | VmFlags::NORESERVE
    | VmFlags::LOCKED
    | VmFlags::LOCKONFAULT
    | VmFlags::SEALED
    | VmFlags::MAYBE_GUARD
    | VmFlags::SOFTDIRTY;

/// What a refused VmFlags code is, for the error message.
fn vm_flag_name(code: &str) -> &'static str {
    match code {
        "ht" => "hugetlb memory",
        "io" => "memory-mapped I/O",
        "pf" => "a raw PFN mapping",
        "mm" => "a mixed PFN/page mapping",
        "ar" => "an architecture-specific (PAT) mapping",
        "de" => "a driver mapping that must not expand",
        "dw" => "a deny-write mapping",
        "sf" => "a synchronous-fault (DAX) mapping",
        "ss" => "a shadow stack",
        "dp" => "droppable memory (MAP_DROPPABLE)",
        "um" => "userfaultfd-registered memory (missing)",
        "uw" => "userfaultfd-registered memory (write-protect)",
        "ui" => "userfaultfd-registered memory (minor)",
        "bt" | "mt" | "tg" => "an arm64 BTI/MTE mapping",
        _ => "an unknown kind of mapping",
    }
}

/// The VmFlags of `v` restore could not reproduce, by code. `our_tracker`:
/// write-protect registrations (`uw`) are the engine's own tracker's.
pub(crate) fn refused_vm_flags(v: &ProcVma, our_tracker: bool) -> Vec<String> {
    let f = &v.vm_flags;
    let allowed = RESTORED_VM_FLAGS | if our_tracker { VmFlags::UFFD_WP } else { 0 };
    let mut out: Vec<String> = f
        .codes()
        .into_iter()
        .filter(|c| VmFlags::parse(c).bits() & !allowed != 0)
        .map(str::to_string)
        .collect();
    out.extend(f.unknown().iter().cloned());
    out
}

/// Refuses VMAs restore could not recreate. `our_tracker`: the task
/// holds the uffd-wp tracker of a previous pre-dump, so write-protect
/// registrations (smaps `uw`) are ours, not the task's own. VmFlags are
/// checked when `vmas` comes from smaps (maps has none).
pub(crate) fn check_vmas(pid: pid_t, vmas: &[ProcVma], our_tracker: bool) -> Result<()> {
    for v in vmas {
        let kind = classify(v).map_err(|what| Error::unsupported(pid, what))?;
        if v.vm_flags.uffd_missing() || (v.vm_flags.uffd_wp() && !our_tracker) {
            return Err(Error::unsupported(
                pid,
                format!("userfaultfd-registered memory at {:#x}", v.start),
            ));
        }
        // The kernel's own mappings (vDSO, vvar) carry driver flags.
        if matches!(
            kind,
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
        ) {
            continue;
        }
        if let Some(code) = refused_vm_flags(v, our_tracker).first() {
            return Err(Error::unsupported(
                pid,
                format!(
                    "{} at {:#x}-{:#x} (smaps VmFlags `{code}`)",
                    vm_flag_name(code),
                    v.start,
                    v.end
                ),
            ));
        }
    }
    Ok(())
}

/// Refusals of the memory layout, for `refuse::task_state`: reads smaps,
/// so that pre-dump (which otherwise reads only maps) refuses the VmFlags
/// the final dump would refuse.
pub(crate) fn refuse_layout(pid: pid_t, our_tracker: bool) -> Result<()> {
    check_vmas(pid, &proc::maps::read_smaps(pid)?, our_tracker)
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
        (f.contains(VmFlags::SEQ_READ), madv::SEQUENTIAL),
        (f.contains(VmFlags::RAND_READ), madv::RANDOM),
        (f.contains(VmFlags::NORESERVE), madv::NORESERVE),
        (f.locked(), madv::LOCKED),
        (f.lock_on_fault(), madv::LOCKONFAULT),
        (f.contains(VmFlags::SEALED), madv::SEALED),
    ] {
        if on {
            m |= bit;
        }
    }
    m
}

/// The name a VMA was given with PR_SET_VMA_ANON_NAME, if any.
pub(crate) fn anon_name(v: &ProcVma) -> Option<&str> {
    ["[anon:", "[anon_shmem:"]
        .iter()
        .find_map(|p| v.path.strip_prefix(p))
        .and_then(|rest| rest.strip_suffix(']'))
}

/// Pagemap bit 58: the page is a guard region (6.15+).
const PM_GUARD_REGION: u64 = 1 << 58;
/// Older kernels show a guard marker only as a "swapped" PTE marker
/// (swap type 31) whose offset holds PTE_MARKER_GUARD.
fn is_guard(e: u64) -> bool {
    let swapped_marker = e & (1 << 62) != 0 && e & 0x1f == 0x1f && (e >> 5) & 4 != 0;
    e & PM_GUARD_REGION != 0 || swapped_marker
}

/// The guard regions of a VMA smaps marks `gu`, as (start, pages) pairs.
fn guard_ranges(pid: pid_t, v: &ProcVma) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    if !v.vm_flags.contains(VmFlags::MAYBE_GUARD) {
        return Ok(out);
    }
    let mut reader = PagemapReader::open(pid)?;
    let mut entries = Vec::new();
    reader.read(v.start, ((v.end - v.start) / PAGE) as usize, &mut entries)?;
    let mut run: Option<(u64, u64)> = None;
    for (i, &e) in entries.iter().enumerate() {
        let addr = v.start + i as u64 * PAGE;
        match (is_guard(e), run) {
            (true, Some((s, n))) if s + n * PAGE == addr => run = Some((s, n + 1)),
            (true, prev) => {
                if let Some((s, n)) = prev {
                    out.extend([s, n]);
                }
                run = Some((addr, 1));
            }
            (false, _) => {}
        }
    }
    if let Some((s, n)) = run {
        out.extend([s, n]);
    }
    Ok(out)
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
        // Shared anonymous memory: its offset into the shmem object, used
        // when it is restored as an object shared by several processes.
        pgoff: if file || kind == VmaKind::AnonShared {
            v.offset
        } else {
            0
        },
        dev: libc::makedev(v.dev_major, v.dev_minor),
        inode: v.inode,
        may_write: v.vm_flags.may_write(),
        madvise: madvise_bits(v),
        anon_name: anon_name(v).unwrap_or_default().to_string(),
        vm_flags: v.vm_flags.bits(),
        guards: Vec::new(),
        file_id: None,
        shared: 0,
    }
}

/// Swap types at or above this are the kernel's special entries (PTE
/// markers, migration, hwpoison), not data in a swap area: the uffd-wp
/// tracker leaves such markers on every unpopulated page it protects, and
/// pagemap reports them as swapped (type 31).
const MAX_SWAPFILES: u64 = 23;

/// A pagemap entry for a page swapped out to a swap area.
fn really_swapped(e: PageEntry) -> bool {
    e.swapped() && (e.0 & 0x1f) < MAX_SWAPFILES
}

/// Whether a page of a VMA of this kind must be stored.
fn wanted(kind: VmaKind, e: PageEntry, zero_pfn: u64) -> bool {
    let swapped = really_swapped(e);
    match kind {
        VmaKind::AnonPrivate => swapped || (e.present() && e.pfn() != zero_pfn),
        // Only copy-on-written (anonymous) pages; file pages come from the file.
        VmaKind::FilePrivate => swapped || (e.present() && !e.file_or_shared_anon()),
        VmaKind::AnonShared => e.present() || swapped,
        _ => false,
    }
}

/// Whether any swap area is active (/proc/swaps lists more than its header).
fn swap_active() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() > 1)
}

/// A zeroed, page-aligned buffer. process_vm_readv copies from
/// page-aligned sources; with a destination a few bytes off a page
/// boundary (where a plain Vec lands) the kernel's copy runs about three
/// times slower on this machine's CPUs.
///
/// It is an anonymous mapping of its own, not a heap block: the
/// allocator's aligned zeroed allocation memsets every byte (8 MiB: ~7 ms
/// of page faults and zeroing, three times per copy, inside a final
/// dump's frozen window). Fresh buffers come from a pool that
/// [`warm_buffers`] fills with populated ones before the task is frozen.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is a uniquely owned private mapping, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// Populated buffers made before a freeze, taken by `AlignedBuf::new`.
static POOL: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());

/// Makes the buffers a page copy needs before the task is frozen, each
/// populated over its first `bytes` (at most a buffer's size): faulting
/// in 24 MiB of fresh memory costs ~8-10 ms on this machine, which a
/// final dump would otherwise spend frozen, and which is wasted where no
/// process of the dump could fill a buffer (a tree of small processes:
/// each member's copy starts at a buffer's start, [`copy_bound`]).
pub(crate) fn warm_buffers(bytes: usize) {
    let bytes = bytes.min(BUF_BYTES).next_multiple_of(PAGE as usize);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    while pool.len() < BUFFERS {
        match AlignedBuf::map(BUF_BYTES) {
            Some(b) => {
                b.populate(bytes);
                pool.push(b);
            }
            None => break,
        }
    }
}

/// The most of one process's memory a page copy may take, from its
/// layout: the VMAs that can hold pages of its own (anonymous or
/// writable; not the kernel's special ones). An estimate for
/// [`warm_buffers`] only: pages of a read-only private file mapping that
/// was once written (a RELRO section) are left out, and cost a page fault
/// of the buffer each when copied.
pub(crate) fn copy_bound(vmas: &[ProcVma]) -> usize {
    vmas.iter()
        .filter(|v| !v.is_special() && (v.write || v.path.is_empty() || v.path.starts_with('[')))
        .map(|v| (v.end - v.start) as usize)
        .sum()
}

impl AlignedBuf {
    fn map(len: usize) -> Option<AlignedBuf> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing touches no existing memory; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let ptr = std::ptr::NonNull::new(raw.cast::<u8>())?;
        Some(AlignedBuf { ptr, len })
    }

    /// Faults in the first `bytes` of the buffer, as a copy would.
    fn populate(&self, bytes: usize) {
        let bytes = bytes.min(self.len);
        if bytes == 0 {
            return;
        }
        // SAFETY: the range lies in our own private mapping; populating it
        // changes no byte (fresh pages read as zero either way).
        let r =
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), bytes, libc::MADV_POPULATE_WRITE) };
        if r != 0 {
            // Before 5.14: a write per page does the same.
            for off in (0..bytes).step_by(PAGE as usize) {
                // SAFETY: off < bytes <= len, inside the mapping we own.
                unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
            }
        }
    }

    fn new(len: usize) -> AlignedBuf {
        if len == BUF_BYTES {
            if let Some(b) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                return b;
            }
        }
        Self::map(len).unwrap_or_else(|| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len, PAGE as usize)
                    .unwrap_or_else(|_| std::alloc::Layout::new::<u8>()),
            )
        })
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr maps len readable bytes we own.
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
    /// A full-size buffer goes back to the pool (unmapping 8 MiB of
    /// populated memory costs a millisecond, and a later copy can use it).
    fn drop(&mut self) {
        if self.len == BUF_BYTES {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < BUFFERS {
                pool.push(AlignedBuf {
                    ptr: self.ptr,
                    len: self.len,
                });
                return;
            }
        }
        // SAFETY: mapped in map() with this length; no slice outlives
        // self, and the pool holds no other owner of it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A stretch of a filled buffer that belongs to one pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// Index of the entry in the pagemap being built.
    entry: usize,
    /// The entry's first address: the seed of its checksum.
    vaddr: u64,
    len: usize,
}

/// The checksum of each stored pagemap entry, computed as its data goes
/// by: an entry's bytes may arrive over several buffers, always in order
/// and without another stored entry's bytes in between.
#[derive(Default)]
struct StreamedChecksums {
    current: Option<(usize, u64, xxhash_rust::xxh3::Xxh3)>,
    /// In entry order.
    done: Vec<RunSum>,
}

/// The checksum of one stored pagemap entry, and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunSum {
    /// Index of the entry in the pagemap.
    entry: usize,
    /// Bytes hashed.
    bytes: u64,
    sum: u64,
}

impl StreamedChecksums {
    fn feed(&mut self, seg: Segment, data: &[u8]) {
        match &mut self.current {
            Some((entry, bytes, h)) if *entry == seg.entry => {
                h.update(data);
                *bytes += data.len() as u64;
            }
            _ => {
                self.close();
                let mut h = run_hasher(seg.vaddr);
                h.update(data);
                self.current = Some((seg.entry, data.len() as u64, h));
            }
        }
    }

    fn close(&mut self) {
        if let Some((entry, bytes, h)) = self.current.take() {
            self.done.push(RunSum {
                entry,
                bytes,
                sum: h.digest(),
            });
        }
    }

    fn finish(mut self) -> Vec<RunSum> {
        self.close();
        self.done
    }
}

/// A filled buffer: its length and which entries its bytes belong to.
type Filled = (AlignedBuf, usize, Vec<Segment>);
/// What the writer thread hands back: the sink, and the checksums.
type WriterDone = (Box<dyn PageSink>, StreamedChecksums);

/// Writes filled buffers into the page sink (pages file or page server)
/// on its own thread, so that reading the task (process_vm_readv) and
/// writing the image overlap. The same thread checksums every stored run
/// as it writes it.
///
/// The thread starts with the second filled buffer: the first is held
/// back until then, and a copy that fills only one (most processes of a
/// tree: 8 MiB) writes it inline at the end, without a thread to start
/// and join for each of them.
struct PageWriterThread {
    /// Before the thread starts: the sink, and the first filled buffer.
    idle: Option<(Box<dyn PageSink>, Option<Filled>)>,
    filled: Option<mpsc::SyncSender<Filled>>,
    free: Option<mpsc::Receiver<AlignedBuf>>,
    writer: Option<thread::JoinHandle<Result<WriterDone>>>,
}

/// Checksums and writes one filled buffer.
fn write_filled(
    out: &mut dyn PageSink,
    sums: &mut StreamedChecksums,
    filled: Filled,
) -> Result<AlignedBuf> {
    let (buf, len, segments) = filled;
    let mut at = 0;
    for seg in segments {
        let end = (at + seg.len).min(len);
        sums.feed(seg, &buf[at..end]);
        at = end;
    }
    if at != len {
        return Err(Error::Other(format!(
            "page writer: {at} of {len} buffered bytes belong to a pagemap entry"
        )));
    }
    out.write(&buf[..len])?;
    Ok(buf)
}

impl PageWriterThread {
    fn start(out: Box<dyn PageSink>) -> PageWriterThread {
        PageWriterThread {
            idle: Some((out, None)),
            filled: None,
            free: None,
            writer: None,
        }
    }

    /// Starts the thread with the held buffer (if any) as its first work.
    fn spawn(&mut self, mut out: Box<dyn PageSink>, first: Option<Filled>) {
        let (filled_tx, filled_rx) = mpsc::sync_channel::<Filled>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(BUFFERS);
        // BUFFERS in all: the reader's, the held one's, and free ones.
        let free = BUFFERS - 1 - usize::from(first.is_some());
        for _ in 0..free {
            let _ = free_tx.send(AlignedBuf::new(BUF_BYTES));
        }
        let writer = thread::spawn(move || {
            let mut sums = StreamedChecksums::default();
            for filled in first.into_iter().chain(filled_rx) {
                let buf = write_filled(&mut *out, &mut sums, filled)?;
                // The reader may be gone after an error; then nobody needs it.
                let _ = free_tx.send(buf);
            }
            Ok((out, sums))
        });
        self.filled = Some(filled_tx);
        self.free = Some(free_rx);
        self.writer = Some(writer);
    }

    /// Hands the filled buffer to the writer, putting an empty one in its
    /// place. `segments` cover its `len` bytes, in order.
    fn swap(&mut self, buf: &mut AlignedBuf, len: usize, segments: Vec<Segment>) -> Result<()> {
        if let Some((out, held)) = self.idle.take() {
            if held.is_none() {
                let full = std::mem::replace(buf, AlignedBuf::new(BUF_BYTES));
                self.idle = Some((out, Some((full, len, segments))));
                return Ok(());
            }
            self.spawn(out, held);
        }
        let Some(Ok(empty)) = self.free.as_ref().map(|f| f.recv()) else {
            return Err(self.join_error());
        };
        let full = std::mem::replace(buf, empty);
        match self
            .filled
            .as_ref()
            .map(|tx| tx.send((full, len, segments)))
        {
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

    /// Bytes written, and the checksums of the entries they belong to.
    fn finish(mut self) -> Result<(u64, Vec<RunSum>)> {
        if let Some((mut out, held)) = self.idle.take() {
            let mut sums = StreamedChecksums::default();
            if let Some(filled) = held {
                write_filled(&mut *out, &mut sums, filled)?;
            }
            return Ok((out.finish()?, sums.finish()));
        }
        self.filled = None;
        match self.writer.take().map(|h| h.join()) {
            Some(Ok(Ok((out, sums)))) => Ok((out.finish()?, sums.finish())),
            Some(Ok(Err(e))) => Err(e),
            _ => Err(Error::Other("the page writer thread panicked".into())),
        }
    }
}

/// A run of pages to store: its data, read from the task, or a mark that
/// the parent image chain holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub vaddr: u64,
    pub pages: u64,
    pub in_parent: bool,
    pub readable: bool,
    /// Runs never merge across a VMA boundary: restore checks each lies in one.
    pub first_of_vma: bool,
    /// Content tracker: read it, and leave each page to the parent if its
    /// digest is the parent's.
    pub by_content: bool,
    /// Remote lazy dump: not copied; the pagemap marks it PE_LAZY and the
    /// source serves it later (see lazy::remote).
    pub lazy: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlanStats {
    /// Pages present in the task and worth storing.
    pub scanned: u64,
    /// Of those, unchanged since the parent image.
    pub in_parent: u64,
}

pub(crate) struct Plan {
    pub mm: Mm,
    pub runs: Vec<Run>,
    pub stats: PlanStats,
}

fn mm_header(pid: pid_t, brk: u64) -> Result<Mm> {
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
    Ok(Mm {
        vmas: Vec::new(),
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
        lock_future: 0,
        coredump_filter: coredump_filter(pid)?,
        // Read in the task (dump/task.rs), by the final dump only.
        ksm_merge_any: false,
        exe_id: None,
    })
}

fn read_proc(pid: pid_t, file: &str) -> Result<String> {
    let path = proc::pid_path(pid, file);
    crate::proc::read_small_string(&path).map_err(|e| Error::io("reading", path, e))
}

/// /proc/PID/coredump_filter (hexadecimal); absent without ELF core dumps.
fn coredump_filter(pid: pid_t) -> Result<Option<u32>> {
    if !proc::pid_path(pid, "coredump_filter").exists() {
        return Ok(None);
    }
    let text = read_proc(pid, "coredump_filter")?;
    u32::from_str_radix(text.trim(), 16)
        .map(Some)
        .map_err(|_| Error::task(pid, format!("coredump_filter reads {:?}", text.trim())))
}

/// Where the pages worth storing are in one VMA, as ranges. Uses
/// PAGEMAP_SCAN, whose answer is already in ranges (time independent of the
/// VMA's size); falls back to reading /proc/PID/pagemap page by page on
/// kernels without it.
struct PageFinder {
    pid: pid_t,
    pagemap: File,
    scan: bool,
    reader: Option<PagemapReader>,
    zero_pfn: Option<u64>,
    regions: Vec<(u64, u64, u64)>,
    entries: Vec<u64>,
    /// Without a swap area, a "swapped" page is always a marker.
    swap: bool,
}

impl PageFinder {
    fn new(pid: pid_t) -> Result<PageFinder> {
        let path = format!("/proc/{pid}/pagemap");
        let pagemap = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        Ok(PageFinder {
            pid,
            pagemap,
            scan: true,
            reader: None,
            zero_pfn: None,
            regions: Vec::new(),
            entries: Vec::new(),
            swap: swap_active(),
        })
    }

    fn wanted(&mut self, v: &ProcVma, kind: VmaKind) -> Result<Vec<Range>> {
        use crate::sys::uffd::{PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
        if self.scan {
            self.regions.clear();
            let any = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
            // Each category costs: FILE makes the kernel look at every
            // page's struct page, so it is asked only where it decides.
            let returned = any
                | match kind {
                    VmaKind::AnonPrivate => PAGE_IS_PFNZERO,
                    VmaKind::FilePrivate => PAGE_IS_FILE,
                    _ => 0,
                };
            match crate::sys::uffd::scan_regions(
                &self.pagemap,
                v.start,
                v.end,
                any,
                returned,
                &mut self.regions,
            ) {
                Ok(()) => {
                    let mut out = Vec::new();
                    let regions = std::mem::take(&mut self.regions);
                    for &(start, end, cat) in &regions {
                        if cat & PAGE_IS_PRESENT == 0 {
                            // "Swapped" covers PTE markers too: only pages
                            // really in a swap area hold data.
                            if self.swap {
                                for r in self.per_page(start, end, kind)? {
                                    ranges::push(&mut out, r);
                                }
                            }
                            continue;
                        }
                        let keep = match kind {
                            VmaKind::AnonPrivate => cat & PAGE_IS_PFNZERO == 0,
                            VmaKind::FilePrivate => cat & PAGE_IS_FILE == 0,
                            _ => true,
                        };
                        if keep {
                            ranges::push(&mut out, (start, end));
                        }
                    }
                    self.regions = regions;
                    return Ok(out);
                }
                Err(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => self.scan = false,
                Err(e) => return Err(Error::sys("PAGEMAP_SCAN", self.pid, e)),
            }
        }
        self.per_page(v.start, v.end, kind)
    }

    /// The wanted pages of [start, end), from /proc/PID/pagemap.
    fn per_page(&mut self, start: u64, end: u64, kind: VmaKind) -> Result<Vec<Range>> {
        let zero_pfn = match self.zero_pfn {
            Some(z) => z,
            None => *self.zero_pfn.insert(proc::pagemap::zero_page_pfn()?),
        };
        let reader = match self.reader.as_mut() {
            Some(r) => r,
            None => self.reader.insert(PagemapReader::open(self.pid)?),
        };
        let mut out = Vec::new();
        let mut addr = start;
        while addr < end {
            let n = (((end - addr) / PAGE) as usize).min(SCAN_PAGES);
            self.entries.clear();
            reader.read(addr, n, &mut self.entries)?;
            for (i, &e) in self.entries.iter().enumerate() {
                if wanted(kind, PageEntry(e), zero_pfn) {
                    let page = addr + i as u64 * PAGE;
                    ranges::push(&mut out, (page, page + PAGE));
                }
            }
            addr += n as u64 * PAGE;
        }
        Ok(out)
    }
}

/// The parent's stored runs within [start, end).
fn parent_ranges(parent: &LayerMap, start: u64, end: u64) -> Vec<Range> {
    let entries = &parent.pagemap.entries;
    let first = entries.partition_point(|e| e.vaddr + e.nr_pages * PAGE <= start);
    let mut out = Vec::new();
    for e in entries[first..].iter().take_while(|e| e.vaddr < end) {
        ranges::push(
            &mut out,
            (e.vaddr.max(start), (e.vaddr + e.nr_pages * PAGE).min(end)),
        );
    }
    out
}

/// The VMAs as the image records them, guard regions included (found
/// where smaps says `gu`: VMAs from maps have no VmFlags, hence none).
pub(crate) fn image_vmas(pid: pid_t, vmas: &[ProcVma]) -> Result<Vec<Vma>> {
    vmas.iter()
        .map(|v| {
            let kind = classify(v).map_err(|what| Error::unsupported(pid, what))?;
            let mut img = to_image_vma(v, kind);
            img.guards = guard_ranges(pid, v)?;
            Ok(img)
        })
        .collect()
}

/// Remote lazy dump: marks lazy the runs to read (not in the parent, not
/// compared by content) that lie in VMAs `lazy::eligible` accepts, so that
/// `copy` leaves them out, except the pages in `eager` (page-aligned
/// ranges): those the kernel touches while restore still runs (the rseq
/// area it writes at registration, ...), which must not wait for the
/// network. Returns the number of lazy pages.
pub(crate) fn mark_lazy(plan: &mut Plan, eager: &[Range]) -> u64 {
    let vmas = &plan.mm.vmas;
    let mut lazy = 0;
    let mut out = Vec::with_capacity(plan.runs.len());
    for r in plan.runs.drain(..) {
        let end = r.vaddr + r.pages * PAGE;
        let i = vmas.partition_point(|v| v.end <= r.vaddr);
        let inside = vmas.get(i).filter(|v| v.start <= r.vaddr && end <= v.end);
        if r.in_parent || r.by_content || !inside.is_some_and(crate::lazy::eligible) {
            out.push(r);
            continue;
        }
        let keep = ranges::intersect(&[(r.vaddr, end)], eager);
        let mut pieces: Vec<(Range, bool)> = keep.iter().map(|&k| (k, false)).collect();
        pieces.extend(
            ranges::subtract(&[(r.vaddr, end)], &keep)
                .into_iter()
                .map(|l| (l, true)),
        );
        pieces.sort_unstable_by_key(|p| p.0 .0);
        for (n, ((a, b), is_lazy)) in pieces.into_iter().enumerate() {
            let pages = (b - a) / PAGE;
            if is_lazy {
                lazy += pages;
            }
            out.push(Run {
                vaddr: a,
                pages,
                lazy: is_lazy,
                first_of_vma: r.first_of_vma && n == 0,
                ..r
            });
        }
    }
    plan.runs = out;
    lazy
}

/// What the tracker said about one VMA.
pub(crate) struct Known {
    knowledge: Knowledge,
    written: Vec<Range>,
}

/// The part of planning that must happen while the task is frozen: read
/// and re-arm the tracker, VMA by VMA (atomically per page with uffd-wp;
/// a final dump only reads it). [`plan_pages`] then decides, from what it
/// said: a page is left to the parent only when all of these hold: its
/// VMA was tracked since the parent (registered before, `uw` still set),
/// the tracker says it was not written, and the parent chain holds it.
/// Pages not present now are not listed at all, so they come back empty
/// even if a parent holds old data for them (MADV_DONTNEED between
/// pre-dumps). All of it is range arithmetic: the time spent here does
/// not grow with the amount of memory, only with how fragmented it is.
pub(crate) fn track(
    pid: pid_t,
    vmas: &[ProcVma],
    mut tracker: Option<&mut dyn DirtyTracker>,
) -> Result<Vec<Known>> {
    let mut out = Vec::with_capacity(vmas.len());
    for v in vmas {
        let kind = classify(v).map_err(|what| Error::unsupported(pid, what))?;
        let mut written = Vec::new();
        let knowledge = match (tracker.as_deref_mut(), holds_pages(kind)) {
            (Some(t), true) => match (kind, t.scan(v, &mut written)?) {
                // Shared memory may be written by any sharer, including a
                // child that forked, wrote and exited since: this task's
                // page-table bits never see that. Only content digests
                // are exact for it.
                (VmaKind::AnonShared, Knowledge::Written) => {
                    written.clear();
                    Knowledge::Untracked
                }
                (_, k) => k,
            },
            _ => Knowledge::Untracked,
        };
        out.push(Known { knowledge, written });
    }
    if let Some(t) = tracker {
        t.rearm()?;
    }
    Ok(out)
}

fn holds_pages(kind: VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::AnonPrivate | VmaKind::FilePrivate | VmaKind::AnonShared
    )
}

/// The pages to store and to leave to the parent, from what the tracker
/// said. A read-mode pre-dump runs this after letting the task go: a page
/// that changes after the tracker was re-armed is reported written next
/// time, so whatever this pre-dump records for it (or misses) is stored
/// again by the next dump.
pub(crate) fn plan_pages(
    pid: pid_t,
    vmas: &[ProcVma],
    brk: u64,
    parent: Option<&LayerMap>,
    known: &[Known],
) -> Result<Plan> {
    let mut mm = mm_header(pid, brk)?;
    let mut runs: Vec<Run> = Vec::new();
    let mut stats = PlanStats::default();
    let mut finder = PageFinder::new(pid)?;
    mm.vmas = image_vmas(pid, vmas)?;
    for (v, k) in vmas.iter().zip(known) {
        let kind = classify(v).map_err(|what| Error::unsupported(pid, what))?;
        if !holds_pages(kind) {
            continue;
        }
        let wanted = finder.wanted(v, kind)?;
        let in_parent =
            |p: &LayerMap| ranges::intersect(&wanted, &parent_ranges(p, v.start, v.end));
        let (clean, by_content) = match (parent, k.knowledge) {
            (Some(p), Knowledge::Written) => {
                (ranges::subtract(&in_parent(p), &k.written), Vec::new())
            }
            (Some(p), Knowledge::ByContent) => (Vec::new(), in_parent(p)),
            _ => (Vec::new(), Vec::new()),
        };
        let dirty = ranges::subtract(&ranges::subtract(&wanted, &clean), &by_content);
        stats.scanned += ranges::total(&wanted) / PAGE;
        stats.in_parent += ranges::total(&clean) / PAGE;
        let mut pieces: Vec<(Range, bool, bool)> = clean
            .iter()
            .map(|&r| (r, true, false))
            .chain(dirty.iter().map(|&r| (r, false, false)))
            .chain(by_content.iter().map(|&r| (r, false, true)))
            .collect();
        pieces.sort_unstable_by_key(|p| p.0 .0);
        for (i, ((start, end), in_parent, by_content)) in pieces.into_iter().enumerate() {
            runs.push(Run {
                vaddr: start,
                pages: (end - start) / PAGE,
                in_parent,
                readable: v.read,
                first_of_vma: i == 0,
                by_content,
                lazy: false,
            });
        }
    }
    Ok(Plan { mm, runs, stats })
}

/// One queued piece of output, in address order.
#[derive(Debug, Clone, Copy)]
struct Pending {
    vaddr: u64,
    len: u64,
    in_parent: bool,
    first_of_vma: bool,
    by_content: bool,
    lazy: bool,
}

/// Copies page runs out of the task into buffers for the sink, and builds
/// the pagemap for what it actually stored.
struct PageCopier<'a> {
    pid: pid_t,
    mem: &'a File,
    sink: PageWriterThread,
    buf: AlignedBuf,
    used: usize,
    remote: Vec<libc::iovec>,
    pending: Vec<Pending>,
    /// Pages that could not be read (tolerant mode): left out.
    failed: std::collections::HashSet<u64>,
    /// Read-mode pre-dumps run after the task was let go: regions may be
    /// gone by now, and their pages are then simply not stored.
    tolerant: bool,
    entries: Vec<PagemapEntry>,
    floor: usize,
    stored_pages: u64,
    /// Content tracker: the parent's digests, and ours being built.
    parent_digests: Option<ParentDigests<'a>>,
    digests: Option<Digests>,
    content_in_parent: u64,
}

impl PageCopier<'_> {
    fn add(&mut self, run: &Run) -> Result<()> {
        let (mut addr, mut len) = (run.vaddr, run.pages * PAGE);
        let mut first = run.first_of_vma;
        if run.in_parent || run.lazy {
            // Neither is read: the parent holds the one, the source the other.
            self.pending.push(Pending {
                vaddr: addr,
                len,
                in_parent: run.in_parent,
                first_of_vma: first,
                by_content: false,
                lazy: run.lazy && !run.in_parent,
            });
            return Ok(());
        }
        while len > 0 {
            let room = (self.buf.len() - self.used) as u64;
            if room == 0 || self.remote.len() == IOV_MAX {
                self.flush()?;
                continue;
            }
            let n = len.min(room);
            if run.readable {
                self.remote.push(iov(addr as _, n as usize));
            } else {
                // PROT_NONE and other unreadable pages: /proc/PID/mem reads
                // with FOLL_FORCE, which process_vm_readv does not.
                self.flush_remote()?;
                let at = self.used;
                self.read_mem(addr, at, n)?;
            }
            self.pending.push(Pending {
                vaddr: addr,
                len: n,
                in_parent: false,
                first_of_vma: first,
                by_content: run.by_content,
                lazy: false,
            });
            first = false;
            self.used += n as usize;
            addr += n;
            len -= n;
        }
        Ok(())
    }

    /// Reads [addr, addr+len) through /proc/PID/mem into the buffer at `at`.
    fn read_mem(&mut self, addr: u64, at: usize, len: u64) -> Result<()> {
        let dst = &mut self.buf[at..at + len as usize];
        match self.mem.read_exact_at(dst, addr) {
            Ok(()) => Ok(()),
            Err(_) if self.tolerant => {
                self.failed
                    .extend((addr..addr + len).step_by(PAGE as usize));
                Ok(())
            }
            Err(e) => Err(Error::io(
                "reading memory through",
                format!("/proc/{}/mem at {addr:#x}", self.pid),
                e,
            )),
        }
    }

    /// Reads the queued remote ranges into the tail of the buffer.
    fn flush_remote(&mut self) -> Result<()> {
        if self.remote.is_empty() {
            return Ok(());
        }
        let total: usize = self.remote.iter().map(|v| v.iov_len).sum();
        let start = self.used - total;
        let local = [iov(self.buf[start..].as_mut_ptr() as _, total)];
        let got = process_vm_read(self.pid, &local, &self.remote);
        match got {
            Ok(n) if n == total => {}
            Ok(n) if !self.tolerant => {
                return Err(Error::task(
                    self.pid,
                    format!("short process_vm_readv: {n} of {total} bytes"),
                ))
            }
            Err(e) if !self.tolerant => return Err(Error::sys("process_vm_readv", self.pid, e)),
            _ => {
                // Something was unmapped meanwhile: page by page, keeping
                // what can still be read.
                let remote = std::mem::take(&mut self.remote);
                let mut at = start;
                for r in &remote {
                    for off in (0..r.iov_len).step_by(PAGE as usize) {
                        let page = r.iov_base as u64 + off as u64;
                        let local = [iov(self.buf[at..].as_mut_ptr() as _, PAGE as usize)];
                        if process_vm_read(self.pid, &local, &[iov(page as _, PAGE as usize)])
                            != Ok(PAGE as usize)
                        {
                            self.failed.insert(page);
                        }
                        at += PAGE as usize;
                    }
                }
            }
        }
        self.remote.clear();
        Ok(())
    }

    /// Records the pagemap for the queued pieces and hands the data over.
    fn flush(&mut self) -> Result<()> {
        self.flush_remote()?;
        let mut read_at = 0usize;
        let mut write_at = 0usize;
        let mut segments = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            if p.first_of_vma {
                self.floor = self.entries.len();
            }
            if p.in_parent || p.lazy {
                let flag = if p.in_parent { PE_IN_PARENT } else { PE_LAZY };
                push_run(&mut self.entries, self.floor, p.vaddr, p.len / PAGE, flag);
                continue;
            }
            if self.failed.is_empty() && self.digests.is_none() {
                // Nothing to leave out or compare: the whole piece is stored
                // (and nothing was compacted before it either).
                push_run(&mut self.entries, self.floor, p.vaddr, p.len / PAGE, 0);
                stored_segment(&mut segments, &self.entries, p.len as usize);
                read_at += p.len as usize;
                write_at += p.len as usize;
                self.stored_pages += p.len / PAGE;
                continue;
            }
            for page in (p.vaddr..p.vaddr + p.len).step_by(PAGE as usize) {
                if let (false, Some(d)) = (self.failed.contains(&page), self.digests.as_mut()) {
                    let h = digest(&self.buf[read_at..read_at + PAGE as usize]);
                    d.vaddr.push(page);
                    d.hash.push(h);
                    let unchanged = p.by_content
                        && self.parent_digests.as_ref().and_then(|pd| pd.get(page)) == Some(h);
                    if unchanged {
                        push_run(&mut self.entries, self.floor, page, 1, PE_IN_PARENT);
                        self.content_in_parent += 1;
                        read_at += PAGE as usize;
                        continue;
                    }
                }
                if !self.failed.contains(&page) {
                    if read_at != write_at {
                        self.buf
                            .copy_within(read_at..read_at + PAGE as usize, write_at);
                    }
                    push_run(&mut self.entries, self.floor, page, 1, 0);
                    stored_segment(&mut segments, &self.entries, PAGE as usize);
                    write_at += PAGE as usize;
                    self.stored_pages += 1;
                }
                read_at += PAGE as usize;
            }
        }
        if write_at > 0 {
            self.sink.swap(&mut self.buf, write_at, segments)?;
        }
        self.used = 0;
        Ok(())
    }
}

/// What `copy` stored.
pub(crate) struct Copied {
    pub pagemap: Pagemap,
    pub pages_written: u64,
    /// Pages the content tracker found unchanged and left to the parent.
    pub content_in_parent: u64,
    /// The content tracker's digests of every listed page.
    pub digests: Option<Digests>,
}

/// Copies the planned runs into `sink` (the task's pages file, or a page
/// server). With `content` (the content tracker: the parent's digests, if
/// any), every page is digested and unchanged ones are left to the parent.
pub(crate) fn copy(
    pid: pid_t,
    runs: &[Run],
    sink: Box<dyn PageSink>,
    tolerant: bool,
    content: Option<Option<&Digests>>,
) -> Result<Copied> {
    // Where the data goes: this process's own pages file, or its stretch
    // of a file it shares with other processes of its tree.
    let (pages_name, data_offset) = sink
        .placement()
        .unwrap_or_else(|| (Kind::Pages.file_name(Some(pid)), 0));
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| Error::io("opening", &mem_path, e))?;
    let mut copier = PageCopier {
        pid,
        mem: &mem,
        sink: PageWriterThread::start(sink),
        buf: AlignedBuf::new(BUF_BYTES),
        used: 0,
        remote: Vec::with_capacity(IOV_MAX),
        pending: Vec::new(),
        failed: Default::default(),
        tolerant,
        entries: Vec::new(),
        floor: 0,
        stored_pages: 0,
        parent_digests: content.flatten().map(ParentDigests::new),
        digests: content.map(|_| Digests::default()),
        content_in_parent: 0,
    };
    for r in runs {
        copier.add(r)?;
    }
    copier.flush()?;
    let (written, sums) = copier.sink.finish()?;
    if written != copier.stored_pages * PAGE {
        return Err(Error::task(
            pid,
            format!(
                "wrote {written} bytes of page data for {} pages",
                copier.stored_pages
            ),
        ));
    }
    set_checksums(pid, &mut copier.entries, &sums)?;
    Ok(Copied {
        pagemap: Pagemap {
            pages_file: pages_name,
            entries: copier.entries,
            layout_digest: None,
            data_offset,
        },
        pages_written: copier.stored_pages,
        content_in_parent: copier.content_in_parent,
        digests: copier.digests,
    })
}

/// Records the `len` bytes just placed in the buffer as data of the last
/// pagemap entry (a stored one, just pushed or extended).
fn stored_segment(segments: &mut Vec<Segment>, entries: &[PagemapEntry], len: usize) {
    let Some(entry) = entries.len().checked_sub(1) else {
        return;
    };
    match segments.last_mut() {
        Some(s) if s.entry == entry => s.len += len,
        _ => segments.push(Segment {
            entry,
            vaddr: entries[entry].vaddr,
            len,
        }),
    }
}

/// Puts the streamed checksums into the pagemap, checking that every
/// stored entry got one, over exactly its bytes.
fn set_checksums(pid: pid_t, entries: &mut [PagemapEntry], sums: &[RunSum]) -> Result<()> {
    let mut sums = sums.iter().peekable();
    for (i, e) in entries.iter_mut().enumerate() {
        if e.flags & (PE_IN_PARENT | PE_LAZY) != 0 {
            continue;
        }
        match sums.next() {
            Some(s) if s.entry == i && s.bytes == e.nr_pages * PAGE => {
                e.checksum = Some(s.sum);
            }
            other => {
                return Err(Error::task(
                    pid,
                    format!(
                        "page run at {:#x} ({} pages): checksummed {other:?} as it was written",
                        e.vaddr, e.nr_pages
                    ),
                ))
            }
        }
    }
    if let Some(extra) = sums.peek() {
        return Err(Error::task(
            pid,
            format!("checksum {extra:?} written for no stored page run"),
        ));
    }
    Ok(())
}

/// The pagemap of `runs` when every data run is stored whole (splice mode).
pub(crate) fn pagemap_of(pid: pid_t, runs: &[Run]) -> Pagemap {
    let mut entries = Vec::new();
    let mut floor = 0;
    for r in runs {
        if r.first_of_vma {
            floor = entries.len();
        }
        push_run(
            &mut entries,
            floor,
            r.vaddr,
            r.pages,
            match (r.in_parent, r.lazy) {
                (true, _) => PE_IN_PARENT,
                (false, true) => PE_LAZY,
                _ => 0,
            },
        );
    }
    Pagemap {
        pages_file: Kind::Pages.file_name(Some(pid)),
        entries,
        layout_digest: None,
        data_offset: 0,
    }
}

/// Appends a run, merging it with the previous one (at or after index
/// `floor`) when contiguous and alike.
fn push_run(entries: &mut Vec<PagemapEntry>, floor: usize, vaddr: u64, nr_pages: u64, flags: u32) {
    let mergeable = entries.len() > floor;
    if let Some(last) = entries.last_mut().filter(|_| mergeable) {
        if last.vaddr + last.nr_pages * PAGE == vaddr && last.flags == flags {
            last.nr_pages += nr_pages;
            return;
        }
    }
    entries.push(PagemapEntry {
        vaddr,
        nr_pages,
        flags,
        checksum: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smaps_vma(header: &str, flags: &str) -> ProcVma {
        let text = format!("{header}\nVmFlags: {flags}\n");
        proc::maps::parse_smaps(&text).expect("parse").remove(0)
    }

    #[test]
    fn copy_bound_counts_what_can_hold_pages_of_the_process() {
        let maps = "\
55d000000000-55d000001000 r--p 00000000 fd:00 10 /usr/bin/prog
55d000001000-55d000003000 r-xp 00001000 fd:00 10 /usr/bin/prog
55d000003000-55d000004000 rw-p 00003000 fd:00 10 /usr/bin/prog
55d000004000-55d000025000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-s 00000000 00:01 77 /dev/zero (deleted)
7f0000010000-7f0000020000 ---p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00102000 r--p 00000000 00:00 0 [vvar]
7ffd00102000-7ffd00104000 r-xp 00000000 00:00 0 [vdso]
";
        let vmas = proc::maps::parse_maps(maps).expect("parse");
        // The data page, heap, shared anonymous memory, the reserved
        // anonymous range and the stack; not the read-only file mappings
        // or the kernel's vvar and vdso.
        let pages = 1 + 0x21 + 0x10 + 0x10 + 0x21;
        assert_eq!(copy_bound(&vmas), pages * PAGE as usize);
    }

    #[test]
    fn vm_flags_policy_names_what_it_cannot_restore() {
        let anon = "7f0000000000-7f0000010000 rw-p 00000000 00:00 0 ";
        let restorable = smaps_vma(
            anon,
            "rd wr mr mw me ac lo lf sr dd wf dc hg mg nr sl gu sd",
        );
        assert!(refused_vm_flags(&restorable, false).is_empty());
        let v = smaps_vma(anon, "rd wr mr mw me nr wf dd dp");
        assert_eq!(refused_vm_flags(&v, false), ["dp"]);
        let v = smaps_vma(anon, "rd wr mr mw me ht");
        assert_eq!(refused_vm_flags(&v, false), ["ht"]);
        let v = smaps_vma(anon, "rd wr mr mw me uw zz");
        assert_eq!(refused_vm_flags(&v, false), ["uw", "zz"]);
        assert_eq!(refused_vm_flags(&v, true), ["zz"], "uw is our tracker's");
        let err = check_vmas(1, &[smaps_vma(anon, "rd wr ss")], false).unwrap_err();
        assert!(err.to_string().contains("shadow stack"), "{err}");
        // The kernel's own mappings carry driver flags and are not refused.
        let vdso = smaps_vma(
            "7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]",
            "rd ex mr mw me de sd",
        );
        assert!(check_vmas(1, &[vdso], false).is_ok());
    }

    #[test]
    fn madvise_bits_and_names_come_from_smaps() {
        let v = smaps_vma(
            "7f0000000000-7f0000010000 rw-p 00000000 00:00 0 [anon:my buf]",
            "rd wr mr mw me sr nr lo lf sl",
        );
        let m = madvise_bits(&v);
        for bit in [
            madv::SEQUENTIAL,
            madv::NORESERVE,
            madv::LOCKED,
            madv::LOCKONFAULT,
            madv::SEALED,
        ] {
            assert_ne!(m & bit, 0, "bit {bit:#x}");
        }
        assert_eq!(m & (madv::RANDOM | madv::DONTDUMP), 0);
        assert_eq!(anon_name(&v), Some("my buf"));
        let shm = smaps_vma(
            "7f0000000000-7f0000010000 rw-s 00000000 00:01 1234 [anon_shmem:ring]",
            "rd wr sh mr mw me ms",
        );
        assert_eq!(anon_name(&shm), Some("ring"));
        let plain = smaps_vma(
            "7f0000000000-7f0000010000 rw-p 00000000 00:00 0 [heap]",
            "rd wr",
        );
        assert_eq!(anon_name(&plain), None);
    }

    #[test]
    fn guard_entries_old_and_new_style() {
        assert!(is_guard(PM_GUARD_REGION | (1 << 62) | 0x9f));
        assert!(
            is_guard((1 << 62) | 0x9f),
            "marker type 31, offset PTE_MARKER_GUARD"
        );
        assert!(!is_guard((1 << 62) | 0x3f), "uffd-wp marker only");
        assert!(!is_guard(1 << 63));
    }

    #[test]
    fn runs_merge_when_contiguous() {
        let mut e = Vec::new();
        push_run(&mut e, 0, 0x1000, 2, 0);
        push_run(&mut e, 0, 0x3000, 1, 0);
        push_run(&mut e, 0, 0x5000, 1, 0);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].vaddr, e[0].nr_pages), (0x1000, 3));
        // A new VMA starts a new run even when contiguous.
        push_run(&mut e, 2, 0x6000, 1, 0);
        assert_eq!(e.len(), 3);
        // In-parent runs do not merge with stored ones.
        push_run(&mut e, 0, 0x7000, 1, PE_IN_PARENT);
        assert_eq!(e.len(), 4);
    }

    /// A small deterministic generator (xorshift64*), for test data and splits.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn fill(&mut self, buf: &mut [u8]) {
            for c in buf.chunks_mut(8) {
                let w = self.next().to_le_bytes();
                c.copy_from_slice(&w[..c.len()]);
            }
        }
    }

    /// Runs of 1..=max_pages pages with random data, at random addresses.
    fn random_runs(rng: &mut Rng, count: usize, max_pages: u64) -> Vec<(u64, Vec<u8>)> {
        let mut addr = 0x7f00_0000_0000u64;
        (0..count)
            .map(|_| {
                addr += (1 + rng.below(4)) * PAGE;
                let pages = 1 + rng.below(max_pages);
                let mut data = vec![0u8; (pages * PAGE) as usize];
                rng.fill(&mut data);
                let run = (addr, data);
                addr += pages * PAGE;
                run
            })
            .collect()
    }

    /// Cuts the concatenated runs into batches at random page boundaries
    /// (a run may span several batches, a batch several runs), as the
    /// copier's buffers do; returns each batch's segments.
    fn batches(rng: &mut Rng, runs: &[(u64, Vec<u8>)], max_batch_pages: u64) -> Vec<Vec<Segment>> {
        let mut out = Vec::new();
        let mut batch = Vec::new();
        let mut room = 1 + rng.below(max_batch_pages);
        for (entry, (vaddr, data)) in runs.iter().enumerate() {
            let mut left = data.len() as u64 / PAGE;
            while left > 0 {
                let n = left.min(room);
                batch.push(Segment {
                    entry,
                    vaddr: *vaddr,
                    len: (n * PAGE) as usize,
                });
                left -= n;
                room -= n;
                if room == 0 {
                    out.push(std::mem::take(&mut batch));
                    room = 1 + rng.below(max_batch_pages);
                }
            }
        }
        if !batch.is_empty() {
            out.push(batch);
        }
        out
    }

    #[test]
    fn streamed_checksum_equals_run_checksum_at_any_split() {
        use crate::image::chain::run_checksum;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..200 {
            let count = 1 + rng.below(6) as usize;
            let runs = random_runs(&mut rng, count, 40);
            let max_batch = 1 + rng.below(50);
            let cuts = batches(&mut rng, &runs, max_batch);
            let mut sums = StreamedChecksums::default();
            let mut at: Vec<usize> = vec![0; runs.len()];
            for seg in cuts.into_iter().flatten() {
                let data = &runs[seg.entry].1[at[seg.entry]..at[seg.entry] + seg.len];
                at[seg.entry] += seg.len;
                sums.feed(seg, data);
            }
            let got = sums.finish();
            assert_eq!(got.len(), runs.len(), "round {round}");
            for (i, ((vaddr, data), s)) in runs.iter().zip(&got).enumerate() {
                assert_eq!((s.entry, s.bytes), (i, data.len() as u64), "round {round}");
                assert_eq!(
                    s.sum,
                    run_checksum(*vaddr, data),
                    "round {round}: run {i} at {vaddr:#x}, {} pages",
                    data.len() as u64 / PAGE
                );
            }
        }
        // Every split of one 5-page run, page by page.
        let runs = random_runs(&mut rng, 1, 1);
        let (vaddr, _) = runs[0];
        let mut data = vec![0u8; 5 * PAGE as usize];
        rng.fill(&mut data);
        let want = run_checksum(vaddr, &data);
        for mask in 0u32..16 {
            let mut sums = StreamedChecksums::default();
            let mut start = 0;
            for page in 1..=5 {
                if page == 5 || mask & (1 << (page - 1)) != 0 {
                    let len = (page * PAGE) as usize - start;
                    let seg = Segment {
                        entry: 0,
                        vaddr,
                        len,
                    };
                    sums.feed(seg, &data[start..start + len]);
                    start += len;
                }
            }
            let whole = RunSum {
                entry: 0,
                bytes: 5 * PAGE,
                sum: want,
            };
            assert_eq!(sums.finish(), [whole], "cuts {mask:#06b}");
        }
    }

    #[test]
    fn page_sink_checksums_what_it_writes() {
        use crate::image::chain::run_checksum;
        use crate::image::PagesReader;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pages-1.img");
        let mut rng = Rng(0x1234_5678_9abc_def1);
        // Runs of up to 3000 pages (12 MiB) against 8 MiB buffers.
        let runs = random_runs(&mut rng, 8, 3000);
        let cuts = batches(&mut rng, &runs, BUF_BYTES as u64 / PAGE);
        let file = crate::pageio::FileSink::create(&path).expect("create pages file");
        let mut sink = PageWriterThread::start(Box::new(file));
        let mut buf = AlignedBuf::new(BUF_BYTES);
        let mut at: Vec<usize> = vec![0; runs.len()];
        for segments in cuts {
            let mut used = 0;
            for seg in &segments {
                let src = &runs[seg.entry].1[at[seg.entry]..at[seg.entry] + seg.len];
                buf[used..used + seg.len].copy_from_slice(src);
                at[seg.entry] += seg.len;
                used += seg.len;
            }
            sink.swap(&mut buf, used, segments).expect("hand over");
        }
        let (written, sums) = sink.finish().expect("finish");
        let total: usize = runs.iter().map(|r| r.1.len()).sum();
        assert_eq!(written, total as u64);
        let reader = PagesReader::open(&path).expect("open pages file");
        let mut off = 0;
        assert_eq!(sums.len(), runs.len());
        for (i, ((vaddr, data), s)) in runs.iter().zip(&sums).enumerate() {
            assert_eq!((s.entry, s.bytes), (i, data.len() as u64));
            let stored = reader.bytes(off, s.bytes).expect("run in the file");
            assert_eq!(stored, &data[..], "run {i} stored as given");
            assert_eq!(s.sum, run_checksum(*vaddr, stored), "run {i} at {vaddr:#x}");
            off += s.bytes;
        }
    }

    #[test]
    fn checksums_go_to_the_stored_entries() {
        let entry = |vaddr, nr_pages, flags| PagemapEntry {
            vaddr,
            nr_pages,
            flags,
            checksum: None,
        };
        let mut e = vec![
            entry(0x1000, 2, 0),
            entry(0x3000, 1, PE_IN_PARENT),
            entry(0x4000, 3, 0),
        ];
        let sum = |entry, bytes, sum| RunSum { entry, bytes, sum };
        set_checksums(1, &mut e, &[sum(0, 2 * PAGE, 11), sum(2, 3 * PAGE, 33)]).expect("set");
        assert_eq!(
            e.iter().map(|e| e.checksum).collect::<Vec<_>>(),
            [Some(11), None, Some(33)]
        );
        // A run hashed over the wrong length, or missing, is an error.
        assert!(set_checksums(1, &mut e, &[sum(0, PAGE, 11), sum(2, 3 * PAGE, 33)]).is_err());
        assert!(set_checksums(1, &mut e, &[sum(0, 2 * PAGE, 11)]).is_err());
        let extra = [sum(0, 2 * PAGE, 1), sum(2, 3 * PAGE, 3), sum(3, PAGE, 1)];
        assert!(set_checksums(1, &mut e, &extra).is_err());
    }

    #[test]
    fn stored_pages_by_kind() {
        let marker = PageEntry(1 << 62 | 0x3f);
        let swapped = PageEntry(1 << 62 | 0x100 | 1);
        assert!(
            !wanted(VmaKind::AnonPrivate, marker, 77),
            "uffd-wp markers hold no data"
        );
        assert!(wanted(VmaKind::AnonPrivate, swapped, 77));
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
