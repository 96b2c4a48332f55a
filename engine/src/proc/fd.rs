//! /proc/PID/fd and /proc/PID/fdinfo: open file descriptors.

use std::path::Path;

use super::{pid_path, read_parsed, ParseError, ProcError, Result};

/// An open descriptor and the text of its /proc/PID/fd/N symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdLink {
    pub fd: i32,
    pub target: String,
}

impl FdLink {
    pub fn kind(&self) -> FdTarget {
        FdTarget::parse(&self.target)
    }
}

/// What a /proc/PID/fd/N link text says the descriptor is. Only a hint: a
/// real file name may end with " (deleted)" or start with "/memfd:", so
/// dumpers confirm with fstat/fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    /// An absolute path that exists (as far as the kernel knows).
    File(String),
    /// An unlinked file; the path without the " (deleted)" suffix. memfds
    /// land here too (see [`FdTarget::memfd_name`]).
    Deleted(String),
    Pipe(u64),
    Socket(u64),
    /// "anon_inode:[eventfd]" → "eventfd", "anon_inode:inotify" → "inotify".
    AnonInode(String),
    /// Anything else: namespace files ("net:[4026531833]"), etc.
    Other(String),
}

const DELETED: &str = " (deleted)";

fn bracket_ino(s: &str, prefix: &str) -> Option<u64> {
    s.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl FdTarget {
    /// Classifies the text of a /proc/PID/fd/N link.
    pub fn parse(target: &str) -> FdTarget {
        if let Some(ino) = bracket_ino(target, "pipe:") {
            return FdTarget::Pipe(ino);
        }
        if let Some(ino) = bracket_ino(target, "socket:") {
            return FdTarget::Socket(ino);
        }
        if let Some(kind) = target.strip_prefix("anon_inode:") {
            let kind = kind
                .strip_prefix('[')
                .and_then(|k| k.strip_suffix(']'))
                .unwrap_or(kind);
            return FdTarget::AnonInode(kind.to_string());
        }
        if target.starts_with('/') {
            if let Some(path) = target.strip_suffix(DELETED) {
                return FdTarget::Deleted(path.to_string());
            }
            return FdTarget::File(target.to_string());
        }
        FdTarget::Other(target.to_string())
    }

    /// NAME for a memfd_create() file, which always reads as
    /// `Deleted("/memfd:NAME")`.
    pub fn memfd_name(&self) -> Option<&str> {
        match self {
            FdTarget::Deleted(path) => path.strip_prefix("/memfd:"),
            _ => None,
        }
    }
}

/// readlink(2) of any path, lossy UTF-8.
pub fn read_link(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let target = std::fs::read_link(path).map_err(|e| ProcError::io(path, e))?;
    Ok(target.to_string_lossy().into_owned())
}

/// All open descriptors of `pid`, sorted by fd. Descriptors closed while
/// listing are skipped. Within a dump's frozen pass, listed once until the
/// engine changes the task (super::memo).
pub fn list_fds(pid: i32) -> Result<Vec<FdLink>> {
    super::memo::fds_through(pid, || list_fds_fresh(pid))
}

fn list_fds_fresh(pid: i32) -> Result<Vec<FdLink>> {
    let dir = pid_path(pid, "fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| ProcError::io(&dir, e))?;
    let mut fds = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ProcError::io(&dir, e))?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        match read_link(entry.path()) {
            Ok(target) => fds.push(FdLink { fd, target }),
            Err(ProcError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    fds.sort_by_key(|l| l.fd);
    Ok(fds)
}

/// /proc/PID/fdinfo/N: the common header plus type-specific lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// open(2) flags, printed in octal (O_CLOEXEC shows as 02000000).
    pub flags: u32,
    pub mnt_id: u32,
    /// Since 5.14.
    pub ino: Option<u64>,
    /// Every other line split at its first ':', both sides trimmed, in file
    /// order; keys repeat (one "tfd" per epoll target). E.g.
    /// ("eventfd-count", "5"), ("tfd", "6 events:       19 data: 7 ..."),
    /// ("inotify wd", "1 ino:3c4a7 sdev:fe00000 mask:100 ...").
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The first `extra` value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `extra` value for `key`, in file order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One file an epoll instance watches: a `tfd:` line of its fdinfo, e.g.
/// "5 events: 4000001c data:                5  pos:0 ino:612fe8 sdev:9".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpollWatch {
    /// The descriptor number it was added through.
    pub tfd: i32,
    /// The event mask as registered (EPOLLET, EPOLLONESHOT... included).
    pub events: u32,
    pub data: u64,
    /// The watched file's inode and its superblock's device (the kernel's
    /// encoding: major << 20 | minor).
    pub ino: u64,
    pub sdev: u64,
}

impl EpollWatch {
    pub fn parse(v: &str) -> Option<EpollWatch> {
        let mut words = v.split_whitespace();
        let tfd = words.next()?.parse().ok()?;
        let mut w = EpollWatch {
            tfd,
            events: 0,
            data: 0,
            ino: 0,
            sdev: 0,
        };
        let (mut events, mut data, mut ino) = (false, false, false);
        while let Some(word) = words.next() {
            let (key, inline) = match word.split_once(':') {
                Some((k, rest)) => (k, rest),
                None => continue,
            };
            // "events:" and "data:" have their value in the next word.
            let value = if inline.is_empty() {
                words.next()?
            } else {
                inline
            };
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            match key {
                "events" => (w.events, events) = (u32::from_str_radix(value, 16).ok()?, true),
                "data" => (w.data, data) = (hex(value)?, true),
                "ino" => (w.ino, ino) = (hex(value)?, true),
                "sdev" => w.sdev = hex(value)?,
                _ => {}
            }
        }
        (events && data && ino).then_some(w)
    }
}

pub fn parse_fdinfo(text: &str) -> std::result::Result<FdInfo, ParseError> {
    let mut info = FdInfo::default();
    let (mut pos, mut flags, mut mnt) = (false, false, false);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = match line.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line.trim(), ""),
        };
        let err = |what: &str| ParseError::new(i + 1, format!("bad {what} {value:?}"));
        match key {
            "pos" => {
                info.pos = value.parse().map_err(|_| err("pos"))?;
                pos = true;
            }
            "flags" => {
                info.flags = u32::from_str_radix(value, 8).map_err(|_| err("flags"))?;
                flags = true;
            }
            "mnt_id" => {
                info.mnt_id = value.parse().map_err(|_| err("mnt_id"))?;
                mnt = true;
            }
            "ino" if info.ino.is_none() => {
                info.ino = Some(value.parse().map_err(|_| err("ino"))?);
            }
            _ => info.extra.push((key.to_string(), value.to_string())),
        }
    }
    for (have, key) in [(pos, "pos"), (flags, "flags"), (mnt, "mnt_id")] {
        if !have {
            return Err(ParseError::new(0, format!("no {key} line")));
        }
    }
    Ok(info)
}

pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    read_parsed(&pid_path(pid, &format!("fdinfo/{fd}")), parse_fdinfo)
}

/// One `lock:` line of /proc/PID/fdinfo/N: a lock or lease the task holds
/// on the file (flock and OFD locks of this open file, POSIX locks of the
/// task, leases), e.g. "1: FLOCK  ADVISORY  WRITE 15419 fe:00:10019284 0 EOF".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdLock {
    /// FLOCK, POSIX, OFDLCK, LEASE, DELEG...
    pub kind: String,
    /// READ, WRITE or UNLCK (a lease being broken).
    pub access: String,
    /// The byte range as printed: "0 EOF", "0 9".
    pub range: String,
}

impl FdLock {
    pub fn parse(line: &str) -> Option<FdLock> {
        let mut words = line.split_whitespace();
        words.next()?.strip_suffix(':')?;
        let mut kind = words.next()?;
        if kind == "->" {
            kind = words.next()?;
        }
        let _mode = words.next()?;
        let access = words.next()?;
        let _pid = words.next()?;
        let _inode = words.next()?;
        let range: Vec<&str> = words.collect();
        Some(FdLock {
            kind: kind.to_string(),
            access: access.to_string(),
            range: range.join(" "),
        })
    }
}

impl FdInfo {
    /// The locks and leases listed for this descriptor. Lines that do not
    /// parse are returned with their raw text as `kind`, so that they are
    /// never silently dropped.
    /// The files an epoll instance watches; None if a `tfd:` line does
    /// not parse.
    pub fn epoll_watches(&self) -> Option<Vec<EpollWatch>> {
        self.get_all("tfd").map(EpollWatch::parse).collect()
    }

    pub fn locks(&self) -> Vec<FdLock> {
        self.get_all("lock")
            .map(|l| {
                FdLock::parse(l).unwrap_or_else(|| FdLock {
                    kind: l.to_string(),
                    access: String::new(),
                    range: String::new(),
                })
            })
            .collect()
    }
}

