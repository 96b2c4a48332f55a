//! The test manifest, `zdtm-tests/tests.toml`:
//!
//! ```toml
//! [[test]]
//! name = "env00"
//! description = "environment survives"
//! timeout_secs = 30            # optional, default 30
//! exclude_flavors = ["lazy"]   # optional
//! needs = ["avx"]              # optional: /proc/cpuinfo flags
//! opts = ["--x=y"]             # optional: extra arguments for the test
//! skip_checks = ["memory"]     # optional: state checks not applicable
//! steps = true                 # optional: follows the step protocol
//! continuous = true            # optional (needs steps): never quiescent
//! ```
//!
//! `skip_checks` names checks of the before/after comparison that cannot
//! hold for this test (see [`CHECKS`]): e.g. a test dumped in the middle of
//! a relative `nanosleep` gets the remaining time written to its stack by
//! the interruption itself, so its memory legitimately differs.
//!
//! `steps = true` marks a test that changes its memory one step at a time
//! when the runner asks (signal [`crate::run::step_signal`], answer in
//! `<outfile>.step`), between any two consecutive dumps of a flavor with
//! pre-dumps. `continuous = true` marks a steps test that also changes its
//! memory on its own all the time: it is never quiescent, so the runner
//! does not wait for quiescence nor compare memory (the test checks its
//! own), but still compares the rest of the visible state.
//!
//! Unknown keys are rejected (a misspelt `exclude_flavours` would otherwise
//! silently run the test everywhere), as are duplicate or unsafe names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::SetupError;
use crate::locate::MANIFEST_FILE;

/// Timeout of each step of a run when the manifest gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// One `[[test]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEntry {
    /// Test name; also the file name of its binary and of its work dir.
    pub name: String,
    /// One line saying what the test checks.
    pub description: String,
    /// Timeout of each step (launch, dump, restore, exit) in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Flavors this test must not run under (reported as SKIP).
    #[serde(default)]
    pub exclude_flavors: Vec<String>,
    /// CPU features (`/proc/cpuinfo` flags) the test needs (SKIP otherwise).
    #[serde(default)]
    pub needs: Vec<String>,
    /// Extra arguments passed to the test after `--pidfile`/`--outfile`.
    #[serde(default)]
    pub opts: Vec<String>,
    /// State checks not applicable to this test (see [`CHECKS`]).
    #[serde(default)]
    pub skip_checks: Vec<String>,
    /// Follows the step protocol: takes a step on each request between
    /// two dumps.
    #[serde(default)]
    pub steps: bool,
    /// Changes its memory all the time on its own (needs `steps`): no
    /// quiescence wait, no memory comparison.
    #[serde(default)]
    pub continuous: bool,
}

/// The state checks `skip_checks` may name: these, `status` (every status
/// field) or `status:FIELD` for one field of
/// [`crate::state::status::COMPARED_FIELDS`].
pub const CHECKS: &[&str] = &[
    "status",
    "cwd",
    "root",
    "fds",
    "maps",
    "vmflags",
    "personality",
    "oom_score_adj",
    "timerslack_ns",
    "rlimits",
    "sched",
    "timers",
    "rseq",
    "memory",
];

/// Whether `check` is a valid `skip_checks` entry.
pub fn valid_check(check: &str) -> bool {
    CHECKS.contains(&check)
        || check
            .strip_prefix("status:")
            .is_some_and(|f| crate::state::status::COMPARED_FIELDS.contains(&f))
}

/// Whether the difference reported under `check` (`memory`,
/// `status:SigBlk`...) is covered by the `skip` list.
pub fn is_skipped(skip: &[String], check: &str) -> bool {
    skip.iter()
        .any(|s| s == check || (s == "status" && check.starts_with("status:")))
}

impl TestEntry {
    /// The step timeout of this test.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    test: Vec<TestEntry>,
}

/// The parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The tests, in file order.
    pub tests: Vec<TestEntry>,
}

