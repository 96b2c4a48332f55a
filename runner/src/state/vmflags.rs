//! `/proc/PID/smaps` `VmFlags`: the kernel's flags of every VMA (advice
//! such as `dc` DONTFORK, `dd` DONTDUMP, `wf` WIPEONFORK, `sr`/`rr`,
//! `hg`/`nh`, `mg` MERGEABLE, `lo`/`lf` mlock, `nr` noreserve, `ac`
//! accounting, `gd` growsdown, `um`/`uw` userfaultfd, `sl` sealed...).
//!
//! Flags are compared by address, not by VMA: the kernel may split or
//! merge VMAs differently after a restore (see [`super::maps`]), so each
//! side is reduced to ranges of equal flags ([`normalise`]) and
//! [`compare`] walks the ranges of both, reporting every range where the
//! flags differ, with the flags lost and gained. Only ranges whose
//! (normalised) maps entry is the same on both sides are compared: a range
//! mapped on one side only, or with other perms, is the business of the
//! maps check (`rd`, `wr`, `ex`, `sh` mirror the perms), which a test
//! whose layout changes all the time skips.

use std::collections::BTreeSet;
use std::fmt;

use super::maps::{self, MapEntry};

/// The flags of one address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmaFlags {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The two-letter flags, sorted.
    pub flags: BTreeSet<String>,
}

impl fmt::Display for VmaFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x} {}", self.start, self.end, join(&self.flags))
    }
}

fn join(flags: &BTreeSet<String>) -> String {
    if flags.is_empty() {
        "(none)".to_string()
    } else {
        flags
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Parses `/proc/PID/smaps`: each VMA header line (maps format) and the
/// `VmFlags:` line that follows it. A VMA without a `VmFlags` line is an
/// error (the kernel always prints one).
pub fn parse(text: &str) -> Result<Vec<VmaFlags>, String> {
    let mut out: Vec<VmaFlags> = Vec::new();
    let mut open: Option<MapEntry> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            let Some(vma) = open.take() else {
                return Err(format!("VmFlags line without a VMA: {line:?}"));
            };
            out.push(VmaFlags {
                start: vma.start,
                end: vma.end,
                flags: rest.split_whitespace().map(str::to_string).collect(),
            });
            continue;
        }
        // A header starts with a hex range; field lines with `Key:`.
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if let Some(vma) = open.take() {
                return Err(format!(
                    "VMA {:x}-{:x} has no VmFlags line",
                    vma.start, vma.end
                ));
            }
            open = Some(maps::parse_line(line)?);
        }
    }
    if let Some(vma) = open {
        return Err(format!(
            "VMA {:x}-{:x} has no VmFlags line",
            vma.start, vma.end
        ));
    }
    Ok(out)
}

/// Merges adjacent ranges with the same flags (input sorted by address).
pub fn normalise(entries: Vec<VmaFlags>) -> Vec<VmaFlags> {
    let mut out: Vec<VmaFlags> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if last.end == e.start && last.flags == e.flags => last.end = e.end,
            _ => out.push(e),
        }
    }
    out
}

/// Removes `flag` from every range, then merges again: for a flag that is
/// the engine's own state, not the task's (see the callers).
pub fn without(entries: &[VmaFlags], flag: &str) -> Vec<VmaFlags> {
    normalise(
        entries
            .iter()
            .cloned()
            .map(|mut e| {
                e.flags.remove(flag);
                e
            })
            .collect(),
    )
}

/// The flags at `addr`, if a range holds it.
fn at(entries: &[VmaFlags], addr: u64) -> Option<&VmaFlags> {
    let i = entries.partition_point(|e| e.end <= addr);
    entries.get(i).filter(|e| e.start <= addr)
}

