//! `/proc/self/maps` and `/proc/self/smaps` helpers.

use std::fmt;

use crate::TestResult;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address of the VMA.
    pub start: usize,
    /// One past the last address of the VMA.
    pub end: usize,
    /// Protection and sharing, e.g. `rw-p` or `r--s`.
    pub perms: String,
    /// File offset (page offset for anonymous shared memory).
    pub offset: u64,
    /// Device as `major:minor` (hex).
    pub dev: String,
    /// Inode number, 0 for anonymous memory.
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `[vdso]`...), empty for anonymous.
    pub path: String,
}

impl MapEntry {
    /// Parses one maps line.
    pub fn parse(line: &str) -> Option<MapEntry> {
        let mut rest = line;
        let mut next = || -> Option<&str> {
            let s = rest.trim_start_matches(' ');
            let end = s.find(' ').unwrap_or(s.len());
            let (tok, r) = s.split_at(end);
            rest = r;
            (!tok.is_empty()).then_some(tok)
        };
        let range = next()?;
        let perms = next()?;
        let offset = next()?;
        let dev = next()?;
        let inode = next()?;
        let path = rest.trim_start_matches(' ').trim_end_matches('\n');
        let (start, end) = range.split_once('-')?;
        if perms.len() != 4 {
            return None;
        }
        Some(MapEntry {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            perms: perms.to_string(),
            offset: u64::from_str_radix(offset, 16).ok()?,
            dev: dev.to_string(),
            inode: inode.parse().ok()?,
            path: path.to_string(),
        })
    }

    /// Size of the VMA in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the VMA is empty (never true for real entries).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `addr` lies inside the VMA.
    pub fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end
    }
}

impl fmt::Display for MapEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {} {} {}",
            self.start, self.end, self.perms, self.offset, self.dev, self.inode, self.path
        )
    }
}

/// Parses a whole maps file.
pub fn parse_maps(text: &str) -> TestResult<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| MapEntry::parse(l).ok_or_else(|| format!("bad maps line {l:?}")))
        .collect::<TestResult<_>>()?;
    // Linux 6.18 now and then lists the last entry, the [vsyscall] gate,
    // twice when maps is read in more than one read(2): one range is one
    // mapping.
    out.dedup_by(|b, a| a.start == b.start && a.end == b.end);
    Ok(out)
}

/// Reads and parses `/proc/self/maps`.
pub fn read_maps() -> TestResult<Vec<MapEntry>> {
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    parse_maps(&text)
}

/// The entries overlapping `[start, end)`, in address order.
pub fn in_range(start: usize, end: usize) -> TestResult<Vec<MapEntry>> {
    Ok(read_maps()?
        .into_iter()
        .filter(|e| e.start < end && start < e.end)
        .collect())
}

/// The entry containing `addr`, if any.
pub fn find(addr: usize) -> TestResult<Option<MapEntry>> {
    Ok(read_maps()?.into_iter().find(|e| e.contains(addr)))
}

/// The entries whose path is exactly `path`.
pub fn by_path(path: &str) -> TestResult<Vec<MapEntry>> {
    Ok(read_maps()?
        .into_iter()
        .filter(|e| e.path == path)
        .collect())
}

/// Checks that exactly one VMA is `[start, end)` with the given perms.
pub fn expect_vma(start: usize, end: usize, perms: &str) -> TestResult {
    match find(start)? {
        Some(e) if e.start == start && e.end == end && e.perms == perms => Ok(()),
        Some(e) => Err(format!("expected VMA {start:x}-{end:x} {perms}, found {e}")),
        None => Err(format!(
            "expected VMA {start:x}-{end:x} {perms}, nothing mapped at {start:x}"
        )),
    }
}

/// Checks that nothing is mapped in `[start, end)`.
pub fn expect_unmapped(start: usize, end: usize) -> TestResult {
    match in_range(start, end)?.first() {
        None => Ok(()),
        Some(e) => Err(format!("expected {start:x}-{end:x} unmapped, found {e}")),
    }
}

/// Checks that `[start, end)` is fully covered by mappings that all have
/// the given perms (they may be merged with neighbours or split).
pub fn expect_covered(start: usize, end: usize, perms: &str) -> TestResult {
    let mut at = start;
    for e in in_range(start, end)? {
        if e.start > at {
            return Err(format!("{at:x}-{:x} is not mapped", e.start));
        }
        if e.perms != perms {
            return Err(format!(
                "expected {perms} over {start:x}-{end:x}, found {e}"
            ));
        }
        at = e.end;
    }
    if at < end {
        return Err(format!("{at:x}-{end:x} is not mapped"));
    }
    Ok(())
}

