//! Flavors: how a test is checkpointed and restored. One TOML file per
//! flavor in the flavors directory, e.g. `flavors/dump.toml`:
//!
//! ```toml
//! name = "dump"
//! description = "Full dump (task killed), restore, compare"
//! ```
//!
//! Unknown keys are rejected on purpose: a flavor file written for a newer
//! runner (say with `pre_dumps = 2`) must not silently run as a plain dump
//! and report a PASS for something that was never exercised; a typo must
//! not either. Adding a key therefore means teaching the runner about it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::SetupError;
use crate::manifest::valid_name;

/// One flavor file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    /// Flavor name; must equal the file stem (`dump` for `dump.toml`).
    pub name: String,
    /// One line saying what the flavor does.
    pub description: String,
}

impl Flavor {
    /// Parses a flavor file; `path` names the file in errors and gives the
    /// expected name (its stem).
    pub fn parse(text: &str, path: &Path) -> Result<Flavor, SetupError> {
        let bad = |message: String| SetupError::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let flavor: Flavor = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if !valid_name(&flavor.name) {
            return Err(bad(format!(
                "invalid flavor name {:?}: use letters, digits, '_', '-', '.'",
                flavor.name
            )));
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if flavor.name != stem {
            return Err(bad(format!(
                "flavor name {:?} does not match the file name (expected {stem:?})",
                flavor.name
            )));
        }
        if flavor.description.trim().is_empty() {
            return Err(bad("empty description".to_string()));
        }
        Ok(flavor)
    }
}

/// All flavors of a directory, sorted by name.
#[derive(Debug, Clone)]
pub struct FlavorSet {
    /// The directory they came from (for messages).
    pub dir: PathBuf,
    /// The flavors, sorted by name.
    pub flavors: Vec<Flavor>,
}

impl FlavorSet {
    /// Reads every `*.toml` of `dir`; fails on any bad file or when there
    /// is none.
    pub fn load(dir: &Path) -> Result<FlavorSet, SetupError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SetupError::io("cannot read flavors dir", dir, e))?;
        let mut flavors = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SetupError::io("cannot read flavors dir", dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SetupError::io("cannot read flavor", &path, e))?;
            flavors.push(Flavor::parse(&text, &path)?);
        }
        if flavors.is_empty() {
            return Err(SetupError::NoFlavors {
                dir: dir.to_path_buf(),
            });
        }
        flavors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(FlavorSet {
            dir: dir.to_path_buf(),
            flavors,
        })
    }

    /// The flavor named `name`.
    pub fn get(&self, name: &str) -> Option<&Flavor> {
        self.flavors.iter().find(|f| f.name == name)
    }

    /// The flavors named by `-f` (deduplicated, in the given order), or all
    /// of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<Flavor>, SetupError> {
        if names.is_empty() {
            return Ok(self.flavors.clone());
        }
        let mut out: Vec<Flavor> = Vec::new();
        for name in names {
            let flavor = self.get(name).ok_or_else(|| SetupError::UnknownFlavor {
                name: name.clone(),
                dir: self.dir.clone(),
            })?;
            if !out.iter().any(|f| f.name == flavor.name) {
                out.push(flavor.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn parses_dump() {
        let f = Flavor::parse(
            "name = \"dump\"\ndescription = \"Full dump\"\n",
            Path::new("/x/dump.toml"),
        )
        .expect("valid");
        assert_eq!(f.name, "dump");
        assert_eq!(f.description, "Full dump");
    }

    #[rstest]
    #[case::unknown_key(
        "name = \"dump\"\ndescription = \"d\"\npre_dumps = 2\n",
        "unknown field `pre_dumps`"
    )]
    #[case::missing_description("name = \"dump\"\n", "missing field `description`")]
    #[case::name_mismatch(
        "name = \"other\"\ndescription = \"d\"\n",
        "does not match the file name"
    )]
    #[case::bad_name("name = \"a/b\"\ndescription = \"d\"\n", "invalid flavor name")]
    #[case::empty_description("name = \"dump\"\ndescription = \"\"\n", "empty description")]
    #[case::syntax("name = dump\n", "dump.toml")]
    fn rejects_bad_files(#[case] text: &str, #[case] expected: &str) {
        let err = Flavor::parse(text, Path::new("/x/dump.toml"))
            .expect_err("must be rejected")
            .to_string();
        assert!(err.contains(expected), "error {err:?} lacks {expected:?}");
        assert!(
            err.starts_with("/x/dump.toml: "),
            "error {err:?} lacks the path"
        );
    }

    #[test]
    fn loads_and_selects() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("dump.toml"),
            "name = \"dump\"\ndescription = \"d\"\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("alpha.toml"),
            "name = \"alpha\"\ndescription = \"a\"\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("README.md"), "not a flavor").expect("write");
        let set = FlavorSet::load(dir.path()).expect("loads");
        let names: Vec<_> = set.flavors.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["alpha", "dump"]);
        assert_eq!(set.select(&[]).expect("all").len(), 2);
        let picked = set.select(&["dump".into(), "dump".into()]).expect("known");
        assert_eq!(picked.len(), 1);
        let err = set
            .select(&["nope".into()])
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("unknown flavor \"nope\""), "{err}");
    }

    #[test]
    fn empty_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = FlavorSet::load(dir.path())
            .expect_err("no flavors")
            .to_string();
        assert!(err.contains("no flavor files"), "{err}");
    }

    #[test]
    fn shipped_flavors_load() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../flavors"));
        let set = FlavorSet::load(dir).expect("shipped flavors");
        assert!(set.get("dump").is_some());
    }
}
