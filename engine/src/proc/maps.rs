//! /proc/PID/maps and /proc/PID/smaps: the address space layout.

use super::{pid_path, read_parsed, ParseError, Result};

/// One line of a `VmFlags:` smaps field, as a set of known flags plus the
/// codes this parser does not know (kept, so a newer kernel is not an error).
///
/// The bit values are crust's own, not the kernel's `VM_*` bits (those move
/// between versions and architectures); only the two-letter codes are ABI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    bits: u64,
    unknown: Vec<String>,
}

/// A two-letter VmFlags code as a little-endian u16 (a code of another
/// length cannot be one: the build fails).
const fn code_key(code: &str) -> u16 {
    let b = code.as_bytes();
    assert!(b.len() == 2, "VmFlags codes have two letters");
    u16::from_le_bytes([b[0], b[1]])
}

macro_rules! vm_flags {
    ($( $(#[$doc:meta])* $name:ident = $bit:expr, $code:literal; )*) => {
        impl VmFlags {
            $( $(#[$doc])* pub const $name: u64 = 1 << $bit; )*
        }
        /// Two-letter code → flag, per Documentation/filesystems/proc.rst
        /// and `show_smap_vma_flags()` in fs/proc/task_mmu.c.
        const CODES: &[(&str, u64)] = &[ $( ($code, VmFlags::$name), )* ];
        /// [`CODES`] with each two-letter code as a little-endian u16.
        const CODE_KEYS: &[(u16, u64)] = &[ $( (code_key($code), VmFlags::$name), )* ];
    };
}

vm_flags! {
    /// "rd" readable
    READ = 0, "rd";
    /// "wr" writeable
    WRITE = 1, "wr";
    /// "ex" executable
    EXEC = 2, "ex";
    /// "sh" shared
    SHARED = 3, "sh";
    /// "mr" may read
    MAYREAD = 4, "mr";
    /// "mw" may write
    MAYWRITE = 5, "mw";
    /// "me" may execute
    MAYEXEC = 6, "me";
    /// "ms" may share
    MAYSHARE = 7, "ms";
    /// "gd" stack segment grows down
    GROWSDOWN = 8, "gd";
    /// "pf" pure PFN range
    PFNMAP = 9, "pf";
    /// "dw" disabled write to the mapped file (old kernels)
    DENYWRITE = 10, "dw";
    /// "lo" pages are locked in memory
    LOCKED = 11, "lo";
    /// "io" memory mapped I/O area
    IO = 12, "io";
    /// "sr" sequential read advise provided
    SEQ_READ = 13, "sr";
    /// "rr" random read advise provided
    RAND_READ = 14, "rr";
    /// "dc" do not copy area on fork
    DONTCOPY = 15, "dc";
    /// "de" do not expand area on remapping
    DONTEXPAND = 16, "de";
    /// "ac" area is accountable
    ACCOUNT = 17, "ac";
    /// "nr" swap space is not reserved for the area
    NORESERVE = 18, "nr";
    /// "ht" area uses huge tlb pages
    HUGETLB = 19, "ht";
    /// "ar" architecture specific flag
    ARCH_1 = 20, "ar";
    /// "dd" do not include area into core dump
    DONTDUMP = 21, "dd";
    /// "sd" soft dirty flag
    SOFTDIRTY = 22, "sd";
    /// "mm" mixed map area
    MIXEDMAP = 23, "mm";
    /// "hg" huge page advise flag
    HUGEPAGE = 24, "hg";
    /// "nh" no huge page advise flag
    NOHUGEPAGE = 25, "nh";
    /// "mg" mergeable advise flag
    MERGEABLE = 26, "mg";
    /// "um" userfaultfd missing tracking
    UFFD_MISSING = 27, "um";
    /// "uw" userfaultfd wr-protect tracking
    UFFD_WP = 28, "uw";
    /// "wf" wipe on fork
    WIPEONFORK = 29, "wf";
    /// "lf" lock on fault pages
    LOCKONFAULT = 30, "lf";
    /// "sf" synchronous page fault
    SYNC = 31, "sf";
    /// "ui" userfaultfd minor fault
    UFFD_MINOR = 32, "ui";
    /// "ss" shadow stack page
    SHADOW_STACK = 33, "ss";
    /// "sl" sealed (mseal)
    SEALED = 34, "sl";
    /// "dp" droppable
    DROPPABLE = 35, "dp";
    /// "bt" arm64 BTI guarded page
    ARM64_BTI = 36, "bt";
    /// "mt" arm64 MTE allocation tags are enabled
    ARM64_MTE = 37, "mt";
    /// "tg" arm64 MTE allowed
    ARM64_MTE_ALLOWED = 38, "tg";
    /// "gu" may hold guard regions (MADV_GUARD_INSTALL, 6.18)
    MAYBE_GUARD = 39, "gu";
}

impl VmFlags {
    /// Parses the value of a `VmFlags:` line ("rd wr mr mw me ac").
    pub fn parse(codes: &str) -> VmFlags {
        let mut flags = VmFlags::default();
        for code in codes.split_ascii_whitespace() {
            // Every known code has two letters: compared as one u16 (a
            // string comparison per table entry cost more than the rest
            // of a smaps parse).
            let known = match code.as_bytes() {
                &[a, b] => {
                    let key = u16::from_le_bytes([a, b]);
                    CODE_KEYS
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, bit)| bit)
                }
                _ => None,
            };
            match known {
                Some(bit) => flags.bits |= bit,
                None => flags.unknown.push(code.to_string()),
            }
        }
        flags
    }

    /// The flags of a bit set made by [`VmFlags::bits`].
    pub fn from_bits(bits: u64) -> VmFlags {
        VmFlags {
            bits,
            unknown: Vec::new(),
        }
    }

    /// Crust's bit set (see the `VmFlags::*` consts).
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// True if every bit of `flag` is set.
    pub fn contains(&self, flag: u64) -> bool {
        self.bits & flag == flag
    }

    /// Codes this parser did not recognise, in file order.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// The known codes that are set, in table order.
    pub fn codes(&self) -> Vec<&'static str> {
        CODES
            .iter()
            .filter(|(_, bit)| self.bits & bit != 0)
            .map(|(c, _)| *c)
            .collect()
    }

    pub fn growsdown(&self) -> bool {
        self.contains(Self::GROWSDOWN)
    }
    pub fn may_write(&self) -> bool {
        self.contains(Self::MAYWRITE)
    }
    pub fn may_share(&self) -> bool {
        self.contains(Self::MAYSHARE)
    }
    pub fn dont_dump(&self) -> bool {
        self.contains(Self::DONTDUMP)
    }
    pub fn wipe_on_fork(&self) -> bool {
        self.contains(Self::WIPEONFORK)
    }
    pub fn dont_copy(&self) -> bool {
        self.contains(Self::DONTCOPY)
    }
    pub fn dont_expand(&self) -> bool {
        self.contains(Self::DONTEXPAND)
    }
    pub fn huge_page(&self) -> bool {
        self.contains(Self::HUGEPAGE)
    }
    pub fn no_huge_page(&self) -> bool {
        self.contains(Self::NOHUGEPAGE)
    }
    pub fn hugetlb(&self) -> bool {
        self.contains(Self::HUGETLB)
    }
    pub fn mergeable(&self) -> bool {
        self.contains(Self::MERGEABLE)
    }
    pub fn uffd_wp(&self) -> bool {
        self.contains(Self::UFFD_WP)
    }
    pub fn uffd_missing(&self) -> bool {
        self.contains(Self::UFFD_MISSING)
    }
    pub fn uffd_minor(&self) -> bool {
        self.contains(Self::UFFD_MINOR)
    }
    pub fn locked(&self) -> bool {
        self.contains(Self::LOCKED)
    }
    pub fn lock_on_fault(&self) -> bool {
        self.contains(Self::LOCKONFAULT)
    }
    pub fn soft_dirty(&self) -> bool {
        self.contains(Self::SOFTDIRTY)
    }
    /// VM_IO / VM_PFNMAP areas have no struct pages behind them: their
    /// content cannot be read through process_vm_readv or pagemap.
    pub fn io_or_pfnmap(&self) -> bool {
        self.bits & (Self::IO | Self::PFNMAP) != 0
    }
}

/// One mapping: a maps line, plus the smaps fields when read from smaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// 's' in the perms (MAP_SHARED), 'p' otherwise.
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The pathname field as the kernel prints it ("" if none): may contain
    /// spaces, ends with " (deleted)" for unlinked files; '\n' in a name
    /// is printed as "\012". Leading spaces of a name are lost (ambiguous).
    pub path: String,
    /// Empty when parsed from maps (no VmFlags line there).
    pub vm_flags: VmFlags,
    pub anon_huge_bytes: u64,
    pub rss_bytes: u64,
}

