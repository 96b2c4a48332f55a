//! The page-server wire protocol: one TCP connection carries one dump or
//! pre-dump, as frames. Every frame starts with a 16-byte header:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | frame magic `CRPF` |
//! | 4..6 | kind (u16, little endian) |
//! | 6..8 | reserved, 0 |
//! | 8..12 | arg (u32): the task's pid for page frames, else 0 |
//! | 12..16 | payload length (u32) |
//!
//! The client opens with HELLO (protocol magic and version), the server
//! answers HELLO; then the client sends FILE frames (small images) and,
//! per task, PAGES_BEGIN, PAGES_DATA..., PAGES_END; COMMIT carries the
//! inventory and is answered OK once it is written (or ERROR with a
//! message, at any time). docs/image-format.md has the table.

use std::fmt;

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"CRPF";
/// In HELLO's payload: which protocol this is.
pub const PROTO_MAGIC: [u8; 4] = *b"CRPS";
/// Bumped on any incompatible change.
pub const PROTO_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;
/// Largest PAGES_DATA payload.
pub const MAX_DATA: u32 = 16 << 20;
/// Largest FILE or COMMIT payload (as the image reader's bound).
pub const MAX_FILE: u32 = 256 << 20;
/// Largest ERROR payload.
pub const MAX_ERROR: u32 = 64 << 10;
/// Longest image file name in a FILE frame.
pub const MAX_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    Hello = 1,
    File = 2,
    PagesBegin = 3,
    PagesData = 4,
    PagesEnd = 5,
    Commit = 6,
    Ok = 7,
    Error = 8,
}

impl FrameKind {
    pub fn from_u16(v: u16) -> Option<FrameKind> {
        use FrameKind::*;
        [
            Hello, File, PagesBegin, PagesData, PagesEnd, Commit, Ok, Error,
        ]
        .into_iter()
        .find(|k| *k as u16 == v)
    }

    /// The largest payload a frame of this kind may carry.
    pub fn max_len(self) -> u32 {
        match self {
            FrameKind::Hello => 8,
            FrameKind::File | FrameKind::Commit => MAX_FILE,
            FrameKind::PagesBegin | FrameKind::Ok => 0,
            FrameKind::PagesData => MAX_DATA,
            FrameKind::PagesEnd => 8,
            FrameKind::Error => MAX_ERROR,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    pub arg: u32,
    pub len: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Header {
    pub fn new(kind: FrameKind, arg: u32, len: u32) -> Header {
        Header { kind, arg, len }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        h[8..12].copy_from_slice(&self.arg.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Checks magic, kind, reserved bits and the length bound of the kind.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, BadFrame> {
        if b[0..4] != FRAME_MAGIC {
            return Err(BadFrame(format!(
                "bad frame magic {:02x?} (not a crust page-server stream, or out of step)",
                &b[0..4]
            )));
        }
        let kind_raw = u16::from_le_bytes([b[4], b[5]]);
        let kind = FrameKind::from_u16(kind_raw)
            .ok_or_else(|| BadFrame(format!("unknown frame kind {kind_raw}")))?;
        if b[6] != 0 || b[7] != 0 {
            return Err(BadFrame("reserved frame bits set".into()));
        }
        let arg = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if len > kind.max_len() {
            return Err(BadFrame(format!(
                "{kind:?} frame of {len} bytes, over its limit of {}",
                kind.max_len()
            )));
        }
        Ok(Header { kind, arg, len })
    }
}

/// HELLO's payload.
pub fn hello_payload() -> [u8; 8] {
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&PROTO_MAGIC);
    p[4..8].copy_from_slice(&PROTO_VERSION.to_le_bytes());
    p
}

/// Checks HELLO's payload: this protocol, this version.
pub fn check_hello(p: &[u8]) -> Result<(), BadFrame> {
    if p.len() != 8 || p[0..4] != PROTO_MAGIC {
        return Err(BadFrame("HELLO is not a crust page-server hello".into()));
    }
    let v = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    if v != PROTO_VERSION {
        return Err(BadFrame(format!(
            "protocol version {v}, this crust speaks version {PROTO_VERSION}"
        )));
    }
    Ok(())
}

/// FILE's payload: name length (u16), name, image bytes.
pub fn file_payload(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + name.len() + bytes.len());
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(bytes);
    p
}

/// Splits FILE's payload into name and image bytes.
pub fn split_file(p: &[u8]) -> Result<(&str, &[u8]), BadFrame> {
    if p.len() < 2 {
        return Err(BadFrame("FILE frame too short for a name".into()));
    }
    let n = u16::from_le_bytes([p[0], p[1]]) as usize;
    if n == 0 || n > MAX_NAME || p.len() < 2 + n {
        return Err(BadFrame(format!("FILE frame names a file of {n} bytes")));
    }
    let name = std::str::from_utf8(&p[2..2 + n])
        .map_err(|_| BadFrame("FILE frame's name is not UTF-8".into()))?;
    Ok((name, &p[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        for kind in [
            FrameKind::Hello,
            FrameKind::File,
            FrameKind::PagesBegin,
            FrameKind::PagesData,
            FrameKind::PagesEnd,
            FrameKind::Commit,
            FrameKind::Ok,
            FrameKind::Error,
        ] {
            let h = Header::new(kind, 4242, kind.max_len().min(4096));
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Header::new(FrameKind::PagesData, 7, 4096).encode();
        let mut b = good;
        b[0] = b'X';
        assert!(Header::decode(&b).unwrap_err().0.contains("magic"));
        let mut b = good;
        b[4] = 99;
        assert!(Header::decode(&b)
            .unwrap_err()
            .0
            .contains("unknown frame kind"));
        let mut b = good;
        b[7] = 1;
        assert!(Header::decode(&b).unwrap_err().0.contains("reserved"));
        let b = Header::new(FrameKind::PagesData, 7, MAX_DATA + 1).encode();
        assert!(Header::decode(&b).unwrap_err().0.contains("limit"));
        let b = Header::new(FrameKind::Ok, 0, 1).encode();
        assert!(Header::decode(&b).is_err());
        // Arbitrary bytes never panic.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            let mut b = [0u8; HEADER_LEN];
            for c in b.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            if x & 1 == 0 {
                b[0..4].copy_from_slice(&FRAME_MAGIC);
            }
            let _ = Header::decode(&b);
        }
    }

    #[test]
    fn hello_and_file_payloads() {
        assert_eq!(check_hello(&hello_payload()), Ok(()));
        let mut h = hello_payload();
        h[4] = 2;
        assert!(check_hello(&h).unwrap_err().0.contains("version 2"));
        assert!(check_hello(&h[..4]).is_err());
        let p = file_payload("mm-12.img", b"data");
        assert_eq!(split_file(&p), Ok(("mm-12.img", &b"data"[..])));
        assert!(split_file(&p[..5]).is_err());
        assert!(split_file(&[0, 0]).is_err());
        assert!(split_file(&[1]).is_err());
    }
}
