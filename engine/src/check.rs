//! Kernel feature probes behind `crust check`.
//!
//! Every probe exercises the real interface (no version guessing) and
//! cleans up after itself: children are killed and reaped by pid, fds are
//! closed and mappings unmapped by RAII guards. A failing probe becomes
//! `available: false` with the failing call and errno name as detail.

use std::fs::File;
use std::io::{self, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::proc::pagemap::{AnonMapping, PagemapReader, PAGE_SIZE};
use crate::proc::status::{cap, read_status};

/// Feature names, for [`Report::available`].
pub mod names {
    pub const ROOT: &str = "root";
    pub const CAP_SYS_ADMIN: &str = "CAP_SYS_ADMIN";
    pub const CAP_SYS_RESOURCE: &str = "CAP_SYS_RESOURCE";
    pub const CAP_CHECKPOINT_RESTORE: &str = "CAP_CHECKPOINT_RESTORE";
    pub const YAMA: &str = "yama ptrace_scope";
    pub const PTRACE: &str = "ptrace";
    pub const PTRACE_XSTATE: &str = "ptrace xstate";
    pub const PTRACE_SIGMASK: &str = "ptrace sigmask";
    pub const PTRACE_RSEQ: &str = "ptrace rseq configuration";
    pub const VM_READV: &str = "process_vm_readv";
    pub const VM_WRITEV: &str = "process_vm_writev";
    pub const PIDFD_OPEN: &str = "pidfd_open";
    pub const PIDFD_GETFD: &str = "pidfd_getfd";
    pub const CLONE3_SET_TID: &str = "clone3 set_tid";
    pub const PR_SET_MM_MAP: &str = "PR_SET_MM_MAP";
    pub const USERFAULTFD: &str = "userfaultfd";
    pub const UFFD_WP_TRACKING: &str = "uffd-wp dirty tracking";
    pub const SOFT_DIRTY: &str = "soft-dirty";
    pub const CPU_LATENCY: &str = "cpu latency request";
}

/// Mode names.
pub mod modes {
    pub const DUMP: &str = "dump";
    pub const RESTORE: &str = "restore";
    pub const PREDUMP_UFFD_WP: &str = "pre-dump tracker uffd-wp";
    pub const PREDUMP_SOFT_DIRTY: &str = "pre-dump tracker soft-dirty";
    pub const PREDUMP_CONTENT: &str = "pre-dump tracker content";
    pub const LAZY_RESTORE: &str = "lazy restore";
    pub const PAGE_SERVER: &str = "page server";
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mode {
    pub name: &'static str,
    pub runnable: bool,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub features: Vec<Feature>,
    pub modes: Vec<Mode>,
}

impl Report {
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    /// False for unknown names too.
    pub fn available(&self, name: &str) -> bool {
        self.feature(name).is_some_and(|f| f.available)
    }

    pub fn mode(&self, name: &str) -> Option<&Mode> {
        self.modes.iter().find(|m| m.name == name)
    }

    /// [`Report::write_text`], ignoring write errors (for stdout: a closed
    /// pipe must not turn `crust check` into a failure or a panic).
    pub fn print_text(&self, w: &mut impl Write) {
        let _ = self.write_text(w);
    }

    /// Human-readable table: one line per feature, then per mode.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        let width = self
            .features
            .iter()
            .map(|f| f.name.len())
            .chain(self.modes.iter().map(|m| m.name.len()))
            .max()
            .unwrap_or(0);
        writeln!(w, "features:")?;
        for f in &self.features {
            let mark = if f.available { "yes" } else { "no" };
            writeln!(w, "  {mark:<3}  {:<width$}  {}", f.name, f.detail)?;
        }
        writeln!(w, "modes:")?;
        for m in &self.modes {
            let mark = if m.runnable { "yes" } else { "no" };
            writeln!(w, "  {mark:<3}  {:<width$}  {}", m.name, m.why)?;
        }
        Ok(())
    }

    /// `{"features": [{name, available, detail}], "modes": [{name, runnable, why}]}`
    pub fn to_json(&self) -> serde_json::Value {
        let features = self
            .features
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "available": f.available, "detail": f.detail}))
            .collect::<Vec<_>>();
        let modes = self
            .modes
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "runnable": m.runnable, "why": m.why}))
            .collect::<Vec<_>>();
        serde_json::json!({ "features": features, "modes": modes })
    }
}