const SPECIAL: &[&str] = &[
    "[vdso]",
    "[vvar]",
    "[vvar_vclock]",
    "[vsyscall]",
    // uprobes' execute-out-of-line page: kernel-installed like the vdso.
    "[uprobes]",
];

const DELETED: &str = " (deleted)";

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// What /proc/PID/maps shows of the mapping: the smaps fields left
    /// out.
    pub fn as_in_maps(&self) -> Vma {
        Vma {
            vm_flags: VmFlags::default(),
            anon_huge_bytes: 0,
            rss_bytes: 0,
            ..self.clone()
        }
    }

    /// Kernel-installed mappings that cannot be recreated with mmap.
    pub fn is_special(&self) -> bool {
        SPECIAL.contains(&self.path.as_str())
    }

    pub fn deleted(&self) -> bool {
        self.path.ends_with(DELETED)
    }

    /// The path without the " (deleted)" suffix.
    pub fn path_undeleted(&self) -> &str {
        self.path.strip_suffix(DELETED).unwrap_or(&self.path)
    }

    /// Private anonymous memory (heap, stack, plain MAP_ANONYMOUS, named
    /// "[anon:x]"). A MAP_PRIVATE mapping of /dev/zero also counts: the
    /// kernel turns it into an anonymous mapping (mmap_zero), though maps
    /// still shows the /dev/zero inode.
    pub fn is_anon(&self) -> bool {
        if self.is_special() {
            return false;
        }
        !self.shared && (self.inode == 0 || self.path == "/dev/zero")
    }

    /// MAP_SHARED|MAP_ANONYMOUS (or a MAP_SHARED mapping of /dev/zero: the
    /// same thing). 6.18 prints these as "/dev/zero (deleted)" on the
    /// internal shmem mount (device 00:01) with the shmem inode; names set
    /// with PR_SET_VMA_ANON_NAME show as "[anon_shmem:name]". System V shm
    /// segments are *not* included: see [`Vma::is_sysv_shm`].
    pub fn is_shared_anon(&self) -> bool {
        self.shared
            && self.dev_major == 0
            && (self.path == "/dev/zero (deleted)" || self.path.starts_with("[anon_shmem:"))
    }

    /// A System V shm attachment ("/SYSV<key in hex> (deleted)"): its
    /// content belongs to the IPC object, dumped with the IPC namespace.
    pub fn is_sysv_shm(&self) -> bool {
        self.dev_major == 0 && self.path.starts_with("/SYSV") && self.deleted()
    }

    /// A memfd_create() file ("/memfd:name (deleted)"); also [`Vma::is_file`].
    pub fn is_memfd(&self) -> bool {
        self.dev_major == 0 && self.path.starts_with("/memfd:") && self.deleted()
    }

    /// Backed by a file that can be reopened through /proc/PID/map_files
    /// (regular files, deleted files, memfd, shared /dev/zero excluded).
    pub fn is_file(&self) -> bool {
        self.inode != 0
            && !self.is_special()
            && !self.is_anon()
            && !self.is_shared_anon()
            && !self.is_sysv_shm()
    }
}

