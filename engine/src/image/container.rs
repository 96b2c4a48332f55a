//! Image files on disk: headers, checks, permissions.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use prost::Message;

/// Every image file starts with these four bytes.
pub const COMMON_MAGIC: [u8; 4] = *b"CRST";
/// Bumped on any incompatible change to a message or the layout.
pub const FORMAT_VERSION: u32 = 3;
/// Header size of message images.
const HEADER_LEN: usize = 32;
/// Page data starts at this offset of a pages file, so it can be mmapped.
pub const PAGES_DATA_OFFSET: u64 = 4096;
/// Largest message image accepted (a sanity bound against corrupt lengths).
const MAX_MESSAGE: u64 = 256 << 20;

/// The kinds of image file, each with its own magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Inventory = 0x4e564e49,  // "INVN"
    PsTree = 0x45525450,     // "PTRE"
    Task = 0x4b534154,       // "TASK"
    Pages = 0x53454750,      // "PGES"
    Stats = 0x54415453,      // "STAT"
    Digests = 0x54534744,    // "DGST"
    LazyStats = 0x5453_5a4c, // "LZST"
    Shared = 0x424f_4853,    // "SHOB"
    Tasks = 0x4b41_5054,     // "TPAK"
}

impl Kind {
    pub fn from_magic(m: u32) -> Option<Kind> {
        ALL_KINDS.into_iter().find(|&k| k as u32 == m)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory",
            Kind::PsTree => "pstree",
            Kind::Task => "task",
            Kind::Pages => "pages",
            Kind::Stats => "stats",
            Kind::Digests => "digests",
            Kind::LazyStats => "lazy-stats",
            Kind::Shared => "shmem",
            Kind::Tasks => "tasks",
        }
    }

    /// File name of this kind of image for task `pid` (or the whole dump).
    pub fn file_name(self, pid: Option<i32>) -> String {
        match pid {
            Some(p) => format!("{}-{p}.img", self.name()),
            None => format!("{}.img", self.name()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {}: {what}", path.display())]
    Bad { path: PathBuf, what: String },
}

impl ImageError {
    fn io(path: &Path, source: io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    fn bad(path: &Path, what: impl Into<String>) -> Self {
        ImageError::Bad {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ImageError>;

/// A parsed header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: Kind,
    pub version: u32,
    pub payload_len: u64,
    pub crc32: u32,
}

fn encode_header(kind: Kind, payload_len: u64, crc32: u32, header_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&COMMON_MAGIC);
    h[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&header_len.to_le_bytes());
    h[16..24].copy_from_slice(&payload_len.to_le_bytes());
    h[24..28].copy_from_slice(&crc32.to_le_bytes());
    h
}

/// Parses and checks a header: magic, kind, version, and that the file
/// holds the whole payload.
pub fn parse_header(path: &Path, bytes: &[u8], file_len: u64) -> Result<(Header, u64)> {
    if bytes.len() < HEADER_LEN {
        return Err(ImageError::bad(
            path,
            format!("truncated header: {} of {HEADER_LEN} bytes", bytes.len()),
        ));
    }
    if bytes[0..4] != COMMON_MAGIC {
        return Err(ImageError::bad(path, "not a crust image (bad magic)"));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let magic = word(4);
    let kind = Kind::from_magic(magic)
        .ok_or_else(|| ImageError::bad(path, format!("unknown image kind {magic:#x}")))?;
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(ImageError::bad(
            path,
            format!("format version {version}, this crust reads version {FORMAT_VERSION}"),
        ));
    }
    let header_len = word(12) as u64;
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let payload_len = u64::from_le_bytes(len8);
    let crc32 = word(24);
    if header_len < HEADER_LEN as u64 || header_len > PAGES_DATA_OFFSET {
        return Err(ImageError::bad(
            path,
            format!("bad header length {header_len}"),
        ));
    }
    let needed = header_len
        .checked_add(payload_len)
        .ok_or_else(|| ImageError::bad(path, "payload length overflows"))?;
    if file_len < needed {
        return Err(ImageError::bad(
            path,
            format!("truncated: {file_len} bytes, header says {needed}"),
        ));
    }
    // A pack of task images: its message is the index of the task images
    // that follow it.
    if file_len > needed && kind != Kind::Tasks {
        return Err(ImageError::bad(
            path,
            format!("{} trailing bytes after the payload", file_len - needed),
        ));
    }
    Ok((
        Header {
            kind,
            version,
            payload_len,
            crc32,
        },
        header_len,
    ))
}

/// An image directory, created 0700 with files 0600 (they hold process memory).
#[derive(Debug, Clone)]
pub struct ImageDir {
    pub path: PathBuf,
}

/// What kind of file `md` describes, for messages.
pub fn file_type_name(md: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Whether `name` is the name of an image file this engine writes:
/// `KIND.img` or `KIND-PID.img`.
pub fn is_image_name(name: &str) -> bool {
    parse_image_name(name).is_some()
}

/// Per-process images of formats 1 and 2 that `task-PID.img` holds now:
/// core, fds and mm (format 1; a pre-dump's mm, never read, is no longer
/// written), and the pagemap (format 2).
const FORMER_KINDS: [&str; 4] = ["core", "fds", "mm", "pagemap"];

/// Whether `name` is an image an older crust wrote here (`KIND-PID.img`
/// of [`FORMER_KINDS`]): stale, removed as the current ones are.
fn is_former_image_name(name: &str) -> bool {
    name.strip_suffix(".img")
        .and_then(kind_and_pid)
        .is_some_and(|(kind, _)| FORMER_KINDS.contains(&kind))
}

/// `KIND-PID` (a file name without `.img`) split into the kind's name and
/// the pid's digits, if the part after the last '-' is all digits.
fn kind_and_pid(stem: &str) -> Option<(&str, &str)> {
    let (kind, pid) = stem.rsplit_once('-')?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some((kind, pid))
}

/// The kind and pid an image file name stands for (`KIND.img`,
/// `KIND-PID.img`), if it is one. A pid that is not a positive number
/// written the way `Kind::file_name` writes it (`task-007.img`) reads as
/// -1: still an image name, never one this engine writes.
pub fn parse_image_name(name: &str) -> Option<(Kind, Option<i32>)> {
    let stem = name.strip_suffix(".img")?;
    // Kind names may hold a '-' themselves (lazy-stats).
    if let Some(k) = ALL_KINDS.into_iter().find(|k| k.name() == stem) {
        return Some((k, None));
    }
    let (kind, pid) = kind_and_pid(stem)?;
    let kind = ALL_KINDS.into_iter().find(|k| k.name() == kind)?;
    match pid.parse::<i32>() {
        Ok(n) if n > 0 && n.to_string() == pid => Some((kind, Some(n))),
        _ => Some((kind, Some(-1))),
    }
}

const ALL_KINDS: [Kind; 9] = [
    Kind::Inventory,
    Kind::PsTree,
    Kind::Task,
    Kind::Pages,
    Kind::Stats,
    Kind::Digests,
    Kind::LazyStats,
    Kind::Shared,
    Kind::Tasks,
];

impl ImageDir {
    /// Creates the directory (and any missing parent) mode 0700, or takes
    /// an existing one and tightens its mode to 0700. The directory itself
    /// must not be a symbolic link: it is opened O_NOFOLLOW and chmodded
    /// through that descriptor, so nothing outside it is ever changed.
    pub fn create(path: &Path) -> Result<ImageDir> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(ImageError::bad(
                    path,
                    "the images directory is a symbolic link: refused (give its target instead)",
                ))
            }
            Ok(md) if !md.is_dir() => {
                return Err(ImageError::bad(
                    path,
                    format!("is a {}, not a directory", file_type_name(&md)),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| ImageError::io(parent, e))?;
                }
                match fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => {}
                    // Made by someone else meanwhile: checked below.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(ImageError::io(path, e)),
                }
            }
            Err(e) => return Err(ImageError::io(path, e)),
        }
        let dir = open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        // A directory someone else owns could be emptied, refilled or
        // opened up again by its owner after we wrote into it.
        let owner = {
            use std::os::unix::fs::MetadataExt;
            dir.metadata().map_err(|e| ImageError::io(path, e))?.uid()
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if owner != me {
            return Err(ImageError::bad(
                path,
                format!(
                    "the images directory is owned by uid {owner}, not by us (uid {me}): refused"
                ),
            ));
        }
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) } != 0 {
            return Err(ImageError::io(path, io::Error::last_os_error()));
        }
        Ok(ImageDir {
            path: path.to_path_buf(),
        })
    }

    pub fn open(path: &Path) -> Result<ImageDir> {
        let md = fs::metadata(path).map_err(|e| ImageError::io(path, e))?;
        if !md.is_dir() {
            return Err(ImageError::bad(path, "not a directory"));
        }
        Ok(ImageDir {
            path: path.to_path_buf(),
        })
    }

    /// Removes every image file a previous dump or pre-dump left here, the
    /// inventory first: from the first unlink on, the directory no longer
    /// holds anything restore accepts. Other files (a log) are kept. An
    /// entry with an image's name that is not a regular file or symbolic
    /// link (a directory, say) is refused by name.
    pub fn clear_stale(&self) -> Result<()> {
        let inv = self.file(Kind::Inventory, None);
        remove_entry(&inv)?;
        let rd = fs::read_dir(&self.path).map_err(|e| ImageError::io(&self.path, e))?;
        for e in rd {
            let e = e.map_err(|e| ImageError::io(&self.path, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if is_image_name(&name) || is_former_image_name(&name) {
                remove_entry(&e.path())?;
            }
        }
        Ok(())
    }

    pub fn file(&self, kind: Kind, pid: Option<i32>) -> PathBuf {
        self.path.join(kind.file_name(pid))
    }

    pub fn write<M: Message>(&self, kind: Kind, pid: Option<i32>, msg: &M) -> Result<()> {
        write_message(&self.file(kind, pid), kind, msg)
    }

    pub fn read<M: Message + Default>(&self, kind: Kind, pid: Option<i32>) -> Result<M> {
        read_message(&self.file(kind, pid), kind)
    }

    /// The task image of process `pid`: its own `task-PID.img`, or its
    /// part of the tree's `tasks.img`; and the file it was read from.
    pub fn read_task(&self, pid: i32) -> Result<(crate::image::messages::Task, PathBuf)> {
        let own = self.file(Kind::Task, Some(pid));
        match read_message(&own, Kind::Task) {
            Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|t| (t, own)),
        }
        let pack = self.file(Kind::Tasks, None);
        let task = match TaskPackFile::open(&pack) {
            Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::bad(
                    &own,
                    format!("no task image of pid {pid}: neither this file nor tasks.img"),
                ))
            }
            other => other?.read(pid)?,
        };
        let task = task
            .ok_or_else(|| ImageError::bad(&pack, format!("holds no task image of pid {pid}")))?;
        Ok((task, pack))
    }

    /// Whether the directory has a task image of `pid` (own or packed).
    pub fn has_task(&self, pid: i32) -> bool {
        self.file(Kind::Task, Some(pid)).exists()
            || TaskPackFile::open(&self.file(Kind::Tasks, None)).is_ok_and(|p| p.contains(pid))
    }

    /// The pagemap of process `pid`, from its task image.
    pub fn read_pagemap(&self, pid: i32) -> Result<crate::image::messages::Pagemap> {
        let (task, file) = self.read_task(pid)?;
        task.pagemap.ok_or_else(|| {
            ImageError::bad(&file, format!("the task image of pid {pid} has no pagemap"))
        })
    }
}