/// Which other processes hold the pipes `inos`: for each pipe inode that
/// some process other than `except` (and this one) has an fd of, the
/// (pid, fd) pairs. Processes that exit while being read, and those whose
/// descriptors this process may not read, are skipped.
pub fn pipe_holders(
    inos: &std::collections::BTreeSet<u64>,
    except: &[i32],
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    holders(inos, except, |t| match t {
        FdTarget::Pipe(ino) => Some(ino),
        _ => None,
    })
}

/// As [`pipe_holders`], for every pipe: one scan of /proc that serves
/// every member of a dumped tree (dump::tree_scan).
pub fn every_pipe_holder(
    except: &[i32],
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    holders_where(
        |_| true,
        except,
        |t| match t {
            FdTarget::Pipe(ino) => Some(ino),
            _ => None,
        },
    )
}

/// As [`every_pipe_holder`], for every socket.
pub fn every_socket_holder(
    except: &[i32],
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    holders_where(
        |_| true,
        except,
        |t| match t {
            FdTarget::Socket(ino) => Some(ino),
            _ => None,
        },
    )
}

/// As [`pipe_holders`], for the sockets `inos`.
pub fn socket_holders(
    inos: &std::collections::BTreeSet<u64>,
    except: &[i32],
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    holders(inos, except, |t| match t {
        FdTarget::Socket(ino) => Some(ino),
        _ => None,
    })
}

/// Who else holds the objects `inos` (by the inode `pick` reads from a
/// descriptor's link), over every process of /proc.
fn holders(
    inos: &std::collections::BTreeSet<u64>,
    except: &[i32],
    pick: fn(FdTarget) -> Option<u64>,
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    if inos.is_empty() {
        return Ok(std::collections::BTreeMap::new());
    }
    holders_where(|ino| inos.contains(&ino), except, pick)
}