/// Parses one maps line: `start-end perms offset major:minor inode [path]`.
fn parse_header(line: &str) -> std::result::Result<Vma, String> {
    let mut rest = line;
    let mut field = |name: &str| -> std::result::Result<&str, String> {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (tok, after) = trimmed.split_at(end);
        if tok.is_empty() {
            return Err(format!("missing {name}"));
        }
        rest = after;
        Ok(tok)
    };
    let range = field("address range")?;
    let perms = field("permissions")?;
    let offset = field("offset")?;
    let dev = field("device")?;
    let inode = field("inode")?;
    // The pathname is padded to a column, then printed verbatim.
    let path = rest.trim_start_matches(' ');

    let (start, end) = range
        .split_once('-')
        .ok_or_else(|| format!("bad address range {range:?}"))?;
    let hex =
        |s: &str, what: &str| u64::from_str_radix(s, 16).map_err(|_| format!("bad {what} {s:?}"));
    let start = hex(start, "start address")?;
    let end = hex(end, "end address")?;
    if end < start {
        return Err(format!("range {range:?} ends before it starts"));
    }
    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err(format!("bad permissions {perms:?}"));
    }
    let flag = |i: usize, yes: u8| -> std::result::Result<bool, String> {
        match p[i] {
            c if c == yes => Ok(true),
            b'-' => Ok(false),
            _ => Err(format!("bad permissions {perms:?}")),
        }
    };
    let shared = match p[3] {
        b's' => true,
        b'p' => false,
        _ => return Err(format!("bad permissions {perms:?}")),
    };
    let (major, minor) = dev
        .split_once(':')
        .ok_or_else(|| format!("bad device {dev:?}"))?;
    let dev32 = |s: &str| u32::from_str_radix(s, 16).map_err(|_| format!("bad device {dev:?}"));
    Ok(Vma {
        start,
        end,
        read: flag(0, b'r')?,
        write: flag(1, b'w')?,
        exec: flag(2, b'x')?,
        shared,
        offset: hex(offset, "offset")?,
        dev_major: dev32(major)?,
        dev_minor: dev32(minor)?,
        inode: inode.parse().map_err(|_| format!("bad inode {inode:?}"))?,
        path: path.to_string(),
        ..Vma::default()
    })
}