/// Ok(detail) when available, Err(reason) when not.
type Probe = std::result::Result<String, String>;

fn feature(name: &'static str, probe: Probe) -> Feature {
    match probe {
        Ok(detail) => Feature {
            name,
            available: true,
            detail,
        },
        Err(detail) => Feature {
            name,
            available: false,
            detail,
        },
    }
}

/// "CALL: ENAME: description" for the current errno.
fn errno_of(call: &str) -> String {
    format!("{call}: {}", Errno::last())
}

fn caught<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|_| format!("{what} probe panicked (bug)"))
}

/// Runs every probe. Never panics.
pub fn probe() -> Report {
    let mut features = Vec::new();
    features.extend(probe_privileges());
    match caught("tracee", probe_tracee) {
        Ok(fs) => features.extend(fs),
        Err(e) => features.extend(TRACEE_FEATURES.iter().map(|n| feature(n, Err(e.clone())))),
    }
    type Single = (&'static str, fn() -> Probe);
    let single: [Single; 3] = [
        (names::CLONE3_SET_TID, probe_clone3_set_tid),
        (names::PR_SET_MM_MAP, probe_set_mm_map),
        (names::SOFT_DIRTY, probe_soft_dirty),
    ];
    for (name, f) in single {
        features.push(feature(name, caught(name, f).and_then(|r| r)));
    }
    match caught("userfaultfd", probe_userfaultfd) {
        Ok(fs) => features.extend(fs),
        Err(e) => features.push(feature(names::USERFAULTFD, Err(e))),
    }
    features.push(feature(
        names::UFFD_WP_TRACKING,
        caught(names::UFFD_WP_TRACKING, probe_pagemap_scan).and_then(|r| r),
    ));
    features.push(feature(names::CPU_LATENCY, probe_cpu_latency()));
    let modes = derive_modes(&features);
    Report { features, modes }
}

/// Whether dump, pre-dump and restore can hold their CPU latency request
/// (sys/cpu_latency.rs), and what it does here: with a cpuidle driver
/// idle CPUs poll while it is held; without one they halt anyway. Speed
/// only: no mode needs it.
fn probe_cpu_latency() -> Probe {
    let held = crate::sys::cpu_latency::hold_for_probe()
        .map_err(|e| format!("/dev/cpu_dma_latency: {e}"))?;
    drop(held);
    let sys = Path::new("/sys/devices/system/cpu/cpuidle");
    let read = |f: &str| std::fs::read_to_string(sys.join(f)).map(|s| s.trim().to_string());
    Ok(match (read("current_driver"), read("current_governor")) {
        (Ok(d), Ok(g)) if d != "none" => format!(
            "0 us held while crust works; cpuidle driver {d}, governor {g}: idle CPUs poll meanwhile"
        ),
        _ => "0 us held while crust works; no cpuidle driver: idle CPUs halt as ever".into(),
    })
}

// ---------------------------------------------------------------- modes

const DUMP_NEEDS: &[&str] = &[names::PTRACE, names::VM_READV, names::PIDFD_GETFD];
const RESTORE_NEEDS: &[&str] = &[
    names::PTRACE,
    names::CLONE3_SET_TID,
    names::VM_WRITEV,
    names::PR_SET_MM_MAP,
];
const UFFD_WP_NEEDS: &[&str] = &[
    names::USERFAULTFD,
    "uffd WP_ASYNC",
    "uffd WP_UNPOPULATED",
    names::UFFD_WP_TRACKING,
];
const LAZY_NEEDS: &[&str] = &[
    names::USERFAULTFD,
    "uffd EVENT_FORK",
    "uffd EVENT_REMAP",
    "uffd EVENT_REMOVE",
    "uffd EVENT_UNMAP",
];

fn mode(name: &'static str, features: &[Feature], needs: &[&[&str]]) -> Mode {
    let all: Vec<&str> = needs.iter().flat_map(|n| n.iter().copied()).collect();
    let missing: Vec<&str> = all
        .iter()
        .copied()
        .filter(|n| !features.iter().any(|f| f.name == *n && f.available))
        .collect();
    let why = if all.is_empty() {
        "needs no special kernel feature".to_string()
    } else if missing.is_empty() {
        format!("has {}", all.join(", "))
    } else {
        format!("missing {}", missing.join(", "))
    };
    Mode {
        name,
        runnable: missing.is_empty(),
        why,
    }
}

/// A mode is runnable when everything it exercises is: pre-dump trackers
/// run the dump machinery, lazy restore is a restore.
fn derive_modes(f: &[Feature]) -> Vec<Mode> {
    let mut page_server = mode(modes::PAGE_SERVER, f, &[]);
    page_server.why = "plain TCP, needs no special kernel feature".into();
    vec![
        mode(modes::DUMP, f, &[DUMP_NEEDS]),
        mode(modes::RESTORE, f, &[RESTORE_NEEDS]),
        mode(modes::PREDUMP_UFFD_WP, f, &[DUMP_NEEDS, UFFD_WP_NEEDS]),
        mode(
            modes::PREDUMP_SOFT_DIRTY,
            f,
            &[DUMP_NEEDS, &[names::SOFT_DIRTY]],
        ),
        mode(modes::PREDUMP_CONTENT, f, &[DUMP_NEEDS]),
        mode(modes::LAZY_RESTORE, f, &[RESTORE_NEEDS, LAZY_NEEDS]),
        page_server,
    ]
}

// ----------------------------------------------------------- privileges

fn probe_privileges() -> Vec<Feature> {
    let euid = nix::unistd::geteuid();
    let mut out = vec![feature(
        names::ROOT,
        if euid.is_root() {
            Ok("euid 0".into())
        } else {
            Err(format!("euid {euid}"))
        },
    )];
    let caps = read_status(std::process::id() as i32).map(|s| s.cap_eff);
    let has = |c: u32, absent: &str| -> Probe {
        match &caps {
            Ok(eff) if eff & (1u64 << c) != 0 => Ok(format!("in CapEff {eff:#x}")),
            Ok(eff) => Err(format!("not in CapEff {eff:#x}{absent}")),
            Err(e) => Err(e.to_string()),
        }
    };
    out.push(feature(names::CAP_SYS_ADMIN, has(cap::SYS_ADMIN, "")));
    out.push(feature(
        names::CAP_SYS_RESOURCE,
        has(
            cap::SYS_RESOURCE,
            ": pipe sizes above /proc/sys/fs/pipe-max-size and raising hard rlimits are impossible",
        ),
    ));
    out.push(feature(
        names::CAP_CHECKPOINT_RESTORE,
        has(cap::CHECKPOINT_RESTORE, ""),
    ));
    let yama = match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok("yama not enabled".into()),
        Err(e) => Err(format!("reading /proc/sys/kernel/yama/ptrace_scope: {e}")),
        Ok(s) => match s.trim() {
            "0" | "1" => Ok(format!("ptrace_scope {}", s.trim())),
            "2" if matches!(&caps, Ok(eff) if eff & (1 << cap::SYS_PTRACE) != 0) => {
                Ok("ptrace_scope 2, have CAP_SYS_PTRACE".into())
            }
            "2" => Err("ptrace_scope 2 needs CAP_SYS_PTRACE".into()),
            other => Err(format!("ptrace_scope {other}: attaching is disabled")),
        },
    };
    out.push(feature(names::YAMA, yama));
    out
}

