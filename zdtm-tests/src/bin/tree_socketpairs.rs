//! Unix socket pairs between a parent (the test) and its child A, made
//! before the fork: the test keeps end 0 of each, A end 1.
//!
//! - stream: 20,000 bytes in flight towards A, 30,000 towards the test;
//! - dgram: an empty datagram and a 7-byte one towards A, three (one empty)
//!   towards the test;
//! - seqpacket: two records towards A, whose end is shut down for writing;
//! - a second stream pair whose end 0 both hold (one open file
//!   description): A sets O_NONBLOCK on it, the test queues "shared" at it.
//!
//! A watches its stream end with an epoll instance of its own
//! (level-triggered); an instance the test made before the fork, which
//! both hold, watches the test's stream end. After restore the
//! test's fd table and flags are unchanged (O_NONBLOCK on the shared end
//! included); A, woken by SIGUSR1, finds its end reported readable by
//! its epoll and the test's end by the shared one, reads every byte, datagram (boundaries, empty ones) and record,
//! cannot send on its shut-down end, reads "shared" off the shared end and
//! sends "bye"; the test reads what A sent, "bye" included, end of file on
//! the seqpacket, and finds the shared end empty (A read it: one socket).
//! Both find the test named as the pairs' maker (SO_PEERCRED).

use zdtm::{ensure, ensure_eq, TestResult};
use zdtm_tests::tree;
use zdtm_tests::{close, fcntl_get, pattern_bytes, pipe2, read_exact, write_all};
use zdtm_tests::{recv_dontwait, send_dontwait, socketpair};

const TO_A: usize = 20_000;
const TO_TEST: usize = 30_000;
const DGRAMS_TO_A: [usize; 2] = [0, 7];
const DGRAMS_TO_TEST: [usize; 3] = [5, 0, 300];
const RECORDS_TO_A: [usize; 2] = [11, 1000];
const EPOLL_DATA: u64 = 0x5eed;
const SHARED_EPOLL_DATA: u64 = 0xabc;

struct State {
    a: i32,
    shared_ep: i32,
    stream: i32,
    dgram: i32,
    seqpacket: i32,
    shared: i32,
    table: Vec<(i32, String)>,
    flags: Vec<i32>,
}

/// The pid SO_PEERCRED gives for `fd`: the process that made the pair.
fn peer_pid(fd: i32) -> TestResult<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes one ucred into valid storage.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(zdtm::os_err("getsockopt(SO_PEERCRED)"));
    }
    Ok(cred.pid)
}

fn ends(s: &State) -> [i32; 4] {
    [s.stream, s.dgram, s.seqpacket, s.shared]
}

/// The events `ep` reports now: (events, data) of each.
fn ready_now(ep: i32) -> Vec<(u32, u64)> {
    let mut got = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: room for four events, no waiting.
    let n = unsafe { libc::epoll_wait(ep, got.as_mut_ptr(), 4, 0) };
    got[..n.max(0) as usize]
        .iter()
        .map(|e| (e.events, e.u64))
        .collect()
}

