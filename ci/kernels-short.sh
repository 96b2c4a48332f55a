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
# Memory tests, the ones a dirty tracker can get wrong: under TCG (no KVM)
# each run takes 15-35 s, so the whole suite (~6 h for every flavor) does
# not fit CI's budget; ci/kernels.sh 6.1 runs it.
tests=(maps_anon heap growsdown mremap zero_pages shared_anon
    trans_random_writes trans_dontneed trans_new_regions)
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
# The engine's pre-dump test that pre-dumps with soft-dirty where `crust
# check` offers it (the others take minutes under TCG, or need uffd WP_ASYNC
# (6.7+), or hit the auto tracker's bug on 6.1: docs/kernels.md).
export CRUST_KERNELS_ENGINE_ARGS=${CRUST_KERNELS_ENGINE_ARGS:-unavailable_tracker_is_refused}
exec ci/kernels.sh 6.1 -- "${args[@]}"