/// Parses /proc/PID/maps text.
pub fn parse_maps(text: &str) -> std::result::Result<Vec<Vma>, ParseError> {
    let mut out: Vec<Vma> = Vec::new();
    for (lineno, l) in numbered_lines(text) {
        let vma = parse_header(l).map_err(|m| ParseError::new(lineno, m))?;
        // Linux 6.18 now and then lists the last entry, the [vsyscall]
        // gate, twice when maps is read in more than one read(2) (a few
        // times in 200,000 reads of a restored process): one range is one
        // mapping.
        if out
            .last()
            .is_some_and(|p| p.start == vma.start && p.end == vma.end && p.path == vma.path)
        {
            continue;
        }
        out.push(vma);
    }
    Ok(out)
}

/// A smaps line is either a mapping header or "Key: value": the first word
/// of a header is the address range, which never ends with ':'. Returns
/// where a field line's first word ("Key:") ends, None for a header.
fn field_word_end(line: &[u8]) -> Option<usize> {
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    line[..word_end].ends_with(b":").then_some(word_end)
}

/// A field line's name and the rest of the line (its value, untrimmed).
fn smaps_key(line: &str) -> Option<(&str, &str)> {
    let word_end = field_word_end(line.as_bytes())?;
    Some((&line[..word_end - 1], &line[word_end..]))
}

fn kb_to_bytes(value: &str) -> std::result::Result<u64, String> {
    let num = value
        .strip_suffix("kB")
        .map(str::trim_end)
        .ok_or_else(|| format!("value {value:?} is not in kB"))?;
    num.parse::<u64>()
        .ok()
        .and_then(|kb| kb.checked_mul(1024))
        .ok_or_else(|| format!("bad size {value:?}"))
}

