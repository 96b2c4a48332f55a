//! The image messages. Hand-written prost messages (no protoc needed);
//! field tags are the wire format: never reuse or renumber a tag, add new
//! fields with new tags. Every message also serialises to JSON for `crust show`.

use serde::Serialize;

fn hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    s.serialize_str(&out)
}

/// What the image directory holds, and for which tree.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Inventory {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(string, tag = "2")]
    pub engine_version: String,
    #[prost(int32, tag = "3")]
    pub root_pid: i32,
    /// "dump" (later also "pre-dump").
    #[prost(string, tag = "4")]
    pub kind: String,
    #[prost(uint64, tag = "5")]
    pub created_unix_secs: u64,
    #[prost(string, tag = "6")]
    pub kernel: String,
    /// The parent image directory, relative to this one (CRIU's
    /// --prev-images-dir); empty for a standalone image.
    #[prost(string, tag = "7")]
    pub parent: String,
    /// Dirty tracker the memory was selected with ("uffd-wp"), if any.
    #[prost(string, tag = "8")]
    pub tracker: String,
    /// Where the tracker's state lives in the task between pre-dumps (the
    /// userfaultfd's descriptor number), -1 if nowhere. Never dumped itself.
    #[prost(int32, tag = "9")]
    pub tracker_fd: i32,
    /// Random id of this image, never 0 in images this crust writes.
    #[prost(fixed64, tag = "10")]
    pub image_id: u64,
    /// The parent's `image_id` (0 without a parent): a parent re-dumped
    /// since then no longer matches, and restore refuses the chain.
    #[prost(fixed64, tag = "11")]
    pub parent_id: u64,
    // Page server (tags 12-13).
    /// The page data of this (pre-)dump went to the page server at this
    /// address ("ADDR:PORT"), not into this directory: the directory can
    /// be a parent of the next pre-dump or dump made here, but not be
    /// restored. Empty when the pages file is here.
    #[prost(string, tag = "12")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pages_at: String,
    // Remote lazy dump (lazy::remote), tags 14-15.
    /// Where the source serves the PE_LAZY pages (`IP:PORT`, the port the
    /// kernel gave for `--port 0`); empty unless `dump --lazy-pages`.
    #[prost(string, tag = "14")]
    pub lazy_address: String,
    /// Pages the dump left at the source (PE_LAZY), 0 once written back.
    #[prost(uint64, tag = "15")]
    pub lazy_pages: u64,
    // Process trees (tags 24-25): the tracker descriptor of every member
    // but the root (whose is `tracker_fd`), by pid, in two parallel lists.
    #[prost(int32, repeated, tag = "24")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub member_tracker_pids: Vec<i32>,
    #[prost(int32, repeated, tag = "25")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub member_tracker_fds: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PsTree {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<TaskEntry>,
}

/// One process of the tree; its per-task images are keyed by `pid`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TaskEntry {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub ppid: i32,
    #[prost(int32, tag = "3")]
    pub pgid: i32,
    #[prost(int32, tag = "4")]
    pub sid: i32,
    #[prost(int32, repeated, tag = "5")]
    pub threads: Vec<i32>,
    /// A zombie: it exited and its parent has not reaped it. It has no
    /// other image; restore makes it exit again with `exit_status`.
    #[prost(bool, tag = "6")]
    pub zombie: bool,
    /// A zombie's wait status (/proc/PID/stat field 52).
    #[prost(int32, tag = "7")]
    pub exit_status: i32,
    /// In a group stop (SIGSTOP) when dumped: restored stopped.
    #[prost(bool, tag = "8")]
    pub stopped: bool,
}

/// x86_64 general registers, as `user_regs_struct`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Regs {
    #[prost(uint64, tag = "1")]
    pub r15: u64,
    #[prost(uint64, tag = "2")]
    pub r14: u64,
    #[prost(uint64, tag = "3")]
    pub r13: u64,
    #[prost(uint64, tag = "4")]
    pub r12: u64,
    #[prost(uint64, tag = "5")]
    pub rbp: u64,
    #[prost(uint64, tag = "6")]
    pub rbx: u64,
    #[prost(uint64, tag = "7")]
    pub r11: u64,
    #[prost(uint64, tag = "8")]
    pub r10: u64,
    #[prost(uint64, tag = "9")]
    pub r9: u64,
    #[prost(uint64, tag = "10")]
    pub r8: u64,
    #[prost(uint64, tag = "11")]
    pub rax: u64,
    #[prost(uint64, tag = "12")]
    pub rcx: u64,
    #[prost(uint64, tag = "13")]
    pub rdx: u64,
    #[prost(uint64, tag = "14")]
    pub rsi: u64,
    #[prost(uint64, tag = "15")]
    pub rdi: u64,
    #[prost(uint64, tag = "16")]
    pub orig_rax: u64,
    #[prost(uint64, tag = "17")]
    pub rip: u64,
    #[prost(uint64, tag = "18")]
    pub cs: u64,
    #[prost(uint64, tag = "19")]
    pub eflags: u64,
    #[prost(uint64, tag = "20")]
    pub rsp: u64,
    #[prost(uint64, tag = "21")]
    pub ss: u64,
    #[prost(uint64, tag = "22")]
    pub fs_base: u64,
    #[prost(uint64, tag = "23")]
    pub gs_base: u64,
    #[prost(uint64, tag = "24")]
    pub ds: u64,
    #[prost(uint64, tag = "25")]
    pub es: u64,
    #[prost(uint64, tag = "26")]
    pub fs: u64,
    #[prost(uint64, tag = "27")]
    pub gs: u64,
}

