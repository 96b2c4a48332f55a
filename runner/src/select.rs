//! Which tests run (and `zdtm list` prints): `-a`, `-t NAME` (a name or a
//! glob with `*`, `?`, `[...]`), `-x REGEX` (excluded; unanchored, as
//! `grep -E`), `--shard I/N` (the selection sorted by name, its k-th test,
//! from 1, in shard ((k-1) mod N)+1: every test in exactly one shard).

use std::fmt;
use std::str::FromStr;

use regex::Regex;

use crate::error::SetupError;
use crate::manifest::{Manifest, TestEntry};

/// `--shard I/N`: shard I (from 1) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// I, 1..=N.
    pub index: u32,
    /// N, at least 1.
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 1/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: bad shard index: {e}"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: bad shard count: {e}"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!("{s:?}: need 1 <= I <= N"));
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the k-th test (from 0) of the sorted selection is ours.
    pub fn holds(&self, k: usize) -> bool {
        k % self.count as usize == (self.index - 1) as usize
    }
}

/// Whether `pattern` is a glob rather than a plain name.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The selected tests of `manifest` (sorted by name, each once): those
/// named or matched by `patterns` (every test when empty), minus those
/// matching an `exclude` regex, then the `shard`'s part. A name that is
/// no test, or a glob that matches none, is an error (a typo must not
/// select nothing and pass).
pub fn select<'m>(
    manifest: &'m Manifest,
    patterns: &[String],
    exclude: &[String],
    shard: Option<Shard>,
) -> Result<Vec<&'m TestEntry>, SetupError> {
    let mut chosen = vec![patterns.is_empty(); manifest.tests.len()];
    for pattern in patterns {
        let matches: Vec<usize> = if is_glob(pattern) {
            let glob = glob::Pattern::new(pattern)
                .map_err(|e| SetupError::Usage(format!("-t {pattern:?}: bad glob: {e}")))?;
            (0..manifest.tests.len())
                .filter(|&i| glob.matches(&manifest.tests[i].name))
                .collect()
        } else {
            (0..manifest.tests.len())
                .filter(|&i| manifest.tests[i].name == *pattern)
                .collect()
        };
        if matches.is_empty() {
            return Err(SetupError::UnknownTest {
                name: pattern.clone(),
                manifest: manifest.path.clone(),
            });
        }
        for i in matches {
            chosen[i] = true;
        }
    }
    let exclude = exclude
        .iter()
        .map(|r| Regex::new(r).map_err(|e| SetupError::Usage(format!("-x {r:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sorted: Vec<&TestEntry> = manifest
        .tests
        .iter()
        .zip(chosen)
        .filter(|(t, chosen)| *chosen && !exclude.iter().any(|r| r.is_match(&t.name)))
        .map(|(t, _)| t)
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(match shard {
        Some(shard) => sorted
            .into_iter()
            .enumerate()
            .filter(|(k, _)| shard.holds(*k))
            .map(|(_, t)| t)
            .collect(),
        None => sorted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(names: &[&str]) -> Manifest {
        let texts: Vec<(String, &str)> = names
            .iter()
            .map(|n| (format!("{n}.toml"), "description = \"d\"\n"))
            .collect();
        let files: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (f.as_str(), *t)).collect();
        Manifest::parse_files(Path::new("/m"), &files).expect("valid")
    }

    fn names(
        m: &Manifest,
        t: &[&str],
        x: &[&str],
        shard: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
        let x: Vec<String> = x.iter().map(|s| s.to_string()).collect();
        let shard = shard.map(|s| s.parse::<Shard>().expect("shard"));
        select(m, &t, &x, shard)
            .map(|v| v.iter().map(|e| e.name.clone()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn globs_names_and_excludes() {
        let m = manifest(&[
            "fpu_avx",
            "fpu_sse",
            "heap",
            "maps_anon",
            "maps_file_shared",
        ]);
        assert_eq!(names(&m, &[], &[], None).expect("all").len(), 5);
        assert_eq!(
            names(&m, &["fpu_*"], &[], None).expect("glob"),
            ["fpu_avx", "fpu_sse"]
        );
        assert_eq!(
            names(&m, &["heap", "maps_*", "heap"], &[], None).expect("mixed"),
            ["heap", "maps_anon", "maps_file_shared"]
        );
        assert_eq!(
            names(&m, &["fpu_[a]*"], &[], None).expect("class"),
            ["fpu_avx"]
        );
        assert_eq!(names(&m, &["hea?"], &[], None).expect("?"), ["heap"]);
        assert_eq!(
            names(&m, &[], &["^maps", "sse"], None).expect("exclude"),
            ["fpu_avx", "heap"]
        );
        assert_eq!(
            names(&m, &["fpu_*"], &["avx"], None).expect("both"),
            ["fpu_sse"]
        );
        let err = names(&m, &["nope*"], &[], None).expect_err("no match");
        assert!(err.contains("unknown test \"nope*\""), "{err}");
        let err = names(&m, &["heaps"], &[], None).expect_err("unknown");
        assert!(err.contains("unknown test \"heaps\""), "{err}");
        let err = names(&m, &[], &["("], None).expect_err("bad regex");
        assert!(err.starts_with("-x \"(\": "), "{err}");
        let err = names(&m, &["[a"], &[], None).expect_err("bad glob");
        assert!(err.contains("bad glob"), "{err}");
    }

    #[test]
    fn shards_partition_the_selection() {
        let all: Vec<String> = (0..11).map(|i| format!("t{i:02}")).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let m = manifest(&refs);
        for n in 1..=5 {
            let mut seen = Vec::new();
            for i in 1..=n {
                let part = names(&m, &[], &[], Some(&format!("{i}/{n}"))).expect("shard");
                assert!(part.len() >= 11 / n as usize, "{i}/{n}: {part:?}");
                seen.extend(part);
            }
            seen.sort();
            assert_eq!(seen, all, "every test exactly once over {n} shards");
        }
        assert_eq!(
            names(&m, &[], &[], Some("2/4")).expect("2/4"),
            ["t01", "t05", "t09"]
        );
        // After -t and -x.
        assert_eq!(
            names(&m, &["t0*"], &["t00"], Some("1/3")).expect("composed"),
            ["t01", "t04", "t07"]
        );
    }

    #[test]
    fn shard_parsing() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        assert_eq!("3/3".parse::<Shard>().expect("ok").to_string(), "3/3");
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "-1/2", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