/// Parses /proc/PID/smaps text: maps headers, their "Key: N kB" fields
/// (Rss and AnonHugePages are kept) and the VmFlags line.
pub fn parse_smaps(text: &str) -> std::result::Result<Vec<Vma>, ParseError> {
    let mut vmas: Vec<Vma> = Vec::new();
    for (lineno, line) in numbered_lines(text) {
        // A header starts with a (lowercase) hex digit, a field with its
        // capitalised name: the ~20 fields of a mapping that are not used
        // are passed over on their first letter (a parse of smaps, ~500
        // lines for a small process, cost as much as the kernel's print).
        let used = |b: u8| matches!(b, b'R' | b'A' | b'V');
        let first = line.as_bytes()[0];
        if first.is_ascii_uppercase() && !used(first) && !vmas.is_empty() {
            continue;
        }
        let Some((key, value)) = smaps_key(line) else {
            vmas.push(parse_header(line).map_err(|m| ParseError::new(lineno, m))?);
            continue;
        };
        let Some(vma) = vmas.last_mut() else {
            return Err(ParseError::new(
                lineno,
                format!("field {key:?} before any mapping"),
            ));
        };
        let err = |m| ParseError::new(lineno, m);
        match key {
            "Rss" => vma.rss_bytes = kb_to_bytes(value.trim()).map_err(err)?,
            "AnonHugePages" => vma.anon_huge_bytes = kb_to_bytes(value.trim()).map_err(err)?,
            "VmFlags" => vma.vm_flags = VmFlags::parse(value),
            _ => {}
        }
    }
    // The gate listed twice (see parse_maps): one range is one mapping.
    vmas.dedup_by(|b, a| a.start == b.start && a.end == b.end && a.path == b.path);
    Ok(vmas)
}

/// The non-empty lines of a /proc text with their 1-based numbers. Split
/// at '\n' only (a '\r' ending a file name stays in it), the line ends
/// found by one vectorised scan (smaps: ~500 short lines).
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', text.as_bytes())
        .chain(std::iter::once(text.len()))
        .enumerate()
        .filter_map(move |(i, end)| {
            let from = std::mem::replace(&mut start, end + 1).min(end);
            let line = &text[from..end];
            (!line.is_empty()).then_some((i + 1, line))
        })
}

pub fn read_maps(pid: i32) -> Result<Vec<Vma>> {
    super::memo::maps_through(pid, || read_parsed(&pid_path(pid, "maps"), parse_maps))
}

/// Reads /proc/PID/smaps, always from the file (its sizes change with
/// every fault); the maps it shows are kept for a frozen pass
/// (proc::memo), which then reads no maps of the process.
pub fn read_smaps(pid: i32) -> Result<Vec<Vma>> {
    let path = pid_path(pid, "smaps");
    let text = super::read_text_fresh(&path)?;
    let vmas = parse_smaps(&text).map_err(|e| super::ProcError::parse(&path, e))?;
    super::memo::keep_maps_of_smaps(pid, &vmas);
    Ok(vmas)
}

