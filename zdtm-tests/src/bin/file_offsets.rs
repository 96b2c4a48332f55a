//! Regular file descriptors: numbers, offsets, status and fd flags, shared
//! vs separate open file descriptions.
//!
//! Setup opens files read-only, read-write, write-only with O_APPEND and
//! read-only with O_CLOEXEC|O_NONBLOCK, seeks each to a distinct offset,
//! dup2()s the read-write fd to 100 (shared description), dup3()s the
//! read-only fd to 101 with O_CLOEXEC, opens the read-only file a second
//! time (separate description, other offset), and opens a directory and
//! /dev/null. After restore: the fd table is identical (numbers and paths),
//! each fd has the same offset, F_GETFL, F_GETFD, device and inode; reads
//! continue with the right bytes, dup'ed fds share their offset while the
//! separate description does not, and O_APPEND writes go to the end.

use zdtm::{ensure_eq, procfs, TempDir, TestResult};
use zdtm_tests::{
    close, fcntl_get, fd_path, fstat, lseek, open, pattern_bytes, pread_exact, read_exact, tell,
    write_all,
};

const FILE_LEN: usize = 64 << 10;
const DUP_RW: i32 = 100;
const DUP_RO_CLOEXEC: i32 = 101;

struct Fds {
    ro: i32,
    rw: i32,
    app: i32,
    cloexec: i32,
    ro2: i32,
    dir: i32,
    null: i32,
}

/// (fd, offset, F_GETFL, F_GETFD, path, dev, ino)
type FdInfo = (i32, i64, i32, i32, String, u64, u64);

struct State {
    dir: TempDir,
    fds: Fds,
    table: Vec<(i32, String)>,
    infos: Vec<FdInfo>,
}

impl Fds {
    fn all(&self) -> [i32; 9] {
        [
            self.ro,
            self.rw,
            self.app,
            self.cloexec,
            self.ro2,
            self.dir,
            self.null,
            DUP_RW,
            DUP_RO_CLOEXEC,
        ]
    }
}

fn info(fd: i32) -> TestResult<FdInfo> {
    let st = fstat(fd)?;
    Ok((
        fd,
        tell(fd)?,
        fcntl_get(fd, libc::F_GETFL)?,
        fcntl_get(fd, libc::F_GETFD)?,
        fd_path(fd)?,
        st.st_dev,
        st.st_ino,
    ))
}

