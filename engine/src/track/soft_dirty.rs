//! The soft-dirty tracker: pagemap bit 55 tells which pages were written
//! since `4` was last written to /proc/PID/clear_refs; a VMA created or
//! changed since then carries VM_SOFTDIRTY (smaps `sd`) and is untracked.
//! Kernels without CONFIG_MEM_SOFT_DIRTY (this project's) never set the
//! bit: the tracker refuses to start there rather than call every page
//! clean.

use libc::pid_t;

use super::{DirtyTracker, Knowledge};
use crate::error::{Error, Result};
use crate::proc::maps::Vma;
use crate::proc::pagemap::{PageEntry, PagemapReader};
use crate::ranges::{self, Range};

const PAGE: u64 = 4096;

pub struct SoftDirty {
    pid: pid_t,
    reader: PagemapReader,
    continued: bool,
    entries: Vec<u64>,
}

/// The written pages among pagemap entries for pages from `start` on:
/// present or swapped pages with the soft-dirty bit.
pub fn written_ranges(start: u64, entries: &[u64]) -> Vec<Range> {
    let mut out = Vec::new();
    for (i, &e) in entries.iter().enumerate() {
        let e = PageEntry(e);
        if e.soft_dirty() && (e.present() || e.swapped()) {
            let page = start + i as u64 * PAGE;
            ranges::push(&mut out, (page, page + PAGE));
        }
    }
    out
}

impl SoftDirty {
    /// `continued`: the parent image was taken with this tracker, so
    /// clear_refs was written then.
    pub fn new(pid: pid_t, continued: bool) -> Result<SoftDirty> {
        crate::check::soft_dirty_works().map_err(|why| {
            Error::Other(format!("the soft-dirty tracker cannot run here: {why}"))
        })?;
        Ok(SoftDirty {
            pid,
            reader: PagemapReader::open(pid)?,
            continued,
            entries: Vec::new(),
        })
    }
}

impl DirtyTracker for SoftDirty {
    fn name(&self) -> &'static str {
        super::SOFT_DIRTY
    }

    fn scan(&mut self, v: &Vma, written: &mut Vec<Range>) -> Result<Knowledge> {
        if !self.continued || v.vm_flags.soft_dirty() {
            return Ok(Knowledge::Untracked);
        }
        self.entries.clear();
        self.reader.read(
            v.start,
            ((v.end - v.start) / PAGE) as usize,
            &mut self.entries,
        )?;
        written.extend(written_ranges(v.start, &self.entries));
        Ok(Knowledge::Written)
    }

    fn needs_vm_flags(&self) -> bool {
        true // VM_SOFTDIRTY marks VMAs created or changed since clear_refs
    }

    fn rearm(&mut self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid);
        std::fs::write(&path, "4").map_err(|e| Error::io("writing 4 to", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as /proc/PID/pagemap gives them for five pages of a real
    /// process (pfns as root sees them), with bit 55 as a soft-dirty
    /// kernel would set it after writes to pages 1, 2 and 4.
    const RECORDED: [u64; 5] = [
        0x8100_0000_0012_3a41, // present, clean
        0x8180_0000_0012_3a42, // present, soft-dirty
        0x8180_0000_0012_3a57, // present, soft-dirty
        0x0000_0000_0000_0000, // never touched
        0x4080_0000_0000_0341, // swapped, soft-dirty
    ];

    #[test]
    fn dirty_pages_from_recorded_pagemap() {
        assert_eq!(
            written_ranges(0x7f00_0000_0000, &RECORDED),
            vec![
                (0x7f00_0000_1000, 0x7f00_0000_3000),
                (0x7f00_0000_4000, 0x7f00_0000_5000)
            ]
        );
    }

    #[test]
    fn absent_pages_are_never_dirty() {
        // Bit 55 alone, on a page neither present nor swapped.
        assert!(written_ranges(0, &[1 << 55]).is_empty());
    }
}