/// Unlinks a stale image (never following a symbolic link: the link
/// itself goes); a missing file is fine.
fn remove_entry(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io(path, e)),
        Ok(md) if md.is_dir() => {
            return Err(ImageError::bad(
                path,
                "a directory in place of an image file: refused",
            ))
        }
        Ok(_) => {}
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io(path, e)),
        _ => Ok(()),
    }
}

fn open_nofollow(path: &Path, flags: i32) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ImageError::bad(path, "is a symbolic link: refused"),
            _ => ImageError::io(path, e),
        })
}

/// Creates a new image file: never through a symbolic link, never over an
/// existing file (stale images were removed first), mode 0600 whatever the
/// umask.
fn create_file(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ImageError::bad(
                path,
                "already exists (something else writes into this images directory): refused",
            ),
            _ => ImageError::io(path, e),
        })?;
    // The umask may have taken bits off 0600: put them back. Only then:
    // on a journalled file system a chmod costs as much as the create
    // (~0.4 ms here), and a tree writes three files per process.
    let mode = f.metadata().map_err(|e| ImageError::io(path, e))?.mode() & 0o7777;
    if mode != 0o600 {
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| ImageError::io(path, e))?;
    }
    Ok(f)
}

pub fn write_message<M: Message>(path: &Path, kind: Kind, msg: &M) -> Result<()> {
    write_bytes(path, &encode_message(kind, msg))
}

