//! Where restore and the lazy-pages daemon read page data: the image
//! chain (mapped pages files), or the source's page server over TCP.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::chain::{Chain, Source};

/// Gives the bytes a checkpoint holds for pages of one task, by the
/// address they had in the dumped task (the "image address").
pub trait PageSource: Send {
    /// Fills `buf` with the bytes of [vaddr, vaddr + buf.len()): both
    /// page-aligned, the range within pages the images list as stored,
    /// in the parents, or lazy.
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()>;
    /// The bytes of [vaddr, vaddr + len) where they already are in this
    /// process's memory (a mapped pages file), for zero-copy consumers
    /// (process_vm_writev, UFFDIO_COPY); None when the source has no such
    /// view (a remote source) or the range is not in one piece there:
    /// then use `read_pages`.
    fn mapped(&self, _pid: i32, _vaddr: u64, _len: u64) -> Option<&[u8]> {
        None
    }
    /// Every page the consumer wanted from this source is delivered (or the
    /// task it was for is gone): a remote source tells the server, which
    /// may then exit. Called once, by whoever owns the source.
    fn all_delivered(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The image chain as a page source: the mapped pages files of the dump
/// and its parents. Cheap to clone (the mappings are shared), so every
/// thread of the lazy-pages daemon can have its own.
#[derive(Clone)]
pub struct ChainSource {
    pid: i32,
    chain: Arc<Chain>,
    /// Every stored page, resolved through the chain, in address order.
    sources: Arc<Vec<Source>>,
}

impl ChainSource {
    /// Wraps an opened chain (of task `pid`).
    pub fn new(chain: Chain, pid: i32) -> Result<ChainSource> {
        let sources = chain.resolve()?;
        Ok(ChainSource {
            pid,
            chain: Arc::new(chain),
            sources: Arc::new(sources),
        })
    }

    /// Opens the dump in `dir` and its parents (checking every run's
    /// checksum if `verify_data`).
    pub fn open(dir: &Path, pid: i32, verify_data: bool) -> Result<ChainSource> {
        ChainSource::new(Chain::open(dir, pid, verify_data)?, pid)
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Where every stored page's bytes are, in address order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The resolved run holding `vaddr`, if any.
    fn run_at(&self, vaddr: u64) -> Option<&Source> {
        let i = self.sources.partition_point(|s| s.vaddr + s.len <= vaddr);
        self.sources.get(i).filter(|s| s.vaddr <= vaddr)
    }

    /// The mapped bytes of one piece of layer `layer`'s pages file.
    pub fn layer_bytes(&self, layer: usize, data_off: u64, len: u64) -> Option<&[u8]> {
        self.chain.pages.get(layer)?.bytes(data_off, len)
    }
}

impl PageSource for ChainSource {
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        let end = vaddr + buf.len() as u64;
        let mut at = vaddr;
        while at < end {
            let run = self.run_at(at).ok_or_else(|| {
                Error::task(
                    pid,
                    format!("no image holds the data of the page at {at:#x}"),
                )
            })?;
            let n = (run.vaddr + run.len).min(end) - at;
            let data = self
                .layer_bytes(run.layer, run.data_off + (at - run.vaddr), n)
                .ok_or_else(|| Error::task(pid, format!("page data at {at:#x} out of bounds")))?;
            let o = (at - vaddr) as usize;
            buf[o..o + n as usize].copy_from_slice(data);
            at += n;
        }
        Ok(())
    }

    fn mapped(&self, pid: i32, vaddr: u64, len: u64) -> Option<&[u8]> {
        if pid != self.pid {
            return None;
        }
        let run = self.run_at(vaddr)?;
        if vaddr + len > run.vaddr + run.len {
            return None;
        }
        self.layer_bytes(run.layer, run.data_off + (vaddr - run.vaddr), len)
    }
}

/// The image chains of every live process of a dumped tree, by pid: the
/// lazy-pages daemon's local source (each uffd reads its own process's
/// pages). Cheap to clone, like [`ChainSource`].
#[derive(Clone)]
pub struct TreeSource {
    members: std::collections::BTreeMap<i32, ChainSource>,
}

impl TreeSource {
    /// Opens the chain of each live process of the tree in `dir` (checking
    /// every run's checksum if `verify_data`).
    pub fn open(dir: &Path, verify_data: bool) -> Result<TreeSource> {
        use crate::image::messages::PsTree;
        use crate::image::{ImageDir, Kind};
        let tree: PsTree = ImageDir::open(dir)?.read(Kind::PsTree, None)?;
        let mut members = std::collections::BTreeMap::new();
        for t in tree.tasks.iter().filter(|t| !t.zombie) {
            members.insert(t.pid, ChainSource::open(dir, t.pid, verify_data)?);
        }
        Ok(TreeSource { members })
    }

    /// The chain of process `pid`.
    pub fn member(&self, pid: i32) -> Option<&ChainSource> {
        self.members.get(&pid)
    }

    pub fn members(&self) -> impl Iterator<Item = (&i32, &ChainSource)> {
        self.members.iter()
    }
}

impl PageSource for TreeSource {
    fn read_pages(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<()> {
        match self.members.get_mut(&pid) {
            Some(m) => m.read_pages(pid, vaddr, buf),
            None => Err(Error::task(
                pid,
                "no live process of the dumped tree has this pid",
            )),
        }
    }

    fn mapped(&self, pid: i32, vaddr: u64, len: u64) -> Option<&[u8]> {
        self.members.get(&pid)?.mapped(pid, vaddr, len)
    }
}
