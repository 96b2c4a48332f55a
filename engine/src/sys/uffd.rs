//! userfaultfd and the PAGEMAP_SCAN ioctl: raw definitions (Debian 12's
//! headers lack the newer ones) and thin safe wrappers.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

pub const UFFD_API: u64 = 0xAA;
pub const UFFDIO_API: libc::Ioctl = 0xc018_aa3f;
pub const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// The features lazy restore needs, with their names (for refusals).
pub const LAZY_FEATURES: [(u64, &str); 4] = [
    (UFFD_FEATURE_EVENT_FORK, "UFFD_FEATURE_EVENT_FORK"),
    (UFFD_FEATURE_EVENT_REMAP, "UFFD_FEATURE_EVENT_REMAP"),
    (UFFD_FEATURE_EVENT_REMOVE, "UFFD_FEATURE_EVENT_REMOVE"),
    (UFFD_FEATURE_EVENT_UNMAP, "UFFD_FEATURE_EVENT_UNMAP"),
];
/// _IOR(0xAA, 2, struct uffdio_range)
pub const UFFDIO_WAKE: libc::Ioctl = 0x8010_aa02;
/// _IOWR(0xAA, 3, struct uffdio_copy)
pub const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03;
/// _IOWR(0xAA, 4, struct uffdio_zeropage)
pub const UFFDIO_ZEROPAGE: libc::Ioctl = 0xc020_aa04;
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

pub const PAGEMAP_SCAN: libc::Ioctl = 0xc060_6610;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRegister {
    pub start: u64,
    pub len: u64,
    pub mode: u64,
    pub ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioZeropage {
    pub start: u64,
    pub len: u64,
    pub mode: u64,
    pub zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// struct uffd_msg: an event byte, padding, then a 24-byte union.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UffdMsgRaw {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

/// One decoded message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdMsg {
    /// A thread touched a missing page at `addr`.
    Pagefault {
        addr: u64,
        flags: u64,
    },
    /// The task forked: `ufd` is the child's new userfaultfd, already
    /// installed in the reader's descriptor table.
    Fork {
        ufd: i32,
    },
    /// mremap moved [from, from+len) to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// madvise(DONTNEED/REMOVE) is about to drop [start, end).
    Remove {
        start: u64,
        end: u64,
    },
    /// [start, end) was unmapped.
    Unmap {
        start: u64,
        end: u64,
    },
    Other(u8),
}

impl UffdMsgRaw {
    pub fn decode(&self) -> UffdMsg {
        let a = self.arg;
        match self.event {
            UFFD_EVENT_PAGEFAULT => UffdMsg::Pagefault {
                flags: a[0],
                addr: a[1],
            },
            UFFD_EVENT_FORK => UffdMsg::Fork {
                ufd: (a[0] & 0xffff_ffff) as u32 as i32,
            },
            UFFD_EVENT_REMAP => UffdMsg::Remap {
                from: a[0],
                to: a[1],
                len: a[2],
            },
            UFFD_EVENT_REMOVE => UffdMsg::Remove {
                start: a[0],
                end: a[1],
            },
            UFFD_EVENT_UNMAP => UffdMsg::Unmap {
                start: a[0],
                end: a[1],
            },
            e => UffdMsg::Other(e),
        }
    }
}

/// Reads up to `out.len()` messages; Ok(0) when none is waiting (the fd is
/// non-blocking).
pub fn read_msgs(uffd: BorrowedFd<'_>, out: &mut [UffdMsgRaw]) -> Result<usize, Errno> {
    let size = std::mem::size_of::<UffdMsgRaw>();
    // SAFETY: reads into `out`, a slice of plain-data structs of exactly
    // the kernel's uffd_msg layout; at most out.len() * size bytes.
    let r = unsafe {
        libc::read(
            uffd.as_raw_fd(),
            out.as_mut_ptr() as *mut libc::c_void,
            std::mem::size_of_val(out),
        )
    };
    match Errno::result(r) {
        Ok(n) => Ok(n as usize / size),
        Err(Errno::EAGAIN) => Ok(0),
        Err(e) => Err(e),
    }
}

/// UFFDIO_COPY: copies `len` bytes from `src` (our memory) to `dst` in the
/// uffd's mm. Returns the bytes copied; on error, the bytes copied before
/// it (a partial copy) and the errno.
///
/// # Safety
/// `src` must be readable for `len` bytes.
pub unsafe fn copy(
    uffd: BorrowedFd<'_>,
    dst: u64,
    src: *const u8,
    len: u64,
    dontwake: bool,
) -> Result<u64, (u64, Errno)> {
    let mut c = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode: if dontwake {
            UFFDIO_COPY_MODE_DONTWAKE
        } else {
            0
        },
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads and writes one struct uffdio_copy; the
    // caller vouches for the source range.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    match Errno::result(r) {
        Ok(_) => Ok(c.copy.max(0) as u64),
        Err(e) => Err((c.copy.max(0) as u64, e)),
    }
}