/// A message image file's whole content: header, then payload.
pub fn encode_message<M: Message>(kind: Kind, msg: &M) -> Vec<u8> {
    let payload = msg.encode_to_vec();
    let header = encode_header(
        kind,
        payload.len() as u64,
        crc32fast::hash(&payload),
        HEADER_LEN as u32,
    );
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    out
}

/// Checks a message image file's whole content as `read_payload` would
/// (header, length, checksum); returns its header and payload. `path`
/// only names it in errors.
pub fn check_message_bytes<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, &'a [u8])> {
    let (header, header_len) = parse_header(path, bytes, bytes.len() as u64)?;
    if header.kind == Kind::Pages {
        return Err(ImageError::bad(
            path,
            "a pages image is not a message image",
        ));
    }
    let payload = &bytes[header_len as usize..];
    if crc32fast::hash(payload) != header.crc32 {
        return Err(ImageError::bad(
            path,
            "checksum mismatch: the image is corrupted",
        ));
    }
    Ok((header, payload))
}

/// A pack of task images (`tasks.img`): each of `images` (pid, a whole
/// task image's bytes) after the index that says where it is.
pub fn encode_task_pack(images: &[(i32, Vec<u8>)]) -> Vec<u8> {
    use crate::image::messages::{PackedTask, TaskPack};
    let mut index = TaskPack {
        tasks: images
            .iter()
            .map(|(pid, b)| PackedTask {
                pid: *pid,
                // A placeholder, not 0: a field at its default is not
                // encoded at all.
                offset: u64::MAX,
                len: b.len() as u64,
            })
            .collect(),
    };
    // Fixed-width offsets: the index is as long with the real ones.
    let mut at = (HEADER_LEN + index.encoded_len()) as u64;
    for t in &mut index.tasks {
        t.offset = at;
        at += t.len;
    }
    let mut out = encode_message(Kind::Tasks, &index);
    for (_, b) in images {
        out.extend_from_slice(b);
    }
    out
}

