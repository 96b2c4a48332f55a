//! Small readers for `/proc/self` files.

use crate::TestResult;

/// Reads a whole (proc) file as bytes.
pub fn read_bytes(path: &str) -> TestResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))
}

/// Reads a whole (proc) file as a string.
pub fn read_string(path: &str) -> TestResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

/// Reads a whole (proc) file into `buf` without reallocating it: the file
/// must fit in `buf.capacity()`. Useful where the reader must not allocate
/// (e.g. must not move the program break); give `buf` a large capacity
/// beforehand (large allocations are mmapped by malloc, not from brk).
pub fn read_into(path: &str, buf: &mut Vec<u8>) -> TestResult {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let cap = buf.capacity();
    buf.clear();
    buf.resize(cap, 0);
    let mut len = 0;
    loop {
        if len == cap {
            return Err(format!("{path} does not fit in {cap} bytes"));
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading {path}: {e}")),
        }
    }
    buf.truncate(len);
    Ok(())
}

/// `readlink(path)` as a string.
pub fn readlink(path: &str) -> TestResult<String> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("readlink {path}: {e}"))
}

/// Splits the contents of `/proc/PID/stat` into fields numbered as in
/// proc(5): element 0 is empty, 1 is the pid, 2 the comm (without the
/// parentheses), 3 the state, and so on.
pub fn parse_stat(text: &str) -> Option<Vec<String>> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let mut fields = vec![String::new(), text[..open].trim().to_string()];
    fields.push(text.get(open + 1..close)?.to_string());
    fields.extend(text[close + 1..].split_whitespace().map(str::to_string));
    Some(fields)
}

/// All fields of `/proc/self/stat`, numbered as in proc(5) (see
/// [`parse_stat`]).
pub fn stat_fields() -> TestResult<Vec<String>> {
    let text = read_string("/proc/self/stat")?;
    parse_stat(&text).ok_or_else(|| format!("bad /proc/self/stat: {text:?}"))
}

/// Numeric field `n` (proc(5) numbering) of `/proc/self/stat`.
pub fn stat_field(n: usize) -> TestResult<u64> {
    let fields = stat_fields()?;
    let f = fields
        .get(n)
        .ok_or_else(|| format!("/proc/self/stat has no field {n}"))?;
    f.parse::<i64>()
        .map(|v| v as u64)
        .map_err(|_| format!("/proc/self/stat field {n} is not a number: {f:?}"))
}

/// Finds `Key:` in a `status`-style text and returns the trimmed value.
pub fn parse_status_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// The value of `Key:` in `/proc/self/status` (e.g. `SigPnd`, `Umask`).
pub fn status_field(key: &str) -> TestResult<String> {
    let text = read_string("/proc/self/status")?;
    parse_status_field(&text, key).ok_or_else(|| format!("no {key} in /proc/self/status"))
}

/// The open file descriptors with their `/proc/self/fd` link targets, in
/// ascending order, without the descriptor used to list the directory and
/// without the protocol's readiness pipe ([`crate::ready_fd`]).
pub fn list_fds() -> TestResult<Vec<(i32, String)>> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("/proc/self/fd: {e}"))?;
    // SAFETY: getpid has no preconditions.
    let own = format!("/proc/{}/fd", unsafe { libc::getpid() });
    let mut fds = Vec::new();
    for ent in dir {
        let ent = ent.map_err(|e| format!("/proc/self/fd: {e}"))?;
        let Ok(fd) = ent.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(ent.path()) else {
            continue; // the listing's own fd, already closed
        };
        let target = target.to_string_lossy().into_owned();
        if target == own || Some(fd) == crate::ready_fd() {
            continue;
        }
        fds.push((fd, target));
    }
    fds.sort();
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let f = parse_stat("123 (a b) c) S 1 123 123 0 -1").unwrap();
        assert_eq!(f[1], "123");
        assert_eq!(f[2], "a b) c");
        assert_eq!(f[3], "S");
        assert_eq!(f[4], "1");
        assert_eq!(f[8], "-1");
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn self_stat() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        assert_eq!(stat_field(1).unwrap(), pid);
        assert!(stat_field(47).unwrap() > 0); // start_brk
    }

    #[test]
    fn status_parsing() {
        let text = "Name:\tfoo\nUmask:\t0022\nSigPnd:\t0000000000000200\n";
        assert_eq!(parse_status_field(text, "Umask").unwrap(), "0022");
        assert_eq!(
            parse_status_field(text, "SigPnd").unwrap(),
            "0000000000000200"
        );
        assert!(parse_status_field(text, "Sig").is_none());
        assert!(status_field("Pid").is_ok());
    }

    #[test]
    fn read_into_keeps_buffer() {
        let mut buf = Vec::with_capacity(1 << 20);
        let ptr = buf.as_ptr();
        read_into("/proc/self/maps", &mut buf).unwrap();
        assert_eq!(buf.as_ptr(), ptr);
        assert!(!buf.is_empty() && buf.ends_with(b"\n"));
        let mut small = Vec::with_capacity(4);
        assert!(read_into("/proc/self/maps", &mut small).is_err());
    }

    #[test]
    fn fds_listed() {
        let fds = list_fds().unwrap();
        assert!(fds.iter().any(|(fd, _)| *fd == 0));
        assert!(!fds.iter().any(|(_, t)| t.ends_with("/fd")));
    }
}
