//! Image directories linked by their inventories' `parent` field: a dump
//! on top of pre-dumps. Pages marked in-parent are looked up through the
//! chain, however long.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::container::{ImageDir, ImageError, Kind, PagesReader};
use super::messages::{Inventory, Pagemap, PE_IN_PARENT, PE_LAZY};

const PAGE: u64 = 4096;

type Result<T> = std::result::Result<T, ImageError>;

fn bad(dir: &Path, what: impl Into<String>) -> ImageError {
    ImageError::Bad {
        path: dir.to_path_buf(),
        what: what.into(),
    }
}

/// One image directory's page runs, with where each run's data starts in
/// its pages file (None for in-parent runs): from the pagemap's
/// `data_offset` on, in order.
#[derive(Debug)]
pub struct LayerMap {
    pub dir: PathBuf,
    pub pagemap: Pagemap,
    offsets: Vec<Option<u64>>,
    data_bytes: u64,
}

impl LayerMap {
    /// Checks order and overlap, and computes data offsets.
    pub fn new(dir: &Path, pagemap: Pagemap) -> Result<LayerMap> {
        let mut offsets = Vec::with_capacity(pagemap.entries.len());
        let mut off = pagemap.data_offset;
        let mut prev_end = 0u64;
        for e in &pagemap.entries {
            let len = e
                .nr_pages
                .checked_mul(PAGE)
                .ok_or_else(|| bad(dir, "page count overflows"))?;
            let end = e
                .vaddr
                .checked_add(len)
                .ok_or_else(|| bad(dir, "page run overflows"))?;
            if e.vaddr % PAGE != 0 || e.vaddr < prev_end || len == 0 {
                return Err(bad(
                    dir,
                    format!(
                        "page run at {:#x} is misaligned, empty or out of order",
                        e.vaddr
                    ),
                ));
            }
            prev_end = end;
            // In-parent runs have their data in a parent, lazy ones in no
            // image at all (the lazy dump's source serves them).
            if e.flags & (PE_IN_PARENT | PE_LAZY) != 0 {
                offsets.push(None);
            } else {
                offsets.push(Some(off));
                off = off
                    .checked_add(len)
                    .ok_or_else(|| bad(dir, "page data offset overflows"))?;
            }
        }
        let data_bytes = off - pagemap.data_offset;
        Ok(LayerMap {
            dir: dir.to_path_buf(),
            pagemap,
            offsets,
            data_bytes,
        })
    }

    /// Bytes of page data this layer stores in its pages file.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Where this layer's page data starts in its pages file's data, and
    /// where it ends.
    pub fn data_range(&self) -> (u64, u64) {
        let start = self.pagemap.data_offset;
        (start, start + self.data_bytes)
    }

    /// Index of the first run ending after `addr`.
    fn first_after(&self, addr: u64) -> usize {
        self.pagemap
            .entries
            .partition_point(|e| e.vaddr + e.nr_pages * PAGE <= addr)
    }

    /// Whether every page of [start, end) is held by this layer (itself or
    /// through its parents).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for e in &self.pagemap.entries[self.first_after(start)..] {
            if at >= end {
                break;
            }
            if e.vaddr > at {
                return false;
            }
            at = e.vaddr + e.nr_pages * PAGE;
        }
        at >= end
    }
}

/// Loads the pagemap of task `pid` in the image directory `dir`.
pub fn load_layer(dir: &Path, pid: i32) -> Result<LayerMap> {
    layer_of(dir, pid, ImageDir::open(dir)?.read_pagemap(pid)?)
}

/// The layer of task `pid` in `dir` with its pagemap `pagemap` (read from
/// its task image), checked against its layout digest.
fn layer_of(dir: &Path, pid: i32, pagemap: Pagemap) -> Result<LayerMap> {
    match pagemap.layout_digest {
        Some(d) if d == layout_digest(&pagemap) => {}
        Some(_) => {
            return Err(bad(
                dir,
                format!("the page runs of pid {pid} do not match their layout digest: the pagemap is corrupted"),
            ))
        }
        None => {
            return Err(bad(
                dir,
                format!("the pagemap of pid {pid} has no layout digest (made by an older crust?)"),
            ))
        }
    }
    LayerMap::new(dir, pagemap)
}