/// An open `tasks.img`, its index checked: every entry lies after the
/// index and inside the file, no pid is listed twice.
pub struct TaskPackFile {
    path: PathBuf,
    file: File,
    index: crate::image::messages::TaskPack,
}

impl TaskPackFile {
    pub fn open(path: &Path) -> Result<TaskPackFile> {
        let (mut file, header, header_len) = open_checked(path)?;
        if header.kind != Kind::Tasks {
            return Err(ImageError::bad(
                path,
                format!("is a {} image, expected tasks", header.kind.name()),
            ));
        }
        let index = read_checked_payload(&mut file, path, &header, header_len)?;
        let index = crate::image::messages::TaskPack::decode(index.as_slice())
            .map_err(|e| ImageError::bad(path, format!("cannot decode the index: {e}")))?;
        let file_len = file.metadata().map_err(|e| ImageError::io(path, e))?.len();
        let data_start = header_len + header.payload_len;
        let mut pids = std::collections::HashSet::new();
        for t in &index.tasks {
            let end = t.offset.checked_add(t.len);
            if t.offset < data_start || end.is_none_or(|e| e > file_len) || t.len > MAX_MESSAGE {
                return Err(ImageError::bad(
                    path,
                    format!("the task image of pid {} lies outside the file", t.pid),
                ));
            }
            if !pids.insert(t.pid) {
                return Err(ImageError::bad(
                    path,
                    format!("pid {} is packed twice", t.pid),
                ));
            }
        }
        Ok(TaskPackFile {
            path: path.to_path_buf(),
            file,
            index,
        })
    }

    pub fn index(&self) -> &crate::image::messages::TaskPack {
        &self.index
    }

    pub fn contains(&self, pid: i32) -> bool {
        self.index.tasks.iter().any(|t| t.pid == pid)
    }

    /// The task image of `pid`, checked as its own file would be (header,
    /// CRC, kind); None if the pack holds none.
    pub fn read(&self, pid: i32) -> Result<Option<crate::image::messages::Task>> {
        use std::os::unix::fs::FileExt;
        let Some(t) = self.index.tasks.iter().find(|t| t.pid == pid) else {
            return Ok(None);
        };
        let mut bytes = vec![0u8; t.len as usize];
        self.file
            .read_exact_at(&mut bytes, t.offset)
            .map_err(|e| ImageError::io(&self.path, e))?;
        let (header, payload) = check_message_bytes(&self.path, &bytes)?;
        decode_message(&self.path, &header, payload, Kind::Task).map(Some)
    }
}

/// Writes a new image file holding `bytes` (created as `create_file` does).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = create_file(path)?;
    f.write_all(bytes).map_err(|e| ImageError::io(path, e))
}

