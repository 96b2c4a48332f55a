//! The SSE-only variant of `fpu_avx` (xmm0-15, MXCSR, x87), see
//! `zdtm_tests::fpu`.

fn main() {
    zdtm_tests::fpu::main(true)
}
