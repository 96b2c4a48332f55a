//! An O_RDWR|O_DIRECT file descriptor in the middle of its file: after
//! restore it names the same file with the same F_GETFL (O_DIRECT
//! included), F_GETFD and offset, and a direct read (aligned buffer,
//! offset and length, as O_DIRECT wants) returns the file's data.
//!
//! Apart from fd_flags: tmpfs takes O_DIRECT only from Linux 6.6, so a
//! kernel whose /tmp refuses it skips this test alone (`needs_kernel`).

use zdtm::{ensure_eq, TempDir, TestResult};
use zdtm_tests::{close, fcntl_get, fd_path, lseek, open, pattern_bytes, tell};

const BLOCK: usize = 4096;
const BLOCKS: usize = 4;

/// (path, F_GETFL, F_GETFD, offset)
type Info = (String, i32, i32, i64);

fn info(fd: i32) -> TestResult<Info> {
    let off = tell(fd)?;
    Ok((
        fd_path(fd)?,
        fcntl_get(fd, libc::F_GETFL)?,
        fcntl_get(fd, libc::F_GETFD)?,
        off,
    ))
}

/// A direct read of block `k` through an aligned buffer.
fn direct_read(fd: i32, k: usize) -> TestResult<Vec<u8>> {
    let layout = std::alloc::Layout::from_size_align(BLOCK, BLOCK).map_err(|e| e.to_string())?;
    // SAFETY: a non-zero-sized layout.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    if buf.is_null() {
        return Err("out of memory".into());
    }
    // SAFETY: buf holds BLOCK bytes, aligned to BLOCK.
    let n = unsafe { libc::pread(fd, buf.cast(), BLOCK, (k * BLOCK) as libc::off_t) };
    let err = std::io::Error::last_os_error();
    // SAFETY: BLOCK initialised bytes at buf.
    let data = unsafe { std::slice::from_raw_parts(buf, BLOCK) }.to_vec();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    if n != BLOCK as isize {
        return Err(format!("direct pread of block {k}: {n} ({err})"));
    }
    Ok(data)
}

struct State {
    dir: TempDir,
    fd: i32,
    info: Info,
    data: Vec<u8>,
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let dir = TempDir::new()?;
    let path = dir.join("direct").to_string_lossy().into_owned();
    let data = pattern_bytes(9, 0, BLOCK * BLOCKS);
    zdtm_tests::create_file(&path, &data)?;
    let fd = open(&path, libc::O_RDWR | libc::O_DIRECT)?;
    lseek(fd, BLOCK as i64, libc::SEEK_SET)?;
    let info = info(fd)?;
    ensure_eq!(
        info.1 & libc::O_DIRECT,
        libc::O_DIRECT,
        "O_DIRECT in F_GETFL before the dump"
    );
    ensure_eq!(
        direct_read(fd, 2)?,
        data[2 * BLOCK..3 * BLOCK].to_vec(),
        "direct read before the dump"
    );
    Ok(State {
        dir,
        fd,
        info,
        data,
    })
}

fn check(s: State) -> TestResult {
    ensure_eq!(
        info(s.fd)?,
        s.info,
        "fd {} (path, F_GETFL, F_GETFD, offset)",
        s.fd
    );
    ensure_eq!(
        direct_read(s.fd, 3)?,
        s.data[3 * BLOCK..].to_vec(),
        "direct read after restore"
    );
    close(s.fd)?;
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
