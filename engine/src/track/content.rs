//! The content tracker: works on any kernel. Every pre-dump reads every
//! page and keeps a 64-bit digest (xxh3) of each; a page whose digest
//! equals the parent's is left to the parent. It finds exactly the pages
//! whose bytes changed, at the price of reading all of them.

use super::{DirtyTracker, Knowledge};
use crate::error::Result;
use crate::image::messages::Digests;
use crate::proc::maps::Vma;
use crate::ranges::Range;

pub struct Content {
    continued: bool,
}

impl Content {
    /// `continued`: the parent image has digests to compare with.
    pub fn new(continued: bool) -> Content {
        Content { continued }
    }
}

impl DirtyTracker for Content {
    fn name(&self) -> &'static str {
        super::CONTENT
    }

    fn scan(&mut self, _v: &Vma, _written: &mut Vec<Range>) -> Result<Knowledge> {
        Ok(if self.continued {
            Knowledge::ByContent
        } else {
            Knowledge::Untracked
        })
    }
}

pub fn digest(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

/// A parent's digests, looked up by address.
pub struct ParentDigests<'a> {
    d: &'a Digests,
}

impl<'a> ParentDigests<'a> {
    pub fn new(d: &'a Digests) -> Self {
        ParentDigests { d }
    }

    pub fn get(&self, addr: u64) -> Option<u64> {
        let i = self.d.vaddr.binary_search(&addr).ok()?;
        self.d.hash.get(i).copied()
    }
}
