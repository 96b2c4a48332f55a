#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and integration tests (which
# checkpoint and restore real processes), then the zdtm suite, then its
# short kernel part (the pre-dump flavors on Debian's 6.1 in a VM with the
# soft-dirty tracker, which this machine's kernel lacks: ci/kernels-short.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
target/release/zdtm run -a
ci/kernels-short.sh