/// UFFDIO_ZEROPAGE over [start, start+len) (wakes the faulting threads).
pub fn zeropage(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut z = UffdioZeropage {
        start,
        len,
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE reads and writes one struct uffdio_zeropage.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_ZEROPAGE,
            &mut z as *mut UffdioZeropage,
        )
    };
    Errno::result(r).map(drop)
}

/// UFFDIO_WAKE: wakes threads waiting on faults in [start, start+len).
pub fn wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut w = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE reads one struct uffdio_range.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE, &mut w as *mut UffdioRange) };
    Errno::result(r).map(drop)
}

/// Registers [start, start+len) for missing-page faults.
pub fn register_missing(uffd: &OwnedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut reg = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut reg as *mut UffdioRegister,
        )
    };
    Errno::result(r).map(drop)
}

#[repr(C)]
#[derive(Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// UFFDIO_API (once per uffd): enables `features`, returns the kernel's mask.
pub fn api(uffd: &OwnedFd, features: u64) -> Result<u64, Errno> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one struct uffdio_api.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    Errno::result(r)?;
    Ok(api.features)
}

/// Registers [start, start+len) for write-protect tracking. The range acts
/// on the mm the uffd was created in, whoever makes the call.
pub fn register_wp(uffd: &OwnedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut reg = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut reg as *mut UffdioRegister,
        )
    };
    Errno::result(r).map(drop)
}

/// Runs PAGEMAP_SCAN over [start, end) until the whole range is walked,
/// handing each reported region to `f`. `template` gives flags and masks.
fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    template: &PmScanArg,
    mut f: impl FnMut(&PageRegion),
) -> Result<(), Errno> {
    const VEC: usize = 512;
    let mut regions = [PageRegion::default(); VEC];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: template.flags,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: VEC as u64,
            category_mask: template.category_mask,
            category_anyof_mask: template.category_anyof_mask,
            return_mask: template.return_mask,
            ..PmScanArg::default()
        };
        // SAFETY: arg points at `regions` (vec_len entries), which outlives
        // the call; the kernel fills at most vec_len regions and updates arg.
        let n = unsafe {
            libc::ioctl(
                pagemap.as_raw_fd(),
                PAGEMAP_SCAN,
                &mut arg as *mut PmScanArg,
            )
        };
        let n = Errno::result(n)? as usize;
        regions[..n.min(VEC)].iter().for_each(&mut f);
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    Ok(())
}

/// Appends to `out` the (start, end, categories) regions of [start, end)
/// with any of `any_of` set, as PAGEMAP_SCAN reports them (each region is
/// uniform in the `returned` categories). No write-protection changes.
pub fn scan_regions(
    pagemap: &File,
    start: u64,
    end: u64,
    any_of: u64,
    returned: u64,
    out: &mut Vec<(u64, u64, u64)>,
) -> Result<(), Errno> {
    let template = PmScanArg {
        category_anyof_mask: any_of,
        return_mask: returned,
        ..PmScanArg::default()
    };
    scan(pagemap, start, end, &template, |r| {
        out.push((r.start, r.end, r.categories))
    })
}

/// Appends to `out` the [start, end) ranges of pages written since they
/// were last write-protected, and write-protects them again, atomically
/// (PM_SCAN_WP_MATCHING on WP_ASYNC memory). `pagemap` is the task's
/// /proc/PID/pagemap.
pub fn scan_written(
    pagemap: &File,
    start: u64,
    end: u64,
    out: &mut Vec<(u64, u64)>,
) -> Result<(), Errno> {
    let template = PmScanArg {
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    scan(pagemap, start, end, &template, |r| match out.last_mut() {
        Some(last) if last.1 == r.start => last.1 = r.end,
        _ => out.push((r.start, r.end)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
        assert_eq!(std::mem::size_of::<UffdMsgRaw>(), 32);
    }
}
