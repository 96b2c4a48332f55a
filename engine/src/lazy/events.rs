//! What the lazy-pages daemon knows of one userfaultfd (one mm): which
//! image pages are still to be delivered, and where each image range
//! lives now. Image addresses are the dumped task's; live addresses are
//! where the restored task has them after mremap. Pure bookkeeping, no
//! system calls: the daemon's threads drive it under a lock.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

const PAGE: u64 = 4096;

/// Sorted, disjoint, half-open ranges, joined when they touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub fn from_sorted(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|(&a, &b)| (a, b)).collect()
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.0
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &e)| addr < e)
    }

    pub fn insert(&mut self, mut a: u64, mut b: u64) {
        if a >= b {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=a).next_back() {
            if e >= a {
                a = s;
                b = b.max(e);
                self.0.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.0.range(a..=b).next() {
            b = b.max(e);
            self.0.remove(&s);
        }
        self.0.insert(a, b);
    }

    /// Removes [a, b); returns the bytes that were in the set.
    pub fn remove(&mut self, a: u64, b: u64) -> u64 {
        if a >= b {
            return 0;
        }
        let mut removed = 0;
        let mut hits: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.0.range(..a).next_back() {
            if e > a {
                hits.push((s, e));
            }
        }
        hits.extend(self.0.range(a..b).map(|(&s, &e)| (s, e)));
        for (s, e) in hits {
            self.0.remove(&s);
            if s < a {
                self.0.insert(s, a);
            }
            if e > b {
                self.0.insert(b, e);
            }
            removed += e.min(b) - s.max(a);
        }
        removed
    }

    /// The lowest range of the set.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.0.iter().next().map(|(&a, &b)| (a, b))
    }

    /// The first part of the set at or after `cursor` (wrapping around to
    /// the start), at most `max` bytes.
    pub fn next_from(&self, cursor: u64, max: u64) -> Option<(u64, u64)> {
        let hit = self
            .0
            .range(..=cursor)
            .next_back()
            .filter(|(_, &e)| e > cursor)
            .map(|(_, &e)| (cursor, e))
            .or_else(|| self.0.range(cursor..).next().map(|(&s, &e)| (s, e)))
            .or_else(|| self.0.iter().next().map(|(&s, &e)| (s, e)))?;
        Some((hit.0, hit.1.min(hit.0 + max)))
    }
}

/// Live address ranges and the image addresses they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrMap(BTreeMap<u64, (u64, u64)>); // live start -> (live end, image start)

impl AddrMap {
    pub fn identity(ranges: &[(u64, u64)]) -> AddrMap {
        AddrMap(ranges.iter().map(|&(a, b)| (a, (b, a))).collect())
    }

    /// The image address at live address `live`.
    pub fn to_image(&self, live: u64) -> Option<u64> {
        let (&s, &(e, img)) = self.0.range(..=live).next_back()?;
        (live < e).then(|| img + (live - s))
    }

    /// Where image address `image` lives now, and how many bytes from
    /// there (at most `len`) stay contiguous.
    pub fn to_live(&self, image: u64, len: u64) -> Option<(u64, u64)> {
        self.0.iter().find_map(|(&s, &(e, img))| {
            (img <= image && image < img + (e - s))
                .then(|| (s + (image - img), len.min(img + (e - s) - image)))
        })
    }

    /// Takes [a, b) out of the map; returns the pieces removed as
    /// (live start, live end, image start).
    pub fn cut(&mut self, a: u64, b: u64) -> Vec<(u64, u64, u64)> {
        let mut hits: Vec<(u64, u64, u64)> = Vec::new();
        if let Some((&s, &(e, img))) = self.0.range(..a).next_back() {
            if e > a {
                hits.push((s, e, img));
            }
        }
        hits.extend(self.0.range(a..b).map(|(&s, &(e, img))| (s, e, img)));
        let mut out = Vec::new();
        for (s, e, img) in hits {
            self.0.remove(&s);
            if s < a {
                self.0.insert(s, (a, img));
            }
            if e > b {
                self.0.insert(b, (e, img + (b - s)));
            }
            let (cs, ce) = (s.max(a), e.min(b));
            out.push((cs, ce, img + (cs - s)));
        }
        out
    }

