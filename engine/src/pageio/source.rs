//! Where restore and the lazy-pages daemon read page data: the image
//! chain (mapped pages files), or the source's page server over TCP.

use crate::error::Result;

/// Gives the bytes a checkpoint holds for pages of one task, by the
/// address they had in the dumped task (the "image address").
pub trait PageSource: Send {
    /// Fills `buf` with the bytes of [vaddr, vaddr + buf.len()): both
    /// page-aligned, the range within pages the images list as stored,
    /// in the parents, or lazy.
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()>;
    /// Every page the consumer wanted from this source is delivered (or the
    /// task it was for is gone): a remote source tells the server, which
    /// may then exit. Called once, by whoever owns the source.
    fn all_delivered(&mut self) -> Result<()> {
        Ok(())
    }
}
