//! Unix socket pairs with data in flight.
//!
//! - `stream`: 50,000 bytes queued towards end 1 (in several sends), 700
//!   towards end 0; end 1 O_NONBLOCK;
//! - `dgram`: five messages queued towards end 1, one of them empty;
//! - `seqpacket`: three records queued towards end 0, end 0 shut down for
//!   writing.
//!
//! After restore the fd numbers, flags, FIONREAD counts and shutdown
//! states are unchanged, every byte and every message boundary reads back
//! exactly, the ends of a pair are still each other's peer (new data goes
//! through both ways), and different pairs are still different sockets.

use zdtm::{ensure, ensure_eq, TestResult};
use zdtm_tests::{fcntl_get, fd_path, pattern_bytes, read_exact, write_all};
use zdtm_tests::{recv_dontwait as recv, send_dontwait as send, socketpair as pair};

const STREAM_TO_1: usize = 50_000;
const STREAM_TO_0: usize = 700;
const DGRAMS: [usize; 5] = [1, 0, 4096, 13, 60_000];
const RECORDS: [usize; 3] = [10, 2000, 1];

struct State {
    stream: (i32, i32),
    dgram: (i32, i32),
    seqpacket: (i32, i32),
    table: Vec<(i32, String)>,
    flags: Vec<i32>,
}

fn all(s: &State) -> [i32; 6] {
    [
        s.stream.0,
        s.stream.1,
        s.dgram.0,
        s.dgram.1,
        s.seqpacket.0,
        s.seqpacket.1,
    ]
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    // SAFETY: ignoring SIGPIPE: the shut-down end's send must give EPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let stream = pair(libc::SOCK_STREAM)?;
    let to1 = pattern_bytes(1, 0, STREAM_TO_1);
    for chunk in to1.chunks(7_000) {
        write_all(stream.0, chunk)?;
    }
    write_all(stream.1, &pattern_bytes(2, 0, STREAM_TO_0))?;
    // SAFETY: F_SETFL with an int argument.
    unsafe { libc::fcntl(stream.1, libc::F_SETFL, libc::O_NONBLOCK) };
    let dgram = pair(libc::SOCK_DGRAM)?;
    for (i, &len) in DGRAMS.iter().enumerate() {
        send(dgram.0, &pattern_bytes(10 + i as u64, 0, len))?;
    }
    let seqpacket = pair(libc::SOCK_SEQPACKET)?;
    for (i, &len) in RECORDS.iter().enumerate() {
        send(seqpacket.1, &pattern_bytes(20 + i as u64, 0, len))?;
    }
    // SAFETY: shutdown on our own socket.
    unsafe { libc::shutdown(seqpacket.0, libc::SHUT_WR) };
    let mut s = State {
        stream,
        dgram,
        seqpacket,
        table: zdtm_tests::fd_table_without_inodes()?,
        flags: Vec::new(),
    };
    s.flags = all(&s)
        .iter()
        .map(|&fd| fcntl_get(fd, libc::F_GETFL))
        .collect::<TestResult<_>>()?;
    Ok(s)
}

fn check(s: State) -> TestResult {
    ensure_eq!(zdtm_tests::fd_table_without_inodes()?, s.table, "fd table");
    let flags: Vec<i32> = all(&s)
        .iter()
        .map(|&fd| fcntl_get(fd, libc::F_GETFL))
        .collect::<TestResult<_>>()?;
    ensure_eq!(flags, s.flags, "F_GETFL of every end");
    let mut inos: Vec<String> = all(&s)
        .iter()
        .map(|&fd| fd_path(fd))
        .collect::<TestResult<_>>()?;
    inos.sort();
    inos.dedup();
    ensure_eq!(inos.len(), 6, "six distinct sockets");

    // stream: every byte, both ways.
    ensure_eq!(
        zdtm_tests::fionread(s.stream.1)?,
        STREAM_TO_1 as i32,
        "bytes queued at stream end 1"
    );
    zdtm_tests::diff_bytes(
        "stream towards end 1",
        &read_exact(s.stream.1, STREAM_TO_1)?,
        &pattern_bytes(1, 0, STREAM_TO_1),
    )?;
    zdtm_tests::diff_bytes(
        "stream towards end 0",
        &read_exact(s.stream.0, STREAM_TO_0)?,
        &pattern_bytes(2, 0, STREAM_TO_0),
    )?;
    // SAFETY: receiving into a valid buffer.
    let n = unsafe { libc::recv(s.stream.1, [0u8; 4].as_mut_ptr().cast(), 4, 0) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EAGAIN,
        "empty O_NONBLOCK stream end read: {n}"
    );
    write_all(s.stream.1, b"back")?;
    ensure_eq!(
        read_exact(s.stream.0, 4)?,
        b"back".to_vec(),
        "new data 1 -> 0"
    );

    // dgram: each message with its own length, the empty one included.
    for (i, &len) in DGRAMS.iter().enumerate() {
        let got = recv(s.dgram.1, 65536)?;
        zdtm_tests::diff_bytes(
            &format!("datagram {i}"),
            &got,
            &pattern_bytes(10 + i as u64, 0, len),
        )?;
    }
    send(s.dgram.1, b"pong")?;
    ensure_eq!(
        recv(s.dgram.0, 64)?,
        b"pong".to_vec(),
        "new datagram 1 -> 0"
    );

    // seqpacket: records, then the shut-down end cannot send.
    for (i, &len) in RECORDS.iter().enumerate() {
        let got = recv(s.seqpacket.0, 4096)?;
        zdtm_tests::diff_bytes(
            &format!("record {i}"),
            &got,
            &pattern_bytes(20 + i as u64, 0, len),
        )?;
    }
    // SAFETY: sending one byte from a valid buffer.
    let n = unsafe { libc::send(s.seqpacket.0, b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    ensure!(
        n == -1 && zdtm::errno() == libc::EPIPE,
        "send on a SHUT_WR end: {n}"
    );
    ensure_eq!(
        recv(s.seqpacket.1, 16)?.len(),
        0,
        "end of file at the peer of a SHUT_WR end"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