/// Makes an empty image file (0600) to be filled and renamed later
/// ([`fill_and_rename`]).
pub fn create_empty(path: &Path) -> Result<()> {
    create_file(path).map(drop)
}

/// Writes `bytes` into the empty file `made` ([`create_empty`]) and
/// renames it to `path`, which must not exist (the refusal of
/// [`write_bytes`]): renaming a file costs tens of microseconds where
/// creating one costs up to a millisecond.
pub fn fill_and_rename(made: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(made)
        .map_err(|e| ImageError::io(made, e))?;
    f.write_all(bytes).map_err(|e| ImageError::io(made, e))?;
    drop(f);
    nix::fcntl::renameat2(
        None,
        made,
        None,
        path,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EEXIST => ImageError::bad(
            path,
            "already exists (something else writes into this images directory): refused",
        ),
        e => ImageError::io(path, io::Error::from(e)),
    })
}

/// Opens an image file for reading: O_NOFOLLOW and O_NONBLOCK (a FIFO in
/// its place must not block us), then checked to be a regular file.
pub fn open_image(path: &Path) -> Result<File> {
    let f = open_nofollow(path, libc::O_RDONLY | libc::O_NONBLOCK).map_err(|e| {
        // Name what sits there (a socket cannot even be opened).
        match fs::symlink_metadata(path) {
            Ok(md) if !md.is_file() => ImageError::bad(
                path,
                format!("is a {}, not a regular image file", file_type_name(&md)),
            ),
            _ => e,
        }
    })?;
    let md = f.metadata().map_err(|e| ImageError::io(path, e))?;
    if !md.is_file() {
        return Err(ImageError::bad(
            path,
            format!("is a {}, not a regular image file", file_type_name(&md)),
        ));
    }
    Ok(f)
}

/// Opens an image file and checks its header; the file is left just past
/// the common header. Returns the header and the full header length.
fn open_checked(path: &Path) -> Result<(File, Header, u64)> {
    let mut f = open_image(path)?;
    let file_len = f.metadata().map_err(|e| ImageError::io(path, e))?.len();
    let mut head = vec![0u8; HEADER_LEN.min(file_len as usize)];
    f.read_exact(&mut head)
        .map_err(|e| ImageError::io(path, e))?;
    let (header, header_len) = parse_header(path, &head, file_len)?;
    Ok((f, header, header_len))
}

/// Reads the raw payload of a message image after checking its header.
pub fn read_payload(path: &Path) -> Result<(Header, Vec<u8>)> {
    let (mut f, header, header_len) = open_checked(path)?;
    if header.kind == Kind::Pages {
        return Ok((header, Vec::new()));
    }
    let payload = read_checked_payload(&mut f, path, &header, header_len)?;
    Ok((header, payload))
}

/// The payload of the message image `f` (`path`), whose header was just
/// read: within the size limit, after the rest of the header, CRC checked.
fn read_checked_payload(
    f: &mut File,
    path: &Path,
    header: &Header,
    header_len: u64,
) -> Result<Vec<u8>> {
    if header.payload_len > MAX_MESSAGE {
        return Err(ImageError::bad(
            path,
            format!(
                "message of {} bytes is over the {MAX_MESSAGE} limit",
                header.payload_len
            ),
        ));
    }
    let mut payload = vec![0u8; header.payload_len as usize];
    let mut rest = vec![0u8; (header_len as usize).saturating_sub(HEADER_LEN)];
    f.read_exact(&mut rest)
        .and_then(|_| f.read_exact(&mut payload))
        .map_err(|e| ImageError::io(path, e))?;
    if crc32fast::hash(&payload) != header.crc32 {
        return Err(ImageError::bad(
            path,
            "checksum mismatch: the image is corrupted",
        ));
    }
    Ok(payload)
}

pub fn read_message<M: Message + Default>(path: &Path, kind: Kind) -> Result<M> {
    let (header, payload) = read_payload(path)?;
    decode_message(path, &header, &payload, kind)
}

/// The message of kind `kind` in a checked image's payload.
fn decode_message<M: Message + Default>(
    path: &Path,
    header: &Header,
    payload: &[u8],
    kind: Kind,
) -> Result<M> {
    if header.kind != kind {
        return Err(ImageError::bad(
            path,
            format!(
                "is a {} image, expected {}",
                header.kind.name(),
                kind.name()
            ),
        ));
    }
    M::decode(payload)
        .map_err(|e| ImageError::bad(path, format!("cannot decode {} message: {e}", kind.name())))
}