/// The digest of a pagemap's layout: its pages file, where its data
/// starts there, and every run's address, length and flags, in order.
pub fn layout_digest(pm: &Pagemap) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(pm.pages_file.as_bytes());
    h.update(&pm.data_offset.to_le_bytes());
    for e in &pm.entries {
        h.update(&e.vaddr.to_le_bytes());
        h.update(&e.nr_pages.to_le_bytes());
        h.update(&e.flags.to_le_bytes());
    }
    h.digest()
}

/// Records the layout digest of a pagemap about to be written.
pub fn seal(pm: &mut Pagemap) {
    pm.layout_digest = Some(layout_digest(pm));
}

/// A run of restored memory and where its bytes are: layer index and
/// offset in that layer's pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub vaddr: u64,
    pub len: u64,
    pub layer: usize,
    pub data_off: u64,
}

/// The whole chain, from the dump (layer 0) down to the first pre-dump.
pub struct Chain {
    pub layers: Vec<LayerMap>,
    pub pages: Vec<PagesReader>,
}

/// Whether an image may be the parent of a later pre-dump or dump: a
/// pre-dump, or a snapshot, i.e. a dump that left the task running with
/// its dirty tracker (`dump --leave-running --track-mem`), which is the
/// one kind of dump whose inventory names a tracker. Any other dump either
/// killed the task or ended tracking: what was written after it is not
/// known.
pub fn can_be_parent(inv: &Inventory) -> bool {
    inv.kind == "pre-dump" || (inv.kind == "dump" && !inv.tracker.is_empty())
}

/// Follows the parent links from `start`: every directory must hold an
/// inventory of pid `pid`, be the very image its child names (image ids),
/// and appear once (no loops); `forbidden` (the directory a dump is about
/// to write) must not be in the chain at all. Every directory after the
/// first must be a pre-dump or a snapshot ([`can_be_parent`]), and the
/// first too if `first_is_parent`.
fn walk(
    start: &Path,
    pid: i32,
    forbidden: Option<&Path>,
    first_is_parent: bool,
) -> Result<Vec<(PathBuf, Inventory)>> {
    let mut out: Vec<(PathBuf, Inventory)> = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = Some(start.to_path_buf());
    while let Some(d) = cur {
        let canon = std::fs::canonicalize(&d).map_err(|e| ImageError::Io {
            path: d.clone(),
            source: e,
        })?;
        let child = out.last().map(|(p, _)| p.as_path());
        if forbidden == Some(canon.as_path()) {
            return Err(bad(
                child.unwrap_or(&d),
                format!(
                    "the parent image chain leads back to {}, the directory being written: refused",
                    d.display()
                ),
            ));
        }
        if !seen.insert(canon) {
            return Err(bad(
                child.unwrap_or(&d),
                format!("the parent links form a loop at {}", d.display()),
            ));
        }
        let inv: Inventory = ImageDir::open(&d)?.read(Kind::Inventory, None)?;
        // A process of a tree: its images are keyed by its pid. One that
        // a parent does not hold was new since: its chain ends there.
        let member = ImageDir::open(&d)?.has_task(pid);
        if inv.root_pid != pid && !member && !out.is_empty() {
            break;
        }
        if inv.root_pid != pid && !member {
            return Err(bad(
                &d,
                format!("image is of pid {}, not {pid}", inv.root_pid),
            ));
        }
        if inv.image_id == 0 {
            return Err(bad(&d, "inventory has no image id"));
        }
        if let Some((cdir, cinv)) = out.last() {
            if cinv.parent_id != inv.image_id {
                return Err(bad(
                    cdir,
                    format!(
                        "parent image {} is not the one this image was made on (image id {:#x}, expected {:#x}): it was re-dumped since",
                        d.display(),
                        inv.image_id,
                        cinv.parent_id
                    ),
                ));
            }
        }
        if (first_is_parent || !out.is_empty()) && !can_be_parent(&inv) {
            return Err(bad(
                &d,
                format!(
                    "parent image is a {} that ended dirty tracking, not a pre-dump or a snapshot \
                     (dump --leave-running --track-mem)",
                    inv.kind
                ),
            ));
        }
        cur = (!inv.parent.is_empty()).then(|| d.join(&inv.parent));
        out.push((d, inv));
    }
    Ok(out)
}