/// Every range where both sides have flags and they differ, as report
/// lines: `7f00-7f10 rw-p [heap]: VmFlags rd wr mr mw me ac -> rd wr mr mw
/// me ac dc (gained dc)`. `maps` and `after_maps` are the normalised maps
/// of both sides: a range is compared only where its entry is the same on
/// both, and that entry names it.
pub fn compare(
    before: &[VmaFlags],
    after: &[VmaFlags],
    maps: &[MapEntry],
    after_maps: &[MapEntry],
) -> Vec<String> {
    let entry_at = |list: &[MapEntry], addr: u64| {
        let i = list.partition_point(|m| m.end <= addr);
        list.get(i).filter(|m| m.start <= addr).cloned()
    };
    let mut cuts: Vec<u64> = before
        .iter()
        .chain(after)
        .flat_map(|e| [e.start, e.end])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    // (start, end, before flags, after flags) of differing pieces, merged
    // when contiguous with the same flags on both sides.
    let mut pieces: Vec<(u64, u64, &BTreeSet<String>, &BTreeSet<String>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let (Some(b), Some(a)) = (at(before, lo), at(after, lo)) else {
            continue;
        };
        if b.flags == a.flags {
            continue;
        }
        let vma = entry_at(maps, lo);
        if vma.is_none() || vma != entry_at(after_maps, lo) {
            continue;
        }
        match pieces.last_mut() {
            Some(last) if last.1 == lo && last.2 == &b.flags && last.3 == &a.flags => last.1 = hi,
            _ => pieces.push((lo, hi, &b.flags, &a.flags)),
        }
    }
    pieces
        .into_iter()
        .map(|(lo, hi, b, a)| {
            let vma = maps
                .iter()
                .find(|m| m.start <= lo && lo < m.end)
                .map(|m| {
                    let path = if m.path.is_empty() { "[anon]" } else { &m.path };
                    format!(" {} {path}", m.perms)
                })
                .unwrap_or_default();
            let lost: BTreeSet<String> = b.difference(a).cloned().collect();
            let gained: BTreeSet<String> = a.difference(b).cloned().collect();
            let mut change = Vec::new();
            if !lost.is_empty() {
                change.push(format!("lost {}", join(&lost)));
            }
            if !gained.is_empty() {
                change.push(format!("gained {}", join(&gained)));
            }
            format!(
                "{lo:x}-{hi:x}{vma}: VmFlags {} -> {} ({})",
                join(b),
                join(a),
                change.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(start: u64, end: u64, flags: &str) -> VmaFlags {
        VmaFlags {
            start,
            end,
            flags: flags.split_whitespace().map(str::to_string).collect(),
        }
    }

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
KernelPageSize:        4 kB
Rss:                   4 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac 
7f39b2390000-7f39b2391000 rw-s 00000000 00:01 4242                       /memfd:my buf (deleted)
Size:                  4 kB
VmFlags: rd wr sh mr mw me ms dc sd
";

    #[test]
    fn parses_smaps() {
        let flags = parse(SMAPS).expect("parses");
        assert_eq!(
            flags,
            vec![
                v(0x55d0c0a00000, 0x55d0c0a21000, "rd wr mr mw me ac"),
                v(0x7f39b2390000, 0x7f39b2391000, "rd wr sh mr mw me ms dc sd"),
            ]
        );
        assert_eq!(
            flags[0].to_string(),
            "55d0c0a00000-55d0c0a21000 ac me mr mw rd wr"
        );
    }

    #[test]
    fn rejects_broken_smaps() {
        assert!(parse("VmFlags: rd\n").is_err());
        assert!(parse("1000-2000 rw-p 00000000 00:00 0\nSize: 4 kB\n").is_err());
        assert!(parse(
            "1000-2000 rw-p 00000000 00:00 0\n3000-4000 rw-p 00000000 00:00 0\nVmFlags: rd\n"
        )
        .is_err());
    }

    #[test]
    fn split_and_merged_layouts_compare_equal() {
        let split = normalise(vec![v(0x1000, 0x2000, "rd wr"), v(0x2000, 0x3000, "rd wr")]);
        let whole = normalise(vec![v(0x1000, 0x3000, "rd wr")]);
        assert_eq!(split, whole);
        assert!(compare(&split, &whole, &[], &[]).is_empty());
    }

    #[test]
    fn names_the_range_vma_and_flags() {
        let maps = vec![MapEntry {
            start: 0x1000,
            end: 0x5000,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            path: String::new(),
        }];
        let before = vec![v(0x1000, 0x5000, "rd wr mr mw me ac")];
        // MADV_DONTFORK lost on the middle pages, `ac` dropped everywhere.
        let after = vec![
            v(0x1000, 0x2000, "rd wr mr mw me"),
            v(0x2000, 0x4000, "rd wr mr mw me dc"),
            v(0x4000, 0x5000, "rd wr mr mw me"),
        ];
        assert_eq!(
            compare(&before, &after, &maps, &maps),
            [
                "1000-2000 rw-p [anon]: VmFlags ac me mr mw rd wr -> me mr mw rd wr (lost ac)",
                "2000-4000 rw-p [anon]: VmFlags ac me mr mw rd wr -> dc me mr mw rd wr \
                 (lost ac, gained dc)",
                "4000-5000 rw-p [anon]: VmFlags ac me mr mw rd wr -> me mr mw rd wr (lost ac)",
            ]
        );
        // Ranges mapped on one side only, or whose maps entry changed, are
        // left to the maps check.
        assert!(compare(&before, &[v(0x9000, 0xa000, "rd")], &maps, &maps).is_empty());
        let mut moved = maps.clone();
        moved[0].perms = "r--p".into();
        assert!(compare(&before, &after, &maps, &moved).is_empty());
    }

    #[test]
    fn without_drops_one_flag() {
        let with_uw = vec![v(0x1000, 0x2000, "rd wr uw"), v(0x2000, 0x3000, "rd wr")];
        assert_eq!(without(&with_uw, "uw"), vec![v(0x1000, 0x3000, "rd wr")]);
    }
}
