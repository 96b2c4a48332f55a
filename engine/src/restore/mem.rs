//! Rebuilding the address space inside the stub: clear it, move the vDSO
//! to its old place, map every VMA, fill pages, set final protections.

use std::os::unix::fs::MetadataExt;

use super::shared::SharedObjects;
use crate::error::{Error, Result};
use crate::image::chain::Source;
use crate::image::messages::{madv, Mm, Pagemap, Vma, VmaKind};
use crate::inject::{Call, Injector};
use crate::pageio::PageSource;
use crate::proc::maps::{VmFlags, Vma as ProcVma};
use crate::sys::syscalls::{iov, process_vm_write, IOV_MAX};

pub(crate) const PAGE: u64 = 4096;
const TASK_TOP: u64 = 0x7fff_ffff_f000;
const LOW: u64 = 0x1000_0000;
/// Distance kept from other mappings (stack guard gap is 256 pages).
const MARGIN: u64 = 2 << 20;

fn kind(v: &Vma) -> VmaKind {
    VmaKind::try_from(v.kind).unwrap_or(VmaKind::AnonPrivate)
}

fn special_name(k: VmaKind) -> Option<&'static str> {
    match k {
        VmaKind::Vdso => Some("[vdso]"),
        VmaKind::Vvar => Some("[vvar]"),
        VmaKind::VvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

/// A private VMA that was never writable: the kernel did not charge it
/// to the commit limit (no `ac` in smaps). Mapping it writable to fill it
/// would charge it for good, so it is mapped with its final protection
/// and its stored pages (COW pages a debugger poked) are written through
/// /proc/PID/mem, which writes past the protection.
fn unaccounted(v: &Vma) -> bool {
    v.vm_flags != 0
        && v.vm_flags & VmFlags::ACCOUNT == 0
        && v.prot & libc::PROT_WRITE as u32 == 0
        && matches!(kind(v), VmaKind::AnonPrivate | VmaKind::FilePrivate)
}

/// Checks that the memory images describe a layout restore can build.
pub(crate) fn validate(mm: &Mm, pagemap: &Pagemap) -> std::result::Result<(), String> {
    let mut prev_end = 0;
    for v in &mm.vmas {
        if VmaKind::try_from(v.kind).is_err() {
            return Err(format!("VMA {:#x}: unknown kind {}", v.start, v.kind));
        }
        if v.start % PAGE != 0 || v.end % PAGE != 0 || v.start >= v.end || v.start < prev_end {
            return Err(format!(
                "VMA {:#x}-{:#x} is misaligned, empty or overlaps the previous one",
                v.start, v.end
            ));
        }
        prev_end = v.end;
    }
    let mut vi = 0;
    for e in &pagemap.entries {
        let end = e
            .vaddr
            .checked_add(e.nr_pages.checked_mul(PAGE).ok_or("page count overflows")?)
            .ok_or("page run overflows")?;
        while vi < mm.vmas.len() && mm.vmas[vi].end <= e.vaddr {
            vi += 1;
        }
        let inside = mm.vmas.get(vi).is_some_and(|v| {
            v.start <= e.vaddr
                && end <= v.end
                && matches!(
                    kind(v),
                    VmaKind::AnonPrivate | VmaKind::AnonShared | VmaKind::FilePrivate
                )
        });
        if !inside || e.vaddr % PAGE != 0 {
            return Err(format!(
                "pages at {:#x}-{end:#x} lie outside any restorable VMA (or are out of order)",
                e.vaddr
            ));
        }
    }
    Ok(())
}

/// A free, page-aligned range of `len` bytes away from every range given
/// (which may overlap: a stub's footprint spans others).
pub(crate) fn free_area(taken: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut sorted: Vec<(u64, u64)> = taken.to_vec();
    sorted.sort();
    // Disjoint: the walk below looks at the gap under each range's start
    // down to the next range's end only.
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match ranges.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => ranges.push((start, end)),
        }
    }
    let mut hi = TASK_TOP;
    for &(start, end) in ranges.iter().rev() {
        if end + MARGIN <= hi && hi - (end + MARGIN) >= len + MARGIN {
            let addr = (hi - MARGIN - len) & !(PAGE - 1);
            if addr >= LOW {
                return Some(addr);
            }
        }
        hi = hi.min(start);
    }
    (hi >= LOW + len + MARGIN).then(|| (hi - MARGIN - len) & !(PAGE - 1))
}

/// The calls that unmap everything of the stub but its vDSO/vvar (the
/// injection gadget lives in the vDSO) and vsyscall (which cannot be
/// unmapped). One munmap per stretch between those, holes included (munmap
/// skips what is not mapped): a stub is a copy of the engine, with a
/// mapping per library, thread stack and image file it had, and one
/// injected call per mapping made clearing each member of a tree cost
/// milliseconds. The mappings inside `keep` (the scratch area a member
/// inherited and took over) stay, as the special ones do.
pub(crate) fn clear_stub_calls(stub: &[ProcVma], keep: Option<(u64, u64)>) -> Vec<Call> {
    let mut vmas: Vec<&ProcVma> = stub.iter().collect();
    vmas.sort_by_key(|v| v.start);
    let mut calls = Vec::new();
    let mut stretch: Option<(u64, u64)> = None;
    let mut unmap = |s: Option<(u64, u64)>| {
        if let Some((start, end)) = s {
            calls.push(Call::checked(
                "munmap",
                libc::SYS_munmap,
                &[start, end - start],
            ));
        }
    };
    let kept = |v: &ProcVma| keep.is_some_and(|(start, end)| v.start >= start && v.end <= end);
    for v in vmas {
        if v.path.starts_with("[v") || kept(v) {
            unmap(stretch.take());
            continue;
        }
        stretch = Some(match stretch {
            Some((start, _)) => (start, v.end),
            None => (v.start, v.end),
        });
    }
    unmap(stretch);
    calls
}