/// `struct kernel_sigaction` for one signal.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SigAction {
    #[prost(int32, tag = "1")]
    pub sig: i32,
    #[prost(uint64, tag = "2")]
    pub handler: u64,
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    #[prost(uint64, tag = "4")]
    pub restorer: u64,
    #[prost(uint64, tag = "5")]
    pub mask: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct AltStack {
    #[prost(uint64, tag = "1")]
    pub sp: u64,
    #[prost(int32, tag = "2")]
    pub flags: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// A queued signal, as the raw 128-byte siginfo the kernel keeps.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PendingSignal {
    /// Process-wide queue (true) or the task's own (false).
    #[prost(bool, tag = "1")]
    pub shared: bool,
    #[prost(int32, tag = "2")]
    pub signo: i32,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "hex")]
    pub siginfo: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Rseq {
    #[prost(uint64, tag = "1")]
    pub ptr: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint32, tag = "3")]
    pub signature: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Rlimit {
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    #[prost(uint64, tag = "2")]
    pub cur: u64,
    #[prost(uint64, tag = "3")]
    pub max: u64,
}

/// Per-thread and per-process state of one task that is not memory or files.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Core {
    #[prost(message, optional, tag = "1")]
    pub regs: Option<Regs>,
    /// xsave area as PTRACE_GETREGSET(NT_X86_XSTATE) returns it.
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "hex")]
    pub xstate: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub sigmask: u64,
    #[prost(message, repeated, tag = "4")]
    pub sigactions: Vec<SigAction>,
    #[prost(message, optional, tag = "5")]
    pub altstack: Option<AltStack>,
    #[prost(message, repeated, tag = "6")]
    pub pending: Vec<PendingSignal>,
    #[prost(message, optional, tag = "7")]
    pub rseq: Option<Rseq>,
    #[prost(uint64, tag = "8")]
    pub robust_list_head: u64,
    #[prost(uint64, tag = "9")]
    pub robust_list_len: u64,
    #[prost(uint64, tag = "10")]
    pub clear_child_tid: u64,
    #[prost(uint32, tag = "11")]
    pub personality: u32,
    #[prost(string, tag = "12")]
    pub comm: String,
    #[prost(uint32, tag = "13")]
    pub umask: u32,
    #[prost(string, tag = "14")]
    pub cwd: String,
    #[prost(message, repeated, tag = "15")]
    pub rlimits: Vec<Rlimit>,
    #[prost(int32, tag = "16")]
    pub pdeath_signal: i32,
    /// Process attributes (memstate): prctl, scheduling, timers...
    #[prost(message, optional, tag = "30")]
    pub attrs: Option<Attrs>,
    /// Credentials, capabilities, securebits, seccomp... (absent in images
    /// from before they were dumped: restore refuses those rather than
    /// give the task the engine's own).
    #[prost(message, optional, tag = "17")]
    pub creds: Option<Creds>,
    /// Every thread but the leader (whose state is the fields above), by
    /// tid, ascending.
    #[prost(message, repeated, tag = "40")]
    pub threads: Vec<ThreadCore>,
}

/// What backs a VMA, which decides how restore recreates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum VmaKind {
    AnonPrivate = 0,
    AnonShared = 1,
    FilePrivate = 2,
    FileShared = 3,
    Vdso = 4,
    Vvar = 5,
    VvarVclock = 6,
    Vsyscall = 7,
}

