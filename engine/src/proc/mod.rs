//! Parsers for the /proc files the engine reads.
//!
//! Each file format has a pure `parse_*(&str)` (unit-tested on text captured
//! from a real 6.18 kernel) and a `read_*(pid)` wrapper that reads the file
//! and attaches its path to any error. /proc text is decoded lossily: paths
//! that are not UTF-8 get U+FFFD, so callers that must reopen a mapped file
//! should go through /proc/PID/map_files or the fd itself, not the name.

pub mod auxv;
pub mod fd;
pub mod maps;
pub mod memo;
pub mod pagemap;
pub mod stat;
pub mod status;
pub mod task;

use std::io;
use std::path::{Path, PathBuf};

pub use auxv::{parse_auxv, read_auxv};
pub use fd::{list_fds, parse_fdinfo, read_fdinfo, read_link, FdInfo, FdLink, FdTarget};
pub use maps::{parse_maps, parse_smaps, read_maps, read_smaps, VmFlags, Vma};
pub use pagemap::{zero_page_pfn, PageEntry, PagemapReader, PAGE_SIZE};
pub use stat::{parse_stat, read_stat, Stat};
pub use status::{parse_status, read_status, Status};
pub use task::{children, read_comm, task_ids};

/// A malformed line in a /proc file; `line` is 1-based (0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, msg: impl Into<String>) -> Self {
        ParseError {
            line,
            msg: msg.into(),
        }
    }
}

/// Errors of the `read_*` wrappers: which file, and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// A check that found the kernel or our privileges lacking.
    #[error("{0}")]
    Unavailable(String),
}

impl ProcError {
    /// True when the error means the process or task no longer exists
    /// (it exited between listing and reading): callers usually skip it.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ESRCH)
            ),
            ProcError::Sys { source, .. } => {
                matches!(source, nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH)
            }
            ProcError::Parse { .. } | ProcError::Unavailable(_) => false,
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        ProcError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parse(path: &Path, source: ParseError) -> Self {
        ProcError::Parse {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ProcError>;

/// `/proc/<pid>/<file>`.
pub fn pid_path(pid: i32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads a small file (/proc, /sys) whole: most in one read into an 8 KiB
/// buffer. std's `fs::read` asks the size first (statx, which says 0 for
/// /proc files) and then reads 32, 32, 64... bytes: ten system calls for a
/// /proc/PID/status, read many times per process by a dump.
/// Within a dump's frozen pass a process's status and maps are read once
/// until the engine changes the task ([`memo`]).
pub(crate) fn read_small(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    memo::read_through(path.as_ref(), read_small_fresh)
}

/// [`read_small`] from the file itself, never from what a frozen pass kept.
pub(crate) fn read_small_fresh(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`read_small`] as UTF-8 (an error otherwise, as `fs::read_to_string`).
pub(crate) fn read_small_string(path: impl AsRef<Path>) -> std::io::Result<String> {
    String::from_utf8(read_small(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads a whole /proc text file (lossy UTF-8, see the module doc).
pub(crate) fn read_text(path: &Path) -> Result<String> {
    read_small(path)
        .map(lossy_text)
        .map_err(|e| ProcError::io(path, e))
}

/// [`read_text`] from the file itself, never from what a frozen pass kept.
pub(crate) fn read_text_fresh(path: &Path) -> Result<String> {
    read_small_fresh(path)
        .map(lossy_text)
        .map_err(|e| ProcError::io(path, e))
}

fn lossy_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Reads `path` and runs `parse` on it, tagging parse errors with the path.
pub(crate) fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> std::result::Result<T, ParseError>,
) -> Result<T> {
    let text = read_text(path)?;
    parse(&text).map_err(|e| ProcError::parse(path, e))
}
