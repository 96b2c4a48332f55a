//! A CPU latency request (PM QoS, `/dev/cpu_dma_latency`) held while the
//! engine stops and starts tasks.
//!
//! Every injected call, every ptrace stop and every page fault served is a
//! wake-up of a task on another CPU. On a virtual machine an idle CPU
//! halts (HLT exits to the hypervisor), and waking it costs an
//! inter-processor interrupt the host must deliver by scheduling the
//! vCPU: 17-330 us a ptrace stop measured on these machines (varying with
//! the host from minute to minute), against 7-10 us when the CPU polls
//! instead (docs/performance.md, "Idle CPUs"). A
//! request of 0 us keeps idle CPUs polling (cpuidle's governors pick the
//! polling state) for as long as the file stays open; the kernel drops the
//! request when it is closed, so an engine killed at any moment leaves
//! nothing behind. Where the file is missing or not writable, or the
//! machine has no cpuidle driver, the request is simply not in force.
//!
//! The descriptor is close-on-exec, and every stub a restore forks closes
//! it with the rest of the engine's descriptors before it becomes a task.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

const DEVICE: &str = "/dev/cpu_dma_latency";

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether [`hold`] makes a request (`--no-cpu-latency-hint` turns it off).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The request, in force until dropped.
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// Asks that idle CPUs poll instead of sleeping until the result is
/// dropped. None if turned off or refused (not root, no such device):
/// everything works the same, only slower on machines whose idle CPUs
/// are slow to wake.
pub fn hold() -> Option<Held> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    hold_for_probe().ok()
}

/// [`hold`] whether or not it is turned off, with the reason it cannot
/// be (`crust check`).
pub fn hold_for_probe() -> std::io::Result<Held> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(DEVICE)?;
    // The device takes the latency in microseconds as a binary s32.
    file.write_all(&0i32.to_ne_bytes())?;
    Ok(Held { _file: file })
}

/// The latency in force on this machine (the smallest of every request),
/// in microseconds; None where the device cannot be read.
pub fn in_force() -> Option<i32> {
    let bytes = std::fs::read(DEVICE).ok()?;
    Some(i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_request_keeps_the_latency_at_zero() {
        // Tests run as root, and every kernel with CONFIG_PM has the device.
        let held = hold().expect("root opens /dev/cpu_dma_latency");
        assert_eq!(in_force(), Some(0));
        drop(held);
    }
}
