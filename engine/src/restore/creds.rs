//! Credentials, capabilities, securebits, no_new_privs, dumpable, MDWE and
//! seccomp filters of the restored task.
//!
//! The stub starts with the engine's root credentials; everything that
//! needs them is done before [`restore`], which drops them to exactly the
//! dumped set. Order matters:
//!
//! 1. setgroups, setresgid, setfsgid (CAP_SETGID);
//! 2. the inheritable set (capset wants it within the bounding set, which
//!    the task may have shrunk since), then drop from the bounding set what
//!    the task lacked (CAP_SETPCAP);
//! 3. securebits NO_SETUID_FIXUP | KEEP_CAPS for a moment, so that the uid
//!    change leaves the capability sets alone; setresuid, setfsuid;
//! 4. capset to the dumped sets plus CAP_SETPCAP, raise the ambient set,
//!    set the dumped securebits (both need that), capset exactly;
//! 5. no_new_privs, the parent death signal again (a uid change clears
//!    it), dumpable (a uid change resets it; dumpable 2, which
//!    prctl cannot set, comes from a change of fsuid in step 3 when
//!    fs.suid_dumpable is 2), MDWE.
//!
//! Then the engine checks /proc/PID/status against the image. Seccomp
//! filters come last of all ([`install_seccomp`]), after the scratch area is
//! gone: a filter applies to every later injected call, so no injected call
//! follows the last seccomp(). Their programs are written into the task's
//! own writable memory (its bytes saved and put back by the engine, whose
//! process_vm_writev no filter sees).

use libc::pid_t;

use crate::error::{Error, Result};
use crate::image::messages::{Core, Creds, Mm, VmaKind};
use crate::inject::{Call, Injector};
use crate::proc;

const CAP_SETPCAP: u32 = 8;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_GET_SECUREBITS: u64 = 27;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// The only flag PTRACE_SECCOMP_GET_METADATA reports.
const SECCOMP_FILTER_FLAG_LOG: u64 = 1 << 1;
/// BPF_MAXINSNS: the kernel's limit per filter.
const MAX_INSNS: usize = 4096;

fn creds_of(pid: pid_t, core: &Core) -> Result<&Creds> {
    let c = core.creds.as_ref().ok_or_else(|| {
        Error::task(
            pid,
            "the image holds no credentials (made by an older crust): \
             refusing to restore it with the engine's own",
        )
    })?;
    if c.uid.len() != 4 || c.gid.len() != 4 {
        return Err(Error::task(pid, "credentials in the image are malformed"));
    }
    if c.seccomp_mode != 0 && c.seccomp_mode != 2 {
        return Err(Error::task(
            pid,
            format!("seccomp mode {} in the image", c.seccomp_mode),
        ));
    }
    Ok(c)
}

/// Checks before any process exists what the restore will need.
pub(crate) fn validate(pid: pid_t, core: &Core) -> std::result::Result<(), String> {
    let c = creds_of(pid, core).map_err(|e| e.to_string())?;
    for (i, f) in c.seccomp_filters.iter().enumerate() {
        let n = f.insns.len() / 8;
        if f.insns.len() % 8 != 0 || n == 0 || n > MAX_INSNS {
            return Err(format!("seccomp filter {i} has {} bytes", f.insns.len()));
        }
        if f.flags & !SECCOMP_FILTER_FLAG_LOG != 0 {
            return Err(format!("seccomp filter {i} has flags {:#x}", f.flags));
        }
    }
    if c.dumpable > 2 {
        return Err(format!("dumpable {}", c.dumpable));
    }
    if c.dumpable == 2 && crate::dump::creds::suid_dumpable().as_deref() != Some("2") {
        return Err(
            "dumpable 2 (SUID_DUMP_ROOT) needs fs.suid_dumpable = 2 here, as where it was dumped"
                .into(),
        );
    }
    if c.seccomp_mode == 2 && c.seccomp_filters.is_empty() {
        return Err("seccomp filter mode without filters".into());
    }
    Ok(())
}

/// capset(2) with its header and data put in the scratch area at `off`
/// (64 bytes), as a call of a batch.
fn capset(inj: &Injector, off: u64, eff: u64, prm: u64, inh: u64) -> Result<Call> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    // Two cap_user_data_t: low words, then high words.
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    let hdr = inj.put(off, &b[..8])?;
    let data = inj.put(off + 8, &b[8..])?;
    Ok(Call::checked("capset", libc::SYS_capset, &[hdr, data]))
}

fn each_bit(mask: u64) -> impl Iterator<Item = u64> {
    (0..64u64).filter(move |b| mask & (1 << b) != 0)
}

