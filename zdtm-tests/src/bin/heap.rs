//! The brk heap: a region grown with sbrk and many malloc blocks (small ones
//! from the brk arena, large ones mmapped by malloc), all filled with
//! patterns. After restore: contents, the program break (sbrk(0)), the
//! `[heap]` VMA and start_brk are unchanged, and brk keeps working (sbrk can
//! grow the heap further, malloc/free still work).

use zdtm::mem::{self, page_size};
use zdtm::{ensure, ensure_eq, maps, pattern, procfs, TestResult};

const BRK_GROW: usize = 6 << 20;
const BRK_GROW_AFTER: usize = 2 << 20;
const NBLOCKS: usize = 400;
/// proc(5) number of the start_brk field of /proc/PID/stat.
const STAT_START_BRK: usize = 47;

struct State {
    /// Preallocated (mmapped by malloc) buffer for reading maps without
    /// moving the break.
    maps_buf: Vec<u8>,
    region: usize,
    brk_end: usize,
    blocks: Vec<(usize, usize)>,
    heap_maps: Vec<maps::MapEntry>,
    start_brk: u64,
}

fn sbrk(incr: isize) -> TestResult<usize> {
    // SAFETY: moving the program break; the memory between the old and new
    // break is only used through raw addresses by this test.
    let p = unsafe { libc::sbrk(incr) };
    if p as isize == -1 {
        return Err(zdtm::os_err(&format!("sbrk({incr})")));
    }
    Ok(p as usize)
}

/// The `[heap]` entries of /proc/self/maps, read without allocating from the
/// brk heap before the read completes.
fn heap_maps(buf: &mut Vec<u8>) -> TestResult<Vec<maps::MapEntry>> {
    procfs::read_into("/proc/self/maps", buf)?;
    let text = String::from_utf8_lossy(buf);
    let all = maps::parse_maps(&text)?;
    Ok(merge_adjacent(
        all.into_iter().filter(|e| e.path == "[heap]").collect(),
    ))
}

/// Joins touching entries with the same perms. The kernel may keep the
/// heap in several VMAs for internal reasons (an anon_vma inherited across
/// the daemonising fork cannot merge with later brk growth); that split is
/// not program-visible state and a restore need not reproduce it.
fn merge_adjacent(entries: Vec<maps::MapEntry>) -> Vec<maps::MapEntry> {
    let mut out: Vec<maps::MapEntry> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some(last) if last.end == e.start && last.perms == e.perms => last.end = e.end,
            _ => out.push(e),
        }
    }
    out
}

fn round_up(a: usize) -> usize {
    let ps = page_size();
    (a + ps - 1) & !(ps - 1)
}

fn block_size(i: usize) -> usize {
    if i % 50 == 7 {
        // Above the default mmap threshold: malloc mmaps these.
        (200 << 10) + i
    } else {
        (i * 7919) % 5000 + 1
    }
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let start = sbrk(0)?;
    let region = sbrk(BRK_GROW as isize)?;
    ensure!(
        region == start,
        "sbrk returned {region:#x}, break was {start:#x}"
    );
    // SAFETY: [region, region + BRK_GROW) was just added to the heap.
    pattern::fill(unsafe { mem::slice_mut(region, BRK_GROW) }, 1);

    let mut blocks = Vec::with_capacity(NBLOCKS);
    for i in 0..NBLOCKS {
        let size = block_size(i);
        // SAFETY: plain malloc; the result is checked for NULL.
        let p = unsafe { libc::malloc(size) } as usize;
        ensure!(p != 0, "malloc({size}) failed");
        // SAFETY: p points to a fresh allocation of `size` bytes.
        pattern::fill(unsafe { mem::slice_mut(p, size) }, 100 + i as u64);
        blocks.push((p, size));
    }
    let start_brk = procfs::stat_field(STAT_START_BRK)?;
    let mut maps_buf = Vec::with_capacity(4 << 20);
    let heap = heap_maps(&mut maps_buf)?;
    let brk_end = sbrk(0)?;
    ensure!(
        heap.last().is_some_and(|e| e.end == round_up(brk_end)),
        "[heap] {heap:?} does not end at the break {brk_end:#x}"
    );
    Ok(State {
        maps_buf,
        region,
        brk_end,
        blocks,
        heap_maps: heap,
        start_brk,
    })
}

fn check(mut s: State) -> TestResult {
    ensure_eq!(sbrk(0)?, s.brk_end, "program break");
    ensure_eq!(heap_maps(&mut s.maps_buf)?, s.heap_maps, "[heap] maps");
    ensure_eq!(
        procfs::stat_field(STAT_START_BRK)?,
        s.start_brk,
        "start_brk"
    );
    // SAFETY: the sbrk region is still part of the heap.
    pattern::verify(unsafe { mem::slice(s.region, BRK_GROW) }, 1)
        .map_err(|m| format!("sbrk region: {m}"))?;
    for (i, &(p, size)) in s.blocks.iter().enumerate() {
        // SAFETY: the block is still allocated.
        pattern::verify(unsafe { mem::slice(p, size) }, 100 + i as u64)
            .map_err(|m| format!("malloc block {i} ({size} bytes): {m}"))?;
    }

    // brk must keep working after restore.
    let more = sbrk(BRK_GROW_AFTER as isize)?;
    ensure_eq!(more, s.brk_end, "sbrk after restore returned");
    ensure_eq!(sbrk(0)?, s.brk_end + BRK_GROW_AFTER, "new break");
    let ps = page_size();
    let last = (s.brk_end + BRK_GROW_AFTER - 1) & !(ps - 1);
    match maps::find(last)? {
        Some(e) if e.path == "[heap]" && e.perms == "rw-p" => {}
        other => return Err(format!("grown break not in [heap]: {other:?}")),
    }
    // SAFETY: the range was just added to the heap.
    let buf = unsafe { mem::slice_mut(more, BRK_GROW_AFTER) };
    pattern::verify_zero(buf).map_err(|m| format!("new brk memory: {m}"))?;
    pattern::fill(buf, 2);
    pattern::verify(buf, 2).map_err(|m| format!("new brk memory: {m}"))?;

    // malloc still works, on old and new memory.
    for &(p, _) in &s.blocks {
        // SAFETY: each block was allocated by malloc and is freed once.
        unsafe { libc::free(p as *mut libc::c_void) };
    }
    for i in 0..NBLOCKS {
        let size = block_size(i) * 2;
        // SAFETY: plain malloc; the result is checked for NULL.
        let p = unsafe { libc::malloc(size) } as usize;
        ensure!(p != 0, "malloc({size}) after restore failed");
        // SAFETY: p points to a fresh allocation of `size` bytes.
        let buf = unsafe { mem::slice_mut(p, size) };
        pattern::fill(buf, 7);
        pattern::verify(buf, 7).map_err(|m| format!("malloc after restore: {m}"))?;
        // SAFETY: freeing the block just allocated.
        unsafe { libc::free(p as *mut libc::c_void) };
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
