//! The FPU/SSE/AVX register state test across checkpoint/restore.
//!
//! One inline asm block loads distinct patterns into xmm0-15 (ymm0-15, full
//! 256 bits, when the CPU and OS support AVX), MXCSR, the x87 control word
//! and two x87 stack registers, then blocks in a raw `futex` wait until
//! the SIGTERM handler (a trivial flag store) has run, and finally stores
//! all those registers back to memory. The compiler cannot touch the
//! registers in between, so any difference means the engine lost or
//! corrupted the extended register state. `fpu_avx` on a CPU without AVX
//! fails (it does not quietly test xmm only; the manifest's `needs`
//! makes the runner skip it there); `--no-avx` forces the SSE-only
//! variant; the log says which one ran.
//!
//! Used by the `fpu_avx` and `fpu_sse` test programs.

use zdtm::{ensure_eq, test_msg, TestResult};

/// Register image: 16 vector registers of 32 bytes (SSE uses the low 16
/// bytes), MXCSR at 512, x87 control word at 516, st(0) at 520, st(1) at
/// 528; 544/548 hold the caller's MXCSR/FCW during the asm block.
#[repr(C, align(64))]
struct Regs([u8; 576]);

const VEC_BYTES: usize = 512;
const MXCSR: u32 = 0xff81; // all masks, round toward zero, FTZ, IE flag set
const FCW: u16 = 0x0a7f; // all masks, double precision, round up
const ST0: f64 = 1.234_567_890_123_456_7e100;
const ST1: f64 = -6.789e-50;

impl Regs {
    fn input() -> Regs {
        let mut r = Regs([0; 576]);
        zdtm::pattern::fill_at(&mut r.0[..VEC_BYTES], 0xf9u64, 0);
        r.0[512..516].copy_from_slice(&MXCSR.to_ne_bytes());
        r.0[516..518].copy_from_slice(&FCW.to_ne_bytes());
        r.0[520..528].copy_from_slice(&ST0.to_ne_bytes());
        r.0[528..536].copy_from_slice(&ST1.to_ne_bytes());
        r
    }
}

