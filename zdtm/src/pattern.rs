//! Deterministic memory patterns derived from `(seed, address)`.
//!
//! Every aligned 8-byte word at logical address `a` holds [`word`]`(seed,
//! a)` in native (little-endian) byte order, so a byte's value depends only
//! on the seed and its own address: [`byte`]`(seed, a)`. Filling by bytes
//! or by words gives identical memory. The logical address is normally the
//! real address of the byte ([`fill`], [`verify`]); the `_at` variants take
//! an explicit base, e.g. a file offset or the address a region had before
//! it was moved with `mremap`.

use std::fmt;

/// The first byte that did not hold the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Real address of the byte.
    pub addr: usize,
    /// Offset of the byte from the start of the checked buffer.
    pub offset: usize,
    /// Expected value.
    pub expected: u8,
    /// Value found.
    pub found: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mismatch at {:#x} (offset {:#x}): expected {:#04x}, found {:#04x}",
            self.addr, self.offset, self.expected, self.found
        )
    }
}

impl From<Mismatch> for String {
    fn from(m: Mismatch) -> String {
        m.to_string()
    }
}

/// The splitmix64 finaliser: a bijective 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern word for the 8-byte-aligned logical address `addr & !7`.
pub fn word(seed: u64, addr: u64) -> u64 {
    mix((addr & !7) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17))
}

/// The pattern byte for logical address `addr`.
pub fn byte(seed: u64, addr: u64) -> u8 {
    (word(seed, addr) >> ((addr & 7) * 8)) as u8
}

/// Fills `buf` with the pattern for its own address.
pub fn fill(buf: &mut [u8], seed: u64) {
    let base = buf.as_ptr() as u64;
    fill_at(buf, seed, base);
}

/// Fills `buf` with the pattern as if it started at logical address `base`.
pub fn fill_at(buf: &mut [u8], seed: u64, base: u64) {
    let real = buf.as_ptr() as u64;
    if real.wrapping_sub(base) & 7 != 0 {
        // Logical and real alignment differ: go byte by byte.
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte(seed, base.wrapping_add(i as u64));
        }
        return;
    }
    // SAFETY: any bit pattern is a valid u64; align_to_mut only reinterprets
    // the aligned middle part of the buffer.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    let mut a = base;
    for b in head.iter_mut() {
        *b = byte(seed, a);
        a = a.wrapping_add(1);
    }
    for w in words.iter_mut() {
        *w = word(seed, a);
        a = a.wrapping_add(8);
    }
    for b in tail.iter_mut() {
        *b = byte(seed, a);
        a = a.wrapping_add(1);
    }
}

/// Checks that `buf` holds the pattern for its own address.
pub fn verify(buf: &[u8], seed: u64) -> Result<(), Mismatch> {
    verify_at(buf, seed, buf.as_ptr() as u64)
}

/// Checks that `buf` holds the pattern as if it started at logical address
/// `base`; reports the first differing byte.
pub fn verify_at(buf: &[u8], seed: u64, base: u64) -> Result<(), Mismatch> {
    verify_with(buf, base, |a| word(seed, a), |a| byte(seed, a))
}

/// Checks that `buf` is all zero bytes.
pub fn verify_zero(buf: &[u8]) -> Result<(), Mismatch> {
    verify_with(buf, 0, |_| 0, |_| 0)
}

/// Returns the first mismatch of `buf` against the expected bytes.
fn verify_with(
    buf: &[u8],
    base: u64,
    word_of: impl Fn(u64) -> u64,
    byte_of: impl Fn(u64) -> u8,
) -> Result<(), Mismatch> {
    let real = buf.as_ptr() as usize;
    let mismatch = |i: usize| Mismatch {
        addr: real + i,
        offset: i,
        expected: byte_of(base.wrapping_add(i as u64)),
        found: buf[i],
    };
    let check_bytes = |from: usize, to: usize| -> Result<(), Mismatch> {
        match (from..to).find(|&i| buf[i] != byte_of(base.wrapping_add(i as u64))) {
            Some(i) => Err(mismatch(i)),
            None => Ok(()),
        }
    };
    if (real as u64).wrapping_sub(base) & 7 != 0 {
        return check_bytes(0, buf.len());
    }
    // SAFETY: any bit pattern is a valid u64; align_to only reinterprets the
    // aligned middle part of the buffer.
    let (head, words, _tail) = unsafe { buf.align_to::<u64>() };
    check_bytes(0, head.len())?;
    let mut a = base.wrapping_add(head.len() as u64);
    for (k, w) in words.iter().enumerate() {
        if *w != word_of(a) {
            let start = head.len() + k * 8;
            check_bytes(start, start + 8)?;
        }
        a = a.wrapping_add(8);
    }
    check_bytes(head.len() + words.len() * 8, buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_word_agree() {
        for seed in [0u64, 1, 0xdead_beef] {
            for a in (0x1000u64..0x1040).step_by(8) {
                let w = word(seed, a);
                for k in 0..8 {
                    assert_eq!(byte(seed, a + k), (w >> (k * 8)) as u8);
                    assert_eq!(word(seed, a + k), w);
                }
            }
        }
    }

    #[test]
    fn depends_on_seed_and_address() {
        assert_ne!(word(1, 0x1000), word(2, 0x1000));
        assert_ne!(word(1, 0x1000), word(1, 0x1008));
        // Same word at the same address and seed, always.
        assert_eq!(word(7, 0x7fff_0000), word(7, 0x7fff_0000));
        // Not trivially zero over a page.
        let zeros = (0..512u64).filter(|i| word(3, i * 8) == 0).count();
        assert_eq!(zeros, 0);
    }

    #[test]
    fn fill_then_verify_all_alignments() {
        let mut backing = vec![0u8; 300];
        for start in 0..9 {
            for end in [start, start + 1, start + 7, start + 64, 299] {
                let buf = &mut backing[start..end.max(start)];
                fill(buf, 42);
                assert_eq!(verify(buf, 42), Ok(()));
                let addr = buf.as_ptr() as u64;
                for (i, b) in buf.iter().enumerate() {
                    assert_eq!(*b, byte(42, addr + i as u64));
                }
            }
        }
    }

    #[test]
    fn fill_at_logical_base() {
        let mut buf = vec![0u8; 100];
        for base in [0u64, 3, 0x10000, 0x10005] {
            fill_at(&mut buf, 9, base);
            assert_eq!(verify_at(&buf, 9, base), Ok(()));
            for (i, b) in buf.iter().enumerate() {
                assert_eq!(*b, byte(9, base + i as u64));
            }
            assert!(verify_at(&buf, 10, base).is_err());
        }
    }

    #[test]
    fn reports_first_mismatch() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 5);
        let addr = buf.as_ptr() as usize;
        let good = buf[1234];
        buf[1234] ^= 0xff;
        buf[2000] ^= 0x01;
        let m = verify(&buf, 5).unwrap_err();
        assert_eq!(m.offset, 1234);
        assert_eq!(m.addr, addr + 1234);
        assert_eq!(m.expected, good);
        assert_eq!(m.found, good ^ 0xff);
        assert!(m.to_string().contains("offset 0x4d2"));
    }

    #[test]
    fn zero_check() {
        let mut buf = vec![0u8; 777];
        assert_eq!(verify_zero(&buf), Ok(()));
        buf[776] = 1;
        let m = verify_zero(&buf).unwrap_err();
        assert_eq!((m.offset, m.expected, m.found), (776, 0, 1));
    }
}
