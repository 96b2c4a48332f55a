//! Where a dump or pre-dump writes page data: the pages file of an image
//! directory, or a page server over TCP.

use std::os::fd::BorrowedFd;

use crate::error::Result;

/// Receives the page data of one task's pages file, in pagemap order.
pub trait PageSink: Send {
    /// Appends `data` (whole pages).
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Appends `len` bytes read from the pipe `pipe` (splice mode); the
    /// bytes leave the pipe.
    fn splice_from(&mut self, pipe: BorrowedFd<'_>, len: usize) -> Result<()>;
    /// All data is in: makes it durable where it went and returns the
    /// number of bytes the sink received.
    fn finish(self: Box<Self>) -> Result<u64>;
    /// For data that goes into a pages file shared by several processes:
    /// the file's name and where this process's data starts in it (None:
    /// the process's own `pages-PID.img`, from its start).
    fn placement(&self) -> Option<(String, u64)> {
        None
    }
}
