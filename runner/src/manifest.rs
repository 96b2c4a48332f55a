//! The test manifest: one small TOML file per test,
//! `zdtm-tests/meta/NAME.toml`, named after the test (and its binary):
//!
//! ```toml
//! description = "environment survives"
//! timeout_secs = 30            # optional, default 30
//! exclude_flavors = ["lazy"]   # optional
//! needs = ["avx"]              # optional: /proc/cpuinfo flags
//! needs_kernel = ["soft-dirty"]        # optional: kernel features probed
//! needs_caps = ["CAP_SYS_RESOURCE"]    # optional: the runner's CapEff
//! user = "nobody"              # optional: run as this user (name or uid)
//! opts = ["--x=y"]             # optional: extra arguments for the test
//! skip_checks = ["memory"]     # optional: state checks not applicable
//! steps = true                 # optional: follows the step protocol
//! continuous = true            # optional (needs steps): never quiescent
//! ```
//!
//! A test whose `needs*` this machine does not meet is reported SKIP with
//! the reason (see [`crate::host`]), never dropped.
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
//! silently run the test everywhere), as are unsafe names (the file name
//! gives the test's name; a `name` key is rejected) and files that are not
//! `*.toml`. The error names the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::SetupError;
use crate::host::{KernelFeature, CAP_NAMES};
use crate::locate::{LEGACY_MANIFEST_FILE, META_DIR};

/// Timeout of each step of a run when the manifest gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// One test's metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestEntry {
    /// Test name (the file's stem); also the file name of its binary and
    /// of its work dir.
    #[serde(skip)]
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
    /// Kernel features the test needs (probed on the running kernel; SKIP
    /// otherwise).
    #[serde(default)]
    pub needs_kernel: Vec<KernelFeature>,
    /// Capabilities (`CAP_SYS_RESOURCE`...) the runner must hold in its
    /// effective set (SKIP otherwise).
    #[serde(default)]
    pub needs_caps: Vec<String>,
    /// Run the test as this user: a name of the passwd database or a
    /// numeric uid (its primary group, or the same gid if it has no
    /// passwd entry). Its supplementary groups are dropped.
    #[serde(default)]
    pub user: Option<UserSpec>,
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
    "tree",
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
    /// Parses and validates one metadata file; `path` (`.../NAME.toml`)
    /// gives the name and is named in errors.
    pub fn parse(text: &str, path: &Path) -> Result<TestEntry, SetupError> {
        let bad = |message: String| SetupError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            return Err(bad(
                "not a test metadata file: the meta dir holds only NAME.toml files".to_string(),
            ));
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if !valid_name(&name) {
            return Err(bad(format!(
                "invalid test name {name:?} (the file name): use letters, digits, '_', '-', '.'"
            )));
        }
        let mut test: TestEntry = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        test.name = name;
        if test.description.trim().is_empty() {
            return Err(bad("empty description".to_string()));
        }
        if test.timeout_secs == Some(0) {
            return Err(bad("timeout_secs must be > 0".to_string()));
        }
        if let Some(check) = test.skip_checks.iter().find(|c| !valid_check(c)) {
            return Err(bad(format!(
                "unknown check {check:?} in skip_checks (known: {}, status:FIELD)",
                CHECKS.join(", ")
            )));
        }
        if test.continuous && !test.steps {
            return Err(bad("continuous = true needs steps = true".to_string()));
        }
        if let Some(need) = test.needs.iter().find(|n| n.trim().is_empty()) {
            return Err(bad(format!("empty entry {need:?} in needs")));
        }
        if let Some(cap) = test
            .needs_caps
            .iter()
            .find(|c| !CAP_NAMES.contains(&c.as_str()))
        {
            return Err(bad(format!(
                "unknown capability {cap:?} in needs_caps (write it as CAP_SYS_RESOURCE)"
            )));
        }
        if let Some(UserSpec::Name(name)) = &test.user {
            if name.trim().is_empty() {
                return Err(bad("empty user".to_string()));
            }
        }
        Ok(test)
    }

    /// The step timeout of this test.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS))
    }
}

/// `user = "nobody"` or `user = 65534`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum UserSpec {
    /// A numeric uid.
    Uid(u32),
    /// A user name (or a uid written as a string).
    Name(String),
}

impl std::fmt::Display for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserSpec::Uid(uid) => write!(f, "{uid}"),
            UserSpec::Name(name) => f.write_str(name),
        }
    }
}

