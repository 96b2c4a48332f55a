#!/usr/bin/env bash
# Runs a command as root (the engine and its tests need it), keeping the
# caller's HOME, PATH and Rust toolchain, and any CRUST_*/ZDTM_* settings.
# GitHub's runners give their user passwordless sudo.
set -euo pipefail
[ "$(id -u)" = 0 ] && exec "$@"
keep=("PATH=$PATH" "HOME=$HOME" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}")
while IFS='=' read -r name _; do
    case $name in CRUST_*|ZDTM_*|CARGO_TERM_*) keep+=("$name=${!name}") ;; esac
done < <(env)
exec sudo env "${keep[@]}" "$@"