/// Checks, before a dump or pre-dump into `target` touches anything, the
/// parent chain starting at `parent`: no loop, `target` not in it, every
/// parent a complete pre-dump or snapshot of `pid` (inventory, pagemap, pages file of
/// the right length), linked by image ids. Returns the parent's inventory.
pub fn check_parents(target: &Path, parent: &Path, pid: i32) -> Result<Inventory> {
    let target = std::fs::canonicalize(target).map_err(|e| ImageError::Io {
        path: target.to_path_buf(),
        source: e,
    })?;
    let links = walk(parent, pid, Some(&target), true)?;
    for (d, inv) in &links {
        let layer = load_layer(d, pid)?;
        // A pre-dump whose pages went to a page server has no pages file
        // here: its pagemap is all the next image needs of it.
        if inv.pages_at.is_empty() {
            open_pages(d, &layer)?;
        }
    }
    links
        .into_iter()
        .next()
        .map(|(_, inv)| inv)
        .ok_or_else(|| bad(parent, "no parent image"))
}

/// Opens a layer's pages file and checks it holds what its pagemap says.
/// (Other processes of the tree may have their data in the same file:
/// the file must hold this one's, not only this one's.)
fn open_pages(d: &Path, layer: &LayerMap) -> Result<PagesReader> {
    let name = &layer.pagemap.pages_file;
    if name.is_empty() || name.contains('/') || !name.ends_with(".img") {
        return Err(bad(d, format!("bad pages file name {name:?}")));
    }
    let reader = PagesReader::open(&d.join(name))?;
    let (start, end) = layer.data_range();
    if reader.data_len() < end {
        return Err(bad(
            d,
            format!(
                "pagemap covers {} bytes of {name} from offset {start}, but it holds {} bytes of data",
                layer.data_bytes(),
                reader.data_len()
            ),
        ));
    }
    Ok(reader)
}

/// The checksum of one run of page data: xxh3-64 of its bytes, seeded
/// with its address, so that data moved to another address fails too.
pub fn run_checksum(vaddr: u64, data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(data, vaddr)
}

/// `run_checksum` computed piece by piece, for data that arrives in
/// batches: feeding a run's bytes in any split gives the same value.
pub fn run_hasher(vaddr: u64) -> xxhash_rust::xxh3::Xxh3 {
    xxhash_rust::xxh3::Xxh3::with_seed(vaddr)
}

/// Fills in the checksum of every stored run of `pagemap`, reading the
/// data back from its pages file in `dir` (written and complete).
pub fn add_checksums(dir: &Path, pid: i32, pagemap: &mut Pagemap) -> Result<()> {
    let layer = LayerMap::new(dir, std::mem::take(pagemap))?;
    let reader = open_pages(dir, &layer)?;
    let LayerMap {
        pagemap: mut pm,
        offsets,
        ..
    } = layer;
    for (e, off) in pm.entries.iter_mut().zip(&offsets) {
        if let Some(off) = off {
            let data = reader
                .bytes(*off, e.nr_pages * PAGE)
                .ok_or_else(|| bad(dir, format!("pages of pid {pid} end early")))?;
            e.checksum = Some(run_checksum(e.vaddr, data));
        }
    }
    *pagemap = pm;
    Ok(())
}