/// What of the address space the stub's clearing touches or keeps: the
/// whole span of its ordinary mappings (clear_stub_calls unmaps stretches,
/// holes included) and each special one.
pub(crate) fn stub_footprint(stub: &[ProcVma]) -> Vec<(u64, u64)> {
    let ordinary = stub.iter().filter(|v| !v.path.starts_with("[v"));
    let span = ordinary.fold(None, |acc: Option<(u64, u64)>, v| match acc {
        Some((lo, hi)) => Some((lo.min(v.start), hi.max(v.end))),
        None => Some((v.start, v.end)),
    });
    span.into_iter()
        .chain(
            stub.iter()
                .filter(|v| v.path.starts_with("[v"))
                .map(|v| (v.start, v.end)),
        )
        .collect()
}

/// How the stub's vDSO and vvar areas get to where the dumped task had
/// them: the special areas the image lacks to unmap, then the moves in
/// order (parked first where they overlap), and where the gadget ends up.
pub(crate) struct SpecialsPlan {
    unmaps: Vec<Call>,
    /// (from, len, to)
    moves: Vec<(u64, u64, u64)>,
    /// The gadget before the moves and after them.
    gadget_before: u64,
    gadget: u64,
}

/// Plans [`place_specials`]. `avoid`: a range already in use (the scratch
/// area).
pub(crate) fn plan_specials(
    pid: i32,
    stub: &[ProcVma],
    mm: &Mm,
    gadget: u64,
    avoid: (u64, u64),
) -> Result<SpecialsPlan> {
    let mut unmaps = Vec::new();
    let mut moves = Vec::new(); // (from, len, to)
    for name in ["[vvar]", "[vvar_vclock]", "[vdso]"] {
        let have = stub.iter().find(|v| v.path == name);
        let want = mm.vmas.iter().find(|v| special_name(kind(v)) == Some(name));
        match (have, want) {
            (Some(h), Some(w)) => {
                if h.end - h.start != w.end - w.start {
                    return Err(Error::unsupported(
                        pid,
                        format!(
                            "{name} is {} pages here but {} in the image: dumped on another kernel",
                            (h.end - h.start) / PAGE,
                            (w.end - w.start) / PAGE
                        ),
                    ));
                }
                moves.push((h.start, h.end - h.start, w.start));
            }
            // A task that had unmapped its vDSO: the stub's stays, out of
            // the image's way, as the gadget, until the last injected call
            // removes it (`unmap_kept_vdso`).
            (Some(h), None) if name == "[vdso]" => {
                let mut taken: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
                taken.extend(
                    stub.iter()
                        .filter(|v| v.path != "[vsyscall]")
                        .map(|v| (v.start, v.end)),
                );
                taken.push(avoid);
                let to = free_area(&taken, h.end - h.start)
                    .ok_or_else(|| Error::task(pid, "no free area to keep the stub's vDSO in"))?;
                moves.push((h.start, h.end - h.start, to));
            }
            (Some(h), None) => unmaps.push(Call::checked(
                "munmap",
                libc::SYS_munmap,
                &[h.start, h.end - h.start],
            )),
            (None, Some(_)) => {
                return Err(Error::unsupported(
                    pid,
                    format!("the image has {name} but this kernel gives none"),
                ))
            }
            (None, None) => {}
        }
    }
    let overlaps = moves.iter().any(|&(from, len, _)| {
        moves
            .iter()
            .any(|&(_, l2, to)| to < from + len && from < to + l2 && to != from)
    });
    // The moves in order, (from, len, to).
    let mut plan: Vec<(u64, u64, u64)> = Vec::new();
    if overlaps {
        // Park everything in a free area first so no move lands on another.
        let mut taken: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
        taken.extend(moves.iter().map(|&(f, l, _)| (f, f + l)));
        taken.push(avoid);
        let span: u64 = moves.iter().map(|m| m.1).sum();
        let mut park = free_area(&taken, span)
            .ok_or_else(|| Error::task(pid, "no free area to park the vDSO"))?;
        for m in moves.iter_mut() {
            plan.push((m.0, m.1, park));
            m.0 = park;
            park += m.1;
        }
    }
    plan.extend(moves.iter().copied());
    plan.retain(|&(from, _, to)| from != to);
    // Where the gadget ends up.
    let mut end = gadget;
    for &(from, len, to) in &plan {
        if end >= from && end < from + len {
            end = end - from + to;
        }
    }
    Ok(SpecialsPlan {
        unmaps,
        moves: plan,
        gadget_before: gadget,
        gadget: end,
    })
}

fn mremap(from: u64, len: u64, to: u64) -> Call {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    Call::checked("mremap", libc::SYS_mremap, &[from, len, len, flags, to])
}