/// madvise()-visible VMA flags worth restoring, as bits.
pub mod madv {
    pub const DONTDUMP: u32 = 1 << 0;
    pub const WIPEONFORK: u32 = 1 << 1;
    pub const DONTFORK: u32 = 1 << 2;
    pub const HUGEPAGE: u32 = 1 << 3;
    pub const NOHUGEPAGE: u32 = 1 << 4;
    pub const MERGEABLE: u32 = 1 << 5;
    /// MADV_SEQUENTIAL (smaps `sr`).
    pub const SEQUENTIAL: u32 = 1 << 6;
    /// MADV_RANDOM (smaps `rr`).
    pub const RANDOM: u32 = 1 << 7;
    /// Mapped with MAP_NORESERVE (smaps `nr`).
    pub const NORESERVE: u32 = 1 << 8;
    /// mlock (smaps `lo`).
    pub const LOCKED: u32 = 1 << 9;
    /// mlock2(MLOCK_ONFAULT) (smaps `lo lf`).
    pub const LOCKONFAULT: u32 = 1 << 10;
    /// mseal (smaps `sl`).
    pub const SEALED: u32 = 1 << 11;
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Vma {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// PROT_* bits.
    #[prost(uint32, tag = "3")]
    pub prot: u32,
    #[prost(enumeration = "VmaKind", tag = "4")]
    #[serde(serialize_with = "vma_kind")]
    pub kind: i32,
    #[prost(bool, tag = "5")]
    pub growsdown: bool,
    #[prost(string, tag = "6")]
    pub path: String,
    /// File offset in bytes.
    #[prost(uint64, tag = "7")]
    pub pgoff: u64,
    #[prost(uint64, tag = "8")]
    pub dev: u64,
    #[prost(uint64, tag = "9")]
    pub inode: u64,
    /// VM_MAYWRITE: a shared file map whose fd was opened for writing.
    #[prost(bool, tag = "10")]
    pub may_write: bool,
    #[prost(uint32, tag = "11")]
    pub madvise: u32,
    /// The name given with PR_SET_VMA_ANON_NAME ([anon:NAME]).
    #[prost(string, tag = "12")]
    pub anon_name: String,
    /// The smaps VmFlags seen at dump, in crust's bits (proc::maps::VmFlags):
    /// restore checks the rebuilt VMA shows the same.
    #[prost(uint64, tag = "13")]
    pub vm_flags: u64,
    /// Guard regions (MADV_GUARD_INSTALL), as (start, pages) pairs.
    #[prost(uint64, repeated, tag = "14")]
    pub guards: Vec<u64>,
    /// The mapped file as it was at dump time (file kinds only).
    #[prost(message, optional, tag = "16")]
    pub file_id: Option<FileId>,
    /// A memfd or SysV segment: the `SharedObject` (its id) this VMA maps,
    /// 0 for none. The path is then only a name.
    #[prost(uint64, tag = "20")]
    pub shared: u64,
}

fn vma_kind<S: serde::Serializer>(k: &i32, s: S) -> Result<S::Ok, S::Error> {
    match VmaKind::try_from(*k) {
        Ok(k) => s.serialize_str(&format!("{k:?}")),
        Err(_) => s.serialize_i32(*k),
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Mm {
    #[prost(message, repeated, tag = "1")]
    pub vmas: Vec<Vma>,
    #[prost(uint64, tag = "2")]
    pub start_code: u64,
    #[prost(uint64, tag = "3")]
    pub end_code: u64,
    #[prost(uint64, tag = "4")]
    pub start_data: u64,
    #[prost(uint64, tag = "5")]
    pub end_data: u64,
    #[prost(uint64, tag = "6")]
    pub start_brk: u64,
    #[prost(uint64, tag = "7")]
    pub brk: u64,
    #[prost(uint64, tag = "8")]
    pub start_stack: u64,
    #[prost(uint64, tag = "9")]
    pub arg_start: u64,
    #[prost(uint64, tag = "10")]
    pub arg_end: u64,
    #[prost(uint64, tag = "11")]
    pub env_start: u64,
    #[prost(uint64, tag = "12")]
    pub env_end: u64,
    #[prost(uint64, repeated, tag = "13")]
    pub auxv: Vec<u64>,
    #[prost(string, tag = "14")]
    pub exe_path: String,
    /// mlockall(MCL_FUTURE) state (mm->def_flags): 0, MCL_FUTURE, or
    /// MCL_FUTURE | MCL_ONFAULT, as probed with a fresh mapping.
    #[prost(uint32, tag = "20")]
    pub lock_future: u32,
    /// /proc/PID/coredump_filter.
    #[prost(uint32, optional, tag = "21")]
    pub coredump_filter: Option<u32>,
    /// PR_SET_MEMORY_MERGE (as PR_GET_MEMORY_MERGE, injected, says).
    #[prost(bool, tag = "22")]
    pub ksm_merge_any: bool,
    /// The executable as it was at dump time (checked at restore).
    #[prost(message, optional, tag = "15")]
    pub exe_id: Option<FileId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum FdKind {
    /// A regular file, directory or device, reopened by path.
    Path = 0,
    PipeRead = 1,
    PipeWrite = 2,
    /// A memfd, or an unlinked file on tmpfs (its `SharedObject`'s kind
    /// tells): `shared` names its `SharedObject`; reopened from it.
    Memfd = 3,
    /// One end of a unix socket pair whose both ends are in the dump:
    /// `socket_id` names its `UnixSocket` in `Fds.sockets`.
    UnixSocket = 4,
    /// An epoll instance: `epoll` lists what it watches.
    Epoll = 5,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Fd {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    #[prost(enumeration = "FdKind", tag = "2")]
    #[serde(serialize_with = "fd_kind")]
    pub kind: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    /// open(2) flags as fdinfo reports them, O_CLOEXEC included.
    #[prost(uint32, tag = "4")]
    pub flags: u32,
    #[prost(uint64, tag = "5")]
    pub pos: u64,
    /// Pipe inode, linking the ends of one pipe and its data.
    #[prost(uint64, tag = "6")]
    pub pipe_id: u64,
    /// File mode, to check at restore that the path is still what it was.
    #[prost(uint32, tag = "7")]
    pub mode: u32,
    /// The lower fd this one shares its open file description with (a
    /// dup): restored as a dup of it, so offset and flags stay shared.
    #[prost(int32, optional, tag = "8")]
    pub dup_of: Option<i32>,
    // Descriptors (fds helper): tags 9-14.
    /// F_GETOWN_EX: who gets SIGIO/SIGURG (F_OWNER_TID 0, F_OWNER_PID 1,
    /// F_OWNER_PGRP 2) and its id; owner_pid 0 means no owner.
    #[prost(int32, tag = "9")]
    pub owner_type: i32,
    #[prost(int32, tag = "10")]
    pub owner_pid: i32,
    /// F_GETSIG: the signal sent instead of SIGIO, 0 for SIGIO.
    #[prost(int32, tag = "11")]
    pub signal: i32,
    /// Set for an end of a resource held outside the dumped process and
    /// named at dump with --external (e.g. "pipe:[1234]"): restore takes it
    /// from --inherit-fd; the image holds no pipe entry or data for it.
    #[prost(string, tag = "12")]
    pub external: String,
    /// A regular file as it was at dump time (checked at restore).
    #[prost(message, optional, tag = "15")]
    pub file_id: Option<FileId>,
    /// Memfd: the `SharedObject` (its id) this descriptor opens.
    #[prost(uint64, tag = "20")]
    pub shared: u64,
    /// UnixSocket: the socket's inode (its `UnixSocket.id`).
    #[prost(uint64, tag = "21")]
    pub socket_id: u64,
    /// Epoll: the watched descriptors, each added again at restore.
    #[prost(message, repeated, tag = "22")]
    pub epoll: Vec<EpollWatch>,
}

/// One descriptor an epoll instance watches, with its registration.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct EpollWatch {
    /// The watched descriptor: one of the process's, at this number.
    #[prost(int32, tag = "1")]
    pub fd: i32,
    /// The event mask as registered (EPOLLET, EPOLLONESHOT... included;
    /// a fired one-shot watch holds no events).
    #[prost(uint32, tag = "2")]
    pub events: u32,
    #[prost(uint64, tag = "3")]
    pub data: u64,
}

fn fd_kind<S: serde::Serializer>(k: &i32, s: S) -> Result<S::Ok, S::Error> {
    match FdKind::try_from(*k) {
        Ok(k) => s.serialize_str(&format!("{k:?}")),
        Err(_) => s.serialize_i32(*k),
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Pipe {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub size: u32,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "hex")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Fds {
    #[prost(message, repeated, tag = "1")]
    pub fds: Vec<Fd>,
    #[prost(message, repeated, tag = "2")]
    pub pipes: Vec<Pipe>,
    /// Unix sockets connected to a peer in the dump (socketpair), each
    /// with what its receive queue holds.
    #[prost(message, repeated, tag = "3")]
    pub sockets: Vec<UnixSocket>,
}

/// One process of a dump or pre-dump (`task-PID.img`): its core state,
/// memory layout, descriptors and pagemap in one file, not four (creating
/// a file is the costly part of writing a small image on some file
/// systems, and a tree pays it per process). A pre-dump's has the pagemap
/// alone.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Task {
    #[prost(message, optional, tag = "1")]
    pub core: Option<Core>,
    #[prost(message, optional, tag = "2")]
    pub mm: Option<Mm>,
    #[prost(message, optional, tag = "3")]
    pub fds: Option<Fds>,
    #[prost(message, optional, tag = "4")]
    pub pagemap: Option<Pagemap>,
}

/// Where each task image of `tasks.img` (a tree's dump) is: the index
/// that is the pack's message. Each task image follows it in the file,
/// whole (header, payload, CRC), as `task-PID.img` would hold it.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct TaskPack {
    #[prost(message, repeated, tag = "1")]
    pub tasks: Vec<PackedTask>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PackedTask {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// From the start of the file (fixed width: the index's length does
    /// not depend on where the images land).
    #[prost(fixed64, tag = "2")]
    pub offset: u64,
    #[prost(fixed64, tag = "3")]
    pub len: u64,
}

/// PagemapEntry flag: the run's data is in the parent image chain, not in
/// this directory's pages file.
pub const PE_IN_PARENT: u32 = 1;
/// PagemapEntry flag: the run was present in the task but its data is not
/// in any image: a lazy dump left it at the source, which serves it to
/// `crust lazy-pages --page-server`. Only `restore --lazy-pages` accepts it.
pub const PE_LAZY: u32 = 2;

/// A run of pages with data in the pages file, in file order.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PagemapEntry {
    #[prost(uint64, tag = "1")]
    pub vaddr: u64,
    #[prost(uint64, tag = "2")]
    pub nr_pages: u64,
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    /// xxh3-64 of the run's bytes in the pages file (runs stored here).
    #[prost(fixed64, optional, tag = "4")]
    pub checksum: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Pagemap {
    /// Name of the pages file in the same directory.
    #[prost(string, tag = "1")]
    pub pages_file: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<PagemapEntry>,
    /// xxh3-64 of the pages file name and every run's (vaddr, nr_pages,
    /// flags), in order (`chain::layout_digest`): binds the runs with no
    /// data here (left to the parent, lazy), which no data checksum
    /// covers, to their addresses.
    #[prost(uint64, optional, tag = "3")]
    pub layout_digest: Option<u64>,
    /// Where the first stored run's data starts in the pages file's data:
    /// the processes of a tree dumped together share a pages file (one per
    /// dumping thread), each its own stretch of it, in pagemap order.
    #[prost(uint64, tag = "4")]
    pub data_offset: u64,
}

/// What one dump or pre-dump did (`--display-stats` prints the same).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Stats {
    /// "dump" or "pre-dump".
    #[prost(string, tag = "1")]
    pub kind: String,
    /// How long the task was stopped.
    #[prost(uint64, tag = "2")]
    pub frozen_us: u64,
    /// Pages present in the task and worth storing.
    #[prost(uint64, tag = "3")]
    pub pages_scanned: u64,
    /// Of those, left to the parent image as unchanged.
    #[prost(uint64, tag = "4")]
    pub pages_in_parent: u64,
    /// Pages whose data this image holds.
    #[prost(uint64, tag = "5")]
    pub pages_written: u64,
    #[prost(uint64, tag = "6")]
    pub bytes_written: u64,
    /// "read" or "splice" for pre-dumps; empty for a dump.
    #[prost(string, tag = "7")]
    pub mode: String,
    /// Dirty tracker used, if any.
    #[prost(string, tag = "8")]
    pub tracker: String,
    /// Wall-clock time of the whole operation.
    #[prost(uint64, tag = "9")]
    pub total_us: u64,
}

/// Page digests of the content tracker: for every page the image lists
/// (stored or left to the parent), its xxh3-64, in address order.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Digests {
    #[prost(fixed64, repeated, tag = "1")]
    pub vaddr: Vec<u64>,
    #[prost(fixed64, repeated, tag = "2")]
    pub hash: Vec<u64>,
}

// ---- process attributes -------------------------------------

/// One interval timer (getitimer), in microseconds.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Itimer {
    /// ITIMER_REAL, ITIMER_VIRTUAL or ITIMER_PROF.
    #[prost(int32, tag = "1")]
    pub which: i32,
    #[prost(uint64, tag = "2")]
    pub interval_us: u64,
    #[prost(uint64, tag = "3")]
    pub value_us: u64,
}

/// sched_getattr of the task, and its CPU affinity.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Sched {
    #[prost(uint32, tag = "1")]
    pub policy: u32,
    /// SCHED_FLAG_RESET_ON_FORK only (the others are request flags).
    #[prost(uint64, tag = "2")]
    pub flags: u64,
    #[prost(int32, tag = "3")]
    pub nice: i32,
    #[prost(uint32, tag = "4")]
    pub priority: u32,
    #[prost(uint64, tag = "5")]
    pub runtime: u64,
    #[prost(uint64, tag = "6")]
    pub deadline: u64,
    #[prost(uint64, tag = "7")]
    pub period: u64,
    #[prost(uint32, tag = "8")]
    pub util_min: u32,
    #[prost(uint32, tag = "9")]
    pub util_max: u32,
    /// sched_getaffinity mask, as bytes.
    #[prost(bytes = "vec", tag = "10")]
    #[serde(serialize_with = "hex")]
    pub affinity: Vec<u8>,
}

/// Process attributes beside signals and memory: prctl state, scheduling,
/// OOM score, membarrier registrations, interval timers.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Attrs {
    /// PR_GET_THP_DISABLE (bit 0: disabled; bit 1: except advised).
    #[prost(uint32, tag = "1")]
    pub thp_disable: u32,
    #[prost(bool, tag = "2")]
    pub child_subreaper: bool,
    /// /proc/PID/timerslack_ns.
    #[prost(uint64, tag = "3")]
    pub timer_slack_ns: u64,
    /// PR_MCE_KILL_GET.
    #[prost(int32, tag = "4")]
    pub mce_kill: i32,
    /// PR_GET_TSC (PR_TSC_ENABLE or PR_TSC_SIGSEGV).
    #[prost(int32, tag = "5")]
    pub tsc: i32,
    // Tag 6 (dumpable) moved to Creds, which restores it after the uids.
    /// ARCH_GET_CPUID (1: cpuid works, 0: it faults).
    #[prost(int32, tag = "7")]
    pub cpuid: i32,
    /// ARCH_GET_XCOMP_PERM.
    #[prost(uint64, tag = "8")]
    pub xcomp_perm: u64,
    /// MEMBARRIER_CMD_GET_REGISTRATIONS.
    #[prost(uint32, tag = "9")]
    pub membarrier: u32,
    #[prost(message, repeated, tag = "10")]
    pub itimers: Vec<Itimer>,
    #[prost(message, optional, tag = "11")]
    pub sched: Option<Sched>,
    #[prost(int32, tag = "12")]
    pub oom_score_adj: i32,
    /// The Speculation* lines of /proc/PID/status (not settable from
    /// outside: restore checks the new task shows the same).
    #[prost(string, tag = "13")]
    pub speculation: String,
    #[prost(message, repeated, tag = "14")]
    pub posix_timers: Vec<PosixTimer>,
}