    pub fn insert(&mut self, live: u64, end: u64, image: u64) {
        self.0.insert(live, (end, image));
    }
}

/// What to do for one faulting page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Copy image page `image` to live page `live` (claimed: no longer
    /// pending).
    Copy { live: u64, image: u64 },
    /// The image has nothing for it (never stored, dropped, or not an
    /// image page at all): map the zero page.
    Zero { live: u64 },
}

/// One userfaultfd: the restored task's, or a forked child's.
pub struct MmState {
    pub uffd: Arc<OwnedFd>,
    /// Image ranges not yet delivered nor dropped.
    pub pending: RangeSet,
    /// Image ranges the background transfer takes before any other
    /// (pages of local parent images: no network, and restore left them
    /// out only so as not to wait for them). Stale parts (no longer
    /// pending) are pruned as the transfer meets them.
    pub first: RangeSet,
    pub map: AddrMap,
    /// Where background transfer goes on (moves to just after a fault).
    pub cursor: u64,
    /// The mm is gone (ESRCH): nothing more for it.
    pub gone: bool,
    /// The dumped process whose image pages this mm gets (a forked
    /// child's are its parent's).
    pub image_pid: i32,
    /// Image ranges of that process's VMAs a forked child does not
    /// inherit as they are (see `fork`).
    pub not_inherited: Arc<Vec<(u64, u64)>>,
}

impl MmState {
    /// `lazy` and `first` (parent pages) are both delivered; `first`
    /// goes ahead in the background.
    pub fn new(
        uffd: Arc<OwnedFd>,
        lazy: &[(u64, u64)],
        first: &[(u64, u64)],
        registered: &[(u64, u64)],
    ) -> MmState {
        let mut pending = RangeSet::from_sorted(lazy);
        for &(a, b) in first {
            pending.insert(a, b);
        }
        MmState {
            uffd,
            pending,
            first: RangeSet::from_sorted(first),
            map: AddrMap::identity(registered),
            cursor: 0,
            gone: false,
            image_pid: 0,
            not_inherited: Arc::default(),
        }
    }

    pub fn finished(&self) -> bool {
        self.gone || self.pending.is_empty()
    }

    /// A thread faulted at live address `addr`.
    pub fn fault(&mut self, addr: u64) -> Action {
        let live = addr & !(PAGE - 1);
        match self.map.to_image(live) {
            Some(image) if self.pending.contains(image) => {
                self.pending.remove(image, image + PAGE);
                self.cursor = image + PAGE;
                Action::Copy { live, image }
            }
            _ => Action::Zero { live },
        }
    }

    /// Drops the pending pages behind live [a, b) (madvise DONTNEED):
    /// later faults there get zeros. Returns the pages dropped.
    pub fn remove(&mut self, a: u64, b: u64) -> u64 {
        let pieces = self.map.clone().cut(a, b);
        pieces
            .iter()
            .map(|&(s, e, img)| self.pending.remove(img, img + (e - s)) / PAGE)
            .sum()
    }

    /// live [a, b) was unmapped. Returns the pages dropped.
    pub fn unmap(&mut self, a: u64, b: u64) -> u64 {
        let pieces = self.map.cut(a, b);
        pieces
            .iter()
            .map(|&(s, e, img)| self.pending.remove(img, img + (e - s)) / PAGE)
            .sum()
    }

