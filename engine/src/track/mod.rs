//! Dirty-page tracking between iterative pre-dumps.
//!
//! A tracker tells, per VMA, what it knows since the parent image: nothing
//! (the VMA is new, was moved, or tracking was lost: every page is
//! stored), which pages were written (the others are left to the parent),
//! or that page contents must be compared with the parent's digests once
//! read. Three backends:
//! - `uffd-wp`: a userfaultfd in WP_ASYNC mode read with PAGEMAP_SCAN
//!   (Linux 6.7+; the one this project's machines have);
//! - `soft-dirty`: pagemap bit 55 and clear_refs (kernels built with
//!   CONFIG_MEM_SOFT_DIRTY; refused by probe elsewhere);
//! - `content`: 64-bit page digests compared with the parent's, for any
//!   kernel, at the price of reading every page each time.

pub mod content;
pub mod soft_dirty;
pub mod uffd_wp;

use crate::error::Result;
use crate::proc::maps::Vma;
use crate::ranges::Range;

/// Names of the trackers, in images and on the command line.
pub const UFFD_WP: &str = "uffd-wp";
pub const SOFT_DIRTY: &str = "soft-dirty";
pub const CONTENT: &str = "content";

/// What a tracker knows about one VMA since the parent image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knowledge {
    /// Nothing: store every page.
    Untracked,
    /// Pages outside the reported written ranges are unchanged.
    Written,
    /// Read every page and compare it with the parent's digest.
    ByContent,
}

pub trait DirtyTracker: Send {
    fn name(&self) -> &'static str;

    /// Called for each page-holding VMA, in address order, while the task
    /// is frozen. Fills `written` when it returns `Knowledge::Written`, and
    /// arms tracking of the VMA for the next dump.
    fn scan(&mut self, vma: &Vma, written: &mut Vec<Range>) -> Result<Knowledge>;

    /// Called once after every VMA was scanned, still frozen.
    fn rearm(&mut self) -> Result<()> {
        Ok(())
    }

    /// Whether `scan` needs the VmFlags of /proc/PID/smaps (reading smaps
    /// walks every page table entry: a pre-dump avoids it when it can).
    fn needs_vm_flags(&self) -> bool {
        false
    }
}