/// One POSIX timer (timer_create), from /proc/PID/timers and an injected
/// timer_gettime; recreated with the same id (PR_TIMER_CREATE_RESTORE_IDS).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PosixTimer {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(int32, tag = "2")]
    pub clock_id: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE, or SIGEV_SIGNAL | SIGEV_THREAD_ID.
    #[prost(int32, tag = "3")]
    pub notify: i32,
    #[prost(int32, tag = "4")]
    pub signo: i32,
    /// sigev_value, as the kernel prints it.
    #[prost(uint64, tag = "5")]
    pub value: u64,
    #[prost(uint64, tag = "6")]
    pub interval_ns: u64,
    /// Time to the next expiry; 0: disarmed.
    #[prost(uint64, tag = "7")]
    pub remaining_ns: u64,
    /// The thread a SIGEV_THREAD_ID timer signals; 0: the leader.
    #[prost(int32, tag = "8")]
    pub target_tid: i32,
}

// ---- images and file identities ----

/// What restore relies on from outside: a file as stat(2) saw it at dump
/// time. Restore refuses a file that changed (unless --skip-file-checks).
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileId {
    #[prost(uint64, tag = "1")]
    pub dev: u64,
    #[prost(uint64, tag = "2")]
    pub ino: u64,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    #[prost(int64, tag = "4")]
    pub mtime_ns: i64,
}

