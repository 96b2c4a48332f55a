//! Result lines and the summary.
//!
//! One result line per (test, flavor):
//! ```text
//! PASS name (flavor) 0.42s
//! FAIL name (flavor): check: first line of the detail
//!     further detail lines, indented
//!     work dir: /abs/path/zdtm-logs/name/flavor
//!     replay: zdtm run -t name -f flavor --keep-img always
//! SKIP name (flavor): reason
//! ```
//! and at the end (see [`crate::reporters`]) a table, the slowest runs
//! and exactly `zdtm: N passed, N failed, N skipped`.

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One failed check of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check: `launch`, `pre-dump N`, `step N`, `capture`, `dump`,
    /// `restore`, `maps`, `fds`, `status:FIELD`, `cwd`, `root`, `memory`,
    /// `test`, `cleanup`, `setup`.
    pub check: String,
    /// What went wrong: a summary line, then optional details.
    pub detail: String,
}

impl Failure {
    /// A failure of `check`.
    pub fn new(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Failure {
            check: check.into(),
            detail: detail.into(),
        }
    }

    /// Appends the tail of a log file to the detail, if it has any.
    pub fn with_tail(mut self, path: &Path) -> Self {
        self.push_tail(path);
        self
    }

    /// Appends the tail of a log file to the detail, if it has any.
    pub fn push_tail(&mut self, path: &Path) {
        if let Some(tail) = tail_file(path, TAIL_LINES) {
            let _ = write!(self.detail, "\n{}\n{tail}", tail_header(path));
        }
    }
}

/// The line before a log's tail in a failure's detail.
fn tail_header(path: &Path) -> String {
    format!("--- last lines of {} ---", path.display())
}

/// Makes sure the failures of a run show the tail of each of `logs`
/// (the engine's last log, the test's output) that is not empty: those
/// not shown by any failure yet are appended to the first one.
pub fn attach_tails(failures: &mut [Failure], logs: &[&Path]) {
    for path in logs {
        let header = tail_header(path);
        if failures.iter().any(|f| f.detail.contains(&header)) {
            continue;
        }
        if let Some(first) = failures.first_mut() {
            first.push_tail(path);
        }
    }
}

/// Which work dirs `zdtm run` keeps (`--keep-img`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepImg {
    /// Every run's, passing ones too (a bare `--keep-img`).
    Always,
    /// Failed runs' only (the default).
    #[default]
    Failed,
    /// None: even a failed run's work dir is removed.
    Never,
}

impl KeepImg {
    /// Whether a run's work dir is kept, given whether it passed.
    pub fn keeps(self, passed: bool) -> bool {
        match self {
            KeepImg::Always => true,
            KeepImg::Failed => !passed,
            KeepImg::Never => false,
        }
    }
}

/// Lines of a log shown in a failure.
pub const TAIL_LINES: usize = 20;
/// Bytes of a log read to find its last lines.
const TAIL_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of a file (without the final newline); `None`
/// if it is missing or empty.
pub fn tail_file(path: &Path, lines: usize) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    let all: Vec<&str> = text.lines().collect();
    // When the read started mid-file, its first line may be partial.
    let skip_partial = usize::from(from > 0 && all.len() > 1);
    let keep = &all[skip_partial..];
    Some(keep[keep.len().saturating_sub(lines)..].join("\n"))
}

/// The verdict of one (test, flavor) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// At least one check failed; the first is the headline.
    Fail(Vec<Failure>),
    /// Not run, for this reason.
    Skip(String),
}

/// The outcome of one (test, flavor) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Test name.
    pub test: String,
    /// Flavor name.
    pub flavor: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The work dir, when kept (see [`KeepImg`]).
    pub work_dir: Option<PathBuf>,
    /// The one-line shell command that runs just this test in just this
    /// flavor again, keeping its work dir (empty when unknown).
    pub replay: String,
}

fn indent(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "    {line}");
    }
}

impl Outcome {
    /// The result line(s), each ending with a newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let (test, flavor) = (&self.test, &self.flavor);
        match &self.verdict {
            Verdict::Pass => {
                let _ = writeln!(
                    out,
                    "PASS {test} ({flavor}) {:.2}s",
                    self.elapsed.as_secs_f64()
                );
            }
            Verdict::Skip(reason) => {
                let _ = writeln!(out, "SKIP {test} ({flavor}): {reason}");
            }
            Verdict::Fail(failures) => {
                let (headline, rest) = match failures.split_first() {
                    Some((first, rest)) => (first.clone(), rest),
                    None => (Failure::new("unknown", "no detail"), &[][..]),
                };
                let mut lines = headline.detail.lines();
                let summary = lines.next().unwrap_or("");
                let _ = writeln!(out, "FAIL {test} ({flavor}): {}: {summary}", headline.check);
                indent(&mut out, &lines.collect::<Vec<_>>().join("\n"));
                for failure in rest {
                    indent(&mut out, &format!("{}: {}", failure.check, failure.detail));
                }
                if let Some(dir) = &self.work_dir {
                    let _ = writeln!(out, "    work dir: {}", dir.display());
                }
                if !self.replay.is_empty() {
                    let _ = writeln!(out, "    replay: {}", self.replay);
                }
            }
        }
        out
    }
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Runs that passed.
    pub passed: usize,
    /// Runs that failed.
    pub failed: usize,
    /// Runs that were skipped.
    pub skipped: usize,
}