/// Checks every stored run of a layer (those `keep` accepts) against its
/// checksum.
fn verify_checksums(
    layer: &LayerMap,
    reader: &PagesReader,
    keep: impl Fn(&super::messages::PagemapEntry) -> bool,
) -> Result<()> {
    let file = layer.dir.join(&layer.pagemap.pages_file);
    for (e, off) in layer.pagemap.entries.iter().zip(&layer.offsets) {
        let Some(off) = off else { continue };
        if !keep(e) {
            continue;
        }
        let data = reader
            .bytes(*off, e.nr_pages * PAGE)
            .ok_or_else(|| bad(&file, "page data ends early"))?;
        match e.checksum {
            None => {
                return Err(bad(
                    &file,
                    format!("page run at {:#x} has no checksum", e.vaddr),
                ))
            }
            Some(c) if c != run_checksum(e.vaddr, data) => {
                return Err(bad(
                    &file,
                    format!(
                        "checksum mismatch in the {} pages at {:#x}: the page data is corrupted",
                        e.nr_pages, e.vaddr
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Chain {
    /// Opens the dump in `dir` and its parents: ids, kinds, loops, page
    /// file lengths and (if `verify_data`) every run's checksum.
    pub fn open(dir: &Path, pid: i32, verify_data: bool) -> Result<Chain> {
        Chain::open_with_top(dir, pid, None, verify_data)
    }

    /// As [`Chain::open`], given the dump's own pagemap if the caller
    /// read it already with the task image (restore): the task image is
    /// not read again for it.
    pub fn open_with_top(
        dir: &Path,
        pid: i32,
        mut top: Option<Pagemap>,
        verify_data: bool,
    ) -> Result<Chain> {
        let mut layers = Vec::new();
        let mut pages = Vec::new();
        for (d, inv) in walk(dir, pid, None, false)? {
            if !inv.pages_at.is_empty() {
                return Err(bad(
                    &d,
                    format!(
                        "the page data of this image went to the page server at {}, not into this directory: restore from the directory that page server wrote",
                        inv.pages_at
                    ),
                ));
            }
            // The first directory walked is `dir` itself.
            let layer = match top.take() {
                Some(pagemap) => layer_of(&d, pid, pagemap)?,
                None => load_layer(&d, pid)?,
            };
            let reader = open_pages(&d, &layer)?;
            if verify_data {
                verify_checksums(&layer, &reader, |_| true)?;
            }
            layers.push(layer);
            pages.push(reader);
        }
        Ok(Chain { layers, pages })
    }

    /// Checks the stored runs `keep(layer index, run)` accepts against
    /// their checksums (for a chain opened without `verify_data`: lazy
    /// restore checks only what it fills itself, the daemon the rest).
    pub fn verify_runs(
        &self,
        keep: impl Fn(usize, &super::messages::PagemapEntry) -> bool,
    ) -> Result<()> {
        for (i, (layer, reader)) in self.layers.iter().zip(&self.pages).enumerate() {
            verify_checksums(layer, reader, |e| keep(i, e))?;
        }
        Ok(())
    }

    /// The runs of the top layer marked PE_LAZY: (vaddr, len) of pages a
    /// lazy dump left at its source, whose data is in no image.
    pub fn lazy_runs(&self) -> Vec<(u64, u64)> {
        self.layers[0]
            .pagemap
            .entries
            .iter()
            .filter(|e| e.flags & PE_LAZY != 0)
            .map(|e| (e.vaddr, e.nr_pages * PAGE))
            .collect()
    }

    /// Every run of the top layer, with in-parent runs resolved down the
    /// chain into runs of stored data. PE_LAZY runs are left out (see
    /// `lazy_runs`).
    pub fn resolve(&self) -> Result<Vec<Source>> {
        let mut out = Vec::new();
        let top = &self.layers[0];
        for (e, off) in top.pagemap.entries.iter().zip(&top.offsets) {
            let len = e.nr_pages * PAGE;
            if e.flags & PE_LAZY != 0 {
                continue;
            }
            match off {
                Some(off) => out.push(Source {
                    vaddr: e.vaddr,
                    len,
                    layer: 0,
                    data_off: *off,
                }),
                None => self.resolve_in(1, e.vaddr, e.vaddr + len, &mut out)?,
            }
        }
        Ok(out)
    }

    fn resolve_in(&self, layer: usize, start: u64, end: u64, out: &mut Vec<Source>) -> Result<()> {
        let Some(l) = self.layers.get(layer) else {
            return Err(bad(
                &self.layers[layer - 1].dir,
                format!(
                    "pages {start:#x}-{end:#x} are marked in-parent but there is no parent image"
                ),
            ));
        };
        let mut at = start;
        let first = l.first_after(start);
        for (e, off) in l.pagemap.entries[first..].iter().zip(&l.offsets[first..]) {
            if at >= end {
                break;
            }
            if e.vaddr > at {
                break;
            }
            let e_end = e.vaddr + e.nr_pages * PAGE;
            let piece_end = e_end.min(end);
            if e.flags & PE_LAZY != 0 {
                return Err(bad(
                    &l.dir,
                    format!(
                        "parent image has lazy pages at {:#x}: a parent must be a pre-dump or a snapshot",
                        e.vaddr
                    ),
                ));
            }
            match off {
                Some(off) => out.push(Source {
                    vaddr: at,
                    len: piece_end - at,
                    layer,
                    data_off: off + (at - e.vaddr),
                }),
                None => self.resolve_in(layer + 1, at, piece_end, out)?,
            }
            at = piece_end;
        }
        if at < end {
            return Err(bad(
                &l.dir,
                format!("pages {at:#x}-{end:#x} are needed by a child image but missing here"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::messages::PagemapEntry;

    fn layer(entries: &[(u64, u64, bool)]) -> LayerMap {
        layer_at(0, entries)
    }

    fn layer_at(data_offset: u64, entries: &[(u64, u64, bool)]) -> LayerMap {
        let pm = Pagemap {
            pages_file: "p".into(),
            layout_digest: None,
            data_offset,
            entries: entries
                .iter()
                .map(|&(v, n, p)| PagemapEntry {
                    vaddr: v,
                    nr_pages: n,
                    flags: if p { PE_IN_PARENT } else { 0 },
                    checksum: None,
                })
                .collect(),
        };
        LayerMap::new(Path::new("x"), pm).unwrap()
    }

    #[test]
    fn offsets_skip_in_parent_runs() {
        let l = layer(&[(0x1000, 2, false), (0x3000, 1, true), (0x5000, 3, false)]);
        assert_eq!(l.offsets, vec![Some(0), None, Some(2 * PAGE)]);
        assert_eq!(l.data_bytes(), 5 * PAGE);
        assert!(l.covers(0x1000, 0x4000));
        assert!(!l.covers(0x1000, 0x5000));
        assert!(l.covers(0x6000, 0x8000));
    }

    /// A process whose data follows another's in a shared pages file.
    #[test]
    fn offsets_start_at_the_data_offset() {
        let l = layer_at(
            7 * PAGE,
            &[(0x1000, 2, false), (0x3000, 1, true), (0x5000, 3, false)],
        );
        assert_eq!(l.offsets, vec![Some(7 * PAGE), None, Some(9 * PAGE)]);
        assert_eq!(l.data_bytes(), 5 * PAGE);
        assert_eq!(l.data_range(), (7 * PAGE, 12 * PAGE));
        let mut pm = l.pagemap.clone();
        seal(&mut pm);
        let digest = pm.layout_digest;
        pm.data_offset = 0;
        assert_ne!(
            layout_digest(&pm),
            digest.unwrap_or_default(),
            "the digest binds the offset"
        );
        pm.data_offset = u64::MAX - PAGE;
        assert!(
            LayerMap::new(Path::new("x"), pm).is_err(),
            "offset overflow"
        );
    }

    #[test]
    fn rejects_overlap() {
        let pm = Pagemap {
            pages_file: "p".into(),
            layout_digest: None,
            data_offset: 0,
            entries: vec![
                PagemapEntry {
                    vaddr: 0x2000,
                    nr_pages: 2,
                    flags: 0,
                    checksum: None,
                },
                PagemapEntry {
                    vaddr: 0x3000,
                    nr_pages: 1,
                    flags: 0,
                    checksum: None,
                },
            ],
        };
        assert!(LayerMap::new(Path::new("x"), pm).is_err());
    }

    fn chain(layers: Vec<LayerMap>) -> Chain {
        Chain {
            layers,
            pages: Vec::new(),
        }
    }

    #[test]
    fn resolves_through_two_parents() {
        let top = layer(&[(0x1000, 4, true), (0x9000, 1, false)]);
        let mid = layer(&[(0x1000, 1, false), (0x2000, 2, true), (0x4000, 1, false)]);
        let base = layer(&[(0x0000, 8, false)]);
        let src = chain(vec![top, mid, base]).resolve().unwrap();
        assert_eq!(
            src,
            vec![
                Source {
                    vaddr: 0x1000,
                    len: PAGE,
                    layer: 1,
                    data_off: 0
                },
                Source {
                    vaddr: 0x2000,
                    len: 2 * PAGE,
                    layer: 2,
                    data_off: 0x2000
                },
                Source {
                    vaddr: 0x4000,
                    len: PAGE,
                    layer: 1,
                    data_off: PAGE
                },
                Source {
                    vaddr: 0x9000,
                    len: PAGE,
                    layer: 0,
                    data_off: 0
                },
            ]
        );
    }

    #[test]
    fn missing_parent_pages_are_an_error() {
        let top = layer(&[(0x1000, 2, true)]);
        let base = layer(&[(0x1000, 1, false)]);
        let err = chain(vec![top, base]).resolve().unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let err = chain(vec![layer(&[(0x1000, 1, true)])])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no parent"), "{err}");
    }
}