/// Child A: its ends, `ready` closed once it is set up; `shared_ep` the
/// test's epoll instance.
fn child(
    (stream, dgram, seqpacket, shared): (i32, i32, i32, i32),
    shared_ep: i32,
    ready: i32,
) -> TestResult {
    for (i, &len) in DGRAMS_TO_TEST.iter().enumerate() {
        send_dontwait(dgram, &pattern_bytes(20 + i as u64, 0, len))?;
    }
    for chunk in pattern_bytes(1, 0, TO_TEST).chunks(10_000) {
        write_all(stream, chunk)?;
    }
    // SAFETY: shutdown and fcntl on our own sockets.
    unsafe {
        if libc::shutdown(seqpacket, libc::SHUT_WR) != 0 {
            return Err(zdtm::os_err("shutdown"));
        }
        if libc::fcntl(shared, libc::F_SETFL, libc::O_NONBLOCK) != 0 {
            return Err(zdtm::os_err("F_SETFL"));
        }
    }
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: EPOLL_DATA,
    };
    // SAFETY: a valid event for our own epoll instance and socket.
    if ep < 0 || unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, stream, &mut ev) } != 0 {
        return Err(zdtm::os_err("epoll"));
    }
    close(ready)?;
    tree::wait_go();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    ensure_eq!(peer_pid(stream)?, parent, "SO_PEERCRED pid of A's end");

    let readable = |want: u64| {
        move |got: &[(u32, u64)]| {
            got.len() == 1 && got[0].1 == want && got[0].0 & libc::EPOLLIN as u32 != 0
        }
    };
    let got = ready_now(ep);
    ensure!(readable(EPOLL_DATA)(&got), "A's epoll_wait: {got:x?}");
    // What A sent waits at the test's end, which the shared one watches.
    let got = ready_now(shared_ep);
    ensure!(
        readable(SHARED_EPOLL_DATA)(&got),
        "A's epoll_wait on the shared instance: {got:x?}"
    );
    zdtm_tests::diff_bytes(
        "stream towards A",
        &read_exact(stream, TO_A)?,
        &pattern_bytes(2, 0, TO_A),
    )?;
    for (i, &len) in DGRAMS_TO_A.iter().enumerate() {
        zdtm_tests::diff_bytes(
            &format!("datagram {i} towards A"),
            &recv_dontwait(dgram, 65536)?,
            &pattern_bytes(10 + i as u64, 0, len),
        )?;
    }
    for (i, &len) in RECORDS_TO_A.iter().enumerate() {
        zdtm_tests::diff_bytes(
            &format!("record {i} towards A"),
            &recv_dontwait(seqpacket, 4096)?,
            &pattern_bytes(30 + i as u64, 0, len),
        )?;
    }
    // SAFETY: sending one byte from a valid buffer.
    let n = unsafe { libc::send(seqpacket, b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EPIPE,
        "send on A's SHUT_WR end: {n}"
    );
    ensure_eq!(
        recv_dontwait(shared, 64)?,
        b"shared".to_vec(),
        "what A read off the shared end"
    );
    write_all(stream, b"bye")
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    tree::prepare()?;
    // SAFETY: ignoring SIGPIPE: a shut-down end's send must give EPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let stream = socketpair(libc::SOCK_STREAM)?;
    let dgram = socketpair(libc::SOCK_DGRAM)?;
    let seqpacket = socketpair(libc::SOCK_SEQPACKET)?;
    let shared = socketpair(libc::SOCK_STREAM)?;
    // SAFETY: epoll_create1 has no preconditions.
    let shared_ep = unsafe { libc::epoll_create1(0) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: SHARED_EPOLL_DATA,
    };
    // SAFETY: a valid event for our own epoll instance and socket.
    let added = unsafe { libc::epoll_ctl(shared_ep, libc::EPOLL_CTL_ADD, stream.0, &mut ev) };
    if shared_ep < 0 || added != 0 {
        return Err(zdtm::os_err("shared epoll"));
    }
    let (rd, wr) = pipe2(libc::O_CLOEXEC)?;
    let a = tree::fork(|| {
        for fd in [stream.0, dgram.0, seqpacket.0, shared.1, rd] {
            close(fd)?;
        }
        child((stream.1, dgram.1, seqpacket.1, shared.0), shared_ep, wr)
    })?;
    for fd in [stream.1, dgram.1, seqpacket.1, wr] {
        close(fd)?;
    }
    for (i, &len) in DGRAMS_TO_A.iter().enumerate() {
        send_dontwait(dgram.0, &pattern_bytes(10 + i as u64, 0, len))?;
    }
    for (i, &len) in RECORDS_TO_A.iter().enumerate() {
        send_dontwait(seqpacket.0, &pattern_bytes(30 + i as u64, 0, len))?;
    }
    write_all(stream.0, &pattern_bytes(2, 0, TO_A))?;
    write_all(shared.1, b"shared")?;
    tree::wait_eof(rd)?;
    let mut s = State {
        a,
        shared_ep,
        stream: stream.0,
        dgram: dgram.0,
        seqpacket: seqpacket.0,
        shared: shared.0,
        table: zdtm_tests::fd_table_without_inodes()?,
        flags: Vec::new(),
    };
    s.flags = ends(&s)
        .iter()
        .map(|&fd| fcntl_get(fd, libc::F_GETFL))
        .collect::<TestResult<_>>()?;
    ensure!(
        s.flags[3] & libc::O_NONBLOCK != 0,
        "A's O_NONBLOCK not seen on the shared end"
    );
    Ok(s)
}

fn check(s: State) -> TestResult {
    ensure_eq!(zdtm_tests::fd_table_without_inodes()?, s.table, "fd table");
    let flags: Vec<i32> = ends(&s)
        .iter()
        .map(|&fd| fcntl_get(fd, libc::F_GETFL))
        .collect::<TestResult<_>>()?;
    ensure_eq!(flags, s.flags, "F_GETFL of every end");
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    for fd in ends(&s) {
        ensure_eq!(peer_pid(fd)?, me, "SO_PEERCRED pid of fd {fd}");
    }
    // SAFETY: kill of our own child.
    unsafe { libc::kill(s.a, libc::SIGUSR1) };
    tree::reap(s.a, 0, "A")?;
    let got = ready_now(s.shared_ep);
    ensure!(
        got.len() == 1 && got[0].1 == SHARED_EPOLL_DATA,
        "the test's epoll_wait on the shared instance: {got:x?}"
    );
    zdtm_tests::diff_bytes(
        "stream towards the test",
        &read_exact(s.stream, TO_TEST)?,
        &pattern_bytes(1, 0, TO_TEST),
    )?;
    ensure_eq!(read_exact(s.stream, 3)?, b"bye".to_vec(), "A's bye");
    for (i, &len) in DGRAMS_TO_TEST.iter().enumerate() {
        zdtm_tests::diff_bytes(
            &format!("datagram {i} towards the test"),
            &recv_dontwait(s.dgram, 65536)?,
            &pattern_bytes(20 + i as u64, 0, len),
        )?;
    }
    ensure_eq!(
        recv_dontwait(s.seqpacket, 16)?.len(),
        0,
        "end of file after A's SHUT_WR"
    );
    // SAFETY: receiving into a valid buffer.
    let n = unsafe { libc::recv(s.shared, [0u8; 8].as_mut_ptr().cast(), 8, 0) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EAGAIN,
        "the shared end still holds data A read: {n}"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