/// Appends raw page data to a pages file; the header is finalised on `finish`.
pub struct PagesWriter {
    path: PathBuf,
    file: File,
    written: u64,
    /// Bytes of zeros written ahead of the data (see `create_prefilled`).
    prefilled: u64,
}

impl PagesWriter {
    pub fn create(path: &Path) -> Result<PagesWriter> {
        let mut file = create_file(path)?;
        file.write_all(&vec![0u8; PAGES_DATA_OFFSET as usize])
            .map_err(|e| ImageError::io(path, e))?;
        Ok(PagesWriter {
            path: path.to_path_buf(),
            file,
            written: 0,
            prefilled: 0,
        })
    }

    /// A pages file whose first `bytes` of data are written (zeros) now:
    /// the data written later overwrites page cache that already exists,
    /// instead of allocating it (fresh page-cache folios cost a first-touch
    /// fault each here: most of a final dump's frozen copy). `finish`
    /// cuts what was not overwritten.
    pub fn create_prefilled(path: &Path, bytes: u64) -> Result<PagesWriter> {
        use std::os::unix::fs::FileExt;
        let w = PagesWriter::create(path)?;
        let zeros = vec![0u8; 4 << 20];
        let mut at = 0;
        while at < bytes {
            let n = (bytes - at).min(zeros.len() as u64) as usize;
            w.file
                .write_all_at(&zeros[..n], PAGES_DATA_OFFSET + at)
                .map_err(|e| ImageError::io(path, e))?;
            at += n as u64;
        }
        Ok(PagesWriter {
            prefilled: bytes,
            ..w
        })
    }

    /// Renames the file (same directory): a prefilled file is made under
    /// a name that is no image's, and takes its real name once the stale
    /// images are gone.
    pub fn rename_to(&mut self, path: &Path) -> Result<()> {
        fs::rename(&self.path, path).map_err(|e| ImageError::io(path, e))?;
        self.path = path.to_path_buf();
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| ImageError::io(&self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file, for data written into it by other means (splice) at its
    /// current position; report those bytes with `account`.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    pub fn account(&mut self, bytes: u64) {
        self.written += bytes;
    }

    pub fn finish(mut self) -> Result<u64> {
        use std::io::{Seek, SeekFrom};
        // Page data is not checksummed: hashing gigabytes would cost more
        // than the dump itself; its length is checked instead.
        let header = encode_header(Kind::Pages, self.written, 0, PAGES_DATA_OFFSET as u32);
        if self.prefilled > self.written {
            self.file
                .set_len(PAGES_DATA_OFFSET + self.written)
                .map_err(|e| ImageError::io(&self.path, e))?;
        }
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(&header))
            .map_err(|e| ImageError::io(&self.path, e))?;
        Ok(self.written)
    }
}

/// Read access to a pages file, mapped into memory.
pub struct PagesReader {
    map: *mut libc::c_void,
    map_len: usize,
    data_len: u64,
}

impl PagesReader {
    pub fn open(path: &Path) -> Result<PagesReader> {
        let (f, header, header_len) = open_checked(path)?;
        let file_len = header_len + header.payload_len;
        if header.kind != Kind::Pages || header_len != PAGES_DATA_OFFSET {
            return Err(ImageError::bad(path, "not a pages image"));
        }
        let map_len = file_len as usize;
        // SAFETY: read-only private mapping of a file we opened; checked
        // for MAP_FAILED below; the file length was validated.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(ImageError::io(path, io::Error::last_os_error()));
        }
        Ok(PagesReader {
            map,
            map_len,
            data_len: header.payload_len,
        })
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Pointer to page data at `offset` (relative to the data start), for
    /// `len` bytes; None if out of bounds.
    pub fn ptr(&self, offset: u64, len: u64) -> Option<*const libc::c_void> {
        let end = offset.checked_add(len)?;
        if end > self.data_len {
            return None;
        }
        // SAFETY: the mapping covers PAGES_DATA_OFFSET + data_len bytes,
        // and offset + len was bounds-checked just above.
        Some(
            unsafe { (self.map as *const u8).add((PAGES_DATA_OFFSET + offset) as usize) }
                as *const libc::c_void,
        )
    }

