//! /proc/PID/auxv: the ELF auxiliary vector the process started with.

use super::{pid_path, ParseError, ProcError, Result};

/// The raw bytes (pairs of native u64: type, value; ends with AT_NULL).
/// Restore hands them back verbatim through PR_SET_MM_MAP.
pub fn read_auxv(pid: i32) -> Result<Vec<u8>> {
    let path = pid_path(pid, "auxv");
    std::fs::read(&path).map_err(|e| ProcError::io(&path, e))
}

/// Splits raw auxv into (type, value) pairs, stopping at AT_NULL.
pub fn parse_auxv(raw: &[u8]) -> std::result::Result<Vec<(u64, u64)>, ParseError> {
    if !raw.chunks_exact(16).remainder().is_empty() {
        return Err(ParseError::new(
            0,
            format!("{} bytes is not whole pairs", raw.len()),
        ));
    }
    let word = |c: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        u64::from_ne_bytes(b)
    };
    Ok(raw
        .chunks_exact(16)
        .map(|p| (word(&p[..8]), word(&p[8..])))
        .take_while(|&(t, _)| t != libc::AT_NULL)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_auxv() {
        let raw = read_auxv(std::process::id() as i32).unwrap();
        let pairs = parse_auxv(&raw).unwrap();
        // SAFETY: getauxval only reads the process's own auxiliary vector.
        let pagesz = unsafe { libc::getauxval(libc::AT_PAGESZ) };
        assert!(pairs.contains(&(libc::AT_PAGESZ, pagesz)));
        assert!(parse_auxv(&raw[..15]).is_err());
    }
}