/// Runs `before` (calls that touch neither the special areas nor the
/// scratch area: a stub's clearing), then moves the stub's vDSO and vvar
/// areas as `plan` says, and returns the new gadget address: all in one
/// batch where the runner can be used (it does not run from the gadget
/// being moved), else `before` as a batch and the moves one by one.
pub(crate) fn place_specials(
    inj: &mut Injector,
    before: Vec<Call>,
    plan: &SpecialsPlan,
) -> Result<u64> {
    let mut calls = before;
    let n_before = calls.len();
    calls.extend(plan.unmaps.iter().copied());
    calls.extend(plan.moves.iter().map(|&(f, l, t)| mremap(f, l, t)));
    if inj.try_batch(&calls)?.is_some() {
        inj.set_gadget(plan.gadget);
        return Ok(plan.gadget);
    }
    inj.batch(&calls[..n_before])?;
    for c in &plan.unmaps {
        inj.call(c.name, c.nr, &c.args)?;
    }
    // One by one, the gadget following each move of its mapping.
    let mut at = plan.gadget_before;
    for &(from, len, to) in &plan.moves {
        let c = mremap(from, len, to);
        inj.call(c.name, c.nr, &c.args)?;
        if at >= from && at < from + len {
            at = at - from + to;
            inj.set_gadget(at);
        }
    }
    Ok(plan.gadget)
}

/// For an image without a vDSO: removes the stub's, which held the gadget.
/// `calls_after`: injected calls follow (seccomp filters, which must come
/// last): they run from a `syscall` instruction in the task's own text.
pub(crate) fn unmap_kept_vdso(inj: &mut Injector, mm: &Mm, calls_after: bool) -> Result<()> {
    if mm
        .vmas
        .iter()
        .any(|v| special_name(kind(v)) == Some("[vdso]"))
    {
        return Ok(());
    }
    let pid = inj.pid();
    let maps = crate::proc::maps::read_maps(pid)?;
    if let Some(v) = maps.iter().find(|v| v.path == "[vdso]") {
        let text = mm
            .vmas
            .iter()
            .filter(|t| t.prot & libc::PROT_EXEC as u32 != 0)
            .map(|t| (t.start, t.end));
        let own_gadget = match calls_after {
            true => Some(crate::inject::find_syscall_gadget_in(pid, text)?),
            false => None,
        };
        inj.call(
            "munmap([vdso])",
            libc::SYS_munmap,
            &[v.start, v.end - v.start],
        )?;
        if let Some(g) = own_gadget {
            inj.set_gadget(g);
        }
    }
    Ok(())
}

/// Maps every non-special VMA, writable for now so pages can be filled:
/// the files first (one openat each, in one batch, each path in its own
/// place of the scratch area), then every mmap in one batch, then the
/// closes; SysV segments are attached one by one.
pub(crate) fn map_vmas(inj: &mut Injector, mm: &Mm, shared: &SharedObjects) -> Result<u64> {
    let pid = inj.pid();
    // (path, writable) of each file to open, in order; mmaps name a file
    // by its index here until its descriptor is known.
    let mut files: Vec<(String, bool)> = Vec::new();
    let mut maps: Vec<([u64; 6], Option<usize>)> = Vec::new();
    let mut segments: Vec<(&Vma, i32)> = Vec::new();
    // stat(2) once per path: a library has four or five mappings.
    let mut stats: std::collections::HashMap<String, (u64, u64)> = Default::default();
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    for v in &mm.vmas {
        let len = v.end - v.start;
        let fixed = libc::MAP_FIXED as u64;
        let extra = if v.growsdown {
            libc::MAP_GROWSDOWN as u64
        } else {
            0
        } | if v.madvise & madv::NORESERVE != 0 {
            libc::MAP_NORESERVE as u64
        } else {
            0
        };
        match kind(v) {
            VmaKind::AnonPrivate => {
                let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | fixed | extra;
                let prot = if unaccounted(v) { v.prot as u64 } else { rw };
                maps.push(([v.start, len, prot, flags, u64::MAX, 0], None));
            }
            VmaKind::AnonShared => {
                let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64 | fixed | extra;
                maps.push(([v.start, len, rw, flags, u64::MAX, 0], None));
            }
            VmaKind::FileShared if shared.shmid(v.shared).is_some() => {
                segments.push((v, shared.shmid(v.shared).unwrap_or(-1)));
            }
            k @ (VmaKind::FilePrivate | VmaKind::FileShared) => {
                let path = match v.shared {
                    0 => v.path.clone(),
                    id => shared.memfd_path(id)?,
                };
                let shared = k == VmaKind::FileShared;
                let writable = shared && v.may_write;
                let (now_dev, now_ino) = match stats.get(&path) {
                    Some(&id) => id,
                    None => {
                        let md = std::fs::metadata(&path)
                            .map_err(|e| Error::io("mapped file", &path, e))?;
                        stats.insert(path.clone(), (md.dev(), md.ino()));
                        (md.dev(), md.ino())
                    }
                };
                // stat(2) against stat(2) at dump (file_id): /proc/PID/maps
                // may name another device for the same file (the layer
                // under an overlayfs on 6.1 and 6.12, btrfs subvolumes).
                let (dev, ino) = match &v.file_id {
                    Some(id) => (id.dev, id.ino),
                    None => (v.dev, v.inode),
                };
                if v.shared == 0 && (now_ino != ino || now_dev != dev) {
                    return Err(Error::task(
                        pid,
                        format!(
                            "mapped file {} was replaced since the dump (device {now_dev:#x} inode {now_ino} now, device {dev:#x} inode {ino} then)",
                            v.path,
                        ),
                    ));
                }
                let key = (path, writable);
                let file = match files.iter().position(|f| *f == key) {
                    Some(i) => i,
                    None => {
                        files.push(key);
                        files.len() - 1
                    }
                };
                // Shared file maps get their final protection now: their
                // pages come from the file, never from the image.
                let (prot, flags) = if shared {
                    (v.prot as u64, libc::MAP_SHARED as u64)
                } else if unaccounted(v) {
                    (v.prot as u64, libc::MAP_PRIVATE as u64)
                } else {
                    (rw, libc::MAP_PRIVATE as u64)
                };
                let args = [v.start, len, prot, flags | fixed | extra, 0, v.pgoff];
                maps.push((args, Some(file)));
            }
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall => {}
        }
    }
    // The executable too, opened with the mapped files for
    // PR_SET_MM_MAP (task::set_mm closes it).
    files.push((mm.exe_path.clone(), false));
    let mut fds = open_files(inj, &files)?;
    let exe_fd = fds
        .pop()
        .ok_or_else(|| Error::task(pid, "no descriptor for the executable"))?;
    // The mmaps, then the files' descriptors closed, in one batch.
    let mut calls: Vec<Call> = maps
        .iter()
        .map(|(args, file)| {
            let mut args = *args;
            if let Some(i) = file {
                args[4] = fds[*i];
            }
            Call::checked("mmap", libc::SYS_mmap, &args)
        })
        .collect();
    calls.extend(
        fds.iter()
            .map(|&fd| Call::checked("close", libc::SYS_close, &[fd])),
    );
    inj.batch(&calls)?;
    for (v, shmid) in segments {
        attach_segment(inj, v, shmid)?;
    }
    Ok(exe_fd)
}

