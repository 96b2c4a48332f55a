//! What this machine offers, for the tests' `needs_kernel` and `needs_caps`
//! (and the flavors' `tracker`): kernel features probed on the running
//! kernel by the runner itself (engine-neutral), and the runner's
//! effective capabilities. Probed once per session.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// A kernel feature a test may need (`needs_kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelFeature {
    /// CONFIG_MEM_SOFT_DIRTY: pagemap bit 55 set by a write.
    SoftDirty,
    /// The PAGEMAP_SCAN ioctl on /proc/PID/pagemap (6.7+).
    PagemapScan,
    /// userfaultfd(2) usable.
    Userfaultfd,
    /// userfaultfd write-protect in async mode (UFFD_FEATURE_WP_ASYNC and
    /// WP_UNPOPULATED, 6.7+).
    UffdWpAsync,
    /// smaps VmFlags names VM_LOCKONFAULT `lf` (an mlock2(MLOCK_ONFAULT)
    /// mapping shows it; Debian's 6.1 prints `??` instead).
    LockOnfaultFlag,
    /// madvise(MADV_GUARD_INSTALL) guard regions (6.13+).
    MadvGuardInstall,
    /// The mseal(2) system call (6.10+, 64-bit).
    Mseal,
    /// A file in /tmp, where the tests make their directories, opens with
    /// O_DIRECT (tmpfs refuses it before 6.6; a disk filesystem takes it).
    TmpODirect,
    /// PR_SET_MEMORY_MERGE, KSM merging of the whole process (6.4+, with
    /// CONFIG_KSM).
    MemoryMerge,
    /// PR_TIMER_CREATE_RESTORE_IDS: timer_create with a chosen id, which
    /// crust needs to restore POSIX timers (older kernels give ids from a
    /// per-process counter that nothing outside can read or set).
    TimerCreateRestoreIds,
}

impl KernelFeature {
    /// Every feature, in probe order.
    pub const ALL: [KernelFeature; 10] = [
        KernelFeature::SoftDirty,
        KernelFeature::PagemapScan,
        KernelFeature::Userfaultfd,
        KernelFeature::UffdWpAsync,
        KernelFeature::LockOnfaultFlag,
        KernelFeature::MadvGuardInstall,
        KernelFeature::Mseal,
        KernelFeature::TmpODirect,
        KernelFeature::MemoryMerge,
        KernelFeature::TimerCreateRestoreIds,
    ];

    /// The name used in metadata files.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelFeature::SoftDirty => "soft-dirty",
            KernelFeature::PagemapScan => "pagemap-scan",
            KernelFeature::Userfaultfd => "userfaultfd",
            KernelFeature::UffdWpAsync => "uffd-wp-async",
            KernelFeature::LockOnfaultFlag => "lock-onfault-flag",
            KernelFeature::MadvGuardInstall => "madv-guard-install",
            KernelFeature::Mseal => "mseal",
            KernelFeature::TmpODirect => "tmp-o-direct",
            KernelFeature::MemoryMerge => "memory-merge",
            KernelFeature::TimerCreateRestoreIds => "timer-create-restore-ids",
        }
    }
}

