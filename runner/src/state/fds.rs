//! File descriptors: `/proc/PID/fd/N` link targets and the `pos` and
//! `flags` of `/proc/PID/fdinfo/N`.
//!
//! Targets of the form `kind:[number]` (`pipe:[1234]`, `socket:[5678]`)
//! name an inode that a restore recreates with a new number; the canonical
//! form replaces the number by its order of first appearance per kind
//! (`pipe:[#1]`), which keeps which descriptors share an object.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use nix::unistd::Pid;

use super::CaptureError;

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdEntry {
    /// The descriptor number.
    pub fd: i32,
    /// The link target (canonical form, see the module documentation).
    pub target: String,
    /// File position (`pos:` of fdinfo).
    pub pos: u64,
    /// Open flags (`flags:` of fdinfo, octal there), `O_CLOEXEC` included.
    pub flags: u32,
}

impl fmt::Display for FdEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} pos={} flags=0{:o}",
            self.fd, self.target, self.pos, self.flags
        )
    }
}

/// The fields of `/proc/PID/fdinfo/N` that are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    /// `pos:` (decimal).
    pub pos: u64,
    /// `flags:` (octal).
    pub flags: u32,
}

/// Parses the `pos` and `flags` lines of an fdinfo file.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "pos" => {
                pos = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad pos {value:?} in fdinfo"))?,
                )
            }
            "flags" => {
                flags = Some(
                    u32::from_str_radix(value, 8)
                        .map_err(|_| format!("bad flags {value:?} in fdinfo"))?,
                )
            }
            _ => {}
        }
    }
    match (pos, flags) {
        (Some(pos), Some(flags)) => Ok(FdInfo { pos, flags }),
        (None, _) => Err("no pos line in fdinfo".to_string()),
        (_, None) => Err("no flags line in fdinfo".to_string()),
    }
}

/// Splits `kind:[number]` into its parts.
fn inode_target(target: &str) -> Option<(&str, &str)> {
    let (kind, rest) = target.split_once(":[")?;
    let number = rest.strip_suffix(']')?;
    let valid_kind =
        !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (valid_kind && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
        .then_some((kind, number))
}

/// Rewrites `kind:[number]` targets as `kind:[#ordinal]`, numbered per kind
/// by first appearance (entries must be sorted by fd).
pub fn canonicalise(fds: &mut [FdEntry]) {
    let mut ids: HashMap<(String, String), usize> = HashMap::new();
    let mut counters: HashMap<String, usize> = HashMap::new();
    for fd in fds {
        let Some((kind, number)) = inode_target(&fd.target) else {
            continue;
        };
        let key = (kind.to_string(), number.to_string());
        let id = match ids.get(&key) {
            Some(id) => *id,
            None => {
                let counter = counters.entry(kind.to_string()).or_insert(0);
                *counter += 1;
                ids.insert(key, *counter);
                *counter
            }
        };
        fd.target = format!("{kind}:[#{id}]");
    }
}

/// Reads every descriptor of `pid`, sorted by number, canonicalised.
pub fn read(pid: Pid) -> Result<Vec<FdEntry>, CaptureError> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| CaptureError::io(&dir, e))?;
    let mut fds = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CaptureError::io(&dir, e))?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let link = Path::new(&dir).join(fd.to_string());
        let target = match std::fs::read_link(&link) {
            Ok(target) => target.to_string_lossy().into_owned(),
            // Closed since the listing (only possible if the table is
            // shared with a task that is not frozen).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CaptureError::io(&link, e)),
        };
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let text = match std::fs::read_to_string(&info_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CaptureError::io(&info_path, e)),
        };
        let info = parse_fdinfo(&text).map_err(|message| CaptureError::Parse {
            path: info_path.clone().into(),
            message,
        })?;
        fds.push(FdEntry {
            fd,
            target,
            pos: info.pos,
            flags: info.flags,
        });
    }
    fds.sort_by_key(|f| f.fd);
    canonicalise(&mut fds);
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn parses_fdinfo() {
        let text = "pos:\t4096\nflags:\t02100002\nmnt_id:\t25\nino:\t1234\n";
        assert_eq!(
            parse_fdinfo(text),
            Ok(FdInfo {
                pos: 4096,
                flags: 0o2100002
            })
        );
        // Extra lines (eventfd, epoll, inotify) are ignored.
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\neventfd-count:    0\n";
        assert_eq!(parse_fdinfo(text), Ok(FdInfo { pos: 0, flags: 2 }));
    }

    #[rstest]
    #[case::no_pos("flags:\t02\n", "no pos")]
    #[case::no_flags("pos:\t0\n", "no flags")]
    #[case::bad_pos("pos:\t-1\nflags:\t02\n", "bad pos")]
    #[case::not_octal("pos:\t0\nflags:\t09\n", "bad flags")]
    fn rejects_bad_fdinfo(#[case] text: &str, #[case] expected: &str) {
        let err = parse_fdinfo(text).expect_err("must fail");
        assert!(err.contains(expected), "{err}");
    }

    fn fd(fd: i32, target: &str) -> FdEntry {
        FdEntry {
            fd,
            target: target.into(),
            pos: 0,
            flags: 0,
        }
    }

    #[test]
    fn canonicalises_inode_targets_per_kind() {
        let mut fds = vec![
            fd(0, "/dev/null"),
            fd(3, "pipe:[9001]"),
            fd(4, "pipe:[9001]"),
            fd(5, "socket:[77]"),
            fd(6, "pipe:[8000]"),
            fd(7, "anon_inode:[eventfd]"),
            fd(8, "/tmp/x (deleted)"),
        ];
        canonicalise(&mut fds);
        let targets: Vec<_> = fds.iter().map(|f| f.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/dev/null",
                "pipe:[#1]",
                "pipe:[#1]",
                "socket:[#1]",
                "pipe:[#2]",
                "anon_inode:[eventfd]",
                "/tmp/x (deleted)"
            ]
        );
    }

    #[test]
    fn display() {
        let e = FdEntry {
            fd: 1,
            target: "/log".into(),
            pos: 12,
            flags: 0o102001,
        };
        assert_eq!(e.to_string(), "1 -> /log pos=12 flags=0102001");
    }

    #[test]
    fn reads_own_fds() {
        let pid = nix::unistd::getpid();
        let file = tempfile::tempfile().expect("tempfile");
        let fds = read(pid).expect("reads");
        use std::os::fd::AsRawFd;
        let mine = fds
            .iter()
            .find(|f| f.fd == file.as_raw_fd())
            .expect("our tempfile is listed");
        assert!(mine.target.ends_with(" (deleted)"), "{mine}");
        assert_eq!(mine.flags & (libc::O_ACCMODE as u32), libc::O_RDWR as u32);
    }
}