/// Opens each (path, writable) in the task, O_CLOEXEC: batches of as many
/// paths as the scratch area holds. The descriptors, in order.
fn open_files(inj: &mut Injector, files: &[(String, bool)]) -> Result<Vec<u64>> {
    let room = inj.scratch()?.len;
    let mut fds = Vec::with_capacity(files.len());
    let mut calls = Vec::new();
    let mut off = 0u64;
    for (path, writable) in files {
        let need = path.len() as u64 + 1;
        if need > room {
            return Err(Error::task(
                inj.pid(),
                format!("mapped file path of {need} bytes does not fit the scratch area"),
            ));
        }
        if off + need > room {
            fds.extend(inj.batch(&calls)?.into_iter().map(|fd| fd as u64));
            calls.clear();
            off = 0;
        }
        let p = inj.put_cstr(off, path)?;
        off += need;
        let oflags = if *writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        } | libc::O_CLOEXEC;
        let args = [libc::AT_FDCWD as i64 as u64, p, oflags as u64, 0];
        calls.push(Call::checked("openat", libc::SYS_openat, &args));
    }
    fds.extend(inj.batch(&calls)?.into_iter().map(|fd| fd as u64));
    Ok(fds)
}

/// Attaches SysV segment `shmid` where the VMA was, as the task had it:
/// read-only (SHM_RDONLY) if it could never write it, executable
/// (SHM_EXEC) if mapped so, then mprotect to the dumped protection.
fn attach_segment(inj: &mut Injector, v: &Vma, shmid: i32) -> Result<()> {
    let exec = v.prot & libc::PROT_EXEC as u32 != 0;
    let mut flags = 0;
    let mut prot = libc::PROT_READ as u32;
    if v.may_write {
        prot |= libc::PROT_WRITE as u32;
    } else {
        flags |= libc::SHM_RDONLY;
    }
    if exec {
        prot |= libc::PROT_EXEC as u32;
        flags |= libc::SHM_EXEC;
    }
    let at = inj.call(
        "shmat",
        libc::SYS_shmat,
        &[shmid as u64, v.start, flags as u64],
    )?;
    if at != v.start {
        return Err(Error::task(
            inj.pid(),
            format!("shmat({shmid}) attached at {at:#x}, not {:#x}", v.start),
        ));
    }
    if prot != v.prot {
        inj.call(
            "mprotect",
            libc::SYS_mprotect,
            &[v.start, v.end - v.start, v.prot as u64],
        )?;
    }
    Ok(())
}

/// Runs of at least this many pages are populated in one call before
/// they are filled.
const POPULATE_MIN_PAGES: u64 = 16;
const MADV_POPULATE_WRITE: u64 = 23;
/// Unit of the populate/copy pipeline.
const CHUNK: u64 = 16 << 20;

/// A piece of a page run: where it goes, where its data is in the pages
/// file, and whether to materialise it in one batch first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub vaddr: u64,
    pub len: u64,
    /// Which image of the chain holds the data (0: the dump itself).
    pub layer: usize,
    pub data_off: u64,
    pub populate: bool,
    /// In a VMA mapped without write permission: written through
    /// /proc/PID/mem (see `unaccounted`).
    pub force: bool,
}

/// Splits the resolved page runs into pieces of at most CHUNK bytes.
pub(crate) fn pieces(mm: &Mm, sources: &[Source]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut vi = 0;
    for src in sources {
        while vi < mm.vmas.len() && mm.vmas[vi].end <= src.vaddr {
            vi += 1;
        }
        let anon = mm
            .vmas
            .get(vi)
            .is_some_and(|v| matches!(kind(v), VmaKind::AnonPrivate | VmaKind::AnonShared));
        let force = mm.vmas.get(vi).is_some_and(unaccounted);
        let populate = anon && !force && src.len >= POPULATE_MIN_PAGES * PAGE;
        let (mut vaddr, mut data_off, mut left) = (src.vaddr, src.data_off, src.len);
        while left > 0 {
            let len = left.min(CHUNK);
            out.push(Piece {
                vaddr,
                len,
                layer: src.layer,
                data_off,
                populate,
                force,
            });
            vaddr += len;
            data_off += len;
            left -= len;
        }
    }
    out
}