fn path(dir: &TempDir, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn dup_to(fd: i32, to: i32, flags: i32) -> TestResult {
    // SAFETY: dup3 onto a number the test does not otherwise use.
    if unsafe { libc::dup3(fd, to, flags) } != to {
        return Err(zdtm::os_err(&format!("dup3({fd}, {to})")));
    }
    Ok(())
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let dir = TempDir::new()?;
    for (name, seed, len) in [
        ("a", 1, FILE_LEN),
        ("b", 2, FILE_LEN),
        ("c.log", 3, 1000),
        ("d", 4, FILE_LEN),
    ] {
        zdtm_tests::create_file(&path(&dir, name), &pattern_bytes(seed, 0, len))?;
    }
    let fds = Fds {
        ro: open(&path(&dir, "a"), libc::O_RDONLY)?,
        rw: open(&path(&dir, "b"), libc::O_RDWR)?,
        app: open(&path(&dir, "c.log"), libc::O_WRONLY | libc::O_APPEND)?,
        cloexec: open(
            &path(&dir, "d"),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )?,
        ro2: open(&path(&dir, "a"), libc::O_RDONLY)?,
        dir: open(
            &dir.path().to_string_lossy(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?,
        null: open("/dev/null", libc::O_WRONLY)?,
    };
    lseek(fds.ro, 1234, libc::SEEK_SET)?;
    lseek(fds.rw, 5000, libc::SEEK_SET)?;
    lseek(fds.app, 100, libc::SEEK_SET)?;
    lseek(fds.cloexec, 7777, libc::SEEK_SET)?;
    lseek(fds.ro2, 333, libc::SEEK_SET)?;
    dup_to(fds.rw, DUP_RW, 0)?;
    dup_to(fds.ro, DUP_RO_CLOEXEC, libc::O_CLOEXEC)?;
    let infos = fds
        .all()
        .iter()
        .map(|&fd| info(fd))
        .collect::<TestResult<_>>()?;
    Ok(State {
        dir,
        fds,
        table: procfs::list_fds()?,
        infos,
    })
}

fn expect_read(fd: i32, len: usize, seed: u64, offset: usize) -> TestResult {
    let got = read_exact(fd, len)?;
    zdtm_tests::diff_bytes(
        &format!("read from fd {fd} at {offset}"),
        &got,
        &pattern_bytes(seed, offset as u64, len),
    )
}

fn check(s: State) -> TestResult {
    let f = &s.fds;
    ensure_eq!(procfs::list_fds()?, s.table, "fd table");
    for (fd, want) in f.all().iter().zip(&s.infos) {
        ensure_eq!(
            info(*fd)?,
            *want,
            "fd {fd} (fd, offset, flags, fdflags, path, dev, ino)"
        );
    }
    // The intended flags.
    let mode = |fd| -> TestResult<i32> {
        Ok(fcntl_get(fd, libc::F_GETFL)? & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK))
    };
    ensure_eq!(mode(f.ro)?, libc::O_RDONLY, "ro flags");
    ensure_eq!(mode(f.rw)?, libc::O_RDWR, "rw flags");
    ensure_eq!(
        mode(f.app)?,
        libc::O_WRONLY | libc::O_APPEND,
        "append flags"
    );
    ensure_eq!(
        mode(f.cloexec)?,
        libc::O_RDONLY | libc::O_NONBLOCK,
        "nonblock flags"
    );
    for fd in f.all() {
        let want = if fd == f.cloexec || fd == DUP_RO_CLOEXEC {
            libc::FD_CLOEXEC
        } else {
            0
        };
        ensure_eq!(fcntl_get(fd, libc::F_GETFD)?, want, "FD_CLOEXEC of fd {fd}");
    }

    // Reads continue where they were; dup'ed fds share the offset.
    expect_read(f.ro, 16, 1, 1234)?;
    ensure_eq!(
        tell(DUP_RO_CLOEXEC)?,
        1250,
        "offset of fd 101 after reading fd ro"
    );
    expect_read(DUP_RO_CLOEXEC, 10, 1, 1250)?;
    ensure_eq!(tell(f.ro)?, 1260, "offset of ro after reading fd 101");
    expect_read(f.ro2, 20, 1, 333)?;
    ensure_eq!(
        tell(f.ro)?,
        1260,
        "offset of ro after reading the other description"
    );
    expect_read(DUP_RW, 10, 2, 5000)?;
    ensure_eq!(tell(f.rw)?, 5010, "offset of rw after reading fd 100");
    expect_read(f.cloexec, 10, 4, 7777)?;

    // Writes: in place for rw, at the end for O_APPEND.
    write_all(f.rw, b"XYZ")?;
    ensure_eq!(
        pread_exact(f.rw, 3, 5010)?,
        b"XYZ".to_vec(),
        "written bytes"
    );
    write_all(f.app, b"tail")?;
    ensure_eq!(tell(f.app)?, 1004, "O_APPEND offset after write");
    let c = std::fs::read(path(&s.dir, "c.log")).map_err(|e| format!("c.log: {e}"))?;
    let mut want = pattern_bytes(3, 0, 1000);
    want.extend_from_slice(b"tail");
    zdtm_tests::diff_bytes("c.log after append", &c, &want)?;
    write_all(f.null, b"x")?;
    ensure_eq!(
        fstat(f.dir)?.st_mode & libc::S_IFMT,
        libc::S_IFDIR,
        "directory fd type"
    );

    for fd in f.all() {
        close(fd)?;
    }
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