impl UserSpec {
    /// The uid and gid to run as: a name from the passwd database, a uid
    /// with its passwd entry's group, or else the same number as gid.
    pub fn resolve(&self) -> Result<(u32, u32), String> {
        use nix::unistd::{Uid, User};
        let uid = match self {
            UserSpec::Uid(uid) => Some(*uid),
            UserSpec::Name(name) => name.parse::<u32>().ok(),
        };
        match uid {
            Some(uid) => Ok(match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(user)) => (uid, user.gid.as_raw()),
                _ => (uid, uid),
            }),
            None => match User::from_name(&self.to_string()) {
                Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
                Ok(None) => Err(format!("no user {self:?} in the passwd database")),
                Err(e) => Err(format!("cannot look up user {self}: {e}")),
            },
        }
    }
}

/// The parsed manifest: every `meta/*.toml` of the tests directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from (the `meta/` directory; for messages).
    pub path: PathBuf,
    /// The tests, sorted by name.
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
    /// Reads `DIR/meta/*.toml`. A `DIR/tests.toml` left from the old
    /// single-file manifest is an error rather than silently ignored.
    pub fn load(dir: &Path) -> Result<Manifest, SetupError> {
        let legacy = dir.join(LEGACY_MANIFEST_FILE);
        if legacy.exists() {
            return Err(SetupError::BadFile {
                path: legacy,
                message: format!(
                    "the single-file manifest is no longer read: move each [[test]] entry to \
                     {META_DIR}/NAME.toml (one file per test, without the name key)"
                ),
            });
        }
        let meta = dir.join(META_DIR);
        let entries = std::fs::read_dir(&meta)
            .map_err(|e| SetupError::io("cannot read the test metadata dir", &meta, e))?;
        let mut tests = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| SetupError::io("cannot read the test metadata dir", &meta, e))?;
            let path = entry.path();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SetupError::io("cannot read test metadata", &path, e))?;
            tests.push(TestEntry::parse(&text, &path)?);
        }
        tests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest { path: meta, tests })
    }

    /// Parses the given (path, text) metadata files; for tests.
    pub fn parse_files(dir: &Path, files: &[(&str, &str)]) -> Result<Manifest, SetupError> {
        let mut tests = Vec::new();
        for (file, text) in files {
            tests.push(TestEntry::parse(text, &dir.join(file))?);
        }
        tests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest {
            path: dir.to_path_buf(),
            tests,
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

    fn parse_one(file: &str, text: &str) -> Result<TestEntry, String> {
        TestEntry::parse(text, &Path::new("/m").join(file)).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_full_and_minimal_entries() {
        let m = Manifest::parse_files(
            Path::new("/m"),
            &[
                (
                    "vdso01.toml",
                    "description = \"vdso\"\ntimeout_secs = 5\n\
                  exclude_flavors = [\"lazy\"]\nneeds = [\"avx\"]\nopts = [\"--x=y\", \"-v\"]\n\
                  skip_checks = [\"memory\", \"status:SigBlk\"]\n\
                  needs_kernel = [\"soft-dirty\", \"uffd-wp-async\"]\n\
                  needs_caps = [\"CAP_SYS_RESOURCE\"]\nuser = \"nobody\"\n",
                ),
                ("env00.toml", "description = \"environment\"\n"),
                (
                    "stepper.toml",
                    "description = \"d\"\nsteps = true\ncontinuous = true\nuser = 1000\n",
                ),
            ],
        )
        .expect("valid manifest");
        let names: Vec<_> = m.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["env00", "stepper", "vdso01"], "sorted by name");
        let env = m.get("env00").expect("present");
        assert!(!env.steps && !env.continuous && env.opts.is_empty());
        assert_eq!(env.timeout(), Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert!(env.needs_kernel.is_empty() && env.needs_caps.is_empty() && env.user.is_none());
        let s = m.get("stepper").expect("present");
        assert!(s.steps && s.continuous);
        assert_eq!(s.user, Some(UserSpec::Uid(1000)));
        let t = m.get("vdso01").expect("present");
        assert_eq!(t.timeout(), Duration::from_secs(5));
        assert_eq!(t.exclude_flavors, ["lazy"]);
        assert_eq!(t.needs, ["avx"]);
        assert_eq!(t.opts, ["--x=y", "-v"]);
        assert_eq!(t.skip_checks, ["memory", "status:SigBlk"]);
        assert_eq!(
            t.needs_kernel,
            [KernelFeature::SoftDirty, KernelFeature::UffdWpAsync]
        );
        assert_eq!(t.needs_caps, ["CAP_SYS_RESOURCE"]);
        assert_eq!(t.user, Some(UserSpec::Name("nobody".into())));
        assert!(m.get("nope").is_none());
    }

    #[test]
    fn users_resolve() {
        assert_eq!(UserSpec::Name("root".into()).resolve(), Ok((0, 0)));
        assert_eq!(UserSpec::Uid(0).resolve(), Ok((0, 0)));
        assert_eq!(UserSpec::Name("0".into()).resolve(), Ok((0, 0)));
        // A uid without a passwd entry runs with the same gid.
        assert_eq!(UserSpec::Uid(54321).resolve(), Ok((54321, 54321)));
        let err = UserSpec::Name("no-such-user-zdtm".into())
            .resolve()
            .expect_err("unknown");
        assert!(err.contains("no user"), "{err}");
    }

    #[rstest]
    #[case::unknown_key(
        "a.toml",
        "description = \"d\"\nexclude_flavours = []\n",
        "unknown field `exclude_flavours`"
    )]
    #[case::name_key(
        "a.toml",
        "name = \"a\"\ndescription = \"d\"\n",
        "unknown field `name`"
    )]
    #[case::table("a.toml", "[test]\ndescription = \"d\"\n", "unknown field `test`")]
    #[case::missing_description("a.toml", "timeout_secs = 3\n", "missing field `description`")]
    #[case::wrong_type(
        "a.toml",
        "description = \"d\"\ntimeout_secs = \"10\"\n",
        "invalid type"
    )]
    #[case::bad_file_name("a b.toml", "description = \"d\"\n", "invalid test name \"a b\"")]
    #[case::hidden_file(".a.toml", "description = \"d\"\n", "invalid test name")]
    #[case::not_toml("a.txt", "description = \"d\"\n", "not a test metadata file")]
    #[case::empty_description("a.toml", "description = \" \"\n", "empty description")]
    #[case::zero_timeout(
        "a.toml",
        "description = \"d\"\ntimeout_secs = 0\n",
        "timeout_secs must be > 0"
    )]
    #[case::unknown_check(
        "a.toml",
        "description = \"d\"\nskip_checks = [\"mem\"]\n",
        "unknown check \"mem\" in skip_checks"
    )]
    #[case::unknown_status_field(
        "a.toml",
        "description = \"d\"\nskip_checks = [\"status:VmRSS\"]\n",
        "unknown check \"status:VmRSS\""
    )]
    #[case::continuous_without_steps(
        "a.toml",
        "description = \"d\"\ncontinuous = true\n",
        "continuous = true needs steps = true"
    )]
    #[case::steps_not_bool("a.toml", "description = \"d\"\nsteps = 2\n", "invalid type")]
    #[case::unknown_kernel_feature(
        "a.toml",
        "description = \"d\"\nneeds_kernel = [\"softdirty\"]\n",
        "unknown variant `softdirty`"
    )]
    #[case::unknown_cap(
        "a.toml",
        "description = \"d\"\nneeds_caps = [\"sys_resource\"]\n",
        "unknown capability \"sys_resource\""
    )]
    #[case::empty_user("a.toml", "description = \"d\"\nuser = \"\"\n", "empty user")]
    #[case::negative_uid("a.toml", "description = \"d\"\nuser = -1\n", "user")]
    #[case::syntax("a.toml", "description = \n", "a.toml")]
    fn rejects_bad_files(#[case] file: &str, #[case] text: &str, #[case] expected: &str) {
        let err = parse_one(file, text).expect_err("must be rejected");
        assert!(err.contains(expected), "error {err:?} lacks {expected:?}");
        assert!(
            err.starts_with(&format!("/m/{file}: ")),
            "error {err:?} lacks the path"
        );
    }

    #[test]
    fn load_reads_the_meta_dir_and_refuses_the_old_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = dir.path().join(META_DIR);
        std::fs::create_dir(&meta).expect("mkdir");
        std::fs::write(meta.join("b.toml"), "description = \"b\"\n").expect("write");
        std::fs::write(meta.join("a.toml"), "description = \"a\"\n").expect("write");
        let m = Manifest::load(dir.path()).expect("loads");
        let names: Vec<_> = m.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(m.path, meta);
        std::fs::write(meta.join("README"), "x").expect("write");
        let err = Manifest::load(dir.path())
            .expect_err("stray file")
            .to_string();
        assert!(err.contains("README: not a test metadata file"), "{err}");
        std::fs::remove_file(meta.join("README")).expect("rm");
        std::fs::write(dir.path().join(LEGACY_MANIFEST_FILE), "").expect("write");
        let err = Manifest::load(dir.path()).expect_err("legacy").to_string();
        assert!(err.contains("no longer read"), "{err}");
        let err = Manifest::load(&dir.path().join("none"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("cannot read the test metadata dir"), "{err}");
    }

    #[test]
    fn shipped_metadata_loads() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../zdtm-tests"));
        let m = Manifest::load(dir).expect("shipped metadata");
        assert!(m.tests.len() > 40);
        assert!(m
            .get("big_region")
            .is_some_and(|t| t.timeout_secs == Some(120)));
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
