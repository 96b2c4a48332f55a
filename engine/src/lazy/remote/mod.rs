//! Remote lazy migration: the source side of post-copy.
//!
//! `crust dump --lazy-pages --address A --port P` writes every image but
//! the pages of lazy-eligible VMAs (pagemap runs flagged PE_LAZY), makes a
//! [`holder::Twin`] that keeps the task's memory after the task is killed,
//! and serves those pages over TCP ([`server`]) to the destination's
//! `crust lazy-pages --page-server`, which reads them through
//! [`client::RemotePageSource`] (a [`crate::pageio::PageSource`]). Faults
//! and background transfer use separate connections. A dropped connection
//! is retried by the client; if no client is connected for
//! `--lazy-timeout` seconds, the source writes the pages it holds into the
//! image directory (which then restores without --lazy-pages) and exits.
//! See docs/architecture.md ("Remote lazy migration").

pub mod client;
pub mod holder;
pub mod protocol;
pub mod server;

use std::os::fd::AsRawFd;
use std::time::Duration;

pub use client::RemotePageSource;
pub use protocol::Channel;

/// A dead link is noticed within about this long: unacknowledged data
/// (TCP_USER_TIMEOUT) or keepalive probes unanswered.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// Sets the options both ends use on every connection: no Nagle delay
/// (a fault's reply goes out at once), keepalive probes every second
/// after one idle second, and TCP_USER_TIMEOUT, so a cut link is an
/// error within LINK_TIMEOUT instead of the kernel's ~15 minutes.
pub fn tune(sock: &impl AsRawFd) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    let set = |level: i32, opt: i32, v: i32| -> std::io::Result<()> {
        // SAFETY: setsockopt with a pointer to a live int of ours and its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                &v as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        match r {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2)?;
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        LINK_TIMEOUT.as_millis() as i32,
    )?;
    Ok(())
}

/// A page-aligned buffer with room for a frame head just before its data,
/// so a DATA frame leaves in one write and process_vm_readv copies into
/// page-aligned memory (about three times faster here than unaligned).
pub(crate) struct FrameBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: uniquely owned anonymous memory, like a Vec<u8>.
unsafe impl Send for FrameBuf {}

/// Bytes before the data: one page, of which the frame head uses the end.
const LEAD: usize = 4096;

impl FrameBuf {
    pub(crate) fn new(data: usize) -> std::io::Result<FrameBuf> {
        let len = LEAD + data;
        // SAFETY: anonymous private mapping, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FrameBuf {
            ptr: p as *mut u8,
            len,
        })
    }

    fn all(&mut self) -> &mut [u8] {
        // SAFETY: ptr maps len bytes, owned by us; &mut self makes it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The data area (page-aligned), `n` bytes.
    pub(crate) fn data(&mut self, n: usize) -> &mut [u8] {
        &mut self.all()[LEAD..LEAD + n]
    }

    /// `head` placed right before the first `n` data bytes, and the whole.
    pub(crate) fn framed(&mut self, head: &[u8], n: usize) -> &[u8] {
        let start = LEAD - head.len();
        let all = self.all();
        all[start..LEAD].copy_from_slice(head);
        &all[start..LEAD + n]
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in new().
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
