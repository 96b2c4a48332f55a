//! `/proc/PID/maps`: parsing, normalisation and canonical form.
//!
//! Normalisation makes two captures of the same address space compare equal
//! even when the kernel splits or merges VMAs differently (it may after a
//! restore, e.g. anonymous VMAs created separately that could be merged, or
//! one split by an `mprotect` that was later undone):
//! - anonymous entries (inode 0) get offset 0: their offset is the page
//!   number of the address the mapping was created at, meaningless after
//!   `mremap` or a restore;
//! - adjacent entries with the same perms, device, inode and path and
//!   contiguous addresses (and, for file mappings, contiguous offsets) are
//!   merged.
//!
//! The canonical form then replaces the (device, inode) of files that no
//! longer have a name, those whose path ends in ` (deleted)` (memfd,
//! shared anonymous memory `/dev/zero (deleted)`, SysV shm, unlinked files),
//! by their order of first appearance: a restore recreates such objects
//! with new inode numbers, but which mappings share one must not change.

use std::collections::HashMap;
use std::fmt;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp` / `rw-s`...
    pub perms: String,
    /// Offset in the file (0 for anonymous entries once normalised).
    pub offset: u64,
    /// `major:minor` in hex; `~` in the canonical form of deleted files.
    pub dev: String,
    /// Inode; an ordinal in the canonical form of deleted files.
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `[stack]`...); empty for anonymous.
    pub path: String,
}

/// Suffix the kernel appends to paths of files without a name.
pub const DELETED_SUFFIX: &str = " (deleted)";

impl MapEntry {
    /// Whether this is anonymous memory (no backing inode).
    pub fn is_anon(&self) -> bool {
        self.inode == 0
    }

    /// Whether this is a private (copy-on-write) mapping.
    pub fn is_private(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b'p')
    }

    /// Whether the mapping is readable.
    pub fn is_readable(&self) -> bool {
        self.perms.as_bytes().first() == Some(&b'r')
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the entry is empty (never true for a kernel-produced one).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    fn mergeable_with(&self, next: &MapEntry) -> bool {
        self.end == next.start
            && self.perms == next.perms
            && self.dev == next.dev
            && self.inode == next.inode
            && self.path == next.path
            && (self.is_anon() || self.offset + self.len() == next.offset)
    }
}

impl fmt::Display for MapEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:08x} {} {}",
            self.start, self.end, self.perms, self.offset, self.dev, self.inode
        )?;
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        Ok(())
    }
}

fn hex(field: &str, what: &str, line: &str) -> Result<u64, String> {
    u64::from_str_radix(field, 16)
        .map_err(|_| format!("bad {what} {field:?} in maps line {line:?}"))
}

/// Splits off the first whitespace-delimited field.
fn field<'a>(rest: &mut &'a str, what: &str, line: &str) -> Result<&'a str, String> {
    let s = rest.trim_start();
    if s.is_empty() {
        return Err(format!("missing {what} in maps line {line:?}"));
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    *rest = &s[end..];
    Ok(&s[..end])
}

/// Parses one maps line. The path is everything after the inode, with the
/// padding removed; it may itself contain spaces.
pub fn parse_line(line: &str) -> Result<MapEntry, String> {
    let mut rest = line;
    let range = field(&mut rest, "address range", line)?;
    let perms = field(&mut rest, "perms", line)?;
    let offset = field(&mut rest, "offset", line)?;
    let dev = field(&mut rest, "device", line)?;
    let inode = field(&mut rest, "inode", line)?;
    let path = rest.trim_start();
    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| format!("bad address range {range:?} in maps line {line:?}"))?;
    let (start, end) = (hex(start, "start", line)?, hex(end, "end", line)?);
    if end <= start {
        return Err(format!("empty address range in maps line {line:?}"));
    }
    if perms.len() != 4 {
        return Err(format!("bad perms {perms:?} in maps line {line:?}"));
    }
    Ok(MapEntry {
        start,
        end,
        perms: perms.to_string(),
        offset: hex(offset, "offset", line)?,
        dev: dev.to_string(),
        inode: inode
            .parse()
            .map_err(|_| format!("bad inode {inode:?} in maps line {line:?}"))?,
        path: path.to_string(),
    })
}

/// Parses the whole of `/proc/PID/maps`.
pub fn parse(text: &str) -> Result<Vec<MapEntry>, String> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry = parse_line(line)?;
        // Linux 6.18's lockless /proc/PID/maps reader now and then lists
        // the last entry, the [vsyscall] gate, twice when the file is read
        // in more than one read(2) (a few times in 200,000 reads of a
        // restored process; two VMAs cannot share a range): kept once.
        if out.last() == Some(&entry) {
            continue;
        }
        out.push(entry);
    }
    Ok(out)
}

/// Zeroes anonymous offsets and merges adjacent compatible entries (see the
/// module documentation). The input must be sorted by address, as the
/// kernel lists it.
pub fn normalise(entries: Vec<MapEntry>) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::with_capacity(entries.len());
    for mut entry in entries {
        if entry.is_anon() {
            entry.offset = 0;
        }
        match out.last_mut() {
            Some(last) if last.mergeable_with(&entry) => last.end = entry.end,
            _ => out.push(entry),
        }
    }
    out
}

/// The canonical form: deleted files get `dev` `~` and an ordinal inode,
/// numbered by first appearance of their real (dev, inode).
pub fn canonical(entries: &[MapEntry]) -> Vec<MapEntry> {
    let mut ids: HashMap<(String, u64), u64> = HashMap::new();
    entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if !e.is_anon() && e.path.ends_with(DELETED_SUFFIX) {
                let next = ids.len() as u64 + 1;
                e.inode = *ids.entry((e.dev.clone(), e.inode)).or_insert(next);
                e.dev = "~".to_string();
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_listed_twice_is_one_entry() {
        let text = "7fff541f4000-7fff54215000 rw-p 00000000 00:00 0    [stack]\n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0    [vsyscall]\n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0    [vsyscall]\n";
        let entries = parse(text).expect("parse");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].path, "[vsyscall]");
    }
    use rstest::rstest;

    const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    fn entry(start: u64, end: u64, perms: &str, offset: u64, inode: u64, path: &str) -> MapEntry {
        MapEntry {
            start,
            end,
            perms: perms.into(),
            offset,
            dev: if inode == 0 { "00:00" } else { "fe:00" }.into(),
            inode,
            path: path.into(),
        }
    }

    #[test]
    fn parses_kernel_lines() {
        let text = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
7f39b238e000-7f39b238f000 r--p 00001000 fe:00 325843                     /usr/lib/ld.so
7f39b2390000-7f39b2391000 rw-s 00000000 00:01 4242                       /memfd:my buf (deleted)
7f39b2392000-7f39b2393000 rw-p 00000000 00:00 0 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let maps = parse(text).expect("parses");
        assert_eq!(maps.len(), 5);
        assert_eq!(
            maps[0],
            entry(0x55d0c0a00000, 0x55d0c0a21000, "rw-p", 0, 0, "[heap]")
        );
        assert_eq!(maps[1].offset, 0x1000);
        assert_eq!(maps[1].inode, 325843);
        assert_eq!(maps[2].path, "/memfd:my buf (deleted)");
        assert_eq!(maps[2].dev, "00:01");
        assert_eq!(maps[3].path, "");
        assert!(maps[3].is_anon() && maps[3].is_private() && maps[3].is_readable());
        assert!(!maps[4].is_readable());
        assert_eq!(maps[4].end, 0xffffffffff601000);
        assert_eq!(
            maps[1].to_string(),
            "7f39b238e000-7f39b238f000 r--p 00001000 fe:00 325843 /usr/lib/ld.so"
        );
        assert_eq!(
            maps[3].to_string(),
            "7f39b2392000-7f39b2393000 rw-p 00000000 00:00 0"
        );
    }

    #[rstest]
    #[case::no_dash("1000 rw-p 0 00:00 0")]
    #[case::bad_hex("1000-zz rw-p 0 00:00 0")]
    #[case::inverted("2000-1000 rw-p 0 00:00 0")]
    #[case::short_perms("1000-2000 rw 0 00:00 0")]
    #[case::missing_inode("1000-2000 rw-p 0 00:00")]
    #[case::bad_inode("1000-2000 rw-p 0 00:00 x")]
    fn rejects_bad_lines(#[case] line: &str) {
        assert!(parse_line(line).is_err(), "{line:?} accepted");
    }

    #[test]
    fn merges_adjacent_anonymous_entries_ignoring_offsets() {
        let maps = vec![
            entry(0x1000, 0x3000, "rw-p", 0x1000, 0, ""),
            entry(0x3000, 0x4000, "rw-p", 0x9999000, 0, ""),
            entry(0x4000, 0x5000, "rw-p", 0, 0, ""),
        ];
        assert_eq!(
            normalise(maps),
            vec![entry(0x1000, 0x5000, "rw-p", 0, 0, "")]
        );
    }

    #[rstest]
    #[case::gap(entry(0x3000, 0x4000, "rw-p", 0, 0, ""))]
    #[case::perms(entry(0x2000, 0x3000, "r--p", 0, 0, ""))]
    #[case::path(entry(0x2000, 0x3000, "rw-p", 0, 0, "[heap]"))]
    #[case::file(entry(0x2000, 0x3000, "rw-p", 0, 7, LIBC))]
    fn keeps_incompatible_neighbours(#[case] second: MapEntry) {
        let first = entry(0x1000, 0x2000, "rw-p", 0, 0, "");
        let out = normalise(vec![first.clone(), second.clone()]);
        assert_eq!(out, vec![first, second]);
    }

    #[test]
    fn merges_file_entries_only_with_contiguous_offsets() {
        let maps = vec![
            entry(0x1000, 0x3000, "r--p", 0x0, 7, LIBC),
            entry(0x3000, 0x4000, "r--p", 0x2000, 7, LIBC),
            entry(0x4000, 0x5000, "r--p", 0x9000, 7, LIBC),
            entry(0x5000, 0x6000, "r--p", 0xa000, 8, LIBC),
        ];
        assert_eq!(
            normalise(maps),
            vec![
                entry(0x1000, 0x4000, "r--p", 0x0, 7, LIBC),
                entry(0x4000, 0x5000, "r--p", 0x9000, 7, LIBC),
                entry(0x5000, 0x6000, "r--p", 0xa000, 8, LIBC),
            ]
        );
    }

    #[test]
    fn split_and_unsplit_layouts_normalise_equal() {
        let split = vec![
            entry(0x1000, 0x2000, "rw-p", 0x1000, 0, ""),
            entry(0x2000, 0x3000, "rw-p", 0x2000, 0, ""),
            entry(0x3000, 0x5000, "r-xp", 0x1000, 7, LIBC),
        ];
        let whole = vec![
            entry(0x1000, 0x3000, "rw-p", 0x7000, 0, ""),
            entry(0x3000, 0x4000, "r-xp", 0x1000, 7, LIBC),
            entry(0x4000, 0x5000, "r-xp", 0x2000, 7, LIBC),
        ];
        assert_eq!(normalise(split), normalise(whole));
    }

    #[test]
    fn canonical_numbers_deleted_files_by_first_appearance() {
        let mut a = entry(0x1000, 0x2000, "rw-s", 0, 111, "/memfd:a (deleted)");
        a.dev = "00:01".into();
        let mut b = entry(0x3000, 0x4000, "rw-s", 0, 222, "/dev/zero (deleted)");
        b.dev = "00:01".into();
        let mut a2 = a.clone();
        a2.start = 0x5000;
        a2.end = 0x6000;
        let lib = entry(0x7000, 0x8000, "r--p", 0, 7, LIBC);
        let out = canonical(&[a, b, a2, lib.clone()]);
        assert_eq!((out[0].dev.as_str(), out[0].inode), ("~", 1));
        assert_eq!((out[1].dev.as_str(), out[1].inode), ("~", 2));
        assert_eq!((out[2].dev.as_str(), out[2].inode), ("~", 1));
        assert_eq!(out[3], lib);
    }
}