/// Who else holds an object `wanted` picks (by the inode `pick` reads from
/// a descriptor's link), over every process of /proc.
fn holders_where(
    wanted: impl Fn(u64) -> bool,
    except: &[i32],
    pick: fn(FdTarget) -> Option<u64>,
) -> Result<std::collections::BTreeMap<u64, Vec<(i32, i32)>>> {
    let mut held = std::collections::BTreeMap::new();
    let me = std::process::id() as i32;
    let proc_dir = Path::new("/proc");
    let entries = std::fs::read_dir(proc_dir).map_err(|e| ProcError::io(proc_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ProcError::io(proc_dir, e))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || except.contains(&pid) {
            continue;
        }
        let fds = match list_fds(pid) {
            Ok(fds) => fds,
            // Exited meanwhile (ENOENT, ESRCH), or a process this one may
            // not inspect (EACCES: it has capabilities we lack, like an
            // init with CAP_SYS_RESOURCE). Callers must not rely on this
            // list alone; see dump::files for the peer check that does
            // not depend on seeing the holder.
            Err(ProcError::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EACCES) | Some(libc::EPERM)
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        for l in fds {
            if let Some(ino) = pick(l.kind()).filter(|i| wanted(*i)) {
                held.entry(ino).or_insert_with(Vec::new).push((pid, l.fd));
            }
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    // All captured on 6.18 from one test program.
    const REGULAR: &str = "pos:\t100\nflags:\t0100002\nmnt_id:\t27\nino:\t10010759\n";
    const EVENTFD: &str = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1039\n\
eventfd-count:                5\neventfd-id: 1\neventfd-semaphore: 0\n";
    const EPOLL: &str = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1039\n\
tfd:        6 events:       19 data:                7  pos:0 ino:40f sdev:10\n";
    const INOTIFY: &str = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1039\n\
inotify wd:1 ino:3c4a7 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n";
    const TIMERFD: &str = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1039\nclockid: 1\n\
ticks: 0\nsettime flags: 00\nit_value: (0, 0)\nit_interval: (0, 0)\n";
    const PIDFD: &str =
        "pos:\t0\nflags:\t02000002\nmnt_id:\t4\nino:\t5076\nPid:\t5075\nNSpid:\t5075\n";

    #[test]
    fn fdinfo_samples() {
        let r = parse_fdinfo(REGULAR).unwrap();
        assert_eq!(
            (r.pos, r.flags, r.mnt_id, r.ino),
            (100, 0o100002, 27, Some(10010759))
        );
        assert!(r.extra.is_empty());

        let e = parse_fdinfo(EVENTFD).unwrap();
        assert_eq!(e.flags, libc::O_NONBLOCK as u32 | libc::O_RDWR as u32);
        assert_eq!(e.get("eventfd-count"), Some("5"));
        assert_eq!(e.get("eventfd-semaphore"), Some("0"));

        let ep = parse_fdinfo(EPOLL).unwrap();
        let tfds: Vec<_> = ep.get_all("tfd").collect();
        assert_eq!(
            tfds,
            ["6 events:       19 data:                7  pos:0 ino:40f sdev:10"]
        );

        let i = parse_fdinfo(INOTIFY).unwrap();
        assert!(i.get("inotify wd").unwrap().starts_with("1 ino:3c4a7 "));

        let t = parse_fdinfo(TIMERFD).unwrap();
        assert_eq!(t.get("settime flags"), Some("00"));
        assert_eq!(t.get("it_value"), Some("(0, 0)"));

        let p = parse_fdinfo(PIDFD).unwrap();
        assert_eq!(p.flags & libc::O_CLOEXEC as u32, libc::O_CLOEXEC as u32);
        assert_eq!(p.get("Pid"), Some("5075"));
    }

    #[test]
    fn fdinfo_malformed() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t02\n").unwrap_err().msg,
            "no mnt_id line"
        );
        let e = parse_fdinfo("pos:\t0\nflags:\t09\nmnt_id:\t1\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn classify_samples() {
        use FdTarget::*;
        let cases = [
            ("/dev/null", File("/dev/null".into())),
            (
                "/tmp/cap/del file) x (deleted)",
                Deleted("/tmp/cap/del file) x".into()),
            ),
            ("/memfd:my mem (deleted)", Deleted("/memfd:my mem".into())),
            ("pipe:[5973]", Pipe(5973)),
            ("socket:[5971]", Socket(5971)),
            ("anon_inode:[eventfd]", AnonInode("eventfd".into())),
            ("anon_inode:inotify", AnonInode("inotify".into())),
            ("anon_inode:[pidfd]", AnonInode("pidfd".into())),
            ("net:[4026531833]", Other("net:[4026531833]".into())),
            ("pipe:[x]", Other("pipe:[x]".into())),
        ];
        for (text, want) in cases {
            assert_eq!(FdTarget::parse(text), want, "{text}");
        }
        assert_eq!(
            FdTarget::parse("/memfd:my mem (deleted)").memfd_name(),
            Some("my mem")
        );
        assert_eq!(FdTarget::parse("/tmp/x (deleted)").memfd_name(), None);
    }

    #[test]
    fn lock_lines() {
        let info = parse_fdinfo(
            "pos:\t0\nflags:\t02\nmnt_id:\t27\n\
lock:\t1: POSIX  ADVISORY  WRITE 15419 fe:00:10019405 0 9\n\
lock:\t2: -> FLOCK  ADVISORY  READ 15 fe:00:10 0 EOF\n\
lock:\tgarbage\n",
        )
        .unwrap();
        let locks = info.locks();
        assert_eq!(locks.len(), 3);
        assert_eq!(
            locks[0],
            FdLock {
                kind: "POSIX".into(),
                access: "WRITE".into(),
                range: "0 9".into()
            }
        );
        assert_eq!(locks[1].kind, "FLOCK");
        assert_eq!(locks[1].range, "0 EOF");
        assert_eq!(locks[2].kind, "garbage");
    }

    #[test]
    fn list_and_read_self() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let me = std::process::id() as i32;
        let fds = list_fds(me).unwrap();
        assert!(fds.windows(2).all(|p| p[0].fd < p[1].fd));
        let link = fds.iter().find(|l| l.fd == r.as_raw_fd()).unwrap();
        let FdTarget::Pipe(ino) = link.kind() else {
            panic!("{link:?}")
        };
        let info = read_fdinfo(me, w.as_raw_fd()).unwrap();
        assert_eq!(info.ino, Some(ino));
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_WRONLY as u32);
        let e = read_fdinfo(me, 1 << 30).unwrap_err();
        assert!(e.is_gone(), "{e}");
    }

    #[test]
    fn epoll_watches_parse() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
tfd:        5 events: 4000001c data:                5  pos:0 ino:612fe8 sdev:9\n\
tfd:        4 events: 80000019 data: ffffffffffffffff  pos:0 ino:612fe7 sdev:9\n";
        let info = parse_fdinfo(text).expect("parse");
        let w = info.epoll_watches().expect("watches");
        assert_eq!(
            w,
            vec![
                EpollWatch {
                    tfd: 5,
                    events: 0x4000_001c,
                    data: 5,
                    ino: 0x612fe8,
                    sdev: 9
                },
                EpollWatch {
                    tfd: 4,
                    events: 0x8000_0019,
                    data: u64::MAX,
                    ino: 0x612fe7,
                    sdev: 9
                },
            ]
        );
        assert_eq!(EpollWatch::parse("5 events: zz data: 1 ino:1 sdev:1"), None);
    }
}