/// SSE variant.
///
/// # Safety
///
/// Needs SSE2 (always present on x86_64); blocks until SIGTERM's flag (a
/// futex word, see `zdtm::sigterm_flag`) is set.
unsafe fn run_sse(inp: &Regs, out: &mut Regs) {
    let flag = zdtm::sigterm_flag().as_ptr();
    // SAFETY: the asm reads `inp` and writes `out` (both 576 bytes), reads
    // the flag byte, keeps the x87 stack balanced and restores the
    // callee-saved MXCSR/FCW control bits; all clobbered registers are
    // declared via clobber_abi("C") (rax, rcx, r11 are clobbered by syscall).
    unsafe {
        std::arch::asm!(
            "movdqu xmm0, [rdi + 0]",
            "movdqu xmm1, [rdi + 32]",
            "movdqu xmm2, [rdi + 64]",
            "movdqu xmm3, [rdi + 96]",
            "movdqu xmm4, [rdi + 128]",
            "movdqu xmm5, [rdi + 160]",
            "movdqu xmm6, [rdi + 192]",
            "movdqu xmm7, [rdi + 224]",
            "movdqu xmm8, [rdi + 256]",
            "movdqu xmm9, [rdi + 288]",
            "movdqu xmm10, [rdi + 320]",
            "movdqu xmm11, [rdi + 352]",
            "movdqu xmm12, [rdi + 384]",
            "movdqu xmm13, [rdi + 416]",
            "movdqu xmm14, [rdi + 448]",
            "movdqu xmm15, [rdi + 480]",
            // Save the caller's (callee-saved) control registers.
            "stmxcsr [r8 + 544]",
            "fnstcw [r8 + 548]",
            "ldmxcsr [rdi + 512]",
            "fldcw [rdi + 516]",
            "fld qword ptr [rdi + 528]",
            "fld qword ptr [rdi + 520]",
            // Sleep until the SIGTERM handler set the flag: FUTEX_WAIT
            // only sleeps while the flag still holds 0, so a SIGTERM that
            // lands between the check and the syscall is not lost (with
            // pause() it would be). syscall keeps r8 and r9.
            "2:",
            "cmp dword ptr [r9], 0",
            "jne 3f",
            "mov rdi, r9",
            "mov esi, 128", // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
            "xor edx, edx", // sleep while the flag is 0
            "xor r10d, r10d", // no timeout
            "mov eax, 202", // SYS_futex
            "syscall",
            "jmp 2b",
            "3:",
            "movdqu [r8 + 0], xmm0",
            "movdqu [r8 + 32], xmm1",
            "movdqu [r8 + 64], xmm2",
            "movdqu [r8 + 96], xmm3",
            "movdqu [r8 + 128], xmm4",
            "movdqu [r8 + 160], xmm5",
            "movdqu [r8 + 192], xmm6",
            "movdqu [r8 + 224], xmm7",
            "movdqu [r8 + 256], xmm8",
            "movdqu [r8 + 288], xmm9",
            "movdqu [r8 + 320], xmm10",
            "movdqu [r8 + 352], xmm11",
            "movdqu [r8 + 384], xmm12",
            "movdqu [r8 + 416], xmm13",
            "movdqu [r8 + 448], xmm14",
            "movdqu [r8 + 480], xmm15",
            "stmxcsr [r8 + 512]",
            "fnstcw [r8 + 516]",
            "fstp qword ptr [r8 + 520]",
            "fstp qword ptr [r8 + 528]",
            // Restore the caller's control registers.
            "ldmxcsr [r8 + 544]",
            "fldcw [r8 + 548]",
            in("rdi") inp.0.as_ptr(),
            in("r8") out.0.as_mut_ptr(),
            in("r9") flag,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// AVX variant.
///
/// # Safety
///
/// The CPU and OS must support AVX; blocks until SIGTERM's flag is set.
#[target_feature(enable = "avx")]
unsafe fn run_avx(inp: &Regs, out: &mut Regs) {
    let flag = zdtm::sigterm_flag().as_ptr();
    // SAFETY: as in run_sse; AVX support is guaranteed by the caller.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm0, [rdi + 0]",
            "vmovdqu ymm1, [rdi + 32]",
            "vmovdqu ymm2, [rdi + 64]",
            "vmovdqu ymm3, [rdi + 96]",
            "vmovdqu ymm4, [rdi + 128]",
            "vmovdqu ymm5, [rdi + 160]",
            "vmovdqu ymm6, [rdi + 192]",
            "vmovdqu ymm7, [rdi + 224]",
            "vmovdqu ymm8, [rdi + 256]",
            "vmovdqu ymm9, [rdi + 288]",
            "vmovdqu ymm10, [rdi + 320]",
            "vmovdqu ymm11, [rdi + 352]",
            "vmovdqu ymm12, [rdi + 384]",
            "vmovdqu ymm13, [rdi + 416]",
            "vmovdqu ymm14, [rdi + 448]",
            "vmovdqu ymm15, [rdi + 480]",
            // Save the caller's (callee-saved) control registers.
            "stmxcsr [r8 + 544]",
            "fnstcw [r8 + 548]",
            "ldmxcsr [rdi + 512]",
            "fldcw [rdi + 516]",
            "fld qword ptr [rdi + 528]",
            "fld qword ptr [rdi + 520]",
            // Sleep until the SIGTERM handler set the flag: FUTEX_WAIT
            // only sleeps while the flag still holds 0, so a SIGTERM that
            // lands between the check and the syscall is not lost (with
            // pause() it would be). syscall keeps r8 and r9.
            "2:",
            "cmp dword ptr [r9], 0",
            "jne 3f",
            "mov rdi, r9",
            "mov esi, 128", // FUTEX_WAIT | FUTEX_PRIVATE_FLAG
            "xor edx, edx", // sleep while the flag is 0
            "xor r10d, r10d", // no timeout
            "mov eax, 202", // SYS_futex
            "syscall",
            "jmp 2b",
            "3:",
            "vmovdqu [r8 + 0], ymm0",
            "vmovdqu [r8 + 32], ymm1",
            "vmovdqu [r8 + 64], ymm2",
            "vmovdqu [r8 + 96], ymm3",
            "vmovdqu [r8 + 128], ymm4",
            "vmovdqu [r8 + 160], ymm5",
            "vmovdqu [r8 + 192], ymm6",
            "vmovdqu [r8 + 224], ymm7",
            "vmovdqu [r8 + 256], ymm8",
            "vmovdqu [r8 + 288], ymm9",
            "vmovdqu [r8 + 320], ymm10",
            "vmovdqu [r8 + 352], ymm11",
            "vmovdqu [r8 + 384], ymm12",
            "vmovdqu [r8 + 416], ymm13",
            "vmovdqu [r8 + 448], ymm14",
            "vmovdqu [r8 + 480], ymm15",
            "stmxcsr [r8 + 512]",
            "fnstcw [r8 + 516]",
            "fstp qword ptr [r8 + 520]",
            "fstp qword ptr [r8 + 528]",
            // Restore the caller's control registers.
            "ldmxcsr [r8 + 544]",
            "fldcw [r8 + 548]",
            "vzeroupper",
            in("rdi") inp.0.as_ptr(),
            in("r8") out.0.as_mut_ptr(),
            in("r9") flag,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

fn compare(inp: &Regs, out: &Regs, avx: bool) -> TestResult {
    let width = if avx { 32 } else { 16 };
    let name = if avx { "ymm" } else { "xmm" };
    for i in 0..16 {
        let want = &inp.0[i * 32..i * 32 + width];
        let got = &out.0[i * 32..i * 32 + width];
        if got != want {
            return Err(format!("{name}{i}: got {got:02x?}, expected {want:02x?}"));
        }
    }
    let u32_at = |r: &Regs, o: usize| u32::from_ne_bytes(r.0[o..o + 4].try_into().unwrap());
    let u16_at = |r: &Regs, o: usize| u16::from_ne_bytes(r.0[o..o + 2].try_into().unwrap());
    let u64_at = |r: &Regs, o: usize| u64::from_ne_bytes(r.0[o..o + 8].try_into().unwrap());
    ensure_eq!(
        format!("{:#x}", u32_at(out, 512)),
        format!("{MXCSR:#x}"),
        "MXCSR"
    );
    ensure_eq!(
        format!("{:#x}", u16_at(out, 516)),
        format!("{FCW:#x}"),
        "x87 control word"
    );
    ensure_eq!(u64_at(out, 520), ST0.to_bits(), "st(0) bits");
    ensure_eq!(u64_at(out, 528), ST1.to_bits(), "st(1) bits");
    Ok(())
}

/// Runs the whole test; `force_sse` skips the AVX variant.
pub fn main(force_sse: bool) -> ! {
    let args = zdtm::init();
    let want_avx = !force_sse && !args.has("no-avx");
    let avx = std::arch::is_x86_feature_detected!("avx");
    if want_avx && !avx {
        // Never test less than the name says and call it a PASS: the
        // manifest's `needs = ["avx"]` makes the runner report a SKIP.
        zdtm::fail("this CPU has no AVX: the ymm registers cannot be tested here");
    }
    let avx = want_avx;
    test_msg!(
        "testing {}",
        if avx {
            "ymm0-15 (AVX)"
        } else {
            "xmm0-15 (SSE)"
        }
    );
    let inp = Regs::input();
    let mut out = Regs([0; 576]);
    // The asm waits for the flag itself, so SIGTERM must be deliverable.
    let blocked = crate::blocked_mask();
    // SAFETY: blocked is a valid sigset_t.
    if unsafe { libc::sigismember(&blocked, libc::SIGTERM) } == 1 {
        zdtm::fail("SIGTERM is blocked");
    }
    zdtm::ready();
    if avx {
        // SAFETY: AVX support was detected above.
        unsafe { run_avx(&inp, &mut out) };
    } else {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe { run_sse(&inp, &mut out) };
    }
    zdtm::finish(compare(&inp, &out, avx))
}
