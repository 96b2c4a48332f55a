//! xmm/ymm0-15, MXCSR, the x87 control word and x87 stack registers held
//! in registers across checkpoint/restore; the AVX (ymm) variant runs when
//! the CPU supports it, see `zdtm_tests::fpu`.

fn main() {
    zdtm_tests::fpu::main(false)
}
