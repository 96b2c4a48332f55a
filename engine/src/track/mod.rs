//! Dirty-page tracking between iterative pre-dumps.
//!
//! A tracker answers, per VMA, "which pages were written since the last
//! (pre-)dump", or "untracked" when it cannot know (a new VMA, one moved by
//! mremap, tracking lost): untracked VMAs are dumped whole. Only uffd-wp
//! exists so far; soft-dirty and content digests are to come behind the
//! same interface.

pub mod uffd_wp;

/// Name of the uffd-wp tracker in images and on the command line.
pub const UFFD_WP: &str = "uffd-wp";