    /// Page data at `offset` (relative to the data start), `len` bytes;
    /// None if out of bounds.
    pub fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let p = self.ptr(offset, len)?;
        // SAFETY: ptr() checked that [offset, offset+len) lies inside the
        // read-only mapping, which lives as long as &self.
        Some(unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) })
    }

    /// Asks the kernel to read ahead the data in [start, end) (relative
    /// to the data start; clamped to the file): one process's stretch of
    /// a file several share.
    pub fn will_need(&self, start: u64, end: u64) {
        let page = PAGES_DATA_OFFSET as usize;
        let from = (PAGES_DATA_OFFSET as usize).saturating_add(start as usize) / page * page;
        let to = (PAGES_DATA_OFFSET as usize)
            .saturating_add(end as usize)
            .min(self.map_len);
        if from >= to {
            return;
        }
        // SAFETY: advisory call on a page-aligned part of our own mapping.
        unsafe {
            libc::madvise(
                (self.map as *mut u8).add(from) as *mut libc::c_void,
                to - from,
                libc::MADV_WILLNEED,
            )
        };
    }
}

// SAFETY: the mapping is read-only and never changes while it exists;
// sharing its address between threads that read it is sound.
unsafe impl Sync for PagesReader {}
// SAFETY: as above; the mapping is process-wide, not tied to a thread.
unsafe impl Send for PagesReader {}

impl Drop for PagesReader {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in open().
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::messages::Inventory;

    fn sample() -> Inventory {
        Inventory {
            format_version: FORMAT_VERSION,
            engine_version: "t".into(),
            root_pid: 42,
            kind: "dump".into(),
            ..Default::default()
        }
    }

    #[test]
    fn roundtrip_and_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(&tmp.path().join("img")).unwrap();
        dir.write(Kind::Inventory, None, &sample()).unwrap();
        let back: Inventory = dir.read(Kind::Inventory, None).unwrap();
        assert_eq!(back, sample());
        let mode = fs::metadata(&dir.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fmode = fs::metadata(dir.file(Kind::Inventory, None))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
    }

    fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(tmp.path()).unwrap();
        dir.write(Kind::Inventory, None, &sample()).unwrap();
        let p = dir.file(Kind::Inventory, None);
        let mut bytes = fs::read(&p).unwrap();
        f(&mut bytes);
        fs::write(&p, &bytes).unwrap();
        dir.read::<Inventory>(Kind::Inventory, None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rejects_bad_magic() {
        assert!(corrupt(|b| b[0] = b'X').contains("bad magic"));
    }

    #[test]
    fn rejects_unknown_kind() {
        assert!(corrupt(|b| b[4] = 0).contains("unknown image kind"));
    }

    #[test]
    fn rejects_other_version() {
        assert!(corrupt(|b| b[8] = 99).contains("format version 99"));
    }

    #[test]
    fn rejects_truncation() {
        assert!(corrupt(|b| b.truncate(b.len() - 3)).contains("truncated"));
        assert!(corrupt(|b| b.truncate(10)).contains("truncated header"));
    }

    #[test]
    fn rejects_corrupted_payload() {
        assert!(corrupt(|b| {
            let last = b.len() - 1;
            b[last] ^= 0xff
        })
        .contains("checksum mismatch"));
    }

    #[test]
    fn rejects_wrong_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(tmp.path()).unwrap();
        dir.write(Kind::Inventory, None, &sample()).unwrap();
        let p = dir.file(Kind::Inventory, None);
        let err = read_message::<Inventory>(&p, Kind::Task)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected task"), "{err}");
    }

    #[test]
    fn image_names() {
        for n in ["inventory.img", "task-12.img", "pages-1.img", "stats.img"] {
            assert!(is_image_name(n), "{n}");
        }
        for n in [
            "dump.log",
            "core.img.bak",
            "task-.img",
            "task-1x.img",
            "foo-1.img",
        ] {
            assert!(!is_image_name(n), "{n}");
        }
    }

