//! Comparing two visible states.

use std::collections::{BTreeMap, BTreeSet};

use super::fds::FdEntry;
use super::maps::MapEntry;
use super::memory::{describe_page, diff_pages};
use super::VisibleState;
use crate::freeze::Rseq;

/// One difference between the states before and after: a check name
/// (`maps`, `fds`, `status:SigBlk`, `cwd`, `root`, `memory`) and a detail
/// whose first line summarises and whose other lines give the specifics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Which check failed.
    pub check: String,
    /// What differs.
    pub detail: String,
}

impl Difference {
    fn new(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Difference {
            check: check.into(),
            detail: detail.into(),
        }
    }
}

/// Every difference between `before` and `after`, in a fixed order:
/// status fields, cwd, root, fds, maps, rseq, memory.
pub fn compare(before: &VisibleState, after: &VisibleState) -> Vec<Difference> {
    let mut out = Vec::new();
    compare_status(&before.status, &after.status, &mut out);
    for (check, b, a) in [
        ("cwd", &before.cwd, &after.cwd),
        ("root", &before.root, &after.root),
    ] {
        if b != a {
            out.push(Difference::new(check, format!("{b} -> {a}")));
        }
    }
    out.extend(compare_fds(&before.fds, &after.fds));
    out.extend(compare_maps(&before.maps, &after.maps));
    out.extend(compare_rseq(&before.rseq, &after.rseq));
    out.extend(compare_memory(before, after));
    out
}

fn compare_status(
    before: &[(String, String)],
    after: &[(String, String)],
    out: &mut Vec<Difference>,
) {
    let b: BTreeMap<&str, &str> = before
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a: BTreeMap<&str, &str> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Keep the order of `before`, then fields only present after.
    let mut keys: Vec<&str> = before.iter().map(|(k, _)| k.as_str()).collect();
    keys.extend(
        after
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !b.contains_key(k)),
    );
    for key in keys {
        let (vb, va) = (b.get(key), a.get(key));
        if vb != va {
            let show = |v: Option<&&str>| match v {
                Some(v) => format!("{v:?}"),
                None => "(absent)".to_string(),
            };
            out.push(Difference::new(
                format!("status:{key}"),
                format!("{} -> {}", show(vb), show(va)),
            ));
        }
    }
}

/// Compares descriptor tables, by descriptor number.
pub fn compare_fds(before: &[FdEntry], after: &[FdEntry]) -> Option<Difference> {
    let b: BTreeMap<i32, &FdEntry> = before.iter().map(|f| (f.fd, f)).collect();
    let a: BTreeMap<i32, &FdEntry> = after.iter().map(|f| (f.fd, f)).collect();
    let fds: BTreeSet<i32> = b.keys().chain(a.keys()).copied().collect();
    let mut lines = Vec::new();
    for fd in fds {
        match (b.get(&fd), a.get(&fd)) {
            (Some(x), None) => lines.push(format!("fd {fd}: missing after restore (was {x})")),
            (None, Some(y)) => lines.push(format!("fd {fd}: new after restore ({y})")),
            (Some(x), Some(y)) if x != y => {
                let mut parts = Vec::new();
                if x.target != y.target {
                    parts.push(format!("target {} -> {}", x.target, y.target));
                }
                if x.pos != y.pos {
                    parts.push(format!("pos {} -> {}", x.pos, y.pos));
                }
                if x.flags != y.flags {
                    parts.push(format!("flags 0{:o} -> 0{:o}", x.flags, y.flags));
                }
                lines.push(format!("fd {fd} ({}): {}", x.target, parts.join(", ")));
            }
            _ => {}
        }
    }
    (!lines.is_empty()).then(|| {
        Difference::new(
            "fds",
            format!("{} descriptor(s) differ\n{}", lines.len(), lines.join("\n")),
        )
    })
}

