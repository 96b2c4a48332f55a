//! memfd and SysV shared memory, as the engine itself uses them (dump:
//! looking at a task's objects from outside; restore: making new ones).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::OnceLock;

use nix::errno::Errno;

pub const F_ADD_SEALS: i32 = 1033;
pub const F_GET_SEALS: i32 = 1034;
pub const MFD_CLOEXEC: u32 = 1;
pub const MFD_ALLOW_SEALING: u32 = 2;
/// Linux 6.3+: executable memfd even under vm.memfd_noexec = 1.
pub const MFD_EXEC: u32 = 0x10;
/// shm_perm.mode bits beyond the permissions.
pub const SHM_DEST: u32 = 0o1000;
pub const SHM_LOCKED: u32 = 0o2000;

/// memfd_create(name, flags) in the engine.
pub fn memfd_create(name: &str, flags: u32) -> std::result::Result<File, Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: name is a valid C string for the call's duration.
    let r = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
    let fd = Errno::result(r)?;
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The device of memfd files (the kernel's internal shmem mount), found by
/// making one: a "/memfd:NAME (deleted)" path on another device is not a
/// memfd of that mount (hugetlbfs memfds, or a real file so named).
pub fn memfd_dev() -> Option<u64> {
    static DEV: OnceLock<Option<u64>> = OnceLock::new();
    *DEV.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let f = memfd_create("crust-probe", MFD_CLOEXEC).ok()?;
        f.metadata().ok().map(|m| m.dev())
    })
}

/// Whether `dev` is the device of a tmpfs mount of the engine's mount
/// namespace (/proc/self/mountinfo: "ID PARENT MAJ:MIN ... - tmpfs ...").
/// Unlinked files there are shmem objects the engine stores whole
/// (`dump::shared`); it is asked only for unlinked files, so the table is
/// read each time (mounts come and go).
pub fn tmpfs_dev(dev: u64) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    text.lines().any(|l| {
        let mut f = l.split(' ');
        let Some(majmin) = f.nth(2) else {
            return false;
        };
        let Some((maj, min)) = majmin.split_once(':') else {
            return false;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else {
            return false;
        };
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        libc::makedev(maj, min) == dev && fstype == Some("tmpfs")
    })
}

/// fcntl(F_GET_SEALS).
pub fn get_seals(f: &File) -> std::result::Result<u32, Errno> {
    // SAFETY: fcntl on a descriptor we own, no pointer argument.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), F_GET_SEALS) };
    Errno::result(r).map(|s| s as u32)
}

/// fcntl(F_ADD_SEALS).
pub fn add_seals(f: &File, seals: u32) -> std::result::Result<(), Errno> {
    // SAFETY: fcntl on a descriptor we own, integer argument.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), F_ADD_SEALS, seals as libc::c_int) };
    Errno::result(r).map(drop)
}

/// The data ranges of a shmem file below `size` (SEEK_DATA / SEEK_HOLE):
/// holes are never read, so they stay holes.
pub fn data_ranges(f: &File, size: u64) -> std::result::Result<Vec<(u64, u64)>, Errno> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on a descriptor we own.
        let d = unsafe { libc::lseek(f.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if d < 0 {
            match Errno::last() {
                Errno::ENXIO => break,
                e => return Err(e),
            }
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        let h = Errno::result(h)? as u64;
        let (d, h) = (d as u64, h.min(size));
        if h > d {
            out.push((d, h));
        }
        at = h.max(d + 1);
    }
    Ok(out)
}

/// What shmctl(IPC_STAT) tells about a segment.
#[derive(Debug, Clone, Copy)]
pub struct ShmStat {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permissions and SHM_DEST / SHM_LOCKED.
    pub mode: u32,
    pub size: u64,
    pub nattch: u64,
}

pub fn shm_stat(shmid: i32) -> std::result::Result<ShmStat, Errno> {
    // SAFETY: shmid_ds is plain data; zeroes are a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds into the buffer we own.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    Errno::result(r)?;
    Ok(ShmStat {
        key: ds.shm_perm.__key,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        cuid: ds.shm_perm.cuid,
        cgid: ds.shm_perm.cgid,
        mode: ds.shm_perm.mode as u32,
        size: ds.shm_segsz as u64,
        nattch: ds.shm_nattch,
    })
}

/// shmctl(IPC_SET): owner and permission bits.
pub fn shm_set(shmid: i32, uid: u32, gid: u32, mode: u32) -> std::result::Result<(), Errno> {
    // SAFETY: shmid_ds is plain data; zeroes are a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads one shmid_ds from the buffer we own.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) };
    Errno::result(r).map(drop)
}

pub fn shm_rmid(shmid: i32) -> std::result::Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    Errno::result(r).map(drop)
}

pub fn shm_get(key: i32, size: u64, flags: i32) -> std::result::Result<i32, Errno> {
    // SAFETY: shmget takes plain integers.
    let r = unsafe { libc::shmget(key, size as usize, flags) };
    Errno::result(r)
}

/// shmget with IPC_CREAT as creator `cuid`/`cgid` (the segment's cuid and
/// cgid are the caller's euid and egid): this thread alone (raw setresuid
/// and setresgid change only the calling thread) takes them for the call
/// and goes back to its own after. Going back needs a real or saved uid of
/// 0 (root), as does leaving them.
pub fn shm_create_as(
    key: i32,
    size: u64,
    flags: i32,
    cuid: u32,
    cgid: u32,
) -> std::result::Result<i32, Errno> {
    // SAFETY: geteuid/getegid only read this thread's credentials.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (cuid, cgid) == (euid, egid) {
        return shm_get(key, size, flags);
    }
    let keep = u32::MAX as libc::c_long;
    // SAFETY: setresgid/setresuid take integers; -1 keeps an id.
    let set = |nr: libc::c_long, id: u32| unsafe {
        Errno::result(libc::syscall(nr, keep, id as libc::c_long, keep)).map(drop)
    };
    set(libc::SYS_setresgid, cgid)?;
    if let Err(e) = set(libc::SYS_setresuid, cuid) {
        set(libc::SYS_setresgid, egid)?;
        return Err(e);
    }
    let r = shm_get(key, size, flags);
    set(libc::SYS_setresuid, euid)?;
    set(libc::SYS_setresgid, egid)?;
    r
}

/// A segment attached in the engine, detached on drop.
pub struct Attached {
    addr: *mut libc::c_void,
    len: usize,
}

impl Attached {
    pub fn new(shmid: i32, len: u64) -> std::result::Result<Attached, Errno> {
        // SAFETY: the kernel picks a free address; nothing of ours is there.
        let addr = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(Errno::last());
        }
        Ok(Attached {
            addr,
            len: len as usize,
        })
    }

    /// Writes `data` at `offset`; false if it does not fit.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Some(end) = (offset as usize).checked_add(data.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: [offset, end) lies inside the segment mapped read-write
        // at addr for len bytes, which only this value refers to.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.addr as *mut u8).add(offset as usize),
                data.len(),
            )
        };
        true
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: addr is our own attachment, used by nothing else.
        unsafe { libc::shmdt(self.addr) };
    }
}

/// flock(LOCK_EX) on a file of ours, released when it is closed.
pub fn lock_exclusive(f: &File) -> std::result::Result<(), Errno> {
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    Errno::result(r).map(drop)
}
