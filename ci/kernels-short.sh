#!/usr/bin/env bash
# The short kernel part of CI (.ci/run, through ci/test-all.sh): so that the
# soft-dirty tracker, which this machine's kernel lacks, cannot silently rot.
# Boots Debian's 6.1 kernel (soft-dirty, no PAGEMAP_SCAN, no uffd WP_ASYNC)
# under QEMU, checks there that crust's auto tracker is soft-dirty, and runs
# the engine's pre-dump tests that apply to that kernel and the pre-dump
# flavors of the zdtm suite's memory tests with the soft-dirty tracker.
# The full matrix is `ci/kernels.sh 6.1 6.12` (README, docs/kernels.md).
# Extra arguments go to `zdtm run` instead of the test selection below.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
# The memory tests: what a dirty tracker can get wrong. Under TCG (no KVM)
# each run takes ~7 s, so the whole suite would not fit CI's budget.
tests=(maps_anon heap growsdown maps_file_private maps_file_shared mprotect_split
    prot_none mremap zero_pages shared_anon
    trans_random_writes trans_mremap trans_munmap_remap trans_dontneed
    trans_new_regions trans_churn)
args=("$@")
if ! ((${#args[@]})); then
    for t in "${tests[@]}"; do args+=(-t "$t"); done
fi
args+=(-f predump-read -f predump-splice)
# zdtm's --tracker when it has it; else the wrapper that adds it to crust.
cargo build --release --workspace -q
if target/release/zdtm run --help 2>/dev/null | grep -q -- '--tracker'; then
    args+=(--tracker soft-dirty)
else
    args+=(--crust "$repo/ci/crust-with-tracker.sh")
    export CRUST_TRACKER=soft-dirty
fi
export CRUST_KERNELS_EXPECT_TRACKER=soft-dirty
export CRUST_KERNELS_OUT=${CRUST_KERNELS_OUT:-$repo/zdtm-kernels/short}
# The uffd-wp cases need uffd WP_ASYNC (6.7+); the tracker test uses the
# auto tracker, whose uffd-wp probe on 6.1 leaves a userfaultfd in the task
# (docs/kernels.md, known failures).
export CRUST_KERNELS_ENGINE_ARGS=${CRUST_KERNELS_ENGINE_ARGS:---skip uffd_wp --skip tracker_stays_out_of_the_way}
exec ci/kernels.sh 6.1 -- "${args[@]}"
