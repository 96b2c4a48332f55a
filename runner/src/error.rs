//! Setup errors: anything that stops `zdtm` before or around the runs
//! themselves (bad manifest, unknown test, missing crust, not root...).
//! They all map to exit status 2; a failing test is not an error but an
//! outcome (exit status 1).

use std::io;
use std::path::PathBuf;

/// Exit status for usage and setup errors (clap uses the same for usage).
pub const EXIT_SETUP: u8 = 2;
/// Exit status when at least one (test, flavor) run failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status when the runner was interrupted by SIGINT/SIGTERM/SIGHUP.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Why `zdtm` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `zdtm run` needs root.
    #[error(
        "zdtm run must be run as root (euid is {euid}): it ptraces the test \
         processes, makes itself their child subreaper and runs crust, which \
         needs root privileges"
    )]
    NotRoot { euid: u32 },
    /// A file or directory could not be read or created.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A manifest or flavor file is malformed.
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// Options that make no sense together or with the selected flavors.
    #[error("{0}")]
    Usage(String),
    /// `-t NAME` names no test of the manifest.
    #[error("unknown test {name:?}: not in {manifest} (see `zdtm list`)")]
    UnknownTest { name: String, manifest: PathBuf },
    /// `-f NAME` names no flavor.
    #[error("unknown flavor {name:?}: no such flavor in {dir} (see `zdtm list`)")]
    UnknownFlavor { name: String, dir: PathBuf },
    /// The flavors directory holds no flavor.
    #[error("no flavor files (*.toml) in {dir}")]
    NoFlavors { dir: PathBuf },
    /// The manifest lists no test.
    #[error("{manifest} lists no test")]
    NoTests { manifest: PathBuf },
    /// The engine binary is missing, not executable, or of no known kind.
    #[error("engine binary {path}: {reason} (build crust, or pass --engine PATH)")]
    Crust { path: PathBuf, reason: String },
    /// The binary given to `--bin` is unusable.
    #[error("test binary {path}: {reason}")]
    Bin { path: PathBuf, reason: String },
    /// A system call needed for the setup failed.
    #[error("{what}: {source}")]
    System {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    /// The network namespace and veth pair of the remote lazy flavors
    /// could not be set up.
    #[error("remote lazy flavors: cannot set up the network namespace and veth pair: {message}")]
    Network { message: String },
}

impl SetupError {
    /// Shorthand for [`SetupError::Io`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SetupError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