    #[test]
    fn create_refuses_a_symlink_and_tightens_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = ImageDir::create(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o755
        );
        ImageDir::create(&real).unwrap();
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = ImageDir::create(&theirs).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        let nested = tmp.path().join("a/b/c");
        ImageDir::create(&nested).unwrap();
        assert!(nested.is_dir());
    }

    #[test]
    fn stale_images_go_and_new_ones_are_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(tmp.path()).unwrap();
        dir.write(Kind::Inventory, None, &sample()).unwrap();
        let err = dir
            .write(Kind::Inventory, None, &sample())
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.file(Kind::Task, Some(7))).unwrap();
        fs::write(tmp.path().join("dump.log"), b"log").unwrap();
        // What formats 1 and 2 wrote goes as well; a name like it that is
        // not one stays.
        for old in [
            "core-7.img",
            "fds-7.img",
            "mm-7.img",
            "pagemap-7.img",
            "mm-x.img",
        ] {
            fs::write(tmp.path().join(old), b"old").unwrap();
        }
        dir.clear_stale().unwrap();
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["dump.log", "mm-x.img", "victim"]);
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        fs::create_dir(dir.file(Kind::Task, Some(7))).unwrap();
        let err = dir.clear_stale().unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
    }

    /// tasks.img: each task image found by its pid after the index;
    /// an index that points outside the file, or lists a pid twice, is
    /// refused; a task image spoilt inside it fails its own checksum.
    #[test]
    fn packed_task_images() {
        use crate::image::messages::{Pagemap, Task, TaskPack};
        let tmp = tempfile::tempdir().unwrap();
        let dir = ImageDir::create(tmp.path()).unwrap();
        let task = |n: u64| Task {
            pagemap: Some(Pagemap {
                pages_file: format!("pages-{n}.img"),
                data_offset: n * 4096,
                ..Default::default()
            }),
            ..Default::default()
        };
        let images: Vec<(i32, Vec<u8>)> = [7, 9, 11]
            .iter()
            .map(|&p| (p, encode_message(Kind::Task, &task(p as u64))))
            .collect();
        let pack = dir.file(Kind::Tasks, None);
        let good = encode_task_pack(&images);
        write_bytes(&pack, &good).unwrap();
        for p in [7, 9, 11] {
            let (t, file) = dir.read_task(p).unwrap();
            assert_eq!(t, task(p as u64));
            assert_eq!(file, pack);
            assert!(dir.has_task(p));
        }
        assert!(!dir.has_task(8));
        let err = dir.read_task(8).unwrap_err().to_string();
        assert!(err.contains("no task image of pid 8"), "{err}");
        // Its own file first.
        dir.write(Kind::Task, Some(9), &task(1)).unwrap();
        assert_eq!(dir.read_task(9).unwrap().0, task(1));

        let put = |bytes: &[u8]| {
            fs::remove_file(&pack).unwrap();
            write_bytes(&pack, bytes).unwrap();
        };
        let (h, hl) = parse_header(&pack, &good, good.len() as u64).unwrap();
        let index = TaskPack::decode(&good[hl as usize..(hl + h.payload_len) as usize]).unwrap();
        let tail = &good[index.tasks[0].offset as usize..];
        let with = |index: TaskPack| {
            let mut b = encode_message(Kind::Tasks, &index);
            b.extend_from_slice(tail);
            b
        };
        let mut outside = index.clone();
        outside.tasks[1].len += 1 << 20;
        put(&with(outside));
        let err = dir.read_task(7).unwrap_err().to_string();
        assert!(err.contains("outside the file"), "{err}");
        let mut twice = index.clone();
        twice.tasks[2].pid = 7;
        put(&with(twice));
        let err = dir.read_task(7).unwrap_err().to_string();
        assert!(err.contains("packed twice"), "{err}");
        let mut spoilt = good.clone();
        let last = spoilt.len() - 1;
        spoilt[last] ^= 1;
        put(&spoilt);
        let err = dir.read_task(11).unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("tasks.img"),
            "{err}"
        );
    }

    #[test]
    fn non_regular_images_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("task-1.img");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_message::<Inventory>(&fifo, Kind::Task)
            .unwrap_err()
            .to_string();
        assert!(err.contains("FIFO"), "{err}");
        let link = tmp.path().join("stats.img");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let err = read_message::<Inventory>(&link, Kind::Stats)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn pages_roundtrip_and_bounds() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("pages-1.img");
        let mut w = PagesWriter::create(&p).unwrap();
        w.write(&[7u8; 8192]).unwrap();
        assert_eq!(w.finish().unwrap(), 8192);
        let r = PagesReader::open(&p).unwrap();
        assert_eq!(r.data_len(), 8192);
        assert!(r.ptr(4096, 4096).is_some());
        assert!(r.ptr(4096, 4097).is_none());
        // SAFETY: test reads one byte inside the checked range.
        assert_eq!(unsafe { *(r.ptr(100, 1).unwrap() as *const u8) }, 7);
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&p, &bytes).unwrap();
        assert!(PagesReader::open(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("truncated"));
    }
}