    /// mremap moved live [from, from + len) to `to`: pending pages follow;
    /// whatever the move grew is not in the map (faults get zeros).
    /// Returns the pages dropped where the move landed over other memory.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) -> u64 {
        let moved = self.map.cut(from, from + len);
        let dropped = self.unmap(to, to + len);
        for (s, e, img) in moved {
            self.map.insert(to + (s - from), to + (e - from), img);
        }
        dropped
    }

    /// The state of a child forked now: the same pages pending, at the
    /// same addresses, plus `claimed` (pages being served to the parent,
    /// which the child does not have yet).
    ///
    /// `not_inherited`: image ranges of VMAs a child does not get as they
    /// are (MADV_WIPEONFORK: empty in the child; MADV_DONTFORK: absent):
    /// nothing of them is delivered to the child, its faults there get
    /// zeros.
    pub fn fork(
        &self,
        uffd: Arc<OwnedFd>,
        claimed: &[u64],
        not_inherited: &[(u64, u64)],
    ) -> MmState {
        let mut pending = self.pending.clone();
        for &img in claimed {
            pending.insert(img, img + PAGE);
        }
        let mut map = self.map.clone();
        let entries: Vec<(u64, u64, u64)> =
            map.0.iter().map(|(&s, &(e, img))| (s, e, img)).collect();
        for (s, e, img) in entries {
            let img_end = img + (e - s);
            for &(a, b) in not_inherited {
                let (x, y) = (a.max(img), b.min(img_end));
                if x < y {
                    map.cut(s + (x - img), s + (y - img));
                    pending.remove(x, y);
                }
            }
        }
        MmState {
            uffd,
            pending,
            first: self.first.clone(),
            map,
            cursor: self.cursor,
            gone: false,
            image_pid: self.image_pid,
            not_inherited: self.not_inherited.clone(),
        }
    }

    /// The first pending piece of `first` (at most `max` bytes), pruning
    /// what is no longer pending.
    fn next_first(&mut self, max: u64) -> Option<(u64, u64)> {
        while let Some((a, b)) = self.first.first() {
            match self.pending.next_from(a, max) {
                Some((x, y)) if x >= a && x < b => {
                    self.first.remove(a, x);
                    return Some((x, y.min(b)));
                }
                _ => {
                    self.first.remove(a, b);
                }
            }
        }
        None
    }

    /// Claims the next background chunk: (live, image, len), at most
    /// `max` bytes, contiguous both in the image and where it lives now.
    /// Pending pages that live nowhere any more are dropped (counted in
    /// `dropped`).
    pub fn claim(&mut self, max: u64, dropped: &mut u64) -> Option<(u64, u64, u64)> {
        loop {
            let (img, end) = match self.next_first(max) {
                Some(r) => r,
                None => self.pending.next_from(self.cursor, max)?,
            };
            match self.map.to_live(img, end - img) {
                Some((live, len)) => {
                    self.pending.remove(img, img + len);
                    self.cursor = img + len;
                    return Some((live, img, len));
                }
                None => {
                    *dropped += self.pending.remove(img, end) / PAGE;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE;

    fn state(lazy: &[(u64, u64)], reg: &[(u64, u64)]) -> MmState {
        let fd = std::fs::File::open("/dev/null").unwrap();
        MmState::new(Arc::new(fd.into()), lazy, &[], reg)
    }

    #[test]
    fn first_ranges_go_ahead_and_stale_parts_are_skipped() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let mut m = MmState::new(
            Arc::new(fd.into()),
            &[(0x10000, 0x14000)],
            &[(0x18000, 0x1a000), (0x1c000, 0x1e000)],
            &[(0x10000, 0x20000)],
        );
        assert_eq!(m.pending.total(), 8 * P);
        // A fault takes a page of the first range; a DONTNEED drops the
        // second range whole.
        assert!(matches!(m.fault(0x18000), Action::Copy { .. }));
        assert_eq!(m.remove(0x1c000, 0x1e000), 2);
        let mut dropped = 0;
        assert_eq!(m.claim(0x4000, &mut dropped), Some((0x19000, 0x19000, P)));
        // Then the lazy pages, from the cursor (after the first range).
        assert_eq!(
            m.claim(0x4000, &mut dropped),
            Some((0x10000, 0x10000, 4 * P))
        );
        assert_eq!(m.claim(0x4000, &mut dropped), None);
        assert_eq!(dropped, 0);
    }

    #[test]
    fn range_set_insert_remove_next() {
        let mut s = RangeSet::from_sorted(&[(0, 4 * P), (8 * P, 12 * P)]);
        assert!(s.contains(0) && s.contains(3 * P) && !s.contains(4 * P));
        assert_eq!(s.remove(2 * P, 9 * P), 3 * P);
        assert_eq!(s.ranges(), vec![(0, 2 * P), (9 * P, 12 * P)]);
        s.insert(2 * P, 9 * P);
        assert_eq!(s.ranges(), vec![(0, 12 * P)]);
        assert_eq!(s.next_from(5 * P, 2 * P), Some((5 * P, 7 * P)));
        s.remove(4 * P, 12 * P);
        assert_eq!(s.next_from(5 * P, 100 * P), Some((0, 4 * P)), "wraps");
        assert_eq!(s.total(), 4 * P);
    }

    #[test]
    fn fault_copies_pending_and_zeroes_the_rest() {
        let mut m = state(&[(0x10000, 0x14000)], &[(0x10000, 0x20000)]);
        assert_eq!(
            m.fault(0x11008),
            Action::Copy {
                live: 0x11000,
                image: 0x11000
            }
        );
        assert_eq!(m.fault(0x11000), Action::Zero { live: 0x11000 });
        assert_eq!(m.fault(0x18000), Action::Zero { live: 0x18000 });
        assert_eq!(m.pending.total(), 3 * P);
    }

    #[test]
    fn remap_moves_pending_pages_and_grown_part_is_zero() {
        let mut m = state(&[(0x10000, 0x20000)], &[(0x10000, 0x20000)]);
        assert_eq!(m.remap(0x18000, 0x40000, 0x8000), 0);
        // Image page 0x18000 now lives at 0x40000.
        assert_eq!(
            m.fault(0x40000),
            Action::Copy {
                live: 0x40000,
                image: 0x18000
            }
        );
        // Grown part: zeros. Old place: gone from the map.
        assert_eq!(m.fault(0x48000), Action::Zero { live: 0x48000 });
        assert_eq!(m.fault(0x19000), Action::Zero { live: 0x19000 });
        let mut dropped = 0;
        m.cursor = 0x1a000;
        assert_eq!(
            m.claim(0x1000, &mut dropped),
            Some((0x42000, 0x1a000, 0x1000))
        );
    }

    #[test]
    fn remove_and_unmap_drop_pages() {
        let mut m = state(&[(0x10000, 0x20000)], &[(0x10000, 0x20000)]);
        assert_eq!(m.remove(0x10000, 0x12000), 2);
        assert_eq!(m.fault(0x10000), Action::Zero { live: 0x10000 });
        assert_eq!(m.unmap(0x1e000, 0x30000), 2);
        assert_eq!(m.pending.total(), 12 * P);
        let mut dropped = 0;
        let mut got = 0;
        while let Some((_, _, len)) = m.claim(0x3000, &mut dropped) {
            got += len;
        }
        assert_eq!((got, dropped), (12 * P, 0));
        assert!(m.finished());
    }

    #[test]
    fn fork_child_gets_parent_pending_and_claimed() {
        let mut m = state(&[(0x10000, 0x12000)], &[(0x10000, 0x20000)]);
        let Action::Copy { image, .. } = m.fault(0x10000) else {
            panic!()
        };
        let fd = std::fs::File::open("/dev/null").unwrap();
        let c = m.fork(Arc::new(fd.into()), &[image], &[]);
        assert_eq!(c.pending.total(), 2 * P);
        assert_eq!(m.pending.total(), P);
    }

    #[test]
    fn fork_child_gets_nothing_of_wipeonfork_vmas() {
        let mut m = state(&[(0x10000, 0x20000)], &[(0x10000, 0x20000)]);
        m.remap(0x18000, 0x40000, 0x8000);
        let fd = std::fs::File::open("/dev/null").unwrap();
        // The VMA that was at image 0x1c000-0x20000 (now at 0x44000) is
        // wiped in the child.
        let mut c = m.fork(Arc::new(fd.into()), &[], &[(0x1c000, 0x20000)]);
        assert_eq!(c.pending.total(), 12 * P);
        assert_eq!(c.fault(0x44000), Action::Zero { live: 0x44000 });
        assert!(matches!(
            c.fault(0x43000),
            Action::Copy { image: 0x1b000, .. }
        ));
    }
}
