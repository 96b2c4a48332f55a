//! Signal dispositions, the blocked mask and the alternate signal stack.
//!
//! Setup installs handlers with various flags (SA_RESTART, SA_SIGINFO,
//! SA_NODEFER, SA_RESETHAND, SA_ONSTACK, SA_NOCLDSTOP) and masks, ignores
//! some signals, blocks SIGUSR2 and SIGRTMIN+3, and sets a sigaltstack.
//! After restore: every signal's action (handler, flags, restorer, mask)
//! equals the one before, as do the blocked mask and the altstack; the
//! intended values are also checked directly. Then the handlers are
//! exercised: they run, with the right mask, on the alternate stack for
//! SA_ONSTACK, SA_RESETHAND resets, SA_NODEFER does not block, SA_SIGINFO
//! handlers get the siginfo, ignored signals are ignored.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};

use zdtm::{ensure, ensure_eq, TestResult};
use zdtm_tests::{
    blocked_mask, fmt_sigaction, get_sigaction, set_sigaction, sig_bits, sigprocmask, sigrt,
    sigset_bits,
};

const ALTSTACK_SIZE: usize = 64 << 10;
/// The kernel's SA_RESTORER flag (x86_64), set by the C library.
const SA_RESTORER: i32 = 0x0400_0000;

static USR1_HITS: AtomicUsize = AtomicUsize::new(0);
static USR1_MASK: AtomicU64 = AtomicU64::new(0);
static USR1_SP: AtomicUsize = AtomicUsize::new(0);
static USR2_HITS: AtomicUsize = AtomicUsize::new(0);
static USR2_MASK: AtomicU64 = AtomicU64::new(0);
static USR2_CODE: AtomicI32 = AtomicI32::new(0);
static USR2_PID: AtomicI32 = AtomicI32::new(0);
static HUP_HITS: AtomicUsize = AtomicUsize::new(0);
static HUP_SP: AtomicUsize = AtomicUsize::new(0);
static ALRM_HITS: AtomicUsize = AtomicUsize::new(0);
static ALRM_SP: AtomicUsize = AtomicUsize::new(0);
static ALRM_SS_FLAGS: AtomicI32 = AtomicI32::new(-1);
static RT_HITS: AtomicUsize = AtomicUsize::new(0);
static RT_VALUE: AtomicUsize = AtomicUsize::new(0);
static RT_MASK: AtomicU64 = AtomicU64::new(0);

/// The blocked mask inside a handler (async-signal-safe).
fn mask_now() -> u64 {
    sigset_bits(&blocked_mask())
}

/// An address on the current stack.
#[inline(never)]
fn stack_addr() -> usize {
    let local = 0u8;
    std::hint::black_box(&local) as *const u8 as usize
}

extern "C" fn h_usr1(_sig: i32) {
    USR1_MASK.store(mask_now(), SeqCst);
    USR1_SP.store(stack_addr(), SeqCst);
    USR1_HITS.fetch_add(1, SeqCst);
}

extern "C" fn h_usr2(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    USR2_MASK.store(mask_now(), SeqCst);
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers.
    unsafe {
        USR2_CODE.store((*info).si_code, SeqCst);
        USR2_PID.store((*info).si_pid(), SeqCst);
    }
    USR2_HITS.fetch_add(1, SeqCst);
}

extern "C" fn h_hup(_sig: i32) {
    HUP_SP.store(stack_addr(), SeqCst);
    HUP_HITS.fetch_add(1, SeqCst);
}

extern "C" fn h_alrm(_sig: i32, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    ALRM_SP.store(stack_addr(), SeqCst);
    // SAFETY: a zeroed stack_t is valid storage; a null new stack only queries.
    let flags = unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        ss.ss_flags
    };
    ALRM_SS_FLAGS.store(flags, SeqCst);
    ALRM_HITS.fetch_add(1, SeqCst);
}

extern "C" fn h_rt(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    RT_MASK.store(mask_now(), SeqCst);
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers.
    RT_VALUE.store(unsafe { (*info).si_value().sival_ptr } as usize, SeqCst);
    RT_HITS.fetch_add(1, SeqCst);
}