// ------------------------------------------------------ tracee probes

const TRACEE_FEATURES: &[&str] = &[
    names::PTRACE,
    names::PTRACE_XSTATE,
    names::PTRACE_SIGMASK,
    names::PTRACE_RSEQ,
    names::VM_READV,
    names::VM_WRITEV,
    names::PIDFD_OPEN,
    names::PIDFD_GETFD,
];

/// A forked child sitting in pause(); killed and reaped by pid on drop.
struct PausedChild {
    pid: Pid,
}

impl PausedChild {
    fn fork() -> Result<Self, String> {
        let parent = nix::unistd::getpid().as_raw();
        // SAFETY: the child (of a possibly multi-threaded process) only
        // makes async-signal-safe raw system calls and never returns.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(errno_of("fork")),
            0 => {
                // SAFETY: prctl/getppid/pause/_exit are plain system calls.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    if libc::getppid() != parent {
                        libc::_exit(0);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            pid => Ok(PausedChild {
                pid: Pid::from_raw(pid),
            }),
        }
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        // A traced child may report stops before its death: wait until it
        // is really gone (bounded, in case of a bug).
        for _ in 0..100 {
            match waitpid(self.pid, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
                    break
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }
}

/// Read and overwritten in the child through process_vm_*; never written
/// in this process, so the child's copy starts with this value.
static PROBE_WORD: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0x6372_7573_745f_7631);

const NT_X86_XSTATE: usize = 0x202;

#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

fn probe_tracee() -> Vec<Feature> {
    // The child inherits this pipe: pidfd_getfd fetches its read end back.
    let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let child = match PausedChild::fork() {
        Ok(c) => c,
        Err(e) => {
            return TRACEE_FEATURES
                .iter()
                .map(|n| feature(n, Err(e.clone())))
                .collect()
        }
    };
    let pid = child.pid;
    let mut out = Vec::new();

    let traced = seize_and_stop(pid);
    let stopped = traced.is_ok();
    out.push(feature(names::PTRACE, traced));
    let need_stop = |p: fn(Pid) -> Probe| -> Probe {
        if stopped {
            p(pid)
        } else {
            Err("needs ptrace".into())
        }
    };
    out.push(feature(names::PTRACE_XSTATE, need_stop(probe_xstate)));
    out.push(feature(names::PTRACE_SIGMASK, need_stop(probe_sigmask)));
    out.push(feature(names::PTRACE_RSEQ, need_stop(probe_rseq)));
    out.push(feature(names::VM_READV, probe_vm_readv(pid)));
    out.push(feature(names::VM_WRITEV, probe_vm_writev(pid, stopped)));

    let pidfd = pidfd_open(pid);
    let getfd = match (&pidfd, &pipe) {
        (Ok(pidfd), Ok((r, _))) => probe_pidfd_getfd(pidfd, r),
        (Err(_), _) => Err("needs pidfd_open".into()),
        (_, Err(e)) => Err(format!("pipe2: {e}")),
    };
    out.push(feature(
        names::PIDFD_OPEN,
        pidfd.map(|_| "pidfd of a child".to_string()),
    ));
    out.push(feature(names::PIDFD_GETFD, getfd));
    drop(child);
    out
}

fn seize_and_stop(pid: Pid) -> Probe {
    use nix::sys::ptrace;
    ptrace::seize(pid, ptrace::Options::empty()).map_err(|e| format!("PTRACE_SEIZE: {e}"))?;
    ptrace::interrupt(pid).map_err(|e| format!("PTRACE_INTERRUPT: {e}"))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceEvent(_, _, ev)) if ev == libc::PTRACE_EVENT_STOP => break,
            // A signal stop would come first if one were pending: pass it on.
            Ok(WaitStatus::Stopped(_, sig)) => {
                ptrace::cont(pid, sig).map_err(|e| format!("PTRACE_CONT: {e}"))?;
            }
            Ok(other) => return Err(format!("waitpid: unexpected {other:?}")),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
    let regs = ptrace::getregs(pid).map_err(|e| format!("PTRACE_GETREGS: {e}"))?;
    Ok(format!(
        "seize, interrupt, event stop, getregs (rip {:#x})",
        regs.rip
    ))
}