/// PR_SET_PDEATHSIG (per task; 0 needs no call on a new task).
pub(crate) fn set_pdeath_signal(inj: &mut Injector, signal: i32) -> Result<()> {
    if signal != 0 {
        inj.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            &[libc::PR_SET_PDEATHSIG as u64, signal as u64],
        )?;
    }
    Ok(())
}

/// Drops the stub's credentials to the dumped ones (steps 1-5 above).
/// Runs after everything that needs the engine's privileges (memory, mm,
/// fds, rlimits), before the scratch area is removed.
pub(crate) fn restore(inj: &mut Injector, core: &Core) -> Result<()> {
    let c = creds_of(inj.pid(), core)?;
    restore_creds(inj, c, core.pdeath_signal)
}

/// Drops the credentials of the task `inj` drives (a process's leader or
/// one of its threads: each has its own) to `c`; `pdeath_signal`, which a
/// credential change resets, is set again after.
pub(crate) fn restore_creds(inj: &mut Injector, c: &Creds, pdeath_signal: i32) -> Result<()> {
    let pid = inj.pid();
    let now = proc::read_status(pid)?;

    if c.groups.len() * 4 > 60 * 1024 {
        return Err(Error::task(
            pid,
            format!("{} supplementary groups do not fit", c.groups.len()),
        ));
    }
    // One batch, in this order (each step needs the ones before it; the
    // first that fails stops it). Its arguments in the scratch area: three
    // capsets at 0, 64, 128; the parent death signal read back at 192; the
    // groups from 256.
    let mut calls = Vec::new();
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    let p = inj.put(256, &groups)?;
    calls.push(Call::checked(
        "setgroups",
        libc::SYS_setgroups,
        &[c.groups.len() as u64, p],
    ));
    let [rg, eg, sg, fg] = [c.gid[0], c.gid[1], c.gid[2], c.gid[3]].map(u64::from);
    calls.push(Call::checked(
        "setresgid",
        libc::SYS_setresgid,
        &[rg, eg, sg],
    ));
    // setfsgid returns the previous fsgid, never an error: checked below.
    calls.push(Call::checked("setfsgid", libc::SYS_setfsgid, &[fg]));

    // The inheritable set before the bounding set shrinks: capset only
    // accepts inheritable capabilities that are in the bounding set (or
    // already inheritable), and a task may keep some it later dropped
    // from its bounding set.
    calls.push(capset(inj, 0, now.cap_eff, now.cap_prm, c.cap_inh)?);
    if c.cap_bnd & !now.cap_bnd != 0 {
        return Err(Error::task(
            pid,
            format!(
                "bounding set {:#x} holds capabilities the engine lacks ({:#x})",
                c.cap_bnd, now.cap_bnd
            ),
        ));
    }
    for cap in each_bit(now.cap_bnd & !c.cap_bnd) {
        calls.push(Call::checked(
            "prctl(PR_CAPBSET_DROP)",
            libc::SYS_prctl,
            &[PR_CAPBSET_DROP, cap],
        ));
    }

    calls.push(Call::checked(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        &[PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS],
    ));
    let [ru, eu, su, fu] = [c.uid[0], c.uid[1], c.uid[2], c.uid[3]].map(u64::from);
    calls.push(Call::checked(
        "setresuid",
        libc::SYS_setresuid,
        &[ru, eu, su],
    ));
    calls.push(Call::checked("setfsuid", libc::SYS_setfsuid, &[fu]));
    if c.dumpable == 2 {
        // SUID_DUMP_ROOT cannot be set with prctl; the kernel sets
        // fs.suid_dumpable (checked to be 2) on a change of fsuid, and the
        // later steps (securebits, capset to subsets) keep it.
        calls.push(Call::checked("setfsuid", libc::SYS_setfsuid, &[fu ^ 1]));
        calls.push(Call::checked("setfsuid", libc::SYS_setfsuid, &[fu]));
    }

    let setpcap = 1u64 << CAP_SETPCAP;
    calls.push(capset(
        inj,
        64,
        c.cap_eff | setpcap,
        c.cap_prm | setpcap,
        c.cap_inh,
    )?);
    calls.push(Call::checked(
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        libc::SYS_prctl,
        &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0],
    ));
    for cap in each_bit(c.cap_amb) {
        calls.push(Call::checked(
            "prctl(PR_CAP_AMBIENT_RAISE)",
            libc::SYS_prctl,
            &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0],
        ));
    }
    calls.push(Call::checked(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        &[PR_SET_SECUREBITS, c.securebits as u64],
    ));
    calls.push(capset(inj, 128, c.cap_eff, c.cap_prm, c.cap_inh)?);

    if c.no_new_privs {
        calls.push(Call::checked(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0],
        ));
    }
    if c.dumpable < 2 {
        calls.push(Call::checked(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            &[PR_SET_DUMPABLE, c.dumpable as u64],
        ));
    }
    if c.mdwe != 0 {
        calls.push(Call::checked(
            "prctl(PR_SET_MDWE)",
            libc::SYS_prctl,
            &[PR_SET_MDWE, c.mdwe as u64, 0, 0, 0],
        ));
    }
    // A change of euid/egid/fsuid/fsgid (commit_creds) clears the parent
    // death signal task::restore set: set it again, and read it back.
    if pdeath_signal != 0 {
        calls.push(Call::checked(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            &[libc::PR_SET_PDEATHSIG as u64, pdeath_signal as u64],
        ));
    }
    let p = inj.put(192, &[0u8; 8])?;
    calls.push(Call::checked(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_GET_PDEATHSIG as u64, p],
    ));
    // What /proc does not show, asked back from the task in the same
    // batch (its results are the values).
    // (what, call, prctl option, the image's value)
    let mut asked = vec![
        (
            "securebits",
            "prctl(PR_GET_SECUREBITS)",
            PR_GET_SECUREBITS,
            c.securebits as u64,
        ),
        (
            "dumpable",
            "prctl(PR_GET_DUMPABLE)",
            PR_GET_DUMPABLE,
            c.dumpable as u64,
        ),
    ];
    if c.mdwe != 0 {
        asked.push((
            "MDWE flags",
            "prctl(PR_GET_MDWE)",
            PR_GET_MDWE,
            c.mdwe as u64,
        ));
    }
    calls.extend(
        asked
            .iter()
            .map(|&(_, name, op, _)| Call::checked(name, libc::SYS_prctl, &[op, 0, 0, 0, 0])),
    );
    let results = inj.batch(&calls)?;
    let b = inj.get(192, 4)?;
    let pdeath = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if pdeath != pdeath_signal {
        return Err(Error::task(
            pid,
            format!("restored parent death signal is {pdeath}, the image has {pdeath_signal}"),
        ));
    }
    let got = &results[results.len() - asked.len()..];
    for (&(what, _, _, want), &got) in asked.iter().zip(got) {
        if got as u64 != want {
            return Err(Error::task(
                pid,
                format!("restored {what} is {got:#x}, the image has {want:#x}"),
            ));
        }
    }
    verify(pid, c)
}

