//! The visible state of a task: what a checkpoint/restore must preserve
//! and the runner can observe from outside through `/proc`.
//!
//! [`capture`] freezes the task with ptrace ([`crate::freeze`]), reads
//! - `/proc/PID/status` fields ([`status::COMPARED_FIELDS`]), and the
//!   per-thread ones of every other thread ([`status::THREAD_FIELDS`]),
//! - the cwd and root links,
//! - every descriptor with its target, position and flags ([`fds`]),
//! - `/proc/PID/maps`, normalised ([`maps`]),
//! - the `VmFlags` of `/proc/PID/smaps`, by address range ([`vmflags`]),
//! - resource limits, personality, `oom_score_adj`, timer slack, each
//!   thread's scheduling attributes and the POSIX timers ([`attrs`]),
//! - a hash of every page, `PROT_NONE` ones included ([`memory`]),
//! - the rseq registration of each thread (with ptrace; its kernel-written
//!   fields are masked out of the memory hashes),
//!
//! then detaches. [`diff::compare`] lists the differences between two
//! captures.

pub mod attrs;
pub mod diff;
pub mod fds;
pub mod maps;
pub mod memory;
pub mod status;
pub mod vmflags;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;

use crate::freeze::{FreezeError, Frozen, Rseq};
use attrs::Attrs;
use fds::FdEntry;
use maps::MapEntry;
use memory::{Source, VmaDigest};
use vmflags::VmaFlags;

/// Why a state could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Freezing (or unfreezing) failed.
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    /// A `/proc` file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file did not parse.
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl CaptureError {
    /// Shorthand for [`CaptureError::Io`].
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        CaptureError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Everything compared between before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleState {
    /// The task (informational, not compared as such: `Pid` in `status` is).
    pub pid: i32,
    /// Selected `/proc/PID/status` fields, in [`status::COMPARED_FIELDS`]
    /// order.
    pub status: Vec<(String, String)>,
    /// [`status::THREAD_FIELDS`] of every thread but the main one, by tid.
    pub thread_status: Vec<(i32, Vec<(String, String)>)>,
    /// `/proc/PID/cwd` target.
    pub cwd: String,
    /// `/proc/PID/root` target.
    pub root: String,
    /// Descriptors, by number, canonical form.
    pub fds: Vec<FdEntry>,
    /// Normalised maps, canonical form.
    pub maps: Vec<MapEntry>,
    /// `VmFlags` of smaps, merged into ranges of equal flags.
    pub vmflags: Vec<VmaFlags>,
    /// Limits, personality, oom_score_adj, timer slack, scheduling, timers.
    pub attrs: Attrs,
    /// Page hashes of the readable VMAs of the normalised maps.
    pub memory: Vec<VmaDigest>,
    /// rseq registrations, by thread id.
    pub rseq: Vec<Rseq>,
}

fn read_link(path: String) -> Result<String, CaptureError> {
    std::fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| CaptureError::io(&path, e))
}

/// Reads the state of `pid` without freezing it (the caller must make sure
/// it does not change meanwhile: [`capture`] does). `tids` are its threads,
/// `rseq` their rseq registrations (only ptrace can tell them).
pub fn read(pid: Pid, tids: &[Pid], rseq: &[Rseq]) -> Result<VisibleState, CaptureError> {
    read_with(pid, tids, rseq, Memory::Read(None))
}

/// Whether and how [`read_with`] reads the task's memory.
#[derive(Debug, Clone, Copy)]
pub enum Memory<'a> {
    /// Not at all (the memory check is skipped): no page is touched, so a
    /// lazily restored task gets no page it did not ask for itself.
    Skip,
    /// Present pages; with an earlier capture, also the pages that held
    /// data then (see [`memory::digest_with`]).
    Read(Option<&'a VisibleState>),
}