impl Summary {
    /// Counts `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut s = Summary::default();
        for o in outcomes {
            s.add(o);
        }
        s
    }

    /// Counts one more outcome.
    pub fn add(&mut self, outcome: &Outcome) {
        match outcome.verdict {
            Verdict::Pass => self.passed += 1,
            Verdict::Fail(_) => self.failed += 1,
            Verdict::Skip(_) => self.skipped += 1,
        }
    }

    /// The closing line, without newline.
    pub fn render(&self) -> String {
        format!(
            "zdtm: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(verdict: Verdict) -> Outcome {
        Outcome {
            test: "env00".into(),
            flavor: "dump".into(),
            verdict,
            elapsed: Duration::from_millis(420),
            work_dir: None,
            replay: String::new(),
        }
    }

    #[test]
    fn renders_pass_and_skip() {
        assert_eq!(outcome(Verdict::Pass).render(), "PASS env00 (dump) 0.42s\n");
        assert_eq!(
            outcome(Verdict::Skip("needs avx512f".into())).render(),
            "SKIP env00 (dump): needs avx512f\n"
        );
    }

    #[test]
    fn renders_fail_with_details_and_work_dir() {
        let mut o = outcome(Verdict::Fail(vec![
            Failure::new("maps", "1 entry only before\n- 1000-2000 rw-p"),
            Failure::new("test", "FAIL: bad"),
        ]));
        o.work_dir = Some("/logs/env00/dump".into());
        assert_eq!(
            o.render(),
            "FAIL env00 (dump): maps: 1 entry only before\n\
             \x20   - 1000-2000 rw-p\n\
             \x20   test: FAIL: bad\n\
             \x20   work dir: /logs/env00/dump\n"
        );
        o.replay = "zdtm run -t env00 -f dump --keep-img always".into();
        assert!(o.render().ends_with(
            "    work dir: /logs/env00/dump\n    replay: zdtm run -t env00 -f dump --keep-img always\n"
        ));
    }

    #[test]
    fn keep_img_modes() {
        assert!(KeepImg::Always.keeps(true) && KeepImg::Always.keeps(false));
        assert!(!KeepImg::Failed.keeps(true) && KeepImg::Failed.keeps(false));
        assert!(!KeepImg::Never.keeps(true) && !KeepImg::Never.keeps(false));
        assert_eq!(KeepImg::default(), KeepImg::Failed);
    }

    #[test]
    fn attaches_missing_tails_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, test, empty) = (
            dir.path().join("restore.log"),
            dir.path().join("test.log"),
            dir.path().join("empty.log"),
        );
        std::fs::write(&engine, "restoring\nerror: boom\n").expect("write");
        std::fs::write(&test, "test says hi\n").expect("write");
        std::fs::write(&empty, "").expect("write");
        let mut failures = vec![
            Failure::new("restore", "crust restore exited with status 1").with_tail(&engine),
            Failure::new("test", "x"),
        ];
        attach_tails(&mut failures, &[&engine, &test, &empty]);
        let first = &failures[0].detail;
        assert_eq!(first.matches("last lines of").count(), 2, "{first}");
        assert!(first.ends_with("test says hi"), "{first}");
        assert_eq!(failures[1].detail, "x");
        let mut none: Vec<Failure> = Vec::new();
        attach_tails(&mut none, &[&engine]);
    }

    #[test]
    fn summary_line() {
        let outcomes = vec![
            outcome(Verdict::Pass),
            outcome(Verdict::Fail(vec![Failure::new("dump", "x")])),
            outcome(Verdict::Skip("y".into())),
            outcome(Verdict::Pass),
        ];
        assert_eq!(
            Summary::of(&outcomes).render(),
            "zdtm: 2 passed, 1 failed, 1 skipped"
        );
    }

    #[test]
    fn tails_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        assert_eq!(tail_file(&path, 3), None);
        std::fs::write(&path, "").expect("write");
        assert_eq!(tail_file(&path, 3), None);
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(
            tail_file(&path, 3).as_deref(),
            Some("line 48\nline 49\nline 50")
        );
        let f = Failure::new("dump", "crust failed").with_tail(&path);
        assert!(
            f.detail.starts_with("crust failed\n--- last lines of "),
            "{}",
            f.detail
        );
        assert!(f.detail.ends_with("line 50"), "{}", f.detail);
    }
}