/// A piece of a normalised layout: `[start, end)` with one set of perms,
/// made of one or more adjacent compatible VMAs (see [`merge_spans`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Protection and sharing, e.g. `rw-p`.
    pub perms: String,
    /// File offset at `start` for file mappings, 0 for anonymous ones.
    pub offset: u64,
    /// Path or pseudo-path, empty for private anonymous memory.
    pub path: String,
}

impl Span {
    /// An anonymous span (no path, offset 0).
    pub fn anon(start: usize, end: usize, perms: &str) -> Span {
        Span {
            start,
            end,
            perms: perms.to_string(),
            offset: 0,
            path: String::new(),
        }
    }

    /// Whether the span maps a file (a path that is not a pseudo-path and
    /// not a deleted shared-memory object).
    fn is_file(&self) -> bool {
        self.path.starts_with('/') && !self.path.ends_with(" (deleted)")
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:x} {}",
            self.start, self.end, self.perms, self.offset, self.path
        )
    }
}

/// Merges adjacent spans with the same perms and path (and, for files,
/// contiguous offsets): the kernel may split or merge compatible VMAs
/// differently, e.g. after a restore, without any visible difference.
pub fn merge_spans(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if let Some(last) = out.last_mut() {
            if last.end == s.start
                && last.perms == s.perms
                && last.path == s.path
                && (!s.is_file() || last.offset + (last.end - last.start) as u64 == s.offset)
            {
                last.end = s.end;
                continue;
            }
        }
        out.push(s);
    }
    out
}

/// The normalised layout of `[start, end)` from maps entries: entries are
/// clipped to the range, anonymous offsets zeroed, compatible neighbours
/// merged ([`merge_spans`]). Holes are simply absent.
pub fn spans_in(entries: &[MapEntry], start: usize, end: usize) -> Vec<Span> {
    let v = entries
        .iter()
        .filter(|e| e.start < end && start < e.end)
        .map(|e| {
            let s = e.start.max(start);
            let mut span = Span {
                start: s,
                end: e.end.min(end),
                perms: e.perms.clone(),
                offset: e.offset + (s - e.start) as u64,
                path: e.path.clone(),
            };
            if !span.is_file() {
                span.offset = 0;
            }
            span
        })
        .collect();
    merge_spans(v)
}

/// The normalised layout of `[start, end)` now ([`spans_in`] of
/// `/proc/self/maps`).
pub fn layout(start: usize, end: usize) -> TestResult<Vec<Span>> {
    Ok(spans_in(&read_maps()?, start, end))
}

/// Checks that the normalised layout of `[start, end)` is `expected`
/// (which is merged first), naming the first difference.
pub fn expect_layout(start: usize, end: usize, expected: Vec<Span>) -> TestResult {
    let expected = merge_spans(expected);
    let got = layout(start, end)?;
    if got == expected {
        return Ok(());
    }
    let i = got
        .iter()
        .zip(&expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    let show = |v: &[Span]| v.get(i).map_or("nothing".to_string(), |s| s.to_string());
    Err(format!(
        "layout of {start:x}-{end:x}: span {i} is {}, expected {} ({} spans, expected {})",
        show(&got),
        show(&expected),
        got.len(),
        expected.len()
    ))
}

/// The `VmFlags` of the VMA containing `addr`, from `/proc/self/smaps`
/// (e.g. `["rd", "wr", "mr", "mw", "me", "gd", "ac"]`).
pub fn vm_flags(addr: usize) -> TestResult<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| format!("reading /proc/self/smaps: {e}"))?;
    parse_vm_flags(&text, addr).ok_or_else(|| format!("no smaps VmFlags for {addr:#x}"))
}