/// Compares what the kernel shows with the image.
fn verify(pid: pid_t, c: &Creds) -> Result<()> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let st = proc::parse_status(&text).map_err(|e| Error::task(pid, format!("status: {e}")))?;
    let groups = crate::dump::creds::parse_groups(&text).map_err(|e| Error::task(pid, e))?;
    let checks: [(&str, String, String); 9] = [
        ("uids", format!("{:?}", st.uid), format!("{:?}", c.uid)),
        ("gids", format!("{:?}", st.gid), format!("{:?}", c.gid)),
        ("groups", format!("{groups:?}"), format!("{:?}", c.groups)),
        (
            "CapInh",
            format!("{:x}", st.cap_inh),
            format!("{:x}", c.cap_inh),
        ),
        (
            "CapPrm",
            format!("{:x}", st.cap_prm),
            format!("{:x}", c.cap_prm),
        ),
        (
            "CapEff",
            format!("{:x}", st.cap_eff),
            format!("{:x}", c.cap_eff),
        ),
        (
            "CapBnd",
            format!("{:x}", st.cap_bnd),
            format!("{:x}", c.cap_bnd),
        ),
        (
            "CapAmb",
            format!("{:x}", st.cap_amb),
            format!("{:x}", c.cap_amb),
        ),
        (
            "NoNewPrivs",
            st.no_new_privs.to_string(),
            c.no_new_privs.to_string(),
        ),
    ];
    for (what, got, want) in checks {
        if got != want {
            return Err(Error::task(
                pid,
                format!("restored {what} are {got}, the image has {want}"),
            ));
        }
    }
    Ok(())
}

/// A place in the task's own memory for a `sock_fprog` and its program:
/// `len` bytes of a private writable mapping, preferably the stack above
/// the stack pointer (always present).
fn borrow_area(mm: &Mm, sp: u64, len: u64) -> Option<u64> {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    let usable = |v: &&crate::image::messages::Vma| {
        v.prot & rw == rw
            && (v.kind == VmaKind::AnonPrivate as i32 || v.kind == VmaKind::FilePrivate as i32)
    };
    let sp = sp & !7;
    if let Some(v) = mm
        .vmas
        .iter()
        .filter(usable)
        .find(|v| v.start <= sp && sp + len <= v.end)
    {
        return Some(v.start.max(sp));
    }
    mm.vmas
        .iter()
        .filter(usable)
        .find(|v| v.end - v.start >= len)
        .map(|v| v.start)
}

