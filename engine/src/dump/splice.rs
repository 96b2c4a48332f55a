//! Splice-mode pre-dumps: while the task is frozen, its own dirty pages
//! are pinned into pipes with vmsplice (references, no copy); once it runs
//! again the engine splices the pipes into the pages file.
//!
//! vmsplice works on the calling task's memory, so the pipes are created
//! and filled by injected syscalls, then taken over with pidfd_getfd and
//! closed in the task. A pipe holds at most pipe-max-size (1 MiB here:
//! raising it needs CAP_SYS_RESOURCE), so a pre-dump holds one pipe per
//! MiB until it has written them out.
//!
//! Pages written by the task after it is let go change the pinned data
//! too (vmsplice shares the pages), which is harmless: the tracker reports
//! those pages written, so the next dump stores them again.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use libc::pid_t;

use super::mem::Run;
use super::Frozen;
use crate::error::{Error, Result};
use crate::inject::Injector;
use crate::pageio::PageSink;
use crate::sys::syscalls::{pidfd_getfd, prlimit};

const PAGE: u64 = 4096;
const SCRATCH: u64 = 64 * 1024;
/// Offset of the iovec array in the scratch area (pipe2 writes at 0).
const IOV_OFF: u64 = 4096;
const MAX_IOVS: usize = ((SCRATCH - IOV_OFF) / 16) as usize;
const RLIMIT_NOFILE: u32 = 7;

/// Page data held between the freeze and the write-out, in run order.
pub(crate) enum Chunk {
    /// A pipe holding this many bytes of pinned pages.
    Pipe(OwnedFd, usize),
    /// Pages the task cannot read itself (PROT_NONE), copied while frozen.
    Bytes(Vec<u8>),
}

fn pipe_size() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
        .max(PAGE)
}

/// Pins the data runs of `runs` into pipes (or copies unreadable ones),
/// while the task is frozen.
pub(crate) fn pin(
    frozen: &mut Frozen,
    gadget: u64,
    pidfd: &OwnedFd,
    runs: &[Run],
) -> Result<Vec<Chunk>> {
    let pid = frozen.tracee.pid;
    let cap = pipe_size();
    let bytes: u64 = runs
        .iter()
        .filter(|r| !r.in_parent && r.readable)
        .map(|r| r.pages * PAGE)
        .sum();
    let pipes_needed = bytes.div_ceil(cap) + 8;
    // The engine holds every pipe until the write-out.
    let (soft, hard) = prlimit(0, RLIMIT_NOFILE, None)?;
    if soft < pipes_needed + 64 {
        prlimit(0, RLIMIT_NOFILE, Some((hard, hard)))?;
        if hard < pipes_needed + 64 {
            return Err(Error::Other(format!(
                "splice mode needs {pipes_needed} pipes of {} KiB for {} MiB, more than RLIMIT_NOFILE ({hard}) allows: use --pre-dump-mode read",
                cap / 1024,
                bytes >> 20
            )));
        }
    }
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| Error::io("opening", &mem_path, e))?;
    // Each pipe is one burst of injected calls, with its own scratch area:
    // between pipes the task is parked in its own registers and mask.
    let mut chunks = Vec::new();
    let mut batch: Vec<(u64, u64)> = Vec::new();
    let mut batch_bytes = 0u64;
    let flush = |frozen: &mut Frozen, batch: &mut Vec<(u64, u64)>, bytes: &mut u64| {
        if batch.is_empty() {
            return Ok::<_, Error>(None);
        }
        let fd = frozen.burst(gadget, |inj| {
            inj.map_scratch(None, SCRATCH)?;
            one_pipe(inj, pidfd, cap, batch, *bytes)
        })?;
        let chunk = match fd {
            Some(fd) => Chunk::Pipe(fd, *bytes as usize),
            None => Chunk::Bytes(copy_batch(&mem, &mem_path, batch, *bytes)?),
        };
        batch.clear();
        *bytes = 0;
        Ok(Some(chunk))
    };
    for r in runs.iter().filter(|r| !r.in_parent) {
        if !r.readable {
            chunks.extend(flush(frozen, &mut batch, &mut batch_bytes)?);
            let mut buf = vec![0u8; (r.pages * PAGE) as usize];
            mem.read_exact_at(&mut buf, r.vaddr).map_err(|e| {
                Error::io(
                    "reading memory through",
                    format!("{mem_path} at {:#x}", r.vaddr),
                    e,
                )
            })?;
            chunks.push(Chunk::Bytes(buf));
            continue;
        }
        let (mut addr, mut left) = (r.vaddr, r.pages * PAGE);
        while left > 0 {
            let n = left.min(cap - batch_bytes);
            batch.push((addr, n));
            batch_bytes += n;
            addr += n;
            left -= n;
            if batch_bytes == cap || batch.len() == MAX_IOVS {
                chunks.extend(flush(frozen, &mut batch, &mut batch_bytes)?);
            }
        }
    }
    chunks.extend(flush(frozen, &mut batch, &mut batch_bytes)?);
    Ok(chunks)
}