fn probe_xstate(pid: Pid) -> Probe {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes `buf`, which outlives the call; the kernel
    // writes at most iov_len bytes and updates iov_len.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    if r < 0 {
        return Err(errno_of("PTRACE_GETREGSET(NT_X86_XSTATE)"));
    }
    // XCR0 is saved at byte 464 of the FXSAVE area's software-reserved part.
    let xcr0 = buf
        .get(464..472)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0);
    Ok(format!("{} bytes, xcr0 {xcr0:#x}", iov.iov_len))
}

fn probe_sigmask(pid: Pid) -> Probe {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes exactly addr (= 8) bytes into `mask`.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            pid.as_raw(),
            size_of::<u64>() as *mut libc::c_void,
            &mut mask as *mut u64,
        )
    };
    if r < 0 {
        return Err(errno_of("PTRACE_GETSIGMASK"));
    }
    Ok(format!("blocked {mask:#x}"))
}

fn probe_rseq(pid: Pid) -> Probe {
    let mut conf = RseqConfiguration::default();
    // SAFETY: the kernel writes at most addr bytes (our struct's size).
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            pid.as_raw(),
            size_of::<RseqConfiguration>() as *mut libc::c_void,
            &mut conf as *mut RseqConfiguration,
        )
    };
    if r < 0 {
        return Err(errno_of("PTRACE_GET_RSEQ_CONFIGURATION"));
    }
    Ok(if conf.rseq_abi_pointer == 0 {
        format!("{r} bytes; tracee has no rseq area")
    } else {
        format!(
            "{r} bytes; rseq area {:#x} size {} signature {:#x} flags {:#x}",
            conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags
        )
    })
}