/// Materialises and fills every stored page.
///
/// Two costs dominate: faulting fresh pages in (zeroing them) and copying
/// the data. The task faults its pages in by batches through an injected
/// MADV_POPULATE_WRITE (process_vm_writev alone would fault them one 4 KiB
/// page at a time), while a second thread of ours copies the previous
/// batch with process_vm_writev straight from the source's memory (the
/// mapped pages files: `PageSource::mapped`), so the two overlap on two
/// cores. A source without such a view is read into a buffer first.
pub(crate) fn populate_and_fill(
    inj: &mut Injector,
    pieces: &[Piece],
    source: &mut dyn PageSource,
    image_pid: i32,
) -> Result<u64> {
    let pid = inj.pid();
    let groups = fill_groups(pieces);
    // Little to copy and nothing to populate: filled here (a thread costs
    // more than such a copy, and a tree's members are mostly small).
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    if total <= INLINE_FILL && !pieces.iter().any(|p| p.populate) {
        let mut copied = 0;
        let mut buf = Vec::new();
        for g in groups {
            let batch = &pieces[g];
            if batch[0].force {
                force_write(pid, &batch[0], source, image_pid, &mut buf)?;
                copied += batch[0].len;
            } else {
                copied += fill_batch(pid, batch, source, image_pid, &mut buf)?;
            }
        }
        return Ok(copied);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<&[Piece]>(2);
        let filler = scope.spawn(move || -> Result<u64> {
            let mut copied = 0;
            let mut buf = Vec::new();
            for batch in rx {
                if batch[0].force {
                    force_write(pid, &batch[0], source, image_pid, &mut buf)?;
                    copied += batch[0].len;
                } else {
                    copied += fill_batch(pid, batch, source, image_pid, &mut buf)?;
                }
            }
            Ok(copied)
        });
        let mut sent = Ok(());
        'groups: for g in groups {
            for p in &pieces[g.clone()] {
                if !p.populate {
                    continue;
                }
                if let Err(e) = inj.call(
                    "madvise(MADV_POPULATE_WRITE)",
                    libc::SYS_madvise,
                    &[p.vaddr, p.len, MADV_POPULATE_WRITE],
                ) {
                    sent = Err(e);
                    break 'groups;
                }
            }
            if tx.send(&pieces[g]).is_err() {
                break; // the filler failed: its error is reported below
            }
        }
        drop(tx);
        let copied = filler
            .join()
            .map_err(|_| Error::task(pid, "page filler thread panicked"))??;
        sent.map(|_| copied)
    })
}

/// Below this much page data a restore fills the pages on its own thread.
const INLINE_FILL: u64 = 1 << 20;

/// The pieces as the filler takes them: a forced write alone; otherwise
/// one contiguous stretch of one pages file, up to CHUNK bytes and IOV_MAX
/// pieces.
fn fill_groups(pieces: &[Piece]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, p) in pieces.iter().enumerate() {
        if p.force {
            out.push(i..i + 1);
            start = i + 1;
            continue;
        }
        bytes += p.len;
        let next_joins = pieces
            .get(i + 1)
            .is_some_and(|n| n.layer == p.layer && n.data_off == p.data_off + p.len && !n.force);
        if bytes >= CHUNK || i + 1 - start == IOV_MAX || !next_joins {
            out.push(start..i + 1);
            start = i + 1;
            bytes = 0;
        }
    }
    out
}

/// The bytes of one piece: a view of the source's memory, or read into
/// `buf`.
fn piece_bytes<'a>(
    pid: i32,
    p: &Piece,
    source: &'a mut dyn PageSource,
    image_pid: i32,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    if source.mapped(image_pid, p.vaddr, p.len).is_none() {
        buf.resize(p.len as usize, 0);
        source
            .read_pages(image_pid, p.vaddr, buf)
            .map_err(|e| Error::task(pid, format!("reading pages at {:#x}: {e}", p.vaddr)))?;
        return Ok(buf.as_slice());
    }
    source
        .mapped(image_pid, p.vaddr, p.len)
        .ok_or_else(|| Error::task(pid, "page data out of bounds"))
}

/// Writes one piece through /proc/PID/mem (FOLL_FORCE: past a missing
/// write permission, as a debugger's poke).
fn force_write(
    pid: i32,
    p: &Piece,
    source: &mut dyn PageSource,
    image_pid: i32,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let data = piece_bytes(pid, p, source, image_pid, buf)?;
    let path = format!("/proc/{pid}/mem");
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    mem.write_all_at(data, p.vaddr)
        .map_err(|e| Error::io("writing pages through", &path, e))
}

/// Copies one batch of pieces with one process_vm_writev: each piece's
/// bytes straight from the source's memory where it has them mapped.
fn fill_batch(
    pid: i32,
    batch: &[Piece],
    source: &mut dyn PageSource,
    image_pid: i32,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let (Some(first), Some(_)) = (batch.first(), batch.last()) else {
        return Ok(0);
    };
    let total: u64 = batch.iter().map(|p| p.len).sum();
    let remote: Vec<libc::iovec> = batch
        .iter()
        .map(|p| iov(p.vaddr as _, p.len as usize))
        .collect();
    let all_mapped = batch
        .iter()
        .all(|p| source.mapped(image_pid, p.vaddr, p.len).is_some());
    let local: Vec<libc::iovec> = if all_mapped {
        batch
            .iter()
            .filter_map(|p| source.mapped(image_pid, p.vaddr, p.len))
            .map(|d| iov(d.as_ptr() as *mut libc::c_void, d.len()))
            .collect()
    } else {
        buf.resize(total as usize, 0);
        let mut off = 0usize;
        for p in batch {
            let n = p.len as usize;
            source
                .read_pages(image_pid, p.vaddr, &mut buf[off..off + n])
                .map_err(|e| Error::task(pid, format!("reading pages at {:#x}: {e}", p.vaddr)))?;
            off += n;
        }
        vec![iov(buf.as_mut_ptr() as *mut libc::c_void, buf.len())]
    };
    let n = process_vm_write(pid, &local, &remote)
        .map_err(|e| Error::sys("process_vm_writev", pid, e))?;
    if n as u64 != total {
        return Err(Error::task(
            pid,
            format!(
                "short process_vm_writev at {:#x}: {n} of {total} bytes",
                first.vaddr
            ),
        ));
    }
    Ok(total)
}