extern "C" fn h_chld(_sig: i32) {}

/// (signal, handler, flags, mask) as installed.
fn intended() -> Vec<(i32, usize, i32, Vec<i32>)> {
    use libc::*;
    vec![
        (
            SIGUSR1,
            h_usr1 as *const () as usize,
            SA_RESTART,
            vec![SIGUSR2, SIGHUP],
        ),
        (
            SIGUSR2,
            h_usr2 as *const () as usize,
            SA_SIGINFO | SA_NODEFER,
            vec![],
        ),
        (
            SIGHUP,
            h_hup as *const () as usize,
            SA_RESETHAND | SA_ONSTACK,
            vec![SIGINT],
        ),
        (
            SIGALRM,
            h_alrm as *const () as usize,
            SA_ONSTACK | SA_SIGINFO | SA_RESTART,
            vec![SIGUSR1],
        ),
        (SIGINT, SIG_IGN, 0, vec![]),
        (SIGQUIT, SIG_IGN, SA_RESTART, vec![SIGTERM]),
        (
            sigrt(5),
            h_rt as *const () as usize,
            SA_SIGINFO,
            vec![sigrt(6), SIGRTMAX()],
        ),
        (
            SIGCHLD,
            h_chld as *const () as usize,
            SA_NOCLDSTOP | SA_RESTART,
            vec![],
        ),
    ]
}

/// Every queryable signal's action, as (signal, printable action).
fn all_actions() -> Vec<(i32, String)> {
    (1..=64)
        .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
        .filter_map(|s| get_sigaction(s).ok().map(|sa| (s, fmt_sigaction(&sa))))
        .collect()
}

fn altstack() -> TestResult<(usize, usize, i32)> {
    // SAFETY: a zeroed stack_t is valid storage; a null new stack only queries.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) } != 0 {
        return Err(zdtm::os_err("sigaltstack query"));
    }
    Ok((ss.ss_sp as usize, ss.ss_size, ss.ss_flags))
}

struct State {
    actions: Vec<(i32, String)>,
    blocked: u64,
    stack: (usize, usize, i32),
}

fn setup(_: &zdtm::Args) -> TestResult<State> {
    for (sig, handler, flags, mask) in intended() {
        set_sigaction(sig, handler, flags, &mask)?;
    }
    sigprocmask(libc::SIG_BLOCK, &[libc::SIGUSR2, sigrt(3)])?;
    let sp = zdtm::mem::mmap_anon(ALTSTACK_SIZE, libc::PROT_READ | libc::PROT_WRITE)?;
    let ss = libc::stack_t {
        ss_sp: sp as *mut libc::c_void,
        ss_flags: 0,
        ss_size: ALTSTACK_SIZE,
    };
    // SAFETY: ss describes a fresh read-write mapping used only as the
    // signal stack.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(zdtm::os_err("sigaltstack"));
    }
    Ok(State {
        actions: all_actions(),
        blocked: sigset_bits(&blocked_mask()),
        stack: altstack()?,
    })
}

fn raise(sig: i32) -> TestResult {
    // SAFETY: raise has no memory-safety preconditions.
    if unsafe { libc::raise(sig) } != 0 {
        return Err(zdtm::os_err(&format!("raise({sig})")));
    }
    Ok(())
}

