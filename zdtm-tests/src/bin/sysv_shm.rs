//! SysV shared memory: segment 1 (IPC_PRIVATE, 16 pages, mode 0640)
//! attached read-write (W) and read-only (R), then IPC_RMID'd while
//! attached; segment 2 (a key made from the pid, 4 pages, 0600) attached
//! once.
//!
//! Each step: a child forked for it writes a page of each segment and
//! exits (no tracker of this process sees that), and this process writes
//! another page of segment 1.
//!
//! After restore: both segments have their shmids (as the kernel shows
//! them in /proc/self/maps too), key, size, mode, removed state and
//! attach counts, and their data; W and R are still one segment (a write
//! through W shows through R). Segment 2 is removed at the end.

use zdtm::mem::page_size;
use zdtm::{ensure, ensure_eq, os_err, TestResult};
use zdtm_tests::{check_pages, fill_page};

const PAGES1: usize = 16;
const PAGES2: usize = 4;

struct State {
    shm1: i32,
    shm2: i32,
    key2: i32,
    w: usize,
    r: usize,
    s2: usize,
    seeds1: Vec<u64>,
    seeds2: Vec<u64>,
}

fn fill(addr: usize, page: usize, seed: u64) {
    fill_page(addr + page * page_size(), seed, (page * page_size()) as u64);
}

fn check_seg(what: &str, addr: usize, seeds: &[u64]) -> TestResult {
    check_pages(what, addr, seeds, &[])
}

fn attach(id: i32, flags: i32) -> TestResult<usize> {
    // SAFETY: the kernel picks a free address.
    let a = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    ensure!(a as isize != -1, "{}", os_err("shmat"));
    Ok(a as usize)
}

fn stat(id: i32) -> TestResult<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT fills our buffer.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    ensure!(r == 0, "{}", os_err(&format!("IPC_STAT {id}")));
    Ok(ds)
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let ps = page_size();
    // SAFETY: shmget takes plain integers.
    let shm1 = unsafe { libc::shmget(libc::IPC_PRIVATE, PAGES1 * ps, libc::IPC_CREAT | 0o640) };
    ensure!(shm1 >= 0, "{}", os_err("shmget 1"));
    let w = attach(shm1, 0)?;
    let r = attach(shm1, libc::SHM_RDONLY)?;
    let mut seeds1 = vec![0u64; PAGES1];
    for (p, s) in seeds1.iter_mut().enumerate().take(12) {
        *s = 1;
        fill(w, p, 1);
    }
    // SAFETY: IPC_RMID takes no buffer.
    let rm = unsafe { libc::shmctl(shm1, libc::IPC_RMID, std::ptr::null_mut()) };
    ensure!(rm == 0, "{}", os_err("IPC_RMID"));
    // SAFETY: getpid cannot fail.
    let key2 = 0x7d00_0000 | (unsafe { libc::getpid() } & 0xff_ffff);
    // SAFETY: as above.
    let shm2 = unsafe { libc::shmget(key2, PAGES2 * ps, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    ensure!(shm2 >= 0, "{}", os_err("shmget 2"));
    let s2 = attach(shm2, 0)?;
    let mut seeds2 = vec![0u64; PAGES2];
    seeds2[1] = 1;
    fill(s2, 1, 1);
    Ok(State {
        shm1,
        shm2,
        key2,
        w,
        r,
        s2,
        seeds1,
        seeds2,
    })
}

fn step(s: &mut State, n: u32) -> TestResult {
    let n = n as usize;
    let (p1, p2) = ((n * 3) % PAGES1, n % PAGES2);
    let seed = ((n as u64) << 8) | 2;
    // SAFETY: single-threaded; the child only writes shared memory and
    // calls _exit.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "{}", os_err("fork"));
    if pid == 0 {
        fill(s.w, p1, seed);
        fill(s.s2, p2, seed);
        // SAFETY: _exit is always safe.
        unsafe { libc::_exit(0) };
    }
    let mut st = 0;
    // SAFETY: our own child.
    let waited = unsafe { libc::waitpid(pid, &mut st, 0) };
    ensure!(waited == pid && st == 0, "child status {st:#x}");
    s.seeds1[p1] = seed;
    s.seeds2[p2] = seed;
    let own = (n * 5 + 1) % PAGES1;
    let own_seed = ((n as u64) << 8) | 4;
    fill(s.w, own, own_seed);
    s.seeds1[own] = own_seed;
    Ok(())
}

/// The shmid /proc/self/maps shows for the attachment at `addr` (the
/// inode of a SysV mapping is its shmid) and its path.
fn mapped_shmid(addr: usize) -> TestResult<(u64, String)> {
    let e = zdtm::maps::find(addr)?.ok_or("attachment vanished")?;
    Ok((e.inode, e.path))
}

fn verify(s: &mut State) -> TestResult {
    let ps = page_size();
    check_seg("segment 1 (W)", s.w, &s.seeds1)?;
    check_seg("segment 1 (R)", s.r, &s.seeds1)?;
    check_seg("segment 2", s.s2, &s.seeds2)?;
    let ds1 = stat(s.shm1)?;
    ensure_eq!(
        (
            ds1.shm_perm.mode as u32 & 0o1777,
            ds1.shm_segsz,
            ds1.shm_nattch,
            ds1.shm_perm.__key
        ),
        (0o1640, PAGES1 * ps, 2, 0),
        "segment 1 (mode with SHM_DEST, size, attachments, key)"
    );
    let ds2 = stat(s.shm2)?;
    ensure_eq!(
        (
            ds2.shm_perm.mode as u32 & 0o1777,
            ds2.shm_segsz,
            ds2.shm_nattch,
            ds2.shm_perm.__key
        ),
        (0o600, PAGES2 * ps, 1, s.key2),
        "segment 2 (mode, size, attachments, key)"
    );
    // SAFETY: shmget takes plain integers.
    let by_key = unsafe { libc::shmget(s.key2, 0, 0) };
    ensure_eq!(by_key, s.shm2, "segment 2 found by its key");
    for (addr, id) in [(s.w, s.shm1), (s.r, s.shm1), (s.s2, s.shm2)] {
        let (inode, path) = mapped_shmid(addr)?;
        ensure_eq!(inode, id as u64, "shmid of the attachment at {addr:#x}");
        ensure!(
            path.starts_with("/SYSV"),
            "attachment at {addr:#x} is {path}"
        );
    }
    // Still one segment behind W and R.
    fill(s.w, 15, 0x55);
    s.seeds1[15] = 0x55;
    check_seg("segment 1 (R) after a write through W", s.r, &s.seeds1)
}

fn check(mut s: State) -> TestResult {
    let r = verify(&mut s);
    // SAFETY: IPC_RMID of our own segment; it goes with our attachment.
    unsafe { libc::shmctl(s.shm2, libc::IPC_RMID, std::ptr::null_mut()) };
    r
}

fn main() {
    zdtm::steps::run_steps(setup, step, check)
}
