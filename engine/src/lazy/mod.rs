//! Post-copy: lazy restore through userfaultfd.

pub mod remote;

use crate::image::messages::{madv, Vma, VmaKind};
use crate::proc::maps::VmFlags;

/// Whether the pages of this VMA may be left out at restore and delivered
/// later through userfaultfd. Dump (which pages a lazy dump leaves at the
/// source) and restore (which VMAs it registers) both ask this, so they
/// agree. Only private anonymous memory that restore maps writable and
/// that nothing forces in at once: not a stack (grows down), not locked
/// (mlock populates every page), not a never-writable VMA (filled through
/// /proc/PID/mem), not one with guard regions.
pub fn eligible(v: &Vma) -> bool {
    VmaKind::try_from(v.kind) == Ok(VmaKind::AnonPrivate)
        && !v.growsdown
        && v.madvise & (madv::LOCKED | madv::LOCKONFAULT) == 0
        && (v.vm_flags == 0 || v.vm_flags & VmFlags::ACCOUNT != 0)
        && v.prot & libc::PROT_WRITE as u32 != 0
        && v.guards.is_empty()
}

pub mod daemon;
pub mod events;
pub mod handoff;

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::image::chain::Source;
use crate::image::messages::Mm;
use crate::inject::Injector;
use crate::pageio::PageSource;
use crate::sys::uffd;

const PAGE: u64 = 4096;
/// Create the userfaultfd with this flag when the kernel-mode faults need
/// not be served: lazy restore must serve them (a read(2) into a lazy
/// buffer faults in the kernel), so the task's uffd never has it.
const UFFD_USER_MODE_ONLY: i32 = 1;

/// How restore splits a checkpoint's pages between itself and the daemon.
#[derive(Debug, Default)]
pub struct Plan {
    /// Filled by restore as usual (outside registered VMAs).
    pub eager: Vec<Source>,
    /// Filled by restore through the userfaultfd (UFFDIO_COPY), before the
    /// handoff: the pages a remote lazy dump stored inside registered VMAs
    /// (restore's own calls touch them). Never with process_vm_writev
    /// there: a write fault in a THP-enabled VMA could allocate a huge
    /// page over lazy pages and hide them as zeros.
    pub eager_uffd: Vec<Source>,
    /// Image ranges the daemon delivers from the dump (sorted, disjoint).
    pub lazy: Vec<(u64, u64)>,
    /// Image ranges of parent images (pre-copy) in eligible VMAs: the
    /// daemon delivers them from the local images, before the rest of
    /// its background work, so that restore does not wait for them
    /// (sorted, disjoint, none in `lazy`).
    pub parent: Vec<(u64, u64)>,
    /// The eligible VMAs holding lazy or parent pages: registered MISSING.
    pub register: Vec<(u64, u64)>,
    /// Pages restore fills from the dump itself and from parent images.
    pub eager_dump_pages: u64,
    pub eager_parent_pages: u64,
}

impl Plan {
    pub fn lazy_pages(&self) -> u64 {
        crate::ranges::total(&self.lazy) / PAGE
    }

    pub fn parent_pages(&self) -> u64 {
        crate::ranges::total(&self.parent) / PAGE
    }
}

/// Splits the stored pages (`sources`, resolved through the chain) and
/// the dump's PE_LAZY runs (`lazy_runs`): with `lazy`, every PE_LAZY run,
/// and, for a dump that has none (a plain dump restored lazily), every run
/// of the dump itself (layer 0) inside an eligible VMA, is left to the
/// daemon, and so are the pages of parent images in eligible VMAs
/// (`Plan::parent`); the rest (pages in other VMAs, pages a remote lazy
/// dump stored) is filled by restore.
pub fn plan(
    mm: &Mm,
    sources: &[Source],
    lazy_runs: &[(u64, u64)],
    lazy: bool,
) -> std::result::Result<Plan, String> {
    let mut p = Plan::default();
    let vma_at = |addr: u64| {
        let i = mm.vmas.partition_point(|v| v.end <= addr);
        mm.vmas.get(i).filter(|v| v.start <= addr)
    };
    let count = |p: &mut Plan, s: &Source| match s.layer {
        0 => p.eager_dump_pages += s.len / PAGE,
        _ => p.eager_parent_pages += s.len / PAGE,
    };
    if !lazy {
        if let Some((a, _)) = lazy_runs.first() {
            return Err(format!(
                "the dump left {} pages at its source (lazy dump; first at {a:#x}): restore it with --lazy-pages and a `crust lazy-pages --page-server` daemon",
                crate::ranges::total(lazy_runs) / PAGE
            ));
        }
        for s in sources {
            count(&mut p, s);
        }
        p.eager = sources.to_vec();
        return Ok(p);
    }
    let mut lazy_ranges = Vec::new();
    let mut parent_ranges = Vec::new();
    for s in sources {
        match vma_at(s.vaddr).filter(|v| eligible(v)) {
            // A remote lazy dump (it left PE_LAZY runs) chose what is lazy:
            // the pages it stored anyway are ones restore needs at once
            // (the rseq area...), so they are filled now, not faulted.
            Some(_) if s.layer == 0 && lazy_runs.is_empty() => {
                lazy_ranges.push((s.vaddr, s.vaddr + s.len))
            }
            Some(_) if s.layer != 0 => parent_ranges.push((s.vaddr, s.vaddr + s.len)),
            Some(_) => {
                count(&mut p, s);
                p.eager_uffd.push(*s);
            }
            None => {
                count(&mut p, s);
                p.eager.push(*s);
            }
        }
    }
    for &(a, len) in lazy_runs {
        if vma_at(a)
            .filter(|v| eligible(v) && a + len <= v.end)
            .is_none()
        {
            return Err(format!(
                "lazy pages at {a:#x} lie outside any VMA that can be restored lazily"
            ));
        }
        lazy_ranges.push((a, a + len));
    }
    lazy_ranges.sort();
    for r in lazy_ranges {
        crate::ranges::push(&mut p.lazy, r);
    }
    parent_ranges.sort();
    for r in parent_ranges {
        crate::ranges::push(&mut p.parent, r);
    }
    // Every eligible VMA any lazy or parent range touches (touching runs
    // of neighbouring VMAs were joined into one range above).
    let touches = |set: &[(u64, u64)], s: u64, e: u64| {
        let i = set.partition_point(|r| r.1 <= s);
        set.get(i).is_some_and(|r| r.0 < e)
    };
    p.register = mm
        .vmas
        .iter()
        .filter(|v| eligible(v))
        .map(|v| (v.start, v.end))
        .filter(|&(s, e)| touches(&p.lazy, s, e) || touches(&p.parent, s, e))
        .collect();
    // Pages a remote lazy dump stored in eligible VMAs that hold nothing
    // for the daemon stay with the usual fill: those VMAs are not
    // registered.
    let registered = |a: u64| {
        let i = p.register.partition_point(|r| r.1 <= a);
        p.register.get(i).is_some_and(|r| r.0 <= a)
    };
    let (keep, normal): (Vec<Source>, Vec<Source>) = std::mem::take(&mut p.eager_uffd)
        .into_iter()
        .partition(|s| registered(s.vaddr));
    p.eager_uffd = keep;
    p.eager.extend(normal);
    p.eager.sort_by_key(|s| s.vaddr);
    Ok(p)
}