/// Finds the `VmFlags` line of the smaps block whose range contains
/// `addr`.
pub fn parse_vm_flags(smaps: &str, addr: usize) -> Option<Vec<String>> {
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if inside {
                return Some(flags.split_whitespace().map(str::to_string).collect());
            }
        } else if let Some(e) = line
            .split_once(' ')
            .filter(|(range, _)| range.contains('-') && !range.ends_with(':'))
            .and_then(|_| MapEntry::parse(line))
        {
            inside = e.contains(addr);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lines() {
        let e = MapEntry::parse(
            "55d0c4a2b000-55d0c4a4c000 rw-p 00000000 00:00 0                          [heap]",
        )
        .unwrap();
        assert_eq!(e.start, 0x55d0c4a2b000);
        assert_eq!(e.end, 0x55d0c4a4c000);
        assert_eq!(e.perms, "rw-p");
        assert_eq!(e.offset, 0);
        assert_eq!(e.dev, "00:00");
        assert_eq!(e.inode, 0);
        assert_eq!(e.path, "[heap]");
        assert_eq!(e.len(), 0x21000);

        let e = MapEntry::parse("7f00-8f00 rw-s 00001000 00:01 1234 /dev/zero (deleted)").unwrap();
        assert_eq!(e.path, "/dev/zero (deleted)");
        assert_eq!(e.offset, 0x1000);
        assert_eq!(e.inode, 1234);

        let e = MapEntry::parse("7f00-8f00 ---p 00000000 00:00 0 ").unwrap();
        assert_eq!(e.path, "");
        let e = MapEntry::parse("7f00-8f00 r-xp 00000000 00:00 0").unwrap();
        assert_eq!(e.path, "");
        assert!(e.contains(0x7f00) && !e.contains(0x8f00));

        assert!(MapEntry::parse("garbage").is_none());
        assert!(MapEntry::parse("7f00-8f00 rw 0 00:00 0").is_none());
    }

    #[test]
    fn display_roundtrip() {
        let e = MapEntry::parse("1000-3000 r--p 00002000 08:01 77 /usr/lib/x y").unwrap();
        assert_eq!(MapEntry::parse(&e.to_string()).unwrap(), e);
    }

    #[test]
    fn smaps_flags() {
        let smaps = "\
1000-2000 rw-p 00000000 00:00 0 
Size:                  4 kB
VmFlags: rd wr mr mw me ac 
3000-5000 rw-p 00000000 00:00 0 
Size:                  8 kB
Rss:                   0 kB
VmFlags: rd wr mr mw me gd ac 
";
        assert_eq!(
            parse_vm_flags(smaps, 0x3fff).unwrap(),
            ["rd", "wr", "mr", "mw", "me", "gd", "ac"]
        );
        assert_eq!(parse_vm_flags(smaps, 0x1000).unwrap().len(), 6);
        assert!(parse_vm_flags(smaps, 0x2000).is_none());
    }

    #[test]
    fn self_maps_parse() {
        let maps = read_maps().unwrap();
        assert!(!maps.is_empty());
        let code = parse_vm_flags as *const () as usize;
        let e = maps.iter().find(|e| e.contains(code)).unwrap();
        assert!(e.perms.starts_with("r-x"), "{e}");
    }
    #[test]
    fn spans_clip_and_merge() {
        let maps = parse_maps(
            "\
0000-2000 ---p 00000000 00:00 0
2000-4000 ---p 00000002 00:00 0
4000-5000 rw-p 00000000 00:00 0
5000-6000 rw-p 00000099 00:00 0
6000-8000 r--p 00001000 08:01 7 /f
8000-9000 r--p 00003000 08:01 7 /f
9000-a000 r--p 00005000 08:01 7 /f
a000-b000 rw-s 00000000 00:01 9 /dev/zero (deleted)
b000-c000 rw-s 00001000 00:01 9 /dev/zero (deleted)
",
        )
        .unwrap();
        let got = spans_in(&maps, 0x1000, 0xc000);
        let file = |start, end, offset| Span {
            start,
            end,
            perms: "r--p".into(),
            offset,
            path: "/f".into(),
        };
        let shm = Span {
            start: 0xa000,
            end: 0xc000,
            perms: "rw-s".into(),
            offset: 0,
            path: "/dev/zero (deleted)".into(),
        };
        assert_eq!(
            got,
            [
                Span::anon(0x1000, 0x4000, "---p"),
                Span::anon(0x4000, 0x6000, "rw-p"),
                file(0x6000, 0x9000, 0x1000),
                file(0x9000, 0xa000, 0x5000),
                shm,
            ]
        );
        // Clipping inside a file mapping moves its offset.
        assert_eq!(
            spans_in(&maps, 0x7000, 0x7800),
            [file(0x7000, 0x7800, 0x2000)]
        );
        assert!(spans_in(&maps, 0xc000, 0xd000).is_empty());
    }
}
