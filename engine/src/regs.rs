//! Conversions between kernel register structs and image messages, and
//! the syscall-restart rules applied when a stopped task resumes.

use crate::image::messages::Regs as RegsImg;
use crate::sys::Regs;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;

/// How a syscall that was interrupted by the checkpoint is to be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The same task goes on: a restart-block syscall (nanosleep...) resumes
    /// through restart_syscall with the kernel-held remaining time.
    SameTask,
    /// A new task: it has no restart block, so such a syscall returns EINTR,
    /// as after a signal (what CRIU does too).
    NewTask,
}

/// Registers as the task must get them when it leaves a ptrace stop at
/// which its registers were overwritten: the kernel only applies syscall
/// restart on the signal path, so do it here, the same way
/// (arch/x86/kernel/signal.c, no handler case). orig_rax becomes -1 so
/// nothing restarts twice.
pub fn for_resume(mut r: Regs, how: Resume) -> Regs {
    if r.orig_rax as i64 >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => match how {
                Resume::SameTask => {
                    r.rax = NR_RESTART_SYSCALL;
                    r.rip -= 2;
                }
                Resume::NewTask => r.rax = (-libc::EINTR) as i64 as u64,
            },
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

pub fn to_image(r: &Regs) -> RegsImg {
    RegsImg {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// Image registers over a template from the live stub (the template is
/// overwritten field by field; it only supplies the struct).
pub fn from_image(i: &RegsImg, mut r: Regs) -> Regs {
    r.r15 = i.r15;
    r.r14 = i.r14;
    r.r13 = i.r13;
    r.r12 = i.r12;
    r.rbp = i.rbp;
    r.rbx = i.rbx;
    r.r11 = i.r11;
    r.r10 = i.r10;
    r.r9 = i.r9;
    r.r8 = i.r8;
    r.rax = i.rax;
    r.rcx = i.rcx;
    r.rdx = i.rdx;
    r.rsi = i.rsi;
    r.rdi = i.rdi;
    r.orig_rax = i.orig_rax;
    r.rip = i.rip;
    r.cs = i.cs;
    r.eflags = i.eflags;
    r.rsp = i.rsp;
    r.ss = i.ss;
    r.fs_base = i.fs_base;
    r.gs_base = i.gs_base;
    r.ds = i.ds;
    r.es = i.es;
    r.fs = i.fs;
    r.gs = i.gs;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: i64, orig: i64) -> Regs {
        // SAFETY: user_regs_struct is plain integers; all-zero is valid.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rax = rax as u64;
        r.orig_rax = orig as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restarts_interrupted_syscalls() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let r = for_resume(regs(code, 0), Resume::NewTask);
            assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x1000, u64::MAX));
        }
    }

    #[test]
    fn restart_block_depends_on_task() {
        let same = for_resume(regs(ERESTART_RESTARTBLOCK, 35), Resume::SameTask);
        assert_eq!((same.rax, same.rip), (NR_RESTART_SYSCALL, 0x1000));
        let new = for_resume(regs(ERESTART_RESTARTBLOCK, 35), Resume::NewTask);
        assert_eq!((new.rax as i64, new.rip), (-(libc::EINTR as i64), 0x1002));
    }

    #[test]
    fn leaves_user_code_and_finished_syscalls_alone() {
        let r = for_resume(regs(5, -1), Resume::NewTask);
        assert_eq!((r.rax, r.rip), (5, 0x1002));
        let r = for_resume(regs(-(libc::EAGAIN as i64), 0), Resume::NewTask);
        assert_eq!((r.rax as i64, r.rip), (-(libc::EAGAIN as i64), 0x1002));
    }
}