fn probe_word_addr() -> usize {
    std::ptr::addr_of!(PROBE_WORD) as usize
}

fn read_child_word(pid: Pid) -> Result<u64, String> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let mut buf = [0u8; 8];
    let remote = [RemoteIoVec {
        base: probe_word_addr(),
        len: 8,
    }];
    let n = process_vm_readv(pid, &mut [io::IoSliceMut::new(&mut buf)], &remote)
        .map_err(|e| format!("process_vm_readv: {e}"))?;
    if n != 8 {
        return Err(format!("process_vm_readv: short read of {n} bytes"));
    }
    Ok(u64::from_ne_bytes(buf))
}

fn probe_vm_readv(pid: Pid) -> Probe {
    let want = PROBE_WORD.load(std::sync::atomic::Ordering::Relaxed);
    match read_child_word(pid)? {
        got if got == want => Ok("read a known word from a child".into()),
        got => Err(format!("process_vm_readv: read {got:#x}, want {want:#x}")),
    }
}

fn probe_vm_writev(pid: Pid, stopped: bool) -> Probe {
    use nix::sys::uio::{process_vm_writev, RemoteIoVec};
    let new = 0x7772_6974_7465_6e21u64;
    let bytes = new.to_ne_bytes();
    let remote = [RemoteIoVec {
        base: probe_word_addr(),
        len: 8,
    }];
    let n = process_vm_writev(pid, &[io::IoSlice::new(&bytes)], &remote)
        .map_err(|e| format!("process_vm_writev: {e}"))?;
    if n != 8 {
        return Err(format!("process_vm_writev: short write of {n} bytes"));
    }
    // Verify independently of process_vm_readv when the child is traced.
    let got = if stopped {
        nix::sys::ptrace::read(pid, probe_word_addr() as *mut libc::c_void)
            .map(|w| w as u64)
            .map_err(|e| format!("PTRACE_PEEKDATA: {e}"))?
    } else {
        read_child_word(pid)?
    };
    if got != new {
        return Err(format!(
            "process_vm_writev: child holds {got:#x} after writing {new:#x}"
        ));
    }
    Ok("wrote a word into a child and read it back".into())
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(errno_of("pidfd_open"));
    }
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn probe_pidfd_getfd(pidfd: &OwnedFd, ours: &OwnedFd) -> Probe {
    // SAFETY: pidfd_getfd takes two fds and flags and returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            ours.as_raw_fd(),
            0,
        )
    };
    if fd < 0 {
        return Err(errno_of("pidfd_getfd"));
    }
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    let got = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ino = |f: &OwnedFd| nix::sys::stat::fstat(f.as_raw_fd()).map(|s| s.st_ino);
    match (ino(&got), ino(ours)) {
        (Ok(a), Ok(b)) if a == b => Ok(format!("fetched the child's pipe:[{a}]")),
        (Ok(a), Ok(b)) => Err(format!("pidfd_getfd returned inode {a}, want {b}")),
        (Err(e), _) | (_, Err(e)) => Err(format!("fstat: {e}")),
    }
}

// --------------------------------------------------------- clone3 set_tid

fn read_sysctl_i32(path: &str) -> Result<i32, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("reading {path}: {e}"))?
        .trim()
        .parse()
        .map_err(|_| format!("{path}: not a number"))
}

fn probe_clone3_set_tid() -> Probe {
    let last = read_sysctl_i32("/proc/sys/kernel/ns_last_pid")?;
    let max = read_sysctl_i32("/proc/sys/kernel/pid_max")?;
    let span = (max - 301).max(1);
    let mut last_err = String::from("no free pid found");
    for attempt in 0..8 {
        // A little ahead of the allocator, wrapping above the reserved
        // low pids like the kernel does.
        let want = 301 + (last - 300 + 64 + attempt * 37).rem_euclid(span);
        if Path::new(&format!("/proc/{want}")).exists() {
            continue;
        }
        // SAFETY: without CLONE_VM this is a fork: the child only calls
        // _exit (async-signal-safe).
        let ret = match unsafe { crate::sys::syscalls::fork_with_pid(want) } {
            Ok(crate::sys::syscalls::Forked::Child) => {
                // SAFETY: the child leaves at once, running nothing else.
                unsafe { libc::_exit(0) }
            }
            Ok(crate::sys::syscalls::Forked::Parent(pid)) => pid,
            Err(Errno::EEXIST | Errno::EBUSY) => {
                last_err = errno_of("clone3");
                continue;
            }
            Err(e) => return Err(format!("clone3 with set_tid [{want}]: {e}")),
        };
        let got = Pid::from_raw(ret as i32);
        let reaped = loop {
            match waitpid(got, None) {
                Err(Errno::EINTR) => {}
                other => break other,
            }
        };
        if let Err(e) = reaped {
            return Err(format!("waitpid({got}): {e}"));
        }
        return if got.as_raw() == want {
            Ok(format!("child created with requested pid {want}"))
        } else {
            Err(format!("asked for pid {want}, got {got}"))
        };
    }
    Err(last_err)
}

