//! Command line, environment and other per-mm fields.
//!
//! After restore /proc/self/cmdline, /proc/self/environ and /proc/self/auxv
//! read the same bytes as before (the kernel reads them through the
//! mm's arg/env pointers and saved auxv, which the engine must restore),
//! the mm fields of /proc/self/stat (code, data, brk, stack, arg and env
//! boundaries) are unchanged, /proc/self/exe points to the same binary
//! (path, device, inode), and /proc/self/comm is unchanged.

use std::os::unix::fs::MetadataExt;

use zdtm::{ensure, ensure_eq, procfs, TestResult};

/// proc(5) numbers of stat fields: startcode, endcode, startstack,
/// start_data, end_data, start_brk, arg_start, arg_end, env_start, env_end.
const MM_FIELDS: [usize; 10] = [26, 27, 28, 45, 46, 47, 48, 49, 50, 51];

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    cmdline: Vec<u8>,
    environ: Vec<u8>,
    auxv: Vec<u8>,
    comm: Vec<u8>,
    exe: String,
    exe_id: (u64, u64),
    mm: Vec<u64>,
}

fn snapshot() -> TestResult<Snapshot> {
    let meta = std::fs::metadata("/proc/self/exe").map_err(|e| format!("stat exe: {e}"))?;
    let fields = procfs::stat_fields()?;
    let mm = MM_FIELDS
        .iter()
        .map(|&i| {
            fields[i]
                .parse::<u64>()
                .map_err(|_| format!("stat field {i}: {:?}", fields[i]))
        })
        .collect::<TestResult<_>>()?;
    Ok(Snapshot {
        cmdline: procfs::read_bytes("/proc/self/cmdline")?,
        environ: procfs::read_bytes("/proc/self/environ")?,
        auxv: procfs::read_bytes("/proc/self/auxv")?,
        comm: procfs::read_bytes("/proc/self/comm")?,
        exe: procfs::readlink("/proc/self/exe")?,
        exe_id: (meta.dev(), meta.ino()),
        mm,
    })
}

fn setup(_: &zdtm::Args) -> TestResult<Snapshot> {
    let s = snapshot()?;
    let args: Vec<u8> = std::env::args_os()
        .flat_map(|a| {
            let mut v = a.into_encoded_bytes();
            v.push(0);
            v
        })
        .collect();
    ensure_eq!(s.cmdline, args, "/proc/self/cmdline vs argv");
    ensure!(s.mm.iter().all(|&v| v != 0), "zero mm field in {:?}", s.mm);
    Ok(s)
}

fn check(before: Snapshot) -> TestResult {
    let now = snapshot()?;
    ensure_eq!(
        String::from_utf8_lossy(&now.cmdline),
        String::from_utf8_lossy(&before.cmdline),
        "/proc/self/cmdline"
    );
    ensure!(now.environ == before.environ, "/proc/self/environ differs");
    ensure!(now.auxv == before.auxv, "/proc/self/auxv differs");
    ensure_eq!(now.comm, before.comm, "/proc/self/comm");
    ensure_eq!(now.exe, before.exe, "/proc/self/exe");
    ensure_eq!(now.exe_id, before.exe_id, "/proc/self/exe (dev, ino)");
    for (i, (a, b)) in now.mm.iter().zip(&before.mm).enumerate() {
        ensure_eq!(
            format!("{a:#x}"),
            format!("{b:#x}"),
            "/proc/self/stat field {}",
            MM_FIELDS[i]
        );
    }
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