impl fmt::Display for KernelFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Capability names by bit number (linux/capability.h).
pub const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The effective capability set from `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let value = l.strip_prefix("CapEff:")?;
        u64::from_str_radix(value.trim(), 16).ok()
    })
}

/// What the machine offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Each feature: Ok, or why it is missing.
    pub kernel: BTreeMap<KernelFeature, Result<(), String>>,
    /// The runner's effective capabilities.
    pub cap_eff: u64,
}

impl Host {
    /// Probes the running kernel and reads the runner's capabilities.
    pub fn probe() -> Host {
        let kernel = KernelFeature::ALL
            .iter()
            .map(|&f| {
                let result = match f {
                    KernelFeature::SoftDirty => probe_soft_dirty(),
                    KernelFeature::PagemapScan => probe_pagemap_scan(),
                    KernelFeature::Userfaultfd => probe_uffd_features().map(|_| ()),
                    KernelFeature::UffdWpAsync => probe_uffd_features().and_then(|features| {
                        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
                        if features & want == want {
                            Ok(())
                        } else {
                            Err(format!(
                                "UFFDIO_API offers features {features:#x}, without WP_ASYNC and \
                                 WP_UNPOPULATED"
                            ))
                        }
                    }),
                    KernelFeature::LockOnfaultFlag => probe_lock_onfault_flag(),
                    KernelFeature::MadvGuardInstall => probe_madv_guard_install(),
                    KernelFeature::Mseal => probe_mseal(),
                    KernelFeature::TmpODirect => probe_tmp_o_direct(),
                    KernelFeature::MemoryMerge => probe_memory_merge(),
                    KernelFeature::TimerCreateRestoreIds => probe_timer_create_restore_ids(),
                };
                (f, result)
            })
            .collect();
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(parse_cap_eff)
            .unwrap_or(0);
        Host { kernel, cap_eff }
    }

    /// Why `feature` is unavailable, if it is.
    pub fn missing_feature(&self, feature: KernelFeature) -> Option<String> {
        match self.kernel.get(&feature) {
            Some(Ok(())) => None,
            Some(Err(why)) => Some(why.clone()),
            None => Some("not probed".to_string()),
        }
    }

    /// Whether the runner holds capability `name` (a [`CAP_NAMES`] entry).
    pub fn has_cap(&self, name: &str) -> bool {
        CAP_NAMES
            .iter()
            .position(|&c| c == name)
            .is_some_and(|bit| self.cap_eff & (1u64 << bit) != 0)
    }

    /// Why a test needing `features` and `caps` cannot run here, if so.
    pub fn unmet(&self, features: &[KernelFeature], caps: &[String]) -> Option<String> {
        let mut reasons = Vec::new();
        for &f in features {
            if let Some(why) = self.missing_feature(f) {
                reasons.push(format!("kernel feature {f} ({why})"));
            }
        }
        let caps: Vec<&str> = caps
            .iter()
            .map(String::as_str)
            .filter(|c| !self.has_cap(c))
            .collect();
        if !caps.is_empty() {
            reasons.push(format!(
                "{} (not in the runner's effective capabilities, CapEff {:#x})",
                caps.join(", "),
                self.cap_eff
            ));
        }
        (!reasons.is_empty()).then(|| format!("needs {}", reasons.join("; ")))
    }
}

const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// UFFD_USER_MODE_ONLY: enough for a probe, allowed to unprivileged users.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// _IOWR(0xAA, 0x3F, struct uffdio_api).
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFD_API: u64 = 0xaa;
/// _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PAGE_IS_PRESENT: u64 = 1 << 3;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// One private anonymous page of ours, unmapped on drop.
struct Page(*mut libc::c_void);

impl Page {
    fn new() -> Result<Page, String> {
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Page(p))
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of one page, used by no one
        // else.
        unsafe { libc::munmap(self.0, page_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// A page just written has pagemap bit 55 (soft-dirty) set, on a kernel
/// with CONFIG_MEM_SOFT_DIRTY.
fn probe_soft_dirty() -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let page = Page::new()?;
    // SAFETY: the page is ours, mapped read-write, one page long.
    unsafe { std::ptr::write_volatile(page.0.cast::<u8>(), 1) };
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    let offset = page.addr() / page_size() as u64 * 8;
    pagemap
        .read_exact_at(&mut entry, offset)
        .map_err(|e| format!("cannot read /proc/self/pagemap: {e}"))?;
    if u64::from_ne_bytes(entry) & (1 << 55) != 0 {
        Ok(())
    } else {
        Err(
            "pagemap bit 55 stays clear after a write: kernel built without \
             CONFIG_MEM_SOFT_DIRTY"
                .to_string(),
        )
    }
}

/// An mlock2(MLOCK_ONFAULT) page of ours shows `lf` among its smaps
/// VmFlags (the kernel names the flag: 6.1 prints `??`).
fn probe_lock_onfault_flag() -> Result<(), String> {
    const MLOCK_ONFAULT: libc::c_ulong = 1;
    let page = Page::new()?;
    // SAFETY: locks our own one-page mapping (unlocked by its munmap).
    let r = unsafe { libc::syscall(libc::SYS_mlock2, page.0, page_size(), MLOCK_ONFAULT) };
    if r != 0 {
        return Err(format!(
            "mlock2(MLOCK_ONFAULT): {}",
            std::io::Error::last_os_error()
        ));
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| format!("cannot read /proc/self/smaps: {e}"))?;
    let flags = vm_flags_at(&smaps, page.addr())
        .ok_or_else(|| format!("no VmFlags for {:#x} in /proc/self/smaps", page.addr()))?;
    if flags.split_whitespace().any(|f| f == "lf") {
        Ok(())
    } else {
        Err(format!(
            "an mlock2(MLOCK_ONFAULT) mapping shows VmFlags \"{}\", without lf",
            flags.trim()
        ))
    }
}

/// The VmFlags line of the smaps entry that starts at `addr`.
fn vm_flags_at(smaps: &str, addr: u64) -> Option<&str> {
    let head = format!("{addr:x}-");
    let mut inside = false;
    for line in smaps.lines() {
        let is_header = line
            .split_once(' ')
            .is_some_and(|(range, _)| range.contains('-') && !range.ends_with(':'));
        if is_header {
            inside = line.starts_with(&head);
        } else if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags);
            }
        }
    }
    None
}

/// madvise(MADV_GUARD_INSTALL) on a page of ours (EINVAL before 6.13).
fn probe_madv_guard_install() -> Result<(), String> {
    const MADV_GUARD_INSTALL: libc::c_int = 102;
    let page = Page::new()?;
    // SAFETY: our own one-page mapping; the guard goes with its munmap.
    if unsafe { libc::madvise(page.0, page_size(), MADV_GUARD_INSTALL) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "madvise(MADV_GUARD_INSTALL): {} (Linux 6.13+)",
            std::io::Error::last_os_error()
        ))
    }
}

/// mseal(2) exists: sealing zero bytes succeeds without sealing anything
/// (ENOSYS before 6.10).
fn probe_mseal() -> Result<(), String> {
    let page = Page::new()?;
    // SAFETY: a zero-length range seals nothing.
    if unsafe { libc::syscall(libc::SYS_mseal, page.0, 0usize, 0usize) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "mseal: {} (Linux 6.10+)",
            std::io::Error::last_os_error()
        ))
    }
}

/// A new file in /tmp opens with O_DIRECT (the file the runner creates
/// is removed whatever the answer).
fn probe_tmp_o_direct() -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::path::PathBuf::from(format!(
        "/tmp/zdtm-probe-o-direct-{}-{nanos}",
        std::process::id()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let _ = std::fs::remove_file(&path);
    let fs = fs_type("/tmp");
    direct.map(drop).map_err(|e| {
        format!(
            "open(O_DIRECT) of a file in /tmp ({fs}): {e} (tmpfs takes O_DIRECT from Linux 6.6)"
        )
    })
}

/// The filesystem type of `path`, as statfs(2) tells it.
fn fs_type(path: &str) -> String {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path) else {
        return "unknown filesystem".into();
    };
    // SAFETY: a zeroed statfs is valid storage.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown filesystem".into();
    }
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        TMPFS_MAGIC => "tmpfs".into(),
        t => format!("filesystem magic {t:#x}"),
    }
}

/// PR_GET_MEMORY_MERGE answers (EINVAL before 6.4 or without CONFIG_KSM).
fn probe_memory_merge() -> Result<(), String> {
    const PR_GET_MEMORY_MERGE: libc::c_int = 68;
    // SAFETY: a getter prctl with integer arguments only.
    let r = unsafe { libc::prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) };
    if r >= 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_GET_MEMORY_MERGE): {} (Linux 6.4+, CONFIG_KSM)",
            std::io::Error::last_os_error()
        ))
    }
}

/// PR_TIMER_CREATE_RESTORE_IDS answers its getter, as crust's own check
/// (engine/src/dump/task.rs) asks it.
fn probe_timer_create_restore_ids() -> Result<(), String> {
    const PR_TIMER_CREATE_RESTORE_IDS: libc::c_int = 77;
    const PR_TIMER_CREATE_RESTORE_IDS_GET: libc::c_ulong = 2;
    // SAFETY: a getter prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            PR_TIMER_CREATE_RESTORE_IDS,
            PR_TIMER_CREATE_RESTORE_IDS_GET,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r >= 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// PAGEMAP_SCAN over one page of ours.
fn probe_pagemap_scan() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let page = Page::new()?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
    let mut region = PageRegion::default();
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: 0,
        start: page.addr(),
        end: page.addr() + page_size() as u64,
        walk_end: 0,
        vec: std::ptr::addr_of_mut!(region) as u64,
        vec_len: 1,
        max_pages: 0,
        category_inverted: 0,
        category_mask: 0,
        category_anyof_mask: PAGE_IS_PRESENT,
        return_mask: PAGE_IS_PRESENT,
    };
    // SAFETY: `arg` is a valid pm_scan_arg whose vec points to one
    // page_region that outlives the call; the range is a page of ours.
    let r = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
    if r >= 0 {
        Ok(())
    } else {
        Err(format!(
            "ioctl(PAGEMAP_SCAN): {} (Linux 6.7+)",
            std::io::Error::last_os_error()
        ))
    }
}

/// The features UFFDIO_API offers.
fn probe_uffd_features() -> Result<u64, String> {
    let open = |flags: libc::c_int| {
        // SAFETY: userfaultfd(2) takes flags only and returns a new fd.
        unsafe { libc::syscall(libc::SYS_userfaultfd, flags) }
    };
    let mut fd = open(libc::O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if fd < 0 {
        fd = open(libc::O_CLOEXEC);
    }
    if fd < 0 {
        return Err(format!(
            "userfaultfd(2): {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = libc::c_int::try_from(fd).map_err(|e| format!("userfaultfd(2): {e}"))?;
    // SAFETY: `fd` was just returned by userfaultfd(2) and is owned here
    // only.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: `api` is a valid struct uffdio_api for the duration of the
    // call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
    if r < 0 {
        return Err(format!(
            "ioctl(UFFDIO_API): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(api.features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_and_names() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapInh:\t0\nCapEff:\t000001fffeffffff\n"),
            Some(0x1fffeffffff)
        );
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert_eq!(CAP_NAMES[24], "CAP_SYS_RESOURCE");
        assert_eq!(CAP_NAMES[40], "CAP_CHECKPOINT_RESTORE");
        let host = Host {
            kernel: BTreeMap::new(),
            cap_eff: 0x1fffeffffff,
        };
        assert!(host.has_cap("CAP_SYS_ADMIN") && !host.has_cap("CAP_SYS_RESOURCE"));
        let why = host
            .unmet(&[], &["CAP_SYS_RESOURCE".into(), "CAP_KILL".into()])
            .expect("unmet");
        assert!(why.starts_with("needs CAP_SYS_RESOURCE (not in"), "{why}");
        assert_eq!(host.unmet(&[], &["CAP_KILL".into()]), None);
    }

    #[test]
    fn probes_agree_with_the_kernel() {
        // Every probe answers; the ones this kernel must have (userfaultfd
        // is needed by the lazy flavors) are there.
        let host = Host::probe();
        assert_eq!(host.kernel.len(), KernelFeature::ALL.len());
        assert_eq!(host.missing_feature(KernelFeature::Userfaultfd), None);
        // uffd-wp-async and PAGEMAP_SCAN came together (6.7).
        assert_eq!(
            host.missing_feature(KernelFeature::UffdWpAsync).is_none(),
            host.missing_feature(KernelFeature::PagemapScan).is_none()
        );
        let own = parse_cap_eff(&std::fs::read_to_string("/proc/self/status").expect("status"));
        assert_eq!(Some(host.cap_eff), own);
        // Guard regions (6.13) came after mseal (6.10): never one without
        // the other way round.
        if host
            .missing_feature(KernelFeature::MadvGuardInstall)
            .is_none()
        {
            assert_eq!(host.missing_feature(KernelFeature::Mseal), None);
        }
        // The probes of features that came with a known release agree
        // with the running kernel's release.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut parts = release.trim().split(['.', '-']);
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).expect("major");
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).expect("minor");
        let at_least = |a: u32, b: u32| (major, minor) >= (a, b);
        // tmpfs takes O_DIRECT from 6.6; every disk filesystem before.
        if at_least(6, 6) {
            assert_eq!(host.missing_feature(KernelFeature::TmpODirect), None);
        }
        let ksm = std::path::Path::new("/sys/kernel/mm/ksm").exists();
        assert_eq!(
            host.missing_feature(KernelFeature::MemoryMerge).is_none(),
            at_least(6, 4) && ksm,
            "memory-merge probe against release {release} (KSM: {ksm})"
        );
        if !at_least(6, 4) {
            // PR_TIMER_CREATE_RESTORE_IDS is far newer than 6.4.
            assert!(host
                .missing_feature(KernelFeature::TimerCreateRestoreIds)
                .is_some());
        }
    }

    #[test]
    fn vm_flags_of_one_smaps_entry() {
        // Two entries as /proc/PID/smaps prints them (fields shortened).
        let smaps = "\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
Size:                  4 kB
Locked:                0 kB
VmFlags: rd wr mr mw me lo ?? ac sd 
7f0000001000-7f0000003000 r--p 00001000 08:01 1234    /usr/lib/x.so
Size:                  8 kB
VmFlags: rd mr mw me sd 
";
        assert_eq!(
            vm_flags_at(smaps, 0x7f00_0000_0000).map(str::trim),
            Some("rd wr mr mw me lo ?? ac sd")
        );
        assert_eq!(
            vm_flags_at(smaps, 0x7f00_0000_1000).map(str::trim),
            Some("rd mr mw me sd")
        );
        assert_eq!(vm_flags_at(smaps, 0x7f00_0000_2000), None);
    }
}