// ------------------------------------------------------------ PR_SET_MM

fn probe_set_mm_map() -> Probe {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE only stores a u32 at the given address.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE as libc::c_ulong,
            &mut size as *mut u32 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        let e = Errno::last();
        return Err(if e == Errno::EINVAL {
            format!("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): {e} (kernel without CONFIG_CHECKPOINT_RESTORE)")
        } else {
            format!("prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): {e}")
        });
    }
    Ok(format!("struct prctl_mm_map is {size} bytes"))
}

// ----------------------------------------------------------- soft-dirty

/// Whether soft-dirty tracking works on this kernel (probed on ourselves).
pub(crate) fn soft_dirty_works() -> Result<String, String> {
    probe_soft_dirty()
}

fn probe_soft_dirty() -> Probe {
    let map = AnonMapping::new(PAGE_SIZE as usize).map_err(|e| format!("mmap: {e}"))?;
    map.write_byte(0, 1);
    std::fs::write("/proc/self/clear_refs", "4")
        .map_err(|e| format!("writing 4 to /proc/self/clear_refs: {e}"))?;
    let mut pm = PagemapReader::open(std::process::id() as i32).map_err(|e| e.to_string())?;
    let addr = map.addr as u64;
    if pm.entry(addr).map_err(|e| e.to_string())?.soft_dirty() {
        return Err("pagemap bit 55 still set after clear_refs".into());
    }
    map.write_byte(0, 2);
    if !pm.entry(addr).map_err(|e| e.to_string())?.soft_dirty() {
        return Err(
            "pagemap bit 55 stays clear after a write: kernel built without CONFIG_MEM_SOFT_DIRTY"
                .into(),
        );
    }
    Ok("clear_refs clears pagemap bit 55, a write sets it".into())
}

// ---------------------------------------------------------- userfaultfd

const UFFD_USER_MODE_ONLY: i32 = 1;

/// UFFD_FEATURE_* bits (linux/userfaultfd.h), with the feature name used
/// in the report.
pub const UFFD_FEATURES: &[(&str, &str, u64)] = &[
    ("PAGEFAULT_FLAG_WP", "uffd PAGEFAULT_FLAG_WP", 1 << 0),
    ("EVENT_FORK", "uffd EVENT_FORK", 1 << 1),
    ("EVENT_REMAP", "uffd EVENT_REMAP", 1 << 2),
    ("EVENT_REMOVE", "uffd EVENT_REMOVE", 1 << 3),
    ("MISSING_HUGETLBFS", "uffd MISSING_HUGETLBFS", 1 << 4),
    ("MISSING_SHMEM", "uffd MISSING_SHMEM", 1 << 5),
    ("EVENT_UNMAP", "uffd EVENT_UNMAP", 1 << 6),
    ("SIGBUS", "uffd SIGBUS", 1 << 7),
    ("THREAD_ID", "uffd THREAD_ID", 1 << 8),
    ("MINOR_HUGETLBFS", "uffd MINOR_HUGETLBFS", 1 << 9),
    ("MINOR_SHMEM", "uffd MINOR_SHMEM", 1 << 10),
    ("EXACT_ADDRESS", "uffd EXACT_ADDRESS", 1 << 11),
    ("WP_HUGETLBFS_SHMEM", "uffd WP_HUGETLBFS_SHMEM", 1 << 12),
    ("WP_UNPOPULATED", "uffd WP_UNPOPULATED", 1 << 13),
    ("POISON", "uffd POISON", 1 << 14),
    ("WP_ASYNC", "uffd WP_ASYNC", 1 << 15),
    ("MOVE", "uffd MOVE", 1 << 16),
];
pub use crate::sys::uffd::{UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED};

