//! Comparing two visible states.

use std::collections::{BTreeMap, BTreeSet};

use super::attrs::Attrs;
use super::fds::FdEntry;
use super::maps::MapEntry;
use super::memory::{describe_page, diff_pages};
use super::vmflags;
use super::VisibleState;
use crate::freeze::Rseq;

/// One difference between the states before and after: a check name
/// (`maps`, `fds`, `status:SigBlk`, `cwd`, `root`, `vmflags`, `rlimits`,
/// `sched`, `timers`, `personality`, `oom_score_adj`, `timerslack_ns`,
/// `rseq`, `memory`) and a detail
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
/// status fields, cwd, root, fds, maps, vmflags, personality,
/// oom_score_adj, timerslack_ns, rlimits, sched, timers, rseq, memory.
pub fn compare(before: &VisibleState, after: &VisibleState) -> Vec<Difference> {
    let mut out = Vec::new();
    compare_status(&before.status, &after.status, &mut out);
    compare_thread_status(&before.thread_status, &after.thread_status, &mut out);
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
    let flags = vmflags::compare(&before.vmflags, &after.vmflags, &before.maps, &after.maps);
    if !flags.is_empty() {
        out.push(Difference::new(
            "vmflags",
            format!("{} range(s) differ\n{}", flags.len(), flags.join("\n")),
        ));
    }
    out.extend(compare_attrs(&before.attrs, &after.attrs));
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

/// Lines for two lists keyed by `key`: `name: before -> after`, `name:
/// missing after restore (was ...)`, `name: new after restore (...)`.
fn keyed_lines<T: PartialEq, K: Ord + Clone>(
    before: &[T],
    after: &[T],
    key: impl Fn(&T) -> K,
    name: impl Fn(&K) -> String,
    show: impl Fn(&T) -> String,
) -> Vec<String> {
    let b: BTreeMap<K, &T> = before.iter().map(|x| (key(x), x)).collect();
    let a: BTreeMap<K, &T> = after.iter().map(|x| (key(x), x)).collect();
    let keys: BTreeSet<K> = b.keys().chain(a.keys()).cloned().collect();
    let mut lines = Vec::new();
    for k in keys {
        match (b.get(&k), a.get(&k)) {
            (Some(x), Some(y)) if x != y => {
                lines.push(format!("{}: {} -> {}", name(&k), show(x), show(y)));
            }
            (Some(x), None) => {
                lines.push(format!(
                    "{}: missing after restore (was {})",
                    name(&k),
                    show(x)
                ));
            }
            (None, Some(y)) => lines.push(format!("{}: new after restore ({})", name(&k), show(y))),
            _ => {}
        }
    }
    lines
}

/// Compares the attributes of [`Attrs`]: one difference per check
/// (`personality`, `oom_score_adj`, `timerslack_ns`, `rlimits`, `sched`,
/// `timers`), naming each limit, thread or timer that changed.
pub fn compare_attrs(before: &Attrs, after: &Attrs) -> Vec<Difference> {
    let mut out = Vec::new();
    for (check, b, a) in [
        ("personality", &before.personality, &after.personality),
        ("oom_score_adj", &before.oom_score_adj, &after.oom_score_adj),
        ("timerslack_ns", &before.timerslack_ns, &after.timerslack_ns),
    ] {
        if b != a {
            out.push(Difference::new(check, format!("{b} -> {a}")));
        }
    }
    let mut push = |check: &str, what: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            out.push(Difference::new(
                check,
                format!("{} {what} differ\n{}", lines.len(), lines.join("\n")),
            ));
        }
    };
    push(
        "rlimits",
        "limit(s)",
        keyed_lines(
            &before.rlimits,
            &after.rlimits,
            |l| l.name.clone(),
            |k| k.clone(),
            |l| format!("soft {} hard {}", l.soft, l.hard),
        ),
    );
    push(
        "sched",
        "thread(s)",
        keyed_lines(
            &before.sched,
            &after.sched,
            |t| t.tid,
            |k| format!("tid {k}"),
            |t| {
                let full = t.to_string();
                full.split_once(": ")
                    .map_or(full.clone(), |(_, v)| v.to_string())
            },
        ),
    );
    push(
        "timers",
        "timer(s)",
        keyed_lines(
            &before.timers,
            &after.timers,
            |t| t.id,
            |k| format!("timer {k}"),
            |t| t.fields.join(", "),
        ),
    );
    out
}

