#!/usr/bin/env bash
# Installs the system packages the build and the tests need, on a fresh
# Debian/Ubuntu machine (or a GitHub Actions VM). Idempotent.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The remote-lazy flavors put the destination in a network namespace joined
# by a veth pair: ip(8) from iproute2.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
if [ "$(id -u)" != 0 ]; then
    echo "setup: the engine and its tests need root (ptrace, clone3 set_tid, PR_SET_MM_MAP): run as root or with sudo" >&2
    exit 1
fi