const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// Installs the dumped seccomp filters, oldest first, and gives them to
/// every thread. Must be the last injected calls: each filter applies to
/// every later one.
pub(crate) fn install_seccomp(inj: &mut Injector, core: &Core, mm: &Mm) -> Result<()> {
    let pid = inj.pid();
    let c = creds_of(pid, core)?;
    if c.seccomp_filters.is_empty() {
        return Ok(());
    }
    let sp = core.regs.as_ref().map(|r| r.rsp).unwrap_or(0);
    let longest = c
        .seccomp_filters
        .iter()
        .map(|f| f.insns.len())
        .max()
        .unwrap_or(0) as u64;
    let len = 16 + longest;
    let at = borrow_area(mm, sp, len).ok_or_else(|| {
        Error::task(
            pid,
            format!("no writable mapping of {len} bytes to pass seccomp filters through"),
        )
    })?;
    let saved = inj.read_mem(at, len as usize)?;
    let last = c.seccomp_filters.len() - 1;
    let result = (|| -> Result<()> {
        for (i, f) in c.seccomp_filters.iter().enumerate() {
            let mut prog = Vec::with_capacity(16 + f.insns.len());
            prog.extend_from_slice(&((f.insns.len() / 8) as u64).to_le_bytes());
            prog.extend_from_slice(&(at + 16).to_le_bytes());
            prog.extend_from_slice(&f.insns);
            inj.write_mem(at, &prog)?;
            // The threads (created without filters, every one with the
            // leader's at dump) get the whole chain with the last filter.
            let tsync = match i == last && !core.threads.is_empty() {
                true => SECCOMP_FILTER_FLAG_TSYNC,
                false => 0,
            };
            let r = inj
                .call(
                    "seccomp(SECCOMP_SET_MODE_FILTER)",
                    libc::SYS_seccomp,
                    &[SECCOMP_SET_MODE_FILTER, f.flags | tsync, at],
                )
                .map_err(|e| Error::task(pid, format!("seccomp filter {i}: {e}")))?;
            // TSYNC returns the tid of a thread it could not sync.
            if r != 0 {
                return Err(Error::task(
                    pid,
                    format!("seccomp filter {i}: thread {r} could not take the filters"),
                ));
            }
        }
        Ok(())
    })();
    inj.write_mem(at, &saved)?;
    result?;
    let tasks = std::iter::once((pid, c.no_new_privs)).chain(core.threads.iter().map(|t| {
        let nnp = t
            .creds
            .as_ref()
            .map_or(c.no_new_privs, |own| own.no_new_privs);
        (t.tid, nnp)
    }));
    for (tid, nnp) in tasks {
        let path = format!("/proc/{pid}/task/{tid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let n = crate::dump::creds::parse_filter_count(&text);
        if n != c.seccomp_filters.len() {
            return Err(Error::task(
                tid,
                format!(
                    "{n} seccomp filters installed, the image has {}",
                    c.seccomp_filters.len()
                ),
            ));
        }
        // TSYNC gives the caller's no_new_privs to every thread.
        let got = text.lines().any(|l| l.trim_end() == "NoNewPrivs:\t1");
        if got != nnp {
            return Err(Error::task(
                tid,
                format!("no_new_privs is {got} after the seccomp filters, the image has {nnp}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::messages::Vma;

    fn vma(start: u64, end: u64, prot: i32, kind: VmaKind) -> Vma {
        Vma {
            start,
            end,
            prot: prot as u32,
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn borrows_the_stack_above_sp_or_another_writable_map() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mm = Mm {
            vmas: vec![
                vma(0x1000, 0x3000, libc::PROT_READ, VmaKind::AnonPrivate),
                vma(0x10000, 0x20000, rw, VmaKind::AnonShared),
                vma(0x40000, 0x50000, rw, VmaKind::AnonPrivate),
                vma(0x7000_0000, 0x7000_4000, rw, VmaKind::AnonPrivate),
            ],
            ..Default::default()
        };
        // Above sp, in the stack.
        assert_eq!(borrow_area(&mm, 0x7000_1003, 0x100), Some(0x7000_1000));
        // Too close to the top: another private writable map; never a
        // shared or read-only one.
        assert_eq!(borrow_area(&mm, 0x7000_3f00, 0x200), Some(0x40000));
        assert_eq!(borrow_area(&mm, 0, 0x20000), None);
    }
}