// ---- security: credentials, capabilities, seccomp (Core tag 17) ----

/// Who the task is and what it may do.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Creds {
    /// Real, effective, saved, filesystem.
    #[prost(uint32, repeated, tag = "1")]
    pub uid: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub gid: Vec<u32>,
    /// Supplementary groups.
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
    #[prost(uint64, tag = "4")]
    pub cap_inh: u64,
    #[prost(uint64, tag = "5")]
    pub cap_prm: u64,
    #[prost(uint64, tag = "6")]
    pub cap_eff: u64,
    #[prost(uint64, tag = "7")]
    pub cap_bnd: u64,
    #[prost(uint64, tag = "8")]
    pub cap_amb: u64,
    /// PR_GET_SECUREBITS.
    #[prost(uint32, tag = "9")]
    pub securebits: u32,
    #[prost(bool, tag = "10")]
    pub no_new_privs: bool,
    /// PR_GET_DUMPABLE: 0, 1 or 2 (SUID_DUMP_ROOT).
    #[prost(uint32, tag = "11")]
    pub dumpable: u32,
    /// PR_GET_MDWE flags (0 if unset or unknown to the kernel).
    #[prost(uint32, tag = "12")]
    pub mdwe: u32,
    /// 0 disabled, 2 filter (strict mode is refused at dump).
    #[prost(uint32, tag = "13")]
    pub seccomp_mode: u32,
    /// Installed filters, oldest first (the order they are reinstalled in).
    #[prost(message, repeated, tag = "14")]
    pub seccomp_filters: Vec<SeccompFilter>,
}

