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
    /// Credentials, capabilities, securebits, seccomp... (absent in images
    /// from before they were dumped: restore refuses those rather than
    /// give the task the engine's own).
    #[prost(message, optional, tag = "17")]
    pub creds: Option<Creds>,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration, Serialize)]
#[repr(i32)]
pub enum FdKind {
    /// A regular file, directory or device, reopened by path.
    Path = 0,
    PipeRead = 1,
    PipeWrite = 2,
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
}

/// PagemapEntry flag: the run's data is in the parent image chain, not in
/// this directory's pages file.
pub const PE_IN_PARENT: u32 = 1;

/// A run of pages with data in the pages file, in file order.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct PagemapEntry {
    #[prost(uint64, tag = "1")]
    pub vaddr: u64,
    #[prost(uint64, tag = "2")]
    pub nr_pages: u64,
    #[prost(uint32, tag = "3")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Pagemap {
    /// Name of the pages file in the same directory.
    #[prost(string, tag = "1")]
    pub pages_file: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<PagemapEntry>,
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
