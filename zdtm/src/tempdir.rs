//! Per-test temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::TestResult;

/// Directories created and not yet removed, for [`remove_leftovers`].
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes (best effort) every [`TempDir`] not removed explicitly; called
/// when the test reports its result, so failing tests leave nothing behind.
pub(crate) fn remove_leftovers() {
    let dirs = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A directory `/tmp/zdtm-<test>-<pid>` for the files a test creates.
///
/// It is not removed on drop (tests exit with `process::exit`); call
/// [`TempDir::remove`] once the checks are done. Directories still present
/// when the test reports PASS or FAIL are removed then, best effort.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory (replacing a stale one with the same name).
    pub fn new() -> TestResult<TempDir> {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let path = PathBuf::from(format!("/tmp/zdtm-{}-{pid}", crate::test_name()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        Ok(TempDir { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> TestResult {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != self.path);
        std::fs::remove_dir_all(&self.path)
            .map_err(|e| format!("removing {}: {e}", self.path.display()))
    }
}