/// One classic-BPF seccomp program, as PTRACE_SECCOMP_GET_FILTER gives it.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SeccompFilter {
    /// `struct sock_filter` array, 8 bytes per instruction.
    #[prost(bytes = "vec", tag = "1")]
    #[serde(serialize_with = "hex")]
    pub insns: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* it was installed with, as far as
    /// PTRACE_SECCOMP_GET_METADATA tells (LOG).
    #[prost(uint64, tag = "2")]
    pub flags: u64,
}

// ---- lazy restore (issue 7: the lazy-pages daemon) ----

/// What one lazy restore did (DIR/lazy-stats.img, written by `crust
/// lazy-pages` when it exits): where every page came from.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct LazyStats {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// Filled by restore before the task ran: from the dump itself (VMAs
    /// that cannot be lazy) and from parent images (pre-copy) outside
    /// lazy VMAs.
    #[prost(uint64, tag = "2")]
    pub pages_eager_dump: u64,
    #[prost(uint64, tag = "3")]
    pub pages_eager_parent: u64,
    /// Handed to the daemon, from the dump (remote: from the source).
    #[prost(uint64, tag = "4")]
    pub pages_lazy: u64,
    /// Delivered when the task touched them.
    #[prost(uint64, tag = "5")]
    pub pages_fault: u64,
    /// Delivered by the background transfer.
    #[prost(uint64, tag = "6")]
    pub pages_background: u64,
    /// Faults on pages the image has nothing for: zero page.
    #[prost(uint64, tag = "7")]
    pub pages_zero: u64,
    /// Lazy pages the task dropped (madvise DONTNEED, munmap, mremap over
    /// them) before they were delivered: never copied.
    #[prost(uint64, tag = "8")]
    pub pages_dropped: u64,
    /// Lazy pages still pending when their task (mm) went away.
    #[prost(uint64, tag = "9")]
    pub pages_gone: u64,
    /// Address spaces followed: the restored task and its forked children.
    #[prost(uint32, tag = "10")]
    pub mms: u32,
    /// Lazy pages delivered by the time restore reported the task running
    /// (absent if it never did).
    #[prost(uint64, optional, tag = "11")]
    pub delivered_at_restore_end: Option<u64>,
    /// From the handoff until the daemon was done.
    #[prost(uint64, tag = "12")]
    pub total_us: u64,
    /// Fault messages served, and the daemon's service time for them
    /// (message read to page mapped).
    #[prost(uint64, tag = "13")]
    pub faults: u64,
    #[prost(uint64, tag = "14")]
    pub fault_p50_ns: u64,
    #[prost(uint64, tag = "15")]
    pub fault_p99_ns: u64,
    /// Events followed.
    #[prost(uint64, tag = "16")]
    pub forks: u64,
    #[prost(uint64, tag = "17")]
    pub remaps: u64,
    #[prost(uint64, tag = "18")]
    pub removes: u64,
    #[prost(uint64, tag = "19")]
    pub unmaps: u64,
    /// Background transfer unit.
    #[prost(uint64, tag = "20")]
    pub chunk_bytes: u64,
    /// Pages still pending in each child when it forked (its lazy pages:
    /// delivered, dropped or gone like the task's own). Every page handed
    /// to the daemon is accounted once: pages_lazy + pages_parent +
    /// pages_forked = pages_fault + pages_background + pages_dropped +
    /// pages_gone.
    #[prost(uint64, tag = "21")]
    pub pages_forked: u64,
    /// Pages of parent images (pre-copy) in lazy VMAs, handed to the
    /// daemon with the lazy ones so that restore does not wait for them:
    /// delivered from the local images ahead of other background work.
    #[prost(uint64, tag = "22")]
    pub pages_parent: u64,
    /// Processes handed over (the live members of a restored tree); the
    /// page counts above are their sums.
    #[prost(uint32, tag = "23")]
    pub tasks: u32,
}