/// Whether two VMA lists describe the same layout: the same VMAs, with
/// the same bounds, permissions, offsets, files and names (VmFlags and
/// sizes aside, which maps does not show).
pub fn same_layout(a: &[Vma], b: &[Vma]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.start, x.end, x.read, x.write, x.exec, x.shared, x.offset)
                == (y.start, y.end, y.read, y.write, y.exec, y.shared, y.offset)
                && (x.dev_major, x.dev_minor, x.inode) == (y.dev_major, y.dev_minor, y.inode)
                && x.path == y.path
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on 6.18 from a test program mapping: THP memory, MAP_LOCKED,
    // MADV_WIPEONFORK|DONTDUMP|DONTFORK, MAP_GROWSDOWN, SysV shm, a deleted
    // file named "del file) x", private and shared /dev/zero, a memfd,
    // MAP_SHARED|MAP_ANONYMOUS.
    const SMAPS: &str = include_str!("testdata/smaps.txt");
    const MAPS: &str = include_str!("testdata/maps.txt");

    fn find(vmas: &[Vma], start: u64) -> &Vma {
        vmas.iter()
            .find(|v| v.start == start)
            .expect("vma in sample")
    }

    #[test]
    fn maps_sample() {
        let vmas = parse_maps(MAPS).unwrap();
        assert_eq!(vmas.len(), 33);
        let exe = &vmas[0];
        assert_eq!(exe.start, 0x56440e326000);
        assert_eq!(exe.end, 0x56440e327000);
        assert!(exe.read && !exe.write && !exe.exec && !exe.shared);
        assert_eq!(
            (exe.dev_major, exe.dev_minor, exe.inode),
            (0xfe, 0, 10010764)
        );
        assert_eq!(exe.path, "/tmp/cap/cap");
        assert!(exe.is_file() && !exe.is_anon());
        assert!(vmas[1].exec);
        assert_eq!(vmas[1].offset, 0x1000);
        assert!(exe.vm_flags.codes().is_empty());

        let anon = find(&vmas, 0x7f32261b5000);
        assert_eq!(anon.path, "");
        assert!(anon.is_anon() && !anon.is_file() && !anon.is_special());

        let vsys = vmas.last().unwrap();
        assert_eq!(vsys.start, 0xffffffffff600000);
        assert!(vsys.exec && !vsys.read);
        assert!(vsys.is_special() && !vsys.is_anon());
    }

    #[test]
    fn the_gate_listed_twice_is_one_vma() {
        let gate = "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0    [vsyscall]\n";
        let vmas = parse_maps(&format!("{MAPS}{gate}")).unwrap();
        assert_eq!(vmas.len(), 33);
        assert_eq!(vmas.last().map(|v| v.path.as_str()), Some("[vsyscall]"));
    }

    #[test]
    fn smaps_sample() {
        let vmas = parse_smaps(SMAPS).unwrap();
        assert_eq!(vmas.len(), 16);

        let exe = &vmas[0];
        assert_eq!(exe.rss_bytes, 4096);
        assert_eq!(exe.vm_flags.codes(), ["rd", "mr", "mw", "me"]);
        assert!(!exe.vm_flags.may_share());

        let thp = find(&vmas, 0x7f3225c00000);
        assert_eq!(thp.anon_huge_bytes, 4 << 20);
        assert_eq!(thp.rss_bytes, 4 << 20);
        assert!(thp.vm_flags.huge_page() && !thp.vm_flags.no_huge_page());

        let locked = find(&vmas, 0x7f32261b5000);
        assert!(locked.vm_flags.locked());

        let wf = find(&vmas, 0x7f32261b6000);
        assert!(wf.vm_flags.wipe_on_fork() && wf.vm_flags.dont_dump() && wf.vm_flags.dont_copy());
        assert_eq!(wf.rss_bytes, 0);

        let gd = find(&vmas, 0x7f322639c000);
        assert!(gd.vm_flags.growsdown() && gd.is_anon());

        let sysv = find(&vmas, 0x7f322639e000);
        assert_eq!(sysv.path, "/SYSV00000000 (deleted)");
        assert!(sysv.shared && sysv.is_sysv_shm() && sysv.deleted());
        assert!(!sysv.is_shared_anon() && !sysv.is_anon() && !sysv.is_file());

        let del = find(&vmas, 0x7f322639f000);
        assert_eq!(del.path, "/tmp/cap/del file) x (deleted)");
        assert_eq!(del.path_undeleted(), "/tmp/cap/del file) x");
        assert!(del.deleted() && del.is_file());

        let zero_priv = find(&vmas, 0x7f32263a0000);
        assert_eq!(zero_priv.path, "/dev/zero");
        assert!(zero_priv.is_anon() && !zero_priv.is_file());

        for start in [0x7f32263a1000, 0x7f32263a3000] {
            let sa = find(&vmas, start);
            assert_eq!(sa.path, "/dev/zero (deleted)");
            assert!(sa.is_shared_anon() && !sa.is_anon() && !sa.is_file());
            assert!(sa.vm_flags.may_share());
        }

        let memfd = find(&vmas, 0x7f32263a2000);
        assert_eq!(memfd.path, "/memfd:my mem (deleted)");
        assert!(memfd.is_memfd() && memfd.is_file() && !memfd.is_shared_anon());

        for name in ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"] {
            let v = vmas.iter().find(|v| v.path == name).unwrap();
            assert!(v.is_special() && !v.is_anon() && !v.is_file(), "{name}");
        }
        let vvar = vmas.iter().find(|v| v.path == "[vvar]").unwrap();
        assert!(vvar.vm_flags.io_or_pfnmap() && vvar.vm_flags.dont_expand());

        let stack = vmas.iter().find(|v| v.path == "[stack]").unwrap();
        assert!(stack.is_anon() && stack.vm_flags.growsdown());
        assert!(vmas.iter().all(|v| v.vm_flags.unknown().is_empty()));
    }

    #[test]
    fn vm_flags_unknown_codes_are_kept() {
        let f = VmFlags::parse("rd wr zz mg um uw ");
        assert!(f.contains(VmFlags::READ | VmFlags::WRITE));
        assert!(f.mergeable() && f.uffd_missing() && f.uffd_wp());
        assert_eq!(f.unknown(), ["zz"]);
    }

    #[test]
    fn header_edge_cases() {
        let v = parse_header("7f00-7f10 rw-s 00000000 103:1f 12345    /a b  c").unwrap();
        assert_eq!((v.dev_major, v.dev_minor), (0x103, 0x1f));
        assert_eq!(v.path, "/a b  c");
        assert!(parse_header("7f00-7f10 rw-s 00000000 00:01").is_err());
        assert!(parse_header("7f10-7f00 rw-p 0 00:00 0").is_err());
        assert!(parse_header("7f00-7f10 rwxq 0 00:00 0").is_err());
        assert!(parse_header("zz-7f10 rw-p 0 00:00 0").is_err());
    }

    #[test]
    fn smaps_errors_carry_line_numbers() {
        let err = parse_smaps("Rss: 4 kB\n").unwrap_err();
        assert_eq!(err.line, 1);
        let err = parse_smaps("7f00-7f10 rw-p 0 00:00 0\nRss: x kB\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn lines_split_at_newlines_only_and_keep_their_numbers() {
        // A name may end with '\r' (only '\n' is escaped in maps); blank
        // lines are passed over but counted.
        let text = "7f00-7f10 rw-p 0 00:00 0   /tmp/a\r\n\n7f10-7f20 r--p 0 00:00 0 x";
        let maps = parse_maps(text).unwrap();
        assert_eq!(maps[0].path, "/tmp/a\r");
        assert_eq!(maps[1].path, "x");
        let smaps = parse_smaps(&format!("{text}\nRss: 8 kB\nVmFlags: rd\n")).unwrap();
        assert_eq!(smaps[0].path, "/tmp/a\r");
        assert_eq!(
            (smaps[1].rss_bytes, smaps[1].vm_flags.bits()),
            (8192, VmFlags::READ)
        );
        let err = parse_maps("7f00-7f10 rw-p 0 00:00 0\n\nbad\n").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn read_self() {
        let me = std::process::id() as i32;
        let smaps = read_smaps(me).unwrap();
        let maps = read_maps(me).unwrap();
        assert!(smaps.iter().any(|v| v.path == "[stack]"));
        assert!(smaps.iter().any(|v| v.path == "[vdso]" && v.is_special()));
        assert!(smaps
            .iter()
            .all(|v| v.vm_flags.contains(VmFlags::READ) == v.read));
        assert!(!maps.is_empty());
        let err = read_maps(-5).unwrap_err();
        assert!(err.to_string().contains("/proc/-5/maps"), "{err}");
    }
}
