//! Conversions between kernel register structs and image messages.

use crate::image::messages::Regs as RegsImg;
use crate::sys::Regs;

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