/// One thread of a multi-threaded process other than its leader: what is
/// per thread. Everything else (memory, files, signal actions, shared
/// pending signals, credentials, which must match the leader's) is the
/// process's, in the leader's `Core`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ThreadCore {
    #[prost(int32, tag = "1")]
    pub tid: i32,
    /// Exactly as stopped: fs/gs base (TLS) included, and rax = -ERESTART*
    /// for a thread stopped inside a syscall (restarted as the leader's).
    #[prost(message, optional, tag = "2")]
    pub regs: Option<Regs>,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(serialize_with = "hex")]
    pub xstate: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub sigmask: u64,
    /// The thread's own queue (shared = false in every entry).
    #[prost(message, repeated, tag = "5")]
    pub pending: Vec<PendingSignal>,
    #[prost(message, optional, tag = "6")]
    pub altstack: Option<AltStack>,
    #[prost(message, optional, tag = "7")]
    pub rseq: Option<Rseq>,
    #[prost(uint64, tag = "8")]
    pub robust_list_head: u64,
    #[prost(uint64, tag = "9")]
    pub robust_list_len: u64,
    #[prost(uint64, tag = "10")]
    pub clear_child_tid: u64,
    #[prost(string, tag = "11")]
    pub comm: String,
    /// Scheduling policy, priority, nice, clamps and CPU affinity are per
    /// thread; a thread does not keep what it inherits at clone (reset on
    /// fork, or the leader's set after the clone).
    #[prost(message, optional, tag = "12")]
    pub sched: Option<Sched>,
    #[prost(uint64, tag = "13")]
    pub timer_slack_ns: u64,
    /// The thread's own credentials (ids, groups, capabilities,
    /// securebits, no_new_privs) where they differ from the leader's; the
    /// process-wide fields (dumpable, MDWE, seccomp) are the leader's.
    /// None: the leader's.
    #[prost(message, optional, tag = "14")]
    pub creds: Option<Creds>,
    /// PR_SET_PDEATHSIG is per thread (a new thread starts with none).
    #[prost(int32, tag = "15")]
    pub pdeath_signal: i32,
}