/// Compares normalised maps: `-` lines only before, `+` lines only after,
/// by address.
pub fn compare_maps(before: &[MapEntry], after: &[MapEntry]) -> Option<Difference> {
    let b: BTreeSet<&MapEntry> = before.iter().collect();
    let a: BTreeSet<&MapEntry> = after.iter().collect();
    let mut lines: Vec<(u64, u8, String)> = before
        .iter()
        .filter(|e| !a.contains(e))
        .map(|e| (e.start, 0, format!("- {e}")))
        .chain(
            after
                .iter()
                .filter(|e| !b.contains(e))
                .map(|e| (e.start, 1, format!("+ {e}"))),
        )
        .collect();
    if lines.is_empty() {
        return None;
    }
    lines.sort();
    let removed = lines.iter().filter(|l| l.1 == 0).count();
    let added = lines.len() - removed;
    let body: Vec<String> = lines.into_iter().map(|l| l.2).collect();
    Some(Difference::new(
        "maps",
        format!(
            "{removed} entr{} only before, {added} only after (- before, + after)\n{}",
            if removed == 1 { "y" } else { "ies" },
            body.join("\n")
        ),
    ))
}

/// `tid 42: struct rseq at 0x7f00 size 32 signature 0x53053053 flags 0`.
pub fn describe_rseq(r: &Rseq) -> String {
    format!(
        "tid {}: struct rseq at {:#x} size {} signature {:#x} flags {}",
        r.tid, r.addr, r.size, r.signature, r.flags
    )
}

