//! Pipes with buffered data.
//!
//! - `full`: both ends held, 3000 bytes buffered, capacity set to 128 KiB;
//! - `reader`: only the read end held, 500 bytes buffered, write end closed:
//!   after restore read gives the bytes, then EOF;
//! - `writer`: only the write end held, read end closed: with SIGPIPE
//!   ignored, write fails with EPIPE;
//! - `nonblock`: pipe2(O_NONBLOCK), both ends, 100 bytes buffered: after
//!   restore both ends are O_NONBLOCK and an empty read gives EAGAIN.
//!
//! After restore the fd numbers, FIONREAD counts, F_GETFL flags and pipe
//! capacities are unchanged, the data reads back exactly, ends of one pipe
//! share an inode and different pipes do not (pipefs inode numbers
//! themselves may change), and the pipes still carry new data.

use zdtm::{ensure, ensure_eq, TestResult};
use zdtm_tests::{
    close, fcntl_get, fd_path, pattern_bytes, pipe2, read_exact, read_some, write_all,
};

const FULL_LEN: usize = 3000;
const FULL_CAP: i32 = 128 << 10;
const READER_LEN: usize = 500;
const NONBLOCK_LEN: usize = 100;

/// (fd, kind ("pipe"), F_GETFL, F_GETPIPE_SZ, FIONREAD) of a pipe fd.
type PipeInfo = (i32, String, i32, i32, i32);

struct State {
    full: (i32, i32),
    reader: i32,
    writer: i32,
    nonblock: (i32, i32),
    infos: Vec<PipeInfo>,
    table: Vec<(i32, String)>,
}

fn infos(s: &State) -> TestResult<Vec<PipeInfo>> {
    let fds = [
        s.full.0,
        s.full.1,
        s.reader,
        s.writer,
        s.nonblock.0,
        s.nonblock.1,
    ];
    fds.iter()
        .map(|&fd| {
            Ok((
                fd,
                fd_path(fd)?
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                fcntl_get(fd, libc::F_GETFL)?,
                fcntl_get(fd, libc::F_GETPIPE_SZ)?,
                // FIONREAD works on the write end too (same pipe buffer).
                zdtm_tests::fionread(fd)?,
            ))
        })
        .collect()
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    // SAFETY: ignoring SIGPIPE (Rust does it too, but be explicit).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let full = pipe2(0)?;
    // SAFETY: F_SETPIPE_SZ takes an int argument.
    if unsafe { libc::fcntl(full.1, libc::F_SETPIPE_SZ, FULL_CAP) } < FULL_CAP {
        return Err(zdtm::os_err("F_SETPIPE_SZ"));
    }
    write_all(full.1, &pattern_bytes(1, 0, FULL_LEN))?;

    let (reader, w) = pipe2(0)?;
    write_all(w, &pattern_bytes(2, 0, READER_LEN))?;
    close(w)?;

    let (r, writer) = pipe2(0)?;
    close(r)?;

    let nonblock = pipe2(libc::O_NONBLOCK)?;
    write_all(nonblock.1, &pattern_bytes(3, 0, NONBLOCK_LEN))?;

    let mut s = State {
        full,
        reader,
        writer,
        nonblock,
        infos: Vec::new(),
        table: zdtm_tests::fd_table_without_inodes()?,
    };
    s.infos = infos(&s)?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    ensure_eq!(zdtm_tests::fd_table_without_inodes()?, s.table, "fd table");
    ensure_eq!(
        infos(&s)?,
        s.infos,
        "pipe fds (fd, path, flags, capacity, FIONREAD)"
    );
    let ino = fd_path;
    ensure_eq!(ino(s.full.0)?, ino(s.full.1)?, "ends of the full pipe");
    ensure_eq!(
        ino(s.nonblock.0)?,
        ino(s.nonblock.1)?,
        "ends of the nonblock pipe"
    );
    let mut all = vec![
        ino(s.full.0)?,
        ino(s.reader)?,
        ino(s.writer)?,
        ino(s.nonblock.0)?,
    ];
    all.sort();
    all.dedup();
    ensure_eq!(all.len(), 4, "distinct pipes");
    for (fd, flags) in [
        (s.full.0, libc::O_RDONLY),
        (s.full.1, libc::O_WRONLY),
        (s.reader, libc::O_RDONLY),
        (s.writer, libc::O_WRONLY),
        (s.nonblock.0, libc::O_RDONLY | libc::O_NONBLOCK),
        (s.nonblock.1, libc::O_WRONLY | libc::O_NONBLOCK),
    ] {
        let got = fcntl_get(fd, libc::F_GETFL)? & (libc::O_ACCMODE | libc::O_NONBLOCK);
        ensure_eq!(got, flags, "flags of fd {fd}");
    }
    ensure_eq!(
        fcntl_get(s.full.0, libc::F_GETPIPE_SZ)?,
        FULL_CAP,
        "capacity"
    );

    // full: exact data, then still a working pipe.
    ensure_eq!(
        zdtm_tests::fionread(s.full.0)?,
        FULL_LEN as i32,
        "bytes in the full pipe"
    );
    zdtm_tests::diff_bytes(
        "full pipe data",
        &read_exact(s.full.0, FULL_LEN)?,
        &pattern_bytes(1, 0, FULL_LEN),
    )?;
    write_all(s.full.1, b"after")?;
    ensure_eq!(
        read_exact(s.full.0, 5)?,
        b"after".to_vec(),
        "new data through the full pipe"
    );

    // reader: the data, then EOF.
    ensure_eq!(
        zdtm_tests::fionread(s.reader)?,
        READER_LEN as i32,
        "bytes in the reader pipe"
    );
    zdtm_tests::diff_bytes(
        "reader pipe data",
        &read_exact(s.reader, READER_LEN)?,
        &pattern_bytes(2, 0, READER_LEN),
    )?;
    ensure_eq!(
        read_some(s.reader, 16)?.len(),
        0,
        "read after the data (EOF)"
    );

    // writer: EPIPE.
    // SAFETY: writing one byte from a valid buffer.
    let n = unsafe { libc::write(s.writer, b"x".as_ptr().cast(), 1) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EPIPE,
        "write to a pipe without readers: {n}, {}",
        std::io::Error::last_os_error()
    );

    // nonblock: data, then EAGAIN.
    zdtm_tests::diff_bytes(
        "nonblock pipe data",
        &read_exact(s.nonblock.0, NONBLOCK_LEN)?,
        &pattern_bytes(3, 0, NONBLOCK_LEN),
    )?;
    let mut b = [0u8; 8];
    // SAFETY: reading into a valid buffer.
    let n = unsafe { libc::read(s.nonblock.0, b.as_mut_ptr().cast(), b.len()) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EAGAIN,
        "read from an empty O_NONBLOCK pipe: {n}, {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
