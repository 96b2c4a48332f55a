//! The wire protocol between a lazy dump's page server (the source) and
//! `crust lazy-pages --page-server` (the destination).
//!
//! Every frame starts with a 16-byte header, little endian:
//! `magic u32 | version u16 | type u16 | payload length u32 | reserved u32 (0)`,
//! followed by the payload. Every field of every frame is checked before
//! it is used; anything else is a protocol error (the connection is closed
//! with an ERROR frame), never a panic. See docs/image-format.md.

use std::io::{self, Read, Write};

/// "CZLP" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CZLP");
pub const VERSION: u16 = 1;
pub const HEADER: usize = 16;
/// The largest page range one READ may ask for.
pub const MAX_READ: u64 = 16 << 20;
/// The longest ERROR message.
pub const MAX_ERROR: usize = 4096;
/// Size of a DATA frame's payload before the page bytes.
pub const DATA_HEAD: usize = 16;
const PAGE: u64 = 4096;

/// Which connection a client opens: faults never wait behind bulk data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Faults: small requests, answered at once (TCP_NODELAY).
    Urgent = 1,
    /// Background transfer: large requests.
    Bulk = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Type {
    Hello = 1,
    Welcome = 2,
    Read = 3,
    Data = 4,
    Done = 5,
    DoneAck = 6,
    Error = 7,
}

impl Type {
    fn from_u16(v: u16) -> Option<Type> {
        Some(match v {
            1 => Type::Hello,
            2 => Type::Welcome,
            3 => Type::Read,
            4 => Type::Data,
            5 => Type::Done,
            6 => Type::DoneAck,
            7 => Type::Error,
            _ => return None,
        })
    }
}

/// A frame, decoded and checked. DATA's page bytes are not part of it:
/// the reader takes them straight into the destination buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        channel: Channel,
        image_id: u64,
    },
    Welcome {
        pid: i32,
        lazy_pages: u64,
    },
    Read {
        pid: i32,
        vaddr: u64,
        len: u64,
    },
    /// Followed by `len` bytes of page data.
    Data {
        vaddr: u64,
        len: u64,
    },
    Done,
    DoneAck,
    Error(String),
}

/// Why bytes read from the peer are not a frame.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    Protocol(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

fn proto(msg: impl Into<String>) -> WireError {
    WireError::Protocol(msg.into())
}

