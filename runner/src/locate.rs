//! Where things live: the manifest directory, the flavors directory, the
//! test binaries and the crust binary.
//!
//! Directories are chosen by flag, then environment variable, then a path
//! fixed at compile time relative to this crate (so `cargo run -p
//! zdtm-runner` works from a checkout). Binaries (tests and crust) are
//! looked up next to the running `zdtm` binary: cargo puts every binary of
//! the workspace in the same `target/<profile>/` directory.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use crate::error::SetupError;

/// Environment variable naming the directory that holds `meta/`.
pub const TESTS_DIR_ENV: &str = "ZDTM_TESTS_DIR";
/// Environment variable naming the flavors directory.
pub const FLAVORS_DIR_ENV: &str = "ZDTM_FLAVORS_DIR";
/// The directory of per-test metadata files (`NAME.toml`) inside the
/// tests directory.
pub const META_DIR: &str = "meta";
/// The old single-file manifest, refused if still present.
pub const LEGACY_MANIFEST_FILE: &str = "tests.toml";

const DEFAULT_TESTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../zdtm-tests");
const DEFAULT_FLAVORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../flavors");

fn pick(flag: Option<&Path>, env: Option<OsString>, default: &str) -> PathBuf {
    if let Some(flag) = flag {
        return flag.to_path_buf();
    }
    match env {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => PathBuf::from(default),
    }
}

/// The directory holding `meta/`: `--tests-dir`, else `$ZDTM_TESTS_DIR`,
/// else `zdtm-tests/` of the source tree.
pub fn tests_dir(flag: Option<&Path>) -> PathBuf {
    pick(flag, std::env::var_os(TESTS_DIR_ENV), DEFAULT_TESTS_DIR)
}

/// The flavors directory: `--flavors-dir`, else `$ZDTM_FLAVORS_DIR`, else
/// `flavors/` of the source tree.
pub fn flavors_dir(flag: Option<&Path>) -> PathBuf {
    pick(flag, std::env::var_os(FLAVORS_DIR_ENV), DEFAULT_FLAVORS_DIR)
}

/// The directory of the running `zdtm` binary, where test binaries (and,
/// by default, crust) are found.
pub fn exe_dir() -> Result<PathBuf, SetupError> {
    let exe = std::env::current_exe().map_err(|e| SetupError::io("locating", "zdtm", e))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| SetupError::BadFile {
            path: exe.clone(),
            message: "the zdtm binary has no parent directory".into(),
        })
}

/// The engine binary: `--engine PATH` (a bare name, without `/`, is
/// looked up in `$PATH`), else `crust` next to `zdtm`.
pub fn crust_path(flag: Option<&Path>) -> Result<PathBuf, SetupError> {
    match flag {
        Some(path) => Ok(in_path(path, std::env::var_os("PATH").as_deref())),
        None => Ok(exe_dir()?.join("crust")),
    }
}

/// `name` found in the directories of `path_var` when it has no `/` and
/// one of them holds it (as a shell finds `criu`); else `name` itself.
pub fn in_path(name: &Path, path_var: Option<&std::ffi::OsStr>) -> PathBuf {
    if !name.as_os_str().as_encoded_bytes().contains(&b'/') {
        if let Some(found) = path_var
            .into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(name))
            .find(|candidate| check_executable(candidate).is_ok())
        {
            return found;
        }
    }
    name.to_path_buf()
}

/// Checks that `path` is an existing regular file we may execute; the
/// error says what is wrong in a few words.
pub fn check_executable(path: &Path) -> Result<(), String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("does not exist".to_string())
        }
        Err(e) => return Err(format!("cannot stat: {e}")),
    };
    if !meta.is_file() {
        return Err("is not a regular file".to_string());
    }
    // root passes access(X_OK) as soon as any execute bit is set, so look
    // at the bits too for a clearer message.
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (no x bit)".to_string());
    }
    access(path, AccessFlags::X_OK).map_err(|e| format!("is not executable: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_default() {
        let flag = Path::new("/flag");
        assert_eq!(
            pick(Some(flag), Some("/env".into()), "/default"),
            PathBuf::from("/flag")
        );
        assert_eq!(
            pick(None, Some("/env".into()), "/default"),
            PathBuf::from("/env")
        );
        assert_eq!(
            pick(None, Some("".into()), "/default"),
            PathBuf::from("/default")
        );
        assert_eq!(pick(None, None, "/default"), PathBuf::from("/default"));
    }

    #[test]
    fn bare_names_are_looked_up_in_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = dir.path().join("my-engine");
        std::fs::write(&engine, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path_var =
            std::env::join_paths(["/nonexistent".into(), dir.path().to_path_buf()]).expect("join");
        assert_eq!(in_path(Path::new("my-engine"), Some(&path_var)), engine);
        assert_eq!(
            in_path(Path::new("absent"), Some(&path_var)),
            PathBuf::from("absent")
        );
        assert_eq!(
            in_path(Path::new("./my-engine"), Some(&path_var)),
            PathBuf::from("./my-engine")
        );
        assert_eq!(in_path(Path::new("/x/y"), None), PathBuf::from("/x/y"));
    }

    #[test]
    fn check_executable_reports_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert_eq!(check_executable(&missing), Err("does not exist".into()));
        assert_eq!(
            check_executable(dir.path()),
            Err("is not a regular file".into())
        );
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").expect("write");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            check_executable(&plain),
            Err("is not executable (no x bit)".into())
        );
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(check_executable(&plain), Ok(()));
    }
}