/// Names of the known UFFD_FEATURE_* bits set in `mask`, low bit first.
pub fn uffd_feature_names(mask: u64) -> Vec<&'static str> {
    UFFD_FEATURES
        .iter()
        .filter(|(_, _, bit)| mask & bit != 0)
        .map(|(name, _, _)| *name)
        .collect()
}

/// Bits of `mask` that no known UFFD_FEATURE_* names.
pub fn uffd_unknown_bits(mask: u64) -> u64 {
    UFFD_FEATURES.iter().fold(mask, |m, (_, _, bit)| m & !bit)
}

/// A new userfaultfd, user-mode-only if the kernel has that flag.
fn open_uffd() -> Result<(OwnedFd, &'static str), String> {
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let mut why = String::new();
    for (flags, label) in [
        (base | UFFD_USER_MODE_ONLY, "user-mode-only"),
        (base, "kernel and user faults"),
    ] {
        // SAFETY: userfaultfd takes flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd; we are its only owner.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd as i32) }, label));
        }
        why = errno_of("userfaultfd");
    }
    Err(why)
}

/// UFFDIO_API (once per uffd): enables `features`, returns the kernel's mask.
fn uffd_api(fd: &OwnedFd, features: u64) -> Result<u64, String> {
    crate::sys::uffd::api(fd, features)
        .map_err(|e| format!("UFFDIO_API(features {features:#x}): {e}"))
}

fn probe_userfaultfd() -> Vec<Feature> {
    let mask = open_uffd().and_then(|(fd, label)| uffd_api(&fd, 0).map(|m| (m, label)));
    let mut out = Vec::new();
    match mask {
        Ok((mask, label)) => {
            let mut detail = format!(
                "{label}; features {mask:#x}: {}",
                uffd_feature_names(mask).join(" ")
            );
            let unknown = uffd_unknown_bits(mask);
            if unknown != 0 {
                detail.push_str(&format!(" (unknown bits {unknown:#x})"));
            }
            out.push(feature(names::USERFAULTFD, Ok(detail)));
            for (_, fname, bit) in UFFD_FEATURES {
                out.push(feature(
                    fname,
                    if mask & bit != 0 {
                        Ok("offered by UFFDIO_API".into())
                    } else {
                        Err("not offered by UFFDIO_API".into())
                    },
                ));
            }
        }
        Err(e) => {
            out.push(feature(names::USERFAULTFD, Err(e)));
            for (_, fname, _) in UFFD_FEATURES {
                out.push(feature(fname, Err("needs userfaultfd".into())));
            }
        }
    }
    out
}

// ---------------------------------------------------------- PAGEMAP_SCAN

const SCAN_PAGES: usize = 64;

/// Reports the written pages of `map` (as page indexes) and write-protects
/// them again.
fn scan_written(pagemap: &File, map: &AnonMapping) -> Result<Vec<u64>, String> {
    let start = map.addr as u64;
    let end = start + map.len as u64;
    let mut ranges = Vec::new();
    crate::sys::uffd::scan_written(pagemap, start, end, &mut ranges)
        .map_err(|e| format!("ioctl(PAGEMAP_SCAN): {e}"))?;
    Ok(ranges
        .iter()
        .flat_map(|&(a, b)| (a - start) / PAGE_SIZE..(b.min(end) - start) / PAGE_SIZE)
        .collect())
}

