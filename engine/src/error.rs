//! The engine's error type: every variant names what failed and where.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or ptrace request on a task failed.
    #[error("{op} on pid {pid} failed: {errno}")]
    Sys {
        op: &'static str,
        pid: i32,
        errno: Errno,
    },
    /// A system call injected into a task returned an error.
    #[error("injected {name}({args}) in pid {pid} failed: {errno}")]
    Injected {
        name: &'static str,
        args: String,
        pid: i32,
        errno: Errno,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// State the engine cannot checkpoint or restore.
    #[error("pid {pid}: unsupported: {what}")]
    Unsupported { pid: i32, what: String },
    /// The task changed under us or behaved in a way we do not handle.
    #[error("pid {pid}: {what}")]
    Task { pid: i32, what: String },
    /// The task went away (exited or was killed) while we worked on it.
    #[error("pid {pid} is gone: {what}")]
    Gone { pid: i32, what: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// crust's documented exit codes (docs/cli.md), so that scripts can tell
/// "retry" from "data lost".
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Failed; the source process runs on untouched (dump, pre-dump), or
    /// nothing was restored and the images are as they were (restore).
    pub const FAILED: u8 = 1;
    /// Bad command line: nothing was done.
    pub const USAGE: u8 = 2;
    /// Failed, and the process is gone: it exited or was killed while the
    /// engine worked on it. Its images are incomplete.
    pub const GONE: u8 = 3;
}

/// Adds what was being done to an error, keeping the error itself.
pub trait Context<T> {
    fn context(self, pid: i32, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, pid: i32, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Task {
            pid,
            what: format!("{}: {e}", what()),
        })
    }
}

impl Error {
    pub fn sys(op: &'static str, pid: i32, errno: Errno) -> Self {
        Error::Sys { op, pid, errno }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub fn task(pid: i32, what: impl Into<String>) -> Self {
        Error::Task {
            pid,
            what: what.into(),
        }
    }

    /// The task exited or was killed while we worked on it: a failure in
    /// which the source did not survive (exit code 3), whatever caused it.
    pub fn process_gone(&self) -> bool {
        matches!(
            self,
            Error::Gone { .. }
                | Error::Sys {
                    errno: Errno::ESRCH,
                    ..
                }
        )
    }

    pub fn unsupported(pid: i32, what: impl Into<String>) -> Self {
        Error::Unsupported {
            pid,
            what: what.into(),
        }
    }
}