/// Copies a batch the task could not pin (see [`fill`]) while frozen.
fn copy_batch(mem: &File, mem_path: &str, batch: &[(u64, u64)], bytes: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; bytes as usize];
    let mut at = 0usize;
    for &(addr, len) in batch {
        let end = at + len as usize;
        mem.read_exact_at(&mut buf[at..end], addr).map_err(|e| {
            Error::io(
                "reading memory through",
                format!("{mem_path} at {addr:#x}"),
                e,
            )
        })?;
        at = end;
    }
    Ok(buf)
}

/// One pipe: created in the task, grown, filled with vmsplice, taken over,
/// and closed in the task again, all in one burst. None: the task may
/// not grow a pipe to `cap` (see [`fill`]); the caller copies the batch.
fn one_pipe(
    inj: &mut Injector,
    pidfd: &OwnedFd,
    cap: u64,
    batch: &[(u64, u64)],
    bytes: u64,
) -> Result<Option<OwnedFd>> {
    let (r, w) = inj.pipe2(libc::O_CLOEXEC)?;
    let filled = fill(inj, pidfd, cap, batch, bytes, r, w);
    let closed_r = inj.call("close", libc::SYS_close, &[r]);
    let closed_w = inj.call("close", libc::SYS_close, &[w]);
    let fd = filled?;
    closed_r?;
    closed_w?;
    inj.unmap_scratch()?;
    Ok(fd)
}

/// vmsplices the batch into the task's pipe `w` and takes its read end `r`.
///
/// The pipe is the task's, so its size counts against the task's user:
/// a task without CAP_SYS_RESOURCE whose user already holds more pipe
/// buffers than /proc/sys/fs/pipe-user-pages-soft (every process of that
/// uid counts: another pre-dump in splice mode pins hundreds of MiB in
/// pipes) may not grow one (EPERM), and vmsplice into the small pipe it
/// got would block. Then None: the batch is copied instead.
fn fill(
    inj: &mut Injector,
    pidfd: &OwnedFd,
    cap: u64,
    batch: &[(u64, u64)],
    bytes: u64,
    r: u64,
    w: u64,
) -> Result<Option<OwnedFd>> {
    let pid = inj.pid();
    let grown = inj.raw(libc::SYS_fcntl, &[w, libc::F_SETPIPE_SZ as u64, cap])?;
    if grown == -(libc::EPERM as i64) {
        return Ok(None);
    }
    if crate::inject::failed(grown) {
        let e = nix::errno::Errno::from_raw(-grown as i32);
        return Err(Error::sys("injected fcntl(F_SETPIPE_SZ)", pid, e));
    }
    let iovs: Vec<u8> = batch
        .iter()
        .flat_map(|&(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes()))
        .collect();
    let ptr = inj.put(IOV_OFF, &iovs)?;
    let mut done = 0u64;
    while done < bytes {
        // vmsplice takes the array again from where it stopped.
        let (mut skip, mut idx) = (done, 0usize);
        while skip >= batch[idx].1 {
            skip -= batch[idx].1;
            idx += 1;
        }
        let first = (batch[idx].0 + skip, batch[idx].1 - skip);
        inj.put(
            IOV_OFF + idx as u64 * 16,
            &[first.0.to_le_bytes(), first.1.to_le_bytes()].concat(),
        )?;
        let n = inj.call(
            "vmsplice",
            libc::SYS_vmsplice,
            &[w, ptr + idx as u64 * 16, (batch.len() - idx) as u64, 0],
        )?;
        if n == 0 {
            return Err(Error::task(pid, "vmsplice made no progress"));
        }
        done += n;
    }
    pidfd_getfd(pidfd, pid, r as i32).map(Some)
}

/// Writes the chunks, in order, into the page sink (pipes are spliced:
/// the data never passes through the engine); returns bytes written.
pub(crate) fn drain(pid: pid_t, chunks: Vec<Chunk>, out: &mut dyn PageSink) -> Result<u64> {
    let mut total = 0u64;
    for c in chunks {
        match c {
            Chunk::Bytes(b) => {
                out.write(&b)?;
                total += b.len() as u64;
            }
            Chunk::Pipe(fd, len) => {
                out.splice_from(fd.as_fd(), len)
                    .map_err(|e| Error::task(pid, format!("writing pinned pages: {e}")))?;
                total += len as u64;
            }
        }
    }
    Ok(total)
}