fn probe_pagemap_scan() -> Probe {
    let (uffd, _) = open_uffd()?;
    uffd_api(&uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)?;
    // Declared after the uffd so it is unmapped before the uffd closes.
    let map =
        AnonMapping::new(SCAN_PAGES * PAGE_SIZE as usize).map_err(|e| format!("mmap: {e}"))?;
    crate::sys::uffd::register_wp(&uffd, map.addr as u64, map.len as u64)
        .map_err(|e| format!("UFFDIO_REGISTER(MODE_WP): {e}"))?;
    let pagemap =
        File::open("/proc/self/pagemap").map_err(|e| format!("opening /proc/self/pagemap: {e}"))?;
    // Not yet write-protected pages count as written: the first pass
    // reports and arms them (populated or not, thanks to WP_UNPOPULATED).
    scan_written(&pagemap, &map)?;
    let armed = scan_written(&pagemap, &map)?;
    if !armed.is_empty() {
        return Err(format!(
            "untouched pages reported written after arming: {armed:?}"
        ));
    }
    map.write_byte(5, 1);
    map.write_byte(40, 1);
    let written = scan_written(&pagemap, &map)?;
    if written != [5, 40] {
        return Err(format!(
            "after writing pages 5 and 40, PAGEMAP_SCAN reported {written:?}"
        ));
    }
    let again = scan_written(&pagemap, &map)?;
    if !again.is_empty() {
        return Err(format!("pages not write-protected again: {again:?}"));
    }
    Ok("PAGEMAP_SCAN over uffd WP_ASYNC memory reports exactly the written pages".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uffd_mask_names() {
        assert!(uffd_feature_names(0).is_empty());
        assert_eq!(
            uffd_feature_names((1 << 1) | (1 << 6) | (1 << 15)),
            ["EVENT_FORK", "EVENT_UNMAP", "WP_ASYNC"]
        );
        assert_eq!(uffd_feature_names(1 << 16), ["MOVE"]);
        assert_eq!(uffd_unknown_bits((1 << 40) | (1 << 2)), 1 << 40);
        assert_eq!(uffd_feature_names(u64::MAX).len(), UFFD_FEATURES.len());
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<RseqConfiguration>(), 24);
    }

    fn sample_report() -> Report {
        let features = vec![
            feature(names::PTRACE, Ok("seize".into())),
            feature(names::VM_READV, Ok("x".into())),
            feature(names::PIDFD_GETFD, Ok("y".into())),
            feature(names::SOFT_DIRTY, Err("no CONFIG_MEM_SOFT_DIRTY".into())),
        ];
        let modes = derive_modes(&features);
        Report { features, modes }
    }

    #[test]
    fn modes_follow_features() {
        let r = sample_report();
        assert!(r.mode(modes::DUMP).unwrap().runnable);
        assert!(r.mode(modes::PREDUMP_CONTENT).unwrap().runnable);
        assert!(r.mode(modes::PAGE_SERVER).unwrap().runnable);
        let sd = r.mode(modes::PREDUMP_SOFT_DIRTY).unwrap();
        assert!(!sd.runnable && sd.why.contains("soft-dirty"), "{sd:?}");
        let restore = r.mode(modes::RESTORE).unwrap();
        assert!(!restore.runnable && restore.why.contains("clone3 set_tid"));
        assert!(!r.mode(modes::LAZY_RESTORE).unwrap().runnable);
        assert!(!r.available("no such feature"));
    }

    #[test]
    fn text_and_json_output() {
        let r = sample_report();
        let mut out = Vec::new();
        r.print_text(&mut out);
        let text = String::from_utf8(out).unwrap();
        for f in &r.features {
            assert!(text.contains(f.name), "{}", f.name);
        }
        for m in &r.modes {
            assert!(text.contains(m.name), "{}", m.name);
        }
        assert!(text.contains("no CONFIG_MEM_SOFT_DIRTY"));
        let json = r.to_json();
        assert_eq!(json["features"][0]["name"], "ptrace");
        assert_eq!(json["features"][3]["available"], false);
        assert_eq!(json["modes"][0]["name"], "dump");
        assert_eq!(json["modes"][0]["runnable"], true);
    }

    #[test]
    fn probe_this_kernel() {
        let r = probe();
        let mut out = Vec::new();
        r.print_text(&mut out);
        let text = String::from_utf8(out).unwrap();
        eprintln!("{text}");
        for f in &r.features {
            assert!(text.contains(f.name), "{}", f.name);
        }
        for name in TRACEE_FEATURES
            .iter()
            .chain(
                [
                    names::CLONE3_SET_TID,
                    names::PR_SET_MM_MAP,
                    names::SOFT_DIRTY,
                ]
                .iter(),
            )
            .chain([names::USERFAULTFD, names::UFFD_WP_TRACKING].iter())
        {
            assert!(r.feature(name).is_some(), "{name} missing from report");
        }
        assert_eq!(r.modes.len(), 7);
        if nix::unistd::geteuid().is_root() {
            for name in [
                names::PTRACE,
                names::PTRACE_XSTATE,
                names::PTRACE_SIGMASK,
                names::VM_READV,
                names::VM_WRITEV,
                names::PIDFD_GETFD,
                names::CLONE3_SET_TID,
                names::PR_SET_MM_MAP,
            ] {
                assert!(r.available(name), "{name}: {:?}", r.feature(name));
            }
            assert!(r.mode(modes::DUMP).unwrap().runnable);
            assert!(r.mode(modes::RESTORE).unwrap().runnable);
        }
    }
}