/// The per-thread status fields of the threads present on both sides
/// (a thread missing on one side shows in `status:Threads`), reported
/// under the same check names as the process's: `status:SigBlk` with
/// detail `tid 43: "..." -> "..."`.
fn compare_thread_status(
    before: &[(i32, Vec<(String, String)>)],
    after: &[(i32, Vec<(String, String)>)],
    out: &mut Vec<Difference>,
) {
    let after: BTreeMap<i32, &Vec<(String, String)>> = after.iter().map(|(t, f)| (*t, f)).collect();
    for (tid, fields) in before {
        let Some(other) = after.get(tid) else {
            continue;
        };
        let mut diffs = Vec::new();
        compare_status(fields, other, &mut diffs);
        out.extend(
            diffs
                .into_iter()
                .map(|d| Difference::new(d.check, format!("tid {tid}: {}", d.detail))),
        );
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

/// The fixture of the tests below, for the other test module.
#[cfg(test)]
fn tests_state() -> VisibleState {
    tests::state()
}

#[cfg(test)]
mod tests {
    use super::super::memory::{Source, VmaDigest};
    use super::*;

    pub(super) fn state() -> VisibleState {
        VisibleState {
            pid: 42,
            status: vec![
                ("Name".into(), "t".into()),
                ("SigBlk".into(), "0000000000000000".into()),
            ],
            thread_status: vec![(43, vec![("SigBlk".into(), "0000000000004000".into())])],
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
            vmflags: vec![],
            attrs: Attrs::default(),
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
    fn reports_thread_status_changes() {
        let before = state();
        let mut after = state();
        after.thread_status[0].1[0].1 = "0000000000000000".into();
        assert_eq!(
            compare(&before, &after),
            vec![Difference::new(
                "status:SigBlk",
                "tid 43: \"0000000000004000\" -> \"0000000000000000\""
            )]
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

#[cfg(test)]
mod attr_tests {
    use super::super::attrs::{Rlimit, Sched, Timer};
    use super::super::vmflags::VmaFlags;
    use super::*;

    fn attrs() -> Attrs {
        Attrs {
            personality: "00000000".into(),
            oom_score_adj: "0".into(),
            timerslack_ns: "50000".into(),
            rlimits: vec![
                Rlimit {
                    name: "Max open files".into(),
                    soft: "1024".into(),
                    hard: "4096".into(),
                },
                Rlimit {
                    name: "Max core file size".into(),
                    soft: "0".into(),
                    hard: "unlimited".into(),
                },
            ],
            sched: vec![Sched {
                tid: 42,
                policy: 0,
                flags: 0,
                nice: 0,
                priority: 0,
                deadline: [0; 3],
                util: [0, 1024],
            }],
            timers: vec![Timer {
                id: 0,
                fields: vec!["signal: 14/0000000000000000".into(), "ClockID: 1".into()],
            }],
        }
    }

    #[test]
    fn equal_attrs_have_no_difference() {
        assert_eq!(compare_attrs(&attrs(), &attrs()), vec![]);
    }

    #[test]
    fn names_each_changed_attribute() {
        let before = attrs();
        let mut after = attrs();
        after.personality = "00400000".into();
        after.oom_score_adj = "500".into();
        after.rlimits[0].soft = "512".into();
        after.sched[0].nice = 5;
        after.sched[0].flags = 1;
        after.timers.clear();
        assert_eq!(
            compare_attrs(&before, &after),
            vec![
                Difference::new("personality", "00000000 -> 00400000"),
                Difference::new("oom_score_adj", "0 -> 500"),
                Difference::new(
                    "rlimits",
                    "1 limit(s) differ\nMax open files: soft 1024 hard 4096 -> soft 512 hard 4096"
                ),
                Difference::new(
                    "sched",
                    "1 thread(s) differ\ntid 42: SCHED_OTHER flags 0x0 nice 0 rt priority 0 \
                     runtime/deadline/period 0/0/0 util 0-1024 -> SCHED_OTHER flags 0x1 nice 5 \
                     rt priority 0 runtime/deadline/period 0/0/0 util 0-1024"
                ),
                Difference::new(
                    "timers",
                    "1 timer(s) differ\ntimer 0: missing after restore (was signal: \
                     14/0000000000000000, ClockID: 1)"
                ),
            ]
        );
    }

    #[test]
    fn vmflags_differences_are_one_check() {
        let mut before = super::tests_state();
        let mut after = super::tests_state();
        let flags = |f: &str| f.split_whitespace().map(str::to_string).collect();
        before.vmflags = vec![VmaFlags {
            start: 0x1000,
            end: 0x3000,
            flags: flags("rd wr lo"),
        }];
        after.vmflags = vec![VmaFlags {
            start: 0x1000,
            end: 0x3000,
            flags: flags("rd wr"),
        }];
        assert_eq!(
            compare(&before, &after),
            vec![Difference::new(
                "vmflags",
                "1 range(s) differ\n1000-3000 rw-p [heap]: VmFlags lo rd wr -> rd wr (lost lo)"
            )]
        );
    }
}