fn check(s: State) -> TestResult {
    // The whole table, exactly.
    let now = all_actions();
    ensure_eq!(now.len(), s.actions.len(), "number of queryable actions");
    for ((sig, a), (_, b)) in now.iter().zip(&s.actions) {
        ensure_eq!(a, b, "action of signal {sig}");
    }
    ensure_eq!(sigset_bits(&blocked_mask()), s.blocked, "blocked mask");
    ensure_eq!(altstack()?, s.stack, "sigaltstack");

    // The intended values.
    ensure_eq!(
        s.blocked,
        sig_bits(&[libc::SIGUSR2, sigrt(3)]),
        "blocked signals"
    );
    let (ss_sp, ss_size, ss_flags) = s.stack;
    ensure_eq!(
        (ss_size, ss_flags),
        (ALTSTACK_SIZE, 0),
        "altstack size/flags"
    );
    for (sig, handler, flags, mask) in intended() {
        let sa = get_sigaction(sig)?;
        ensure_eq!(sa.sa_sigaction, handler, "handler of signal {sig}");
        ensure_eq!(sa.sa_flags & !SA_RESTORER, flags, "flags of signal {sig}");
        ensure_eq!(
            sigset_bits(&sa.sa_mask),
            sig_bits(&mask),
            "mask of signal {sig}"
        );
    }
    let on_altstack = |sp: usize| sp >= ss_sp && sp < ss_sp + ss_size;

    // Exercise the handlers.
    raise(libc::SIGUSR1)?;
    ensure_eq!(USR1_HITS.load(SeqCst), 1, "SIGUSR1 handler runs");
    let want = s.blocked | sig_bits(&[libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP]);
    ensure_eq!(
        USR1_MASK.load(SeqCst),
        want,
        "mask inside the SIGUSR1 handler"
    );
    ensure!(
        !on_altstack(USR1_SP.load(SeqCst)),
        "SIGUSR1 handler ran on the altstack"
    );

    raise(libc::SIGALRM)?;
    ensure_eq!(ALRM_HITS.load(SeqCst), 1, "SIGALRM handler runs");
    let sp = ALRM_SP.load(SeqCst);
    ensure!(
        on_altstack(sp),
        "SA_ONSTACK SIGALRM handler ran at {sp:#x}, not on the altstack {ss_sp:#x}+{ss_size:#x}"
    );
    ensure_eq!(
        ALRM_SS_FLAGS.load(SeqCst),
        libc::SS_ONSTACK,
        "ss_flags in handler"
    );

    raise(libc::SIGHUP)?;
    ensure_eq!(HUP_HITS.load(SeqCst), 1, "SIGHUP handler runs");
    ensure!(
        on_altstack(HUP_SP.load(SeqCst)),
        "SIGHUP handler not on the altstack"
    );
    ensure_eq!(
        get_sigaction(libc::SIGHUP)?.sa_sigaction,
        libc::SIG_DFL,
        "SIGHUP handler after SA_RESETHAND"
    );

    raise(libc::SIGINT)?; // ignored: we survive
    raise(libc::SIGQUIT)?;

    raise(libc::SIGUSR2)?;
    ensure_eq!(USR2_HITS.load(SeqCst), 0, "blocked SIGUSR2 handled");
    ensure_eq!(
        zdtm_tests::pending_bits()?,
        sig_bits(&[libc::SIGUSR2]),
        "pending after raising blocked SIGUSR2"
    );
    sigprocmask(libc::SIG_UNBLOCK, &[libc::SIGUSR2])?;
    ensure_eq!(
        USR2_HITS.load(SeqCst),
        1,
        "SIGUSR2 handler after unblocking"
    );
    ensure_eq!(USR2_CODE.load(SeqCst), libc::SI_TKILL, "SIGUSR2 si_code");
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    ensure_eq!(USR2_PID.load(SeqCst), me, "SIGUSR2 si_pid");
    ensure_eq!(
        USR2_MASK.load(SeqCst) & sig_bits(&[libc::SIGUSR2]),
        0,
        "SIGUSR2 blocked in its SA_NODEFER handler"
    );

    let value = libc::sigval {
        sival_ptr: 0x5a5a as *mut libc::c_void,
    };
    // SAFETY: sigqueue to ourselves with a plain integer payload.
    if unsafe { libc::sigqueue(libc::getpid(), sigrt(5), value) } != 0 {
        return Err(zdtm::os_err("sigqueue"));
    }
    ensure_eq!(RT_HITS.load(SeqCst), 1, "SIGRTMIN+5 handler runs");
    ensure_eq!(RT_VALUE.load(SeqCst), 0x5a5a, "SIGRTMIN+5 si_value");
    let want =
        s.blocked & !sig_bits(&[libc::SIGUSR2]) | sig_bits(&[sigrt(5), sigrt(6), libc::SIGRTMAX()]);
    ensure_eq!(
        RT_MASK.load(SeqCst),
        want,
        "mask inside the SIGRTMIN+5 handler"
    );
    Ok(())
}

fn main() {
    zdtm::run(setup, check)
}