const MADV_GUARD_INSTALL: u64 = 102;
const MLOCK_ONFAULT: u64 = 1;
const PR_SET_VMA: u64 = 0x53564d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;
const PR_SET_MEMORY_MERGE: u64 = 67;

/// An anonymous VMA that was charged (`ac`) and is made unwritable keeps
/// its charge only if it has an anon_vma by then (mprotect drops
/// VM_ACCOUNT from one that never had a page: mprotect_fixup). In the
/// dumped process it had one (a thread stack's guard page split from its
/// stack); restored apart from pages (a lazy restore leaves the stack next
/// to it empty), it may not: a write fault gives it one, and the page it
/// made goes again (MADV_DONTNEED keeps the anon_vma).
fn keep_accounted(inj: &mut Injector, v: &Vma) -> Result<()> {
    let pid = inj.pid();
    let present = crate::proc::pagemap::PagemapReader::open(pid)?
        .entry(v.start)?
        .present();
    if present {
        return Ok(());
    }
    inj.write_mem(v.start, &[0])?;
    inj.call(
        "madvise(MADV_DONTNEED)",
        libc::SYS_madvise,
        &[v.start, PAGE, libc::MADV_DONTNEED as u64],
    )?;
    Ok(())
}

/// Final protections, madvise flags, names, guard regions and locks: one
/// batch for every VMA (names each in their own place of the scratch
/// area; a batch is run whenever the area is full).
pub(crate) fn finish_vmas(inj: &mut Injector, mm: &Mm) -> Result<()> {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    let room = inj.scratch()?.len;
    let mut calls: Vec<Call> = Vec::new();
    // (index in calls, VMA) of each mlock, whose failure is judged here.
    let mut mlocks: Vec<(usize, &Vma)> = Vec::new();
    let mut off = 0u64;
    for v in &mm.vmas {
        let k = kind(v);
        if !matches!(
            k,
            VmaKind::AnonPrivate | VmaKind::AnonShared | VmaKind::FilePrivate | VmaKind::FileShared
        ) {
            continue;
        }
        let len = v.end - v.start;
        // While the VMA is still writable (its mprotect is in the batch).
        if k == VmaKind::AnonPrivate
            && v.vm_flags & VmFlags::ACCOUNT != 0
            && v.prot & libc::PROT_WRITE as u32 == 0
        {
            keep_accounted(inj, v)?;
        }
        if k != VmaKind::FileShared && v.prot != rw {
            calls.push(Call::checked(
                "mprotect",
                libc::SYS_mprotect,
                &[v.start, len, v.prot as u64],
            ));
        }
        for (bit, advice) in [
            (madv::DONTDUMP, libc::MADV_DONTDUMP),
            (madv::WIPEONFORK, libc::MADV_WIPEONFORK),
            (madv::DONTFORK, libc::MADV_DONTFORK),
            (madv::HUGEPAGE, libc::MADV_HUGEPAGE),
            (madv::NOHUGEPAGE, libc::MADV_NOHUGEPAGE),
            (madv::MERGEABLE, libc::MADV_MERGEABLE),
            (madv::SEQUENTIAL, libc::MADV_SEQUENTIAL),
            (madv::RANDOM, libc::MADV_RANDOM),
        ] {
            if v.madvise & bit != 0 {
                let args = [v.start, len, advice as u64];
                calls.push(Call::checked("madvise", libc::SYS_madvise, &args));
            }
        }
        if !v.anon_name.is_empty() {
            let need = v.anon_name.len() as u64 + 1;
            if off + need > room {
                run_finish_batch(inj, &calls, &mlocks)?;
                calls.clear();
                mlocks.clear();
                off = 0;
            }
            let p = inj.put_cstr(off, &v.anon_name)?;
            off += need;
            calls.push(Call::checked(
                "prctl(PR_SET_VMA_ANON_NAME)",
                libc::SYS_prctl,
                &[PR_SET_VMA, PR_SET_VMA_ANON_NAME, v.start, len, p],
            ));
        }
        // Guards before locks: the kernel refuses guards in locked VMAs.
        for g in v.guards.chunks_exact(2) {
            calls.push(Call::checked(
                "madvise(MADV_GUARD_INSTALL)",
                libc::SYS_madvise,
                &[g[0], g[1] * PAGE, MADV_GUARD_INSTALL],
            ));
        }
        if v.madvise & madv::LOCKONFAULT != 0 {
            calls.push(Call::checked(
                "mlock2(MLOCK_ONFAULT)",
                libc::SYS_mlock2,
                &[v.start, len, MLOCK_ONFAULT],
            ));
        } else if v.madvise & madv::LOCKED != 0 {
            mlocks.push((calls.len(), v));
            calls.push(Call::raw("mlock", libc::SYS_mlock, &[v.start, len]));
        }
    }
    run_finish_batch(inj, &calls, &mlocks)
}