/// The header of a frame of type `t` with `len` payload bytes.
pub fn header(t: Type, len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&(t as u16).to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Encodes a frame (for DATA: only its header and vaddr/len; the page
/// bytes follow).
pub fn encode(f: &Frame) -> Vec<u8> {
    let (t, payload): (Type, Vec<u8>) = match f {
        Frame::Hello { channel, image_id } => {
            let mut p = Vec::with_capacity(16);
            p.extend_from_slice(&(*channel as u32).to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&image_id.to_le_bytes());
            (Type::Hello, p)
        }
        Frame::Welcome { pid, lazy_pages } => {
            let mut p = Vec::with_capacity(16);
            p.extend_from_slice(&pid.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&lazy_pages.to_le_bytes());
            (Type::Welcome, p)
        }
        Frame::Read { pid, vaddr, len } => {
            let mut p = Vec::with_capacity(24);
            p.extend_from_slice(&pid.to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&vaddr.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            (Type::Read, p)
        }
        Frame::Data { vaddr, len } => {
            let mut out = header(Type::Data, (DATA_HEAD as u64 + len) as u32).to_vec();
            out.extend_from_slice(&vaddr.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            return out;
        }
        Frame::Done => (Type::Done, Vec::new()),
        Frame::DoneAck => (Type::DoneAck, Vec::new()),
        Frame::Error(m) => {
            let mut b = m.as_bytes().to_vec();
            b.truncate(MAX_ERROR);
            (Type::Error, b)
        }
    };
    let mut out = header(t, payload.len() as u32).to_vec();
    out.extend_from_slice(&payload);
    out
}

pub fn send(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    w.write_all(&encode(f))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks a header; returns the frame type and payload length.
pub fn parse_header(h: &[u8; HEADER]) -> Result<(Type, u32), WireError> {
    let magic = u32_at(h, 0);
    if magic != MAGIC {
        return Err(proto(format!("bad magic {magic:#010x}")));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(proto(format!(
            "version {version}, this crust speaks {VERSION}"
        )));
    }
    let raw = u16::from_le_bytes([h[6], h[7]]);
    let t = Type::from_u16(raw).ok_or_else(|| proto(format!("unknown frame type {raw}")))?;
    let len = u32_at(h, 8);
    if u32_at(h, 12) != 0 {
        return Err(proto("reserved header field is not 0"));
    }
    let ok = match t {
        Type::Hello | Type::Welcome => len == 16,
        Type::Read => len == 24,
        Type::Data => (DATA_HEAD as u64..=DATA_HEAD as u64 + MAX_READ).contains(&(len as u64)),
        Type::Done | Type::DoneAck => len == 0,
        Type::Error => len as usize <= MAX_ERROR,
    };
    if !ok {
        return Err(proto(format!("{t:?} frame with a {len}-byte payload")));
    }
    Ok((t, len))
}

/// Reads one frame. For DATA, only its 16-byte head is read: the caller
/// reads the `len` page bytes that follow.
pub fn recv(r: &mut impl Read) -> Result<Frame, WireError> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h)?;
    let (t, len) = parse_header(&h)?;
    let body_len = if t == Type::Data {
        DATA_HEAD
    } else {
        len as usize
    };
    let mut p = vec![0u8; body_len];
    r.read_exact(&mut p)?;
    decode_body(t, len, &p)
}

fn decode_body(t: Type, len: u32, p: &[u8]) -> Result<Frame, WireError> {
    Ok(match t {
        Type::Hello => {
            let channel = match u32_at(p, 0) {
                1 => Channel::Urgent,
                2 => Channel::Bulk,
                c => return Err(proto(format!("unknown channel {c}"))),
            };
            if u32_at(p, 4) != 0 {
                return Err(proto("reserved HELLO field is not 0"));
            }
            Frame::Hello {
                channel,
                image_id: u64_at(p, 8),
            }
        }
        Type::Welcome => {
            if u32_at(p, 4) != 0 {
                return Err(proto("reserved WELCOME field is not 0"));
            }
            Frame::Welcome {
                pid: u32_at(p, 0) as i32,
                lazy_pages: u64_at(p, 8),
            }
        }
        Type::Read => {
            if u32_at(p, 4) != 0 {
                return Err(proto("reserved READ field is not 0"));
            }
            let (vaddr, rlen) = (u64_at(p, 8), u64_at(p, 16));
            check_range(vaddr, rlen)?;
            Frame::Read {
                pid: u32_at(p, 0) as i32,
                vaddr,
                len: rlen,
            }
        }
        Type::Data => {
            let (vaddr, dlen) = (u64_at(p, 0), u64_at(p, 8));
            if dlen + DATA_HEAD as u64 != len as u64 {
                return Err(proto(format!(
                    "DATA says {dlen} bytes in a {len}-byte payload"
                )));
            }
            check_range(vaddr, dlen)?;
            Frame::Data { vaddr, len: dlen }
        }
        Type::Done => Frame::Done,
        Type::DoneAck => Frame::DoneAck,
        Type::Error => Frame::Error(String::from_utf8_lossy(p).into_owned()),
    })
}

/// A page range: aligned, not empty, at most MAX_READ, not wrapping.
fn check_range(vaddr: u64, len: u64) -> Result<(), WireError> {
    if !vaddr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 || len > MAX_READ {
        return Err(proto(format!(
            "range {vaddr:#x}+{len:#x} is not whole pages, empty or too large"
        )));
    }
    if vaddr.checked_add(len).is_none() {
        return Err(proto(format!("range {vaddr:#x}+{len:#x} wraps")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip() {
        let frames = [
            Frame::Hello {
                channel: Channel::Bulk,
                image_id: 0x1234_5678_9abc,
            },
            Frame::Welcome {
                pid: 4242,
                lazy_pages: 77,
            },
            Frame::Read {
                pid: 4242,
                vaddr: 0x7f00_0000_1000,
                len: 8192,
            },
            Frame::Data {
                vaddr: 0x7f00_0000_1000,
                len: 8192,
            },
            Frame::Done,
            Frame::DoneAck,
            Frame::Error("no".into()),
        ];
        for f in frames {
            let b = encode(&f);
            let got = recv(&mut &b[..]).expect("decode");
            assert_eq!(got, f);
        }
    }

    /// A small deterministic generator (xorshift64*).
    fn next(s: &mut u64) -> u64 {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let good = encode(&Frame::Read {
            pid: 1,
            vaddr: 0x1000,
            len: 4096,
        });
        let mut accepted = 0;
        for _ in 0..20000 {
            let mut b = good.clone();
            // Flip a few random bytes, or cut the frame short.
            for _ in 0..1 + next(&mut seed) % 3 {
                let i = (next(&mut seed) % b.len() as u64) as usize;
                b[i] = next(&mut seed) as u8;
            }
            if next(&mut seed).is_multiple_of(4) {
                b.truncate((next(&mut seed) % b.len() as u64) as usize);
            }
            if recv(&mut &b[..]).is_ok() {
                accepted += 1;
            }
        }
        // Random bytes of a fully random frame.
        for _ in 0..20000 {
            let n = (next(&mut seed) % 64) as usize;
            let b: Vec<u8> = (0..n).map(|_| next(&mut seed) as u8).collect();
            let _ = recv(&mut &b[..]);
        }
        assert!(accepted < 20000);
        let bad = |b: &[u8]| recv(&mut &b[..]).is_err();
        let mut h = good.clone();
        h[0] ^= 1;
        assert!(bad(&h), "magic");
        let mut h = good.clone();
        h[4] = 9;
        assert!(bad(&h), "version");
        let unaligned = encode(&Frame::Read {
            pid: 1,
            vaddr: 0x1001,
            len: 4096,
        });
        assert!(bad(&unaligned));
        let huge = encode(&Frame::Read {
            pid: 1,
            vaddr: 0x1000,
            len: MAX_READ + 4096,
        });
        assert!(bad(&huge));
        let wrap = encode(&Frame::Read {
            pid: 1,
            vaddr: !4095,
            len: 8192,
        });
        assert!(bad(&wrap));
    }
}