/// Whether `name` can be used as a file name component: non-empty, ASCII
/// letters, digits, `_`, `-`, `.`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Manifest {
    /// Reads `DIR/tests.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, SetupError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SetupError::io("cannot read manifest", &path, e))?;
        Manifest::parse(&text, &path)
    }

    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, SetupError> {
        let bad = |message: String| SetupError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let file: ManifestFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for test in &file.test {
            if !valid_name(&test.name) {
                return Err(bad(format!(
                    "invalid test name {:?}: use letters, digits, '_', '-', '.'",
                    test.name
                )));
            }
            if !seen.insert(test.name.as_str()) {
                return Err(bad(format!("test {:?} is listed twice", test.name)));
            }
            if test.description.trim().is_empty() {
                return Err(bad(format!(
                    "test {:?} has an empty description",
                    test.name
                )));
            }
            if test.timeout_secs == Some(0) {
                return Err(bad(format!(
                    "test {:?}: timeout_secs must be > 0",
                    test.name
                )));
            }
            if let Some(check) = test.skip_checks.iter().find(|c| !valid_check(c)) {
                return Err(bad(format!(
                    "test {:?}: unknown check {check:?} in skip_checks (known: {}, status:FIELD)",
                    test.name,
                    CHECKS.join(", ")
                )));
            }
            if test.continuous && !test.steps {
                return Err(bad(format!(
                    "test {:?}: continuous = true needs steps = true",
                    test.name
                )));
            }
            if let Some(need) = test.needs.iter().find(|n| n.trim().is_empty()) {
                return Err(bad(format!(
                    "test {:?}: empty entry {need:?} in needs",
                    test.name
                )));
            }
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            tests: file.test,
        })
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&TestEntry> {
        self.tests.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, Path::new("tests.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_full_and_minimal_entries() {
        let m = parse(
            r#"
            [[test]]
            name = "env00"
            description = "environment"

            [[test]]
            name = "vdso01"
            description = "vdso"
            timeout_secs = 5
            exclude_flavors = ["lazy"]
            needs = ["avx"]
            opts = ["--x=y", "-v"]
            skip_checks = ["memory", "status:SigBlk"]

            [[test]]
            name = "stepper"
            description = "changes memory between pre-dumps"
            steps = true
            continuous = true
            "#,
        )
        .expect("valid manifest");
        assert_eq!(m.tests.len(), 3);
        assert!(!m.tests[0].steps && !m.tests[0].continuous);
        let s = m.get("stepper").expect("present");
        assert!(s.steps && s.continuous);
        assert_eq!(
            m.tests[0].timeout(),
            Duration::from_secs(DEFAULT_TIMEOUT_SECS)
        );
        assert!(m.tests[0].opts.is_empty());
        let t = m.get("vdso01").expect("present");
        assert_eq!(t.timeout(), Duration::from_secs(5));
        assert_eq!(t.exclude_flavors, vec!["lazy".to_string()]);
        assert_eq!(t.needs, vec!["avx".to_string()]);
        assert_eq!(t.opts, vec!["--x=y".to_string(), "-v".to_string()]);
        assert_eq!(
            t.skip_checks,
            vec!["memory".to_string(), "status:SigBlk".to_string()]
        );
        assert!(m.tests[0].skip_checks.is_empty());
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn empty_manifest_is_valid() {
        assert!(parse("").expect("empty is fine").tests.is_empty());
    }

    #[rstest]
    #[case::unknown_key(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\nexclude_flavours = []\n",
        "unknown field `exclude_flavours`"
    )]
    #[case::unknown_table("[tests]\nname = \"a\"\n", "unknown field `tests`")]
    #[case::missing_description("[[test]]\nname = \"a\"\n", "missing field `description`")]
    #[case::wrong_type(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\ntimeout_secs = \"10\"\n",
        "invalid type"
    )]
    #[case::duplicate(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\n[[test]]\nname = \"a\"\ndescription = \"e\"\n",
        "listed twice"
    )]
    #[case::slash_in_name(
        "[[test]]\nname = \"../a\"\ndescription = \"d\"\n",
        "invalid test name"
    )]
    #[case::empty_description("[[test]]\nname = \"a\"\ndescription = \" \"\n", "empty description")]
    #[case::zero_timeout(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\ntimeout_secs = 0\n",
        "timeout_secs must be > 0"
    )]
    #[case::unknown_check(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\nskip_checks = [\"mem\"]\n",
        "unknown check \"mem\" in skip_checks"
    )]
    #[case::unknown_status_field(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\nskip_checks = [\"status:VmRSS\"]\n",
        "unknown check \"status:VmRSS\""
    )]
    #[case::continuous_without_steps(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\ncontinuous = true\n",
        "continuous = true needs steps = true"
    )]
    #[case::steps_not_bool(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\nsteps = 2\n",
        "invalid type"
    )]
    #[case::misspelt_steps(
        "[[test]]\nname = \"a\"\ndescription = \"d\"\nstep = true\n",
        "unknown field `step`"
    )]
    #[case::syntax("[[test]\n", "tests.toml")]
    fn rejects_bad_manifests(#[case] text: &str, #[case] expected: &str) {
        let err = parse(text).expect_err("must be rejected");
        assert!(err.contains(expected), "error {err:?} lacks {expected:?}");
        assert!(
            err.starts_with("tests.toml: "),
            "error {err:?} lacks the path"
        );
    }

    #[test]
    fn skipped_checks() {
        let skip: Vec<String> = vec!["memory".into(), "status".into()];
        assert!(is_skipped(&skip, "memory"));
        assert!(is_skipped(&skip, "status:SigBlk"));
        assert!(!is_skipped(&skip, "maps"));
        let skip: Vec<String> = vec!["status:SigBlk".into()];
        assert!(is_skipped(&skip, "status:SigBlk"));
        assert!(!is_skipped(&skip, "status:SigPnd"));
        assert!(valid_check("status:Umask") && valid_check("rseq"));
        assert!(!valid_check("status:State") && !valid_check("test"));
    }

    #[rstest]
    #[case("env00", true)]
    #[case("a.b-c_d", true)]
    #[case("", false)]
    #[case(".hidden", false)]
    #[case("a/b", false)]
    #[case("a b", false)]
    fn name_validation(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(valid_name(name), ok);
    }
}