/// One unix socket of a connected pair (socketpair(2)) with both ends in
/// the dump, by inode; restored by one socketpair per pair.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct UnixSocket {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The peer's inode: another `UnixSocket` of the same dump.
    #[prost(uint64, tag = "2")]
    pub peer: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    #[prost(uint32, tag = "3")]
    pub sock_type: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    #[prost(uint32, tag = "4")]
    pub shutdown: u32,
    /// The receive queue, oldest first: one entry per message (dgram,
    /// seqpacket; an entry may be empty), or the bytes in chunks (stream).
    #[prost(bytes = "vec", repeated, tag = "5")]
    #[serde(serialize_with = "hex_list")]
    pub queue: Vec<Vec<u8>>,
    /// SO_SNDBUF and SO_RCVBUF as getsockopt reports them (doubled).
    #[prost(uint32, tag = "6")]
    pub sndbuf: u32,
    #[prost(uint32, tag = "7")]
    pub rcvbuf: u32,
    #[prost(bool, tag = "8")]
    pub passcred: bool,
    #[prost(bool, tag = "9")]
    pub passsec: bool,
    #[prost(uint64, tag = "10")]
    pub rcvtimeo_us: u64,
    #[prost(uint64, tag = "11")]
    pub sndtimeo_us: u64,
    /// SO_PEEK_OFF (-1: disabled).
    #[prost(int32, tag = "12")]
    pub peek_off: i32,
    #[prost(int32, tag = "13")]
    pub rcvlowat: i32,
}

fn hex_list<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for m in v {
        let text: String = m.iter().map(|b| format!("{b:02x}")).collect();
        seq.serialize_element(&text)?;
    }
    seq.end()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum SharedKind {
    /// memfd_create(): by its inode on the kernel's internal shmem mount.
    Memfd = 0,
    /// shmget(): by its shmid.
    SysvShm = 1,
    /// mmap(MAP_SHARED|MAP_ANONYMOUS) ("/dev/zero (deleted)"), mapped by
    /// several processes of a tree: by its inode on the internal shmem
    /// mount.
    AnonShared = 2,
    /// An unlinked regular file on a tmpfs mount (a POSIX named semaphore
    /// or shm_open object after sem_unlink/shm_unlink): by its device and
    /// inode; `name` is its path (without " (deleted)"), where restore
    /// makes it again, then unlinks it.
    UnlinkedFile = 3,
}

fn shared_kind<S: serde::Serializer>(k: &i32, s: S) -> Result<S::Ok, S::Error> {
    match SharedKind::try_from(*k) {
        Ok(k) => s.serialize_str(&format!("{k:?}")),
        Err(_) => s.serialize_i32(*k),
    }
}

/// Data of a shared object at `offset`: whole pages (the last may be cut
/// at the object's size); what no run covers is a hole.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SharedRun {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(serialize_with = "hex")]
    pub data: Vec<u8>,
}

/// A kernel memory object that VMAs and descriptors (of any task of the
/// dump) refer to by `id` (`Vma.shared`, `Fd.shared`): stored once, in
/// `shmem-ID.img`, with its content, and restored as one object.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SharedObject {
    /// The number in the file name; unique within the dump, never 0.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(enumeration = "SharedKind", tag = "2")]
    #[serde(serialize_with = "shared_kind")]
    pub kind: i32,
    /// The kernel's identity at dump time: device and inode (a SysV
    /// segment's inode is its shmid).
    #[prost(uint64, tag = "3")]
    pub dev: u64,
    #[prost(uint64, tag = "4")]
    pub inode: u64,
    /// Bytes (i_size, or shm_segsz).
    #[prost(uint64, tag = "5")]
    pub size: u64,
    /// memfd: the name given to memfd_create; unlinked file: its path.
    #[prost(string, tag = "6")]
    pub name: String,
    /// memfd: F_GET_SEALS (F_SEAL_SEAL alone: created without
    /// MFD_ALLOW_SEALING).
    #[prost(uint32, tag = "7")]
    pub seals: u32,
    /// Permission bits (st_mode & 07777, or shm_perm.mode & 0777), owner.
    #[prost(uint32, tag = "8")]
    pub mode: u32,
    #[prost(uint32, tag = "9")]
    pub uid: u32,
    #[prost(uint32, tag = "10")]
    pub gid: u32,
    /// SysV: shmid, key, and whether IPC_RMID was done already (SHM_DEST).
    #[prost(int32, tag = "11")]
    pub shmid: i32,
    #[prost(int32, tag = "12")]
    pub key: i32,
    #[prost(bool, tag = "13")]
    pub destroyed: bool,
    /// The data pages, in offset order.
    #[prost(message, repeated, tag = "14")]
    pub runs: Vec<SharedRun>,
    /// SysV: the creator (shm_perm.cuid, cgid), which restore's shmget
    /// makes again by running it with that euid and egid.
    #[prost(uint32, tag = "15")]
    pub cuid: u32,
    #[prost(uint32, tag = "16")]
    pub cgid: u32,
}