/// Compares rseq registrations thread by thread (threads by tid).
pub fn compare_rseq(before: &[Rseq], after: &[Rseq]) -> Option<Difference> {
    (before != after).then(|| {
        let show = |list: &[Rseq]| {
            if list.is_empty() {
                "    (none)".to_string()
            } else {
                list.iter()
                    .map(|r| format!("    {}", describe_rseq(r)))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        };
        Difference::new(
            "rseq",
            format!(
                "rseq registrations differ\nbefore:\n{}\nafter:\n{}",
                show(before),
                show(after)
            ),
        )
    })
}

/// Compares page hashes of the VMAs present (same range) in both states.
/// VMAs that exist on one side only are the business of the maps check.
pub fn compare_memory(before: &VisibleState, after: &VisibleState) -> Option<Difference> {
    let after_by_range: BTreeMap<(u64, u64), _> =
        after.memory.iter().map(|v| ((v.start, v.end), v)).collect();
    let mut lines = Vec::new();
    for vb in &before.memory {
        let Some(va) = after_by_range.get(&(vb.start, vb.end)) else {
            continue;
        };
        if vb.digest == va.digest && vb.pages == va.pages {
            continue;
        }
        if let Some(diff) = diff_pages(&vb.pages, &va.pages) {
            let (addr, hb, ha) = diff.first;
            lines.push(format!(
                "{:x}-{:x} {} {}: {} of {} page(s) differ, first at {addr:#x} ({} -> {})",
                vb.start,
                vb.end,
                vb.perms,
                if vb.path.is_empty() {
                    "[anon]"
                } else {
                    &vb.path
                },
                diff.count,
                (vb.end - vb.start) / super::memory::page_size() as u64,
                describe_page(hb),
                describe_page(ha),
            ));
        }
    }
    (!lines.is_empty()).then(|| {
        Difference::new(
            "memory",
            format!("{} VMA(s) differ\n{}", lines.len(), lines.join("\n")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::memory::{Source, VmaDigest};
    use super::*;

    fn state() -> VisibleState {
        VisibleState {
            pid: 42,
            status: vec![
                ("Name".into(), "t".into()),
                ("SigBlk".into(), "0000000000000000".into()),
            ],
            cwd: "/work".into(),
            root: "/".into(),
            fds: vec![
                FdEntry {
                    fd: 0,
                    target: "/dev/null".into(),
                    pos: 0,
                    flags: 0o100000,
                },
                FdEntry {
                    fd: 1,
                    target: "/log".into(),
                    pos: 10,
                    flags: 0o102001,
                },
            ],
            maps: vec![
                MapEntry {
                    start: 0x1000,
                    end: 0x3000,
                    perms: "rw-p".into(),
                    offset: 0,
                    dev: "00:00".into(),
                    inode: 0,
                    path: "[heap]".into(),
                },
                MapEntry {
                    start: 0x5000,
                    end: 0x6000,
                    perms: "r--p".into(),
                    offset: 0x2000,
                    dev: "fe:00".into(),
                    inode: 7,
                    path: "/lib".into(),
                },
            ],
            memory: vec![VmaDigest {
                start: 0x1000,
                end: 0x3000,
                perms: "rw-p".into(),
                path: "[heap]".into(),
                source: Source::Pagemap,
                pages: vec![(0x1000, 11)],
                digest: 1,
            }],
            rseq: vec![Rseq {
                tid: 42,
                addr: 0x7000,
                size: 32,
                signature: 0x53053053,
                flags: 0,
            }],
        }
    }

    #[test]
    fn identical_states_have_no_difference() {
        assert_eq!(compare(&state(), &state()), vec![]);
    }

    #[test]
    fn reports_status_cwd_and_root() {
        let before = state();
        let mut after = state();
        after.status[1].1 = "0000000000004000".into();
        after.status.push(("Seccomp".into(), "2".into()));
        after.cwd = "/elsewhere".into();
        let diffs = compare(&before, &after);
        assert_eq!(
            diffs,
            vec![
                Difference::new(
                    "status:SigBlk",
                    "\"0000000000000000\" -> \"0000000000004000\""
                ),
                Difference::new("status:Seccomp", "(absent) -> \"2\""),
                Difference::new("cwd", "/work -> /elsewhere"),
            ]
        );
    }

    #[test]
    fn reports_fd_changes() {
        let before = state();
        let mut after = state();
        after.fds[1].pos = 0;
        after.fds[1].flags = 0o2001;
        after.fds.remove(0);
        after.fds.push(FdEntry {
            fd: 5,
            target: "pipe:[#1]".into(),
            pos: 0,
            flags: 0,
        });
        let diff = compare_fds(&before.fds, &after.fds).expect("differs");
        assert_eq!(diff.check, "fds");
        assert_eq!(
            diff.detail,
            "3 descriptor(s) differ\n\
             fd 0: missing after restore (was 0 -> /dev/null pos=0 flags=0100000)\n\
             fd 1 (/log): pos 10 -> 0, flags 0102001 -> 02001\n\
             fd 5: new after restore (5 -> pipe:[#1] pos=0 flags=00)"
        );
    }

    #[test]
    fn reports_maps_lines() {
        let before = state();
        let mut after = state();
        after.maps[1].perms = "rw-p".into();
        let diff = compare_maps(&before.maps, &after.maps).expect("differs");
        assert_eq!(
            diff.detail,
            "1 entry only before, 1 only after (- before, + after)\n\
             - 5000-6000 r--p 00002000 fe:00 7 /lib\n\
             + 5000-6000 rw-p 00002000 fe:00 7 /lib"
        );
    }

    #[test]
    fn reports_rseq_changes() {
        let before = state();
        let mut after = state();
        after.rseq.clear();
        let diff = compare(&before, &after);
        assert_eq!(
            diff,
            vec![Difference::new(
                "rseq",
                "rseq registrations differ\nbefore:\n    tid 42: struct rseq at 0x7000 size 32 \
                 signature 0x53053053 flags 0\nafter:\n    (none)"
            )]
        );
    }

    #[test]
    fn reports_first_differing_page() {
        let before = state();
        let mut after = state();
        after.memory[0].pages = vec![(0x1000, 11), (0x2000, 12)];
        after.memory[0].digest = 2;
        let diff = compare_memory(&before, &after).expect("differs");
        assert_eq!(diff.check, "memory");
        assert_eq!(
            diff.detail,
            "1 VMA(s) differ\n\
             1000-3000 rw-p [heap]: 1 of 2 page(s) differ, first at 0x2000 \
             (zero page -> data 000000000000000c)"
        );
        // A VMA missing on one side is left to the maps check.
        after.memory.clear();
        assert_eq!(compare_memory(&before, &after), None);
    }
}
