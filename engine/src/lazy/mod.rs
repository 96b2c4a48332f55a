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
