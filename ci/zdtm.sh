#!/usr/bin/env bash
# The main job: build everything, then run the whole zdtm suite on the
# bundled engine. Extra arguments go to `zdtm run` (default: -a).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh
cargo build --release --workspace
args=("$@")
((${#args[@]})) || args=(-a)
exec target/release/zdtm run "${args[@]}"
