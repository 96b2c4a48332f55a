//! Per-process attributes: the working directory (a directory created
//! under /tmp), umask 027, lowered resource limits (RLIMIT_NOFILE soft and
//! hard, RLIMIT_STACK soft, RLIMIT_CORE) and the comm name set with
//! PR_SET_NAME. After restore getcwd, the umask (and /proc Umask), every
//! getrlimit value and PR_GET_NAME / /proc/self/comm are unchanged.

use std::ffi::CStr;

use zdtm::{ensure_eq, procfs, TempDir, TestResult};

const UMASK: libc::mode_t = 0o027;
const COMM: &str = "zdtm-cwd-rlim";
const NOFILE: (u64, u64) = (200, 300);
const CORE: (u64, u64) = (4096, 1 << 20);
const STACK_SOFT: u64 = 4 << 20;
/// Number of resource limits on Linux (RLIMIT_CPU..=RLIMIT_RTTIME).
const NLIMITS: u32 = 16;

struct State {
    dir: TempDir,
    cwd: String,
    limits: Vec<(u32, u64, u64)>,
}

fn getrlimit(res: u32) -> TestResult<(u64, u64)> {
    // SAFETY: a zeroed rlimit is valid storage.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: r is valid writable storage.
    if unsafe { libc::getrlimit(res, &mut r) } != 0 {
        return Err(zdtm::os_err(&format!("getrlimit({res})")));
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn setrlimit(res: u32, soft: u64, hard: u64) -> TestResult {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: r is a valid rlimit.
    if unsafe { libc::setrlimit(res, &r) } != 0 {
        return Err(zdtm::os_err(&format!("setrlimit({res})")));
    }
    Ok(())
}

fn all_limits() -> TestResult<Vec<(u32, u64, u64)>> {
    (0..NLIMITS)
        .map(|r| getrlimit(r).map(|(s, h)| (r, s, h)))
        .collect()
}

fn cwd() -> TestResult<String> {
    std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| format!("getcwd: {e}"))
}

fn comm() -> TestResult<String> {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes to the buffer.
    if unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) } != 0 {
        return Err(zdtm::os_err("PR_GET_NAME"));
    }
    let name = CStr::from_bytes_until_nul(&buf).map_err(|_| "unterminated comm")?;
    Ok(name.to_string_lossy().into_owned())
}

fn umask_now() -> libc::mode_t {
    // SAFETY: umask cannot fail; the old value is restored immediately.
    unsafe {
        let m = libc::umask(0o777);
        libc::umask(m);
        m
    }
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    let dir = TempDir::new()?;
    let sub = dir.join("work dir");
    std::fs::create_dir(&sub).map_err(|e| format!("mkdir: {e}"))?;
    std::env::set_current_dir(&sub).map_err(|e| format!("chdir: {e}"))?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(UMASK) };
    setrlimit(libc::RLIMIT_NOFILE, NOFILE.0, NOFILE.1)?;
    setrlimit(libc::RLIMIT_CORE, CORE.0, CORE.1)?;
    let (_, stack_hard) = getrlimit(libc::RLIMIT_STACK)?;
    setrlimit(libc::RLIMIT_STACK, STACK_SOFT, stack_hard)?;
    let name = std::ffi::CString::new(COMM).map_err(|_| "bad comm")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        return Err(zdtm::os_err("PR_SET_NAME"));
    }
    Ok(State {
        dir,
        cwd: cwd()?,
        limits: all_limits()?,
    })
}

fn check(s: State) -> TestResult {
    ensure_eq!(cwd()?, s.cwd, "getcwd");
    ensure_eq!(
        cwd()?,
        s.dir.join("work dir").to_string_lossy().into_owned(),
        "cwd path"
    );
    ensure_eq!(procfs::readlink("/proc/self/cwd")?, s.cwd, "/proc/self/cwd");
    ensure_eq!(format!("{:o}", umask_now()), format!("{UMASK:o}"), "umask");
    ensure_eq!(
        procfs::status_field("Umask")?,
        format!("{UMASK:04o}"),
        "Umask in status"
    );
    let now = all_limits()?;
    for (n, b) in now.iter().zip(&s.limits) {
        ensure_eq!(n, b, "(resource, soft, hard)");
    }
    ensure_eq!(now.len(), s.limits.len(), "number of limits");
    ensure_eq!(getrlimit(libc::RLIMIT_NOFILE)?, NOFILE, "RLIMIT_NOFILE");
    ensure_eq!(getrlimit(libc::RLIMIT_CORE)?, CORE, "RLIMIT_CORE");
    ensure_eq!(
        getrlimit(libc::RLIMIT_STACK)?.0,
        STACK_SOFT,
        "RLIMIT_STACK soft"
    );
    ensure_eq!(comm()?, COMM, "PR_GET_NAME");
    ensure_eq!(
        procfs::read_string("/proc/self/comm")?,
        format!("{COMM}\n"),
        "/proc/self/comm"
    );
    // The umask applies to new files.
    std::fs::write("f", b"x").map_err(|e| format!("creating a file: {e}"))?;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata("f")
            .map_err(|e| format!("stat: {e}"))?
            .permissions(),
    );
    ensure_eq!(
        format!("{:o}", mode & 0o777),
        "640",
        "mode of a new 0644 file"
    );
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    s.dir.remove()
}

fn main() {
    zdtm::run(setup, check)
}