/// The userfaultfd features this kernel offers (probed on a throwaway
/// uffd of our own).
pub fn kernel_features() -> Result<u64> {
    let flags = libc::O_CLOEXEC | UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd takes flags and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let fd = nix::errno::Errno::result(r).map_err(|e| Error::sys("userfaultfd", 0, e))?;
    // SAFETY: fresh descriptor returned by the kernel, owned by nobody else.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    uffd::api(&fd, 0).map_err(|e| Error::sys("UFFDIO_API", 0, e))
}

/// Refuses, naming them, if the kernel lacks userfaultfd features lazy
/// restore needs.
pub fn check_kernel() -> Result<u64> {
    let have = kernel_features()?;
    let missing: Vec<&str> = uffd::LAZY_FEATURES
        .iter()
        .filter(|(f, _)| have & f == 0)
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Other(format!(
            "lazy restore needs userfaultfd features this kernel lacks: {}",
            missing.join(", ")
        )));
    }
    Ok(have)
}

/// Creates a userfaultfd in the task (injected `userfaultfd(O_CLOEXEC |
/// O_NONBLOCK)`), takes it with pidfd_getfd, closes it in the task, enables
/// the events lazy restore follows and registers `plan.register` MISSING.
/// The task must still hold the privilege to create a userfaultfd that
/// also serves kernel-mode faults (restore runs this before credentials).
pub fn arm(inj: &mut Injector, pidfd: &OwnedFd, plan: &Plan) -> Result<OwnedFd> {
    let pid = inj.pid();
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = inj.call("userfaultfd", libc::SYS_userfaultfd, &[flags])?;
    let taken = crate::sys::syscalls::pidfd_getfd(pidfd, pid, fd as i32);
    inj.call("close", libc::SYS_close, &[fd])?;
    let uffd = taken?;
    let want = uffd::LAZY_FEATURES.iter().fold(0, |a, (f, _)| a | f);
    uffd::api(&uffd, want)
        .map_err(|e| Error::sys("UFFDIO_API(EVENT_FORK|REMAP|REMOVE|UNMAP)", pid, e))?;
    for &(start, end) in &plan.register {
        uffd::register_missing(&uffd, start, end - start).map_err(|e| {
            Error::task(
                pid,
                format!("UFFDIO_REGISTER(MISSING) {start:#x}-{end:#x}: {e}"),
            )
        })?;
    }
    Ok(uffd)
}

/// Fills `plan.eager_uffd` through the userfaultfd (see `Plan`): returns
/// the bytes copied.
pub fn fill_registered(
    pid: i32,
    image_pid: i32,
    uffd: &OwnedFd,
    plan: &Plan,
    source: &mut dyn PageSource,
) -> Result<u64> {
    let mut buf = Vec::new();
    let mut copied = 0;
    for s in &plan.eager_uffd {
        let mut at = s.vaddr;
        let end = s.vaddr + s.len;
        while at < end {
            let len = (end - at).min(4 << 20);
            let ptr = match source.mapped(image_pid, at, len) {
                Some(d) => d.as_ptr(),
                None => {
                    buf.resize(len as usize, 0);
                    source.read_pages(image_pid, at, &mut buf)?;
                    buf.as_ptr()
                }
            };
            // SAFETY: ptr points at len readable bytes (the source's
            // mapping or buf), alive for the call.
            let r = unsafe { uffd::copy(uffd.as_fd(), at, ptr, len, false) };
            match r {
                Ok(n) | Err((n, nix::errno::Errno::EAGAIN)) if n > 0 => {
                    at += n;
                    copied += n;
                }
                Err((_, nix::errno::Errno::EAGAIN)) => {}
                Ok(_) => {
                    return Err(Error::task(
                        pid,
                        format!("UFFDIO_COPY at {at:#x} copied nothing"),
                    ))
                }
                Err((_, e)) => {
                    return Err(Error::task(
                        pid,
                        format!("UFFDIO_COPY of {len} bytes at {at:#x}: {e}"),
                    ))
                }
            }
        }
    }
    Ok(copied)
}
