//! The test-side protocol on real processes: this binary runs itself as a
//! zdtm test daemon (`ZDTM_PROTOCOL_ROLE=daemon`) many times and checks,
//! each time, what the runner relies on:
//!
//! - when the launcher has exited (the pidfile exists), the daemon no
//!   longer holds the readiness pipe (fd 1000 or above): the runner's
//!   "before" snapshot must not see a descriptor the dump will not;
//! - a SIGTERM sent at a random moment right after readiness (around the
//!   daemon's entry into its wait, where `while !flag { pause() }` loses
//!   it) always ends the wait: the daemon writes PASS and exits 0.
//!
//! The driver is the child subreaper of the daemons, as the runner is, so
//! it reaps each one by pid. The seed of the random delays is printed.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "ZDTM_PROTOCOL_ROLE";
const ROUNDS: u32 = 300;
const SEED: u64 = 0x7e57_5eed;
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    if std::env::var_os(ROLE).is_some() {
        // The daemon: nothing to set up, nothing to check.
        zdtm::run(|_| Ok(()), |()| Ok(()));
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) has no memory-safety
    // preconditions.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
    let dir = std::env::temp_dir().join(format!("zdtm-protocol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!("zdtm protocol: {ROUNDS} rounds, seed {SEED:#x}");
    let mut rng = zdtm::rng::Rng::new(SEED);
    let result = std::panic::catch_unwind(move || {
        for round in 0..ROUNDS {
            let spins = rng.below(20_000);
            one_round(&dir, round, spins);
        }
        dir
    });
    match result {
        Ok(dir) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("zdtm protocol: ok");
        }
        Err(_) => std::process::exit(101),
    }
}

/// Launches a daemon, checks its descriptors, SIGTERMs it after `spins`
/// spin-loop iterations and checks its verdict.
fn one_round(dir: &Path, round: u32, spins: u64) {
    let pidfile = dir.join("pid");
    let outfile = dir.join("out");
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&outfile);
    let exe = std::env::current_exe().expect("current_exe");
    let status = Command::new(exe)
        .arg(format!("--pidfile={}", pidfile.display()))
        .arg(format!("--outfile={}", outfile.display()))
        .env(ROLE, "daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("launch");
    assert!(status.success(), "round {round}: launcher {status:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let daemon = Daemon(pid);
    let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert!(
        fds.iter().all(|&fd| fd < 1000),
        "round {round}: the daemon still holds the readiness pipe after its launcher \
         exited: fds {fds:?}"
    );
    for _ in 0..spins {
        std::hint::spin_loop();
    }
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
    // unreaped child (we are its subreaper), so it cannot be recycled.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM");
    let code = daemon.wait().unwrap_or_else(|| {
        panic!(
            "round {round} (seed {SEED:#x}, {spins} spins): the daemon did not exit within \
             {}s of SIGTERM",
            TIMEOUT.as_secs()
        )
    });
    assert!(code.success(), "round {round}: daemon {code:?}");
    let verdict = std::fs::read_to_string(&outfile).expect("outfile");
    assert_eq!(verdict, "PASS\n", "round {round}");
}

/// A daemon reparented to us: killed and reaped on drop if still there.
struct Daemon(i32);

impl Daemon {
    /// Waits up to [`TIMEOUT`] for its exit and reaps it.
    fn wait(self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + TIMEOUT;
        let mut pause = Duration::from_micros(50);
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`.
            let got = unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) };
            if got == self.0 {
                std::mem::forget(self);
                return Some(std::process::ExitStatus::from_raw(status));
            }
            assert!(got == 0, "waitpid: {}", std::io::Error::last_os_error());
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: as in one_round: our unreaped child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}