/// [`read`], reading memory as `memory` says: with an earlier capture,
/// also the pages that held data then where pagemap now says absent (see
/// [`memory::digest_with`]), for a task restored lazily.
pub fn read_with(
    pid: Pid,
    tids: &[Pid],
    rseq: &[Rseq],
    memory: Memory<'_>,
) -> Result<VisibleState, CaptureError> {
    let status_path = format!("/proc/{pid}/status");
    let status_text =
        std::fs::read_to_string(&status_path).map_err(|e| CaptureError::io(&status_path, e))?;
    let status = status::select(&status::parse(&status_text));
    let mut thread_status = Vec::new();
    for &tid in tids.iter().filter(|&&t| t != pid) {
        let path = format!("/proc/{pid}/task/{tid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| CaptureError::io(&path, e))?;
        thread_status.push((tid.as_raw(), status::select_thread(&status::parse(&text))));
    }
    thread_status.sort_by_key(|(tid, _)| *tid);
    let cwd = read_link(format!("/proc/{pid}/cwd"))?;
    let root = read_link(format!("/proc/{pid}/root"))?;
    let fds = fds::read(pid)?;
    let maps_path = format!("/proc/{pid}/maps");
    let maps_text =
        std::fs::read_to_string(&maps_path).map_err(|e| CaptureError::io(&maps_path, e))?;
    let raw = maps::parse(&maps_text).map_err(|message| CaptureError::Parse {
        path: maps_path.into(),
        message,
    })?;
    let normalised = maps::normalise(raw);
    let smaps_path = format!("/proc/{pid}/smaps");
    let smaps_text =
        std::fs::read_to_string(&smaps_path).map_err(|e| CaptureError::io(&smaps_path, e))?;
    let vmflags = vmflags::parse(&smaps_text).map_err(|message| CaptureError::Parse {
        path: smaps_path.into(),
        message,
    })?;
    let attrs = attrs::read(pid, tids)?;
    let masks: Vec<(u64, u64)> = rseq.iter().flat_map(Rseq::kernel_written).collect();
    let memory = match memory {
        Memory::Skip => Vec::new(),
        Memory::Read(before) => {
            let also: Vec<u64> = before
                .iter()
                .flat_map(|b| &b.memory)
                .filter(|v| v.source == Source::Pagemap)
                .flat_map(|v| v.pages.iter().map(|&(addr, _)| addr))
                .collect();
            memory::digest_with(pid, &normalised, &masks, also)?
        }
    };
    Ok(VisibleState {
        pid: pid.as_raw(),
        status,
        thread_status,
        cwd,
        root,
        fds,
        maps: maps::canonical(&normalised),
        vmflags: vmflags::normalise(vmflags),
        attrs,
        memory,
        rseq: rseq.to_vec(),
    })
}

/// Freezes `pid` (each thread gets `timeout` to stop), reads its state and
/// unfreezes it. A task that was group-stopped stays stopped.
pub fn capture(pid: Pid, timeout: Duration) -> Result<VisibleState, CaptureError> {
    capture_with(pid, timeout, Memory::Read(None))
}

/// [`capture`], reading memory as [`read_with`] does.
pub fn capture_with(
    pid: Pid,
    timeout: Duration,
    memory: Memory<'_>,
) -> Result<VisibleState, CaptureError> {
    let frozen = Frozen::freeze(pid, timeout)?;
    let state = read_with(pid, frozen.threads(), &frozen.rseq(), memory);
    frozen.release()?;
    state
}

impl VisibleState {
    /// A human-readable dump, written next to the images (`state-before.txt`,
    /// `state-after.txt`) to diff by hand.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# zdtm visible state of pid {}", self.pid);
        let _ = writeln!(out, "[status]");
        for (k, v) in &self.status {
            let _ = writeln!(out, "{k}: {v}");
        }
        for (tid, fields) in &self.thread_status {
            let _ = writeln!(out, "[status of thread {tid}]");
            for (k, v) in fields {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
        let _ = writeln!(out, "[cwd]\n{}\n[root]\n{}", self.cwd, self.root);
        let _ = writeln!(out, "[fds]");
        for fd in &self.fds {
            let _ = writeln!(out, "{fd}");
        }
        let _ = writeln!(out, "[maps]");
        for m in &self.maps {
            let _ = writeln!(out, "{m}");
        }
        let _ = writeln!(out, "[vmflags]");
        for v in &self.vmflags {
            let _ = writeln!(out, "{v}");
        }
        let a = &self.attrs;
        let _ = writeln!(
            out,
            "[attrs]\npersonality: {}\noom_score_adj: {}\ntimerslack_ns: {}",
            a.personality, a.oom_score_adj, a.timerslack_ns
        );
        let _ = writeln!(out, "[rlimits]");
        for l in &a.rlimits {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "[sched]");
        for t in &a.sched {
            let _ = writeln!(out, "{t}");
        }
        let _ = writeln!(out, "[timers]");
        for t in &a.timers {
            let _ = writeln!(out, "{t}");
        }
        let _ = writeln!(out, "[rseq]");
        for r in &self.rseq {
            let _ = writeln!(out, "{}", diff::describe_rseq(r));
        }
        let _ = writeln!(out, "[memory]");
        for v in &self.memory {
            let _ = writeln!(
                out,
                "{:x}-{:x} {} {} {} nonzero_pages={} digest={:016x}",
                v.start,
                v.end,
                v.perms,
                if v.path.is_empty() { "[anon]" } else { &v.path },
                match v.source {
                    Source::Pagemap => "pagemap",
                    Source::Whole => "whole",
                },
                v.pages.len(),
                v.digest
            );
        }
        out
    }
}