/// Runs a batch of [`finish_vmas`] and judges its mlocks: mlock sets
/// VM_LOCKED, then populates the range. A PROT_NONE VMA cannot be
/// populated: mlock says ENOMEM with the flag set (mmap under
/// mlockall(MCL_FUTURE) leaves such a VMA locked and empty the same way).
/// verify_vm_flags checks the flag.
fn run_finish_batch(inj: &mut Injector, calls: &[Call], mlocks: &[(usize, &Vma)]) -> Result<()> {
    let results = inj.batch(calls)?;
    for &(i, v) in mlocks {
        let r = results[i];
        if r < 0 && !(r == -(libc::ENOMEM as i64) && v.prot == 0) {
            return Err(Error::Injected {
                name: "mlock",
                args: format!("{:#x}, {:#x}", v.start, v.end - v.start),
                pid: inj.pid(),
                errno: nix::errno::Errno::from_raw(-r as i32),
            });
        }
    }
    Ok(())
}

/// mm-wide state, set last (mlockall(MCL_FUTURE) would lock the engine's
/// own later mappings, mseal forbids later changes): the future-lock
/// flags, KSM merge-any, the coredump filter, and seals.
pub(crate) fn finish_mm(inj: &mut Injector, mm: &Mm) -> Result<()> {
    let pid = inj.pid();
    if mm.ksm_merge_any {
        inj.call(
            "prctl(PR_SET_MEMORY_MERGE)",
            libc::SYS_prctl,
            &[PR_SET_MEMORY_MERGE, 1, 0, 0, 0],
        )?;
    }
    if let Some(filter) = mm.coredump_filter {
        let path = format!("/proc/{pid}/coredump_filter");
        std::fs::write(&path, format!("{filter:#x}")).map_err(|e| Error::io("writing", path, e))?;
    }
    if mm.lock_future != 0 {
        // Without MCL_CURRENT this only sets the mm's default flags.
        let allowed = (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32;
        inj.call(
            "mlockall(MCL_FUTURE)",
            libc::SYS_mlockall,
            &[(mm.lock_future & allowed) as u64],
        )?;
    }
    for v in mm.vmas.iter().filter(|v| v.madvise & madv::SEALED != 0) {
        inj.call("mseal", libc::SYS_mseal, &[v.start, v.end - v.start, 0])?;
    }
    Ok(())
}

/// VmFlags that may differ without the task seeing a difference: the
/// soft-dirty bit (tracker state) and userfaultfd registrations (the
/// engine's own tracker; the task's own are refused at dump).
const UNCHECKED_VM_FLAGS: u64 =
    VmFlags::SOFTDIRTY | VmFlags::UFFD_WP | VmFlags::UFFD_MISSING | VmFlags::UFFD_MINOR;

/// The VMAs of the image whose rebuilt VmFlags differ from the dumped
/// ones, described; empty when all match. `now` is the restored task's
/// smaps. Images without VmFlags (older dumps) are not checked.
pub(crate) fn vm_flag_mismatches(mm: &Mm, now: &[ProcVma]) -> Vec<String> {
    let mut out = Vec::new();
    for v in mm.vmas.iter().filter(|v| v.vm_flags != 0) {
        if special_name(kind(v)).is_some() || kind(v) == VmaKind::Vsyscall {
            continue;
        }
        let want = v.vm_flags & !UNCHECKED_VM_FLAGS;
        for n in now.iter().filter(|n| n.start < v.end && v.start < n.end) {
            let have = n.vm_flags.bits() & !UNCHECKED_VM_FLAGS;
            if have != want || !n.vm_flags.unknown().is_empty() {
                let codes = |b: u64| VmFlags::from_bits(b).codes().join(" ");
                out.push(format!(
                    "{:#x}-{:#x}: dumped `{}`, restored `{}`",
                    v.start,
                    v.end,
                    codes(want),
                    codes(have)
                ));
            }
        }
    }
    out
}

/// Checks every rebuilt VMA shows the smaps VmFlags it had when dumped:
/// a flag the engine does not know how to restore fails the restore
/// before the task runs, never silently.
pub(crate) fn verify_vm_flags(pid: i32, mm: &Mm) -> Result<()> {
    let now = crate::proc::maps::read_smaps(pid)?;
    let bad = vm_flag_mismatches(mm, &now);
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::task(
        pid,
        format!(
            "restored VMAs differ from the dump in their smaps VmFlags: {}",
            bad.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_a_stub_keeps_its_specials_and_the_area_it_took_over() {
        let vma = |start: u64, end: u64, path: &str| ProcVma {
            start,
            end,
            path: path.into(),
            ..Default::default()
        };
        let stub = [
            vma(0x1000, 0x3000, "/engine"),
            vma(0x10000, 0x11000, ""),
            // The inherited scratch area: runner, scratch and table.
            vma(0x20000, 0x2a000, ""),
            vma(0x2a000, 0x2b000, ""),
            vma(0x30000, 0x31000, ""),
            vma(0x40000, 0x42000, "[vdso]"),
            vma(0x50000, 0x51000, "[stack]"),
        ];
        let unmaps = |keep| -> Vec<[u64; 2]> {
            clear_stub_calls(&stub, keep)
                .iter()
                .map(|c| [c.args[0], c.args[1]])
                .collect()
        };
        // Stretches between the specials, holes included.
        assert_eq!(
            unmaps(None),
            vec![[0x1000, 0x31000 - 0x1000], [0x50000, 0x1000]]
        );
        assert_eq!(
            unmaps(Some((0x20000, 0x2b000))),
            vec![
                [0x1000, 0x11000 - 0x1000],
                [0x30000, 0x1000],
                [0x50000, 0x1000]
            ]
        );
    }

    #[test]
    fn fill_groups_follow_the_file_and_keep_forced_writes_alone() {
        let piece = |data_off: u64, len: u64, force: bool| Piece {
            vaddr: 0x1000 + data_off,
            len,
            layer: 0,
            data_off,
            populate: false,
            force,
        };
        let p = vec![
            piece(0, PAGE, false),
            piece(PAGE, PAGE, false),
            piece(2 * PAGE, PAGE, true),
            piece(3 * PAGE, PAGE, false),
            piece(10 * PAGE, PAGE, false),
            piece(11 * PAGE, CHUNK, false),
            piece(11 * PAGE + CHUNK, PAGE, false),
        ];
        assert_eq!(fill_groups(&p), vec![0..2, 2..3, 3..4, 4..6, 6..7]);
        assert!(fill_groups(&[]).is_empty());
    }

    #[test]
    fn pieces_split_runs_and_follow_the_file() {
        use crate::image::chain::Source;
        let anon = Vma {
            start: 0x10_0000_0000,
            end: 0x10_1000_0000,
            prot: 3,
            kind: VmaKind::AnonPrivate as i32,
            ..Default::default()
        };
        let file = Vma {
            start: 0x20_0000_0000,
            end: 0x20_0100_0000,
            prot: 3,
            kind: VmaKind::FilePrivate as i32,
            ..Default::default()
        };
        let mm = Mm {
            vmas: vec![anon, file],
            ..Default::default()
        };
        let big = (CHUNK / PAGE) * 2 + 3;
        let src = |vaddr, pages: u64, data_off| Source {
            vaddr,
            len: pages * PAGE,
            layer: 0,
            data_off,
        };
        let sources = vec![
            src(0x10_0000_0000, big, 0),
            src(0x10_0800_0000, 2, big * PAGE),
            src(0x20_0000_0000, 40, (big + 2) * PAGE),
        ];
        let p = pieces(&mm, &sources);
        assert_eq!(p.len(), 5);
        assert_eq!((p[0].len, p[1].len, p[2].len), (CHUNK, CHUNK, 3 * PAGE));
        assert_eq!(p[1].vaddr, 0x10_0000_0000 + CHUNK);
        assert!(p[0].populate && p[2].populate);
        assert!(!p[3].populate, "small runs are not worth a syscall");
        assert!(!p[4].populate, "file pages are not populated");
        let mut off = 0;
        for x in &p {
            assert_eq!(x.data_off, off);
            off += x.len;
        }
    }

    #[test]
    fn vm_flag_mismatches_are_named_and_tracker_bits_ignored() {
        let flags = |codes: &str| VmFlags::parse(codes).bits();
        let v = Vma {
            start: 0x1000_0000,
            end: 0x1001_0000,
            prot: 3,
            kind: VmaKind::AnonPrivate as i32,
            vm_flags: flags("rd wr mr mw me ac lo"),
            ..Default::default()
        };
        let mm = Mm {
            vmas: vec![v],
            ..Default::default()
        };
        let now = |codes: &str| {
            let text = format!("10000000-10010000 rw-p 00000000 00:00 0 \nVmFlags: {codes}\n");
            crate::proc::maps::parse_smaps(&text).unwrap()
        };
        assert!(vm_flag_mismatches(&mm, &now("rd wr mr mw me ac lo sd uw")).is_empty());
        let bad = vm_flag_mismatches(&mm, &now("rd wr mr mw me ac"));
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].contains("dumped `rd wr mr mw me lo ac`"),
            "{}",
            bad[0]
        );
        assert!(
            bad[0].contains("restored `rd wr mr mw me ac`"),
            "{}",
            bad[0]
        );
    }

    #[test]
    fn unaccounted_means_never_writable_private() {
        let mut v = Vma {
            prot: libc::PROT_READ as u32,
            kind: VmaKind::FilePrivate as i32,
            vm_flags: VmFlags::READ | VmFlags::MAYREAD,
            ..Default::default()
        };
        assert!(unaccounted(&v));
        v.vm_flags |= VmFlags::ACCOUNT;
        assert!(!unaccounted(&v), "was writable once: charged");
        v.vm_flags = 0;
        assert!(!unaccounted(&v), "old images without VmFlags");
    }

    #[test]
    fn free_area_avoids_taken_ranges() {
        let taken = [
            (0x5555_0000_0000, 0x5555_0010_0000),
            (0x7fff_f000_0000, 0x7fff_ffff_0000),
        ];
        let a = free_area(&taken, 0x10000).unwrap();
        for (s, e) in taken {
            assert!(a + 0x10000 + MARGIN <= s || a >= e + MARGIN, "{a:#x}");
        }
        assert_eq!(a % PAGE, 0);
    }

    #[test]
    fn free_area_avoids_a_range_that_spans_others() {
        // A stub's footprint (its mappings' whole span, up to an area near
        // the top it inherited) over the image's stack, which ends lower.
        let top = TASK_TOP - MARGIN - 0x10000;
        let taken = [
            (0x7fb9_0000_0000, top + 0x10000),
            (0x7ffc_0000_0000, 0x7ffc_0002_1000),
            (0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000),
        ];
        let a = free_area(&taken, 0x13000).unwrap();
        for (s, e) in taken {
            assert!(
                a + 0x13000 + MARGIN <= s || a >= e + MARGIN,
                "{a:#x} in {s:#x}-{e:#x}"
            );
        }
    }
}
