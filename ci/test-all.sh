#!/usr/bin/env bash
# Runs every test: formatting and lints, unit and integration tests (which
# checkpoint and restore real processes), then the zdtm suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace
cargo test --release --workspace
target/release/zdtm run -a
