#!/usr/bin/env bash
# Boots distribution kernels in a VM with this machine's filesystem shared
# (virtme-ng over QEMU: KVM where /dev/kvm works, TCG where it does not) and
# runs inside each, as root with full capabilities: `crust check`, the
# engine's tests that matter for dirty trackers, and `zdtm run`.
#
#   ci/kernels.sh VERSION... [-- ZDTM-ARGS]
#
# VERSION: 6.1 (Debian 12 "bookworm"), 6.12 (Debian 13 "trixie"), or an exact
# Debian package name (linux-image-...-amd64[-unsigned]) of either suite.
# ZDTM-ARGS go to `zdtm run` (default: -a, every flavor). Unless they name a
# tracker, the suite runs once per dirty tracker the kernel offers (`crust
# check`) when zdtm has `--tracker`, else once with crust's auto tracker.
#
# It installs what it needs (qemu-system-x86, kmod, busybox-static from the
# distribution; virtme-ng from PyPI into a venv) and caches downloads in
# $CRUST_KERNELS_CACHE (default ~/.cache/crust-kernels).
#
# Environment:
#   CRUST_KERNELS_CACHE    cache dir (venv, .deb packages, extracted kernels)
#   CRUST_KERNELS_OUT      results dir (default zdtm-kernels/): per kernel
#                          check.txt, engine-*.log, zdtm-*.log, junit, logs
#   CRUST_KERNELS_ACCEL    auto (default), kvm or tcg
#   CRUST_KERNELS_CPUS     guest CPUs (default: host CPUs)
#   CRUST_KERNELS_MEM      guest memory (default 4G)
#   CRUST_KERNELS_TIMEOUT  seconds per kernel before the VM is killed (default 10800)
#   CRUST_KERNELS_ENGINE_TESTS  engine test targets to run (default "predump";
#                          "none" for none)
#   CRUST_KERNELS_ENGINE_ARGS   arguments for every engine test binary
#                          (libtest's: filters, --skip NAME, --test-threads N)
#   CRUST_KERNELS_KEEP_PAGES=1  copy the page images of failed runs out too
#   CRUST_KERNELS_EXPECT_TRACKER  fail unless crust's auto tracker on the
#                          kernel is this one (the short CI part uses soft-dirty)
#
# Exit status: 0 when everything passed on every kernel, 1 otherwise, 2 on
# a usage or setup error.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

die() { echo "kernels: $*" >&2; exit 2; }
say() { echo "kernels: $*" >&2; }

versions=()
zargs=()
while (($#)); do
    if [ "$1" = "--" ]; then
        shift
        zargs=("$@")
        break
    fi
    case $1 in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) versions+=("$1") ;;
    esac
    shift
done
((${#versions[@]})) || die "usage: ci/kernels.sh VERSION... [-- ZDTM-ARGS] (e.g. 6.1 6.12)"
((${#zargs[@]})) || zargs=(-a)

cache=${CRUST_KERNELS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crust-kernels}
out=${CRUST_KERNELS_OUT:-$repo/zdtm-kernels}
accel=${CRUST_KERNELS_ACCEL:-auto}
cpus=${CRUST_KERNELS_CPUS:-$(nproc)}
mem=${CRUST_KERNELS_MEM:-4G}
vm_timeout=${CRUST_KERNELS_TIMEOUT:-10800}
engine_tests=${CRUST_KERNELS_ENGINE_TESTS:-predump}
virtme_version=1.42
mkdir -p "$cache" "$out"
out=$(cd "$out" && pwd)
export PATH="$cache/venv/bin:$PATH:/usr/sbin:/sbin"

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

# --- what the host needs -------------------------------------------------
setup() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
    command -v depmod >/dev/null 2>&1 || need+=(kmod)
    command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
    command -v file >/dev/null 2>&1 || need+=(file)
    command -v xz >/dev/null 2>&1 || need+=(xz-utils)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    if ((${#need[@]})); then
        say "installing ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ! [ -x "$cache/venv/bin/vng" ] || [ "$("$cache/venv/bin/vng" --version 2>/dev/null)" != "virtme-ng $virtme_version" ]; then
        say "installing virtme-ng $virtme_version into $cache/venv"
        rm -rf "$cache/venv"
        python3 -m venv "$cache/venv"
        "$cache/venv/bin/pip" install -q "virtme-ng==$virtme_version"
    fi
}

# --- the binaries the guest runs (built here, never inside the guest) ------
engine_bins=()
build() {
    ci/setup.sh
    cargo build --release --workspace
    [ "$engine_tests" = none ] && return 0
    local t line
    for t in $engine_tests; do
        # "Executable tests/predump.rs (target/release/deps/predump-HASH)"
        line=$(cargo test --release -p crust --test "$t" --no-run 2>&1 | grep -E "Executable .*\(.*\)" | tail -1) ||
            die "cannot build the engine test $t"
        line=${line##*(}
        engine_bins+=("$repo/${line%)}")
    done
}

# --- kernels: Debian's packages --------------------------------------------
suite_of() {
    case $1 in
        6.1|6.1.*|linux-image-6.1.*) echo bookworm ;;
        6.12|6.12.*|linux-image-6.12.*) echo trixie ;;
        *) die "no Debian suite known for kernel $1 (known: 6.1 bookworm, 6.12 trixie)" ;;
    esac
}

# Prints "FILENAME SHA256" of the newest generic amd64 image of VERSION in
# the suite's Packages index (or of the exact package name given).
resolve() {
    local ver=$1 suite idx
    suite=$(suite_of "$ver")
    idx="$cache/Packages-$suite"
    if ! [ -s "$idx" ] || [ -n "$(find "$idx" -mmin +1440)" ]; then
        curl -fsSL "https://deb.debian.org/debian/dists/$suite/main/binary-amd64/Packages.xz" | xz -d >"$idx.new" ||
            die "cannot fetch the $suite Packages index from deb.debian.org"
        mv "$idx.new" "$idx"
    fi
    awk -v want="$ver" '
        function flush() {
            if (pkg != "" && file != "" && sha != "") {
                ok = 0
                if (want ~ /^linux-image-/) ok = (pkg == want)
                else {
                    p = want; gsub(/[.]/, "[.]", p)
                    ok = (pkg ~ ("^linux-image-" p "[.][0-9]+(-[0-9]+)?(\\+deb[0-9]+)?-amd64-unsigned$")) ||
                         (pkg ~ ("^linux-image-" p "(-[0-9]+)?(\\+deb[0-9]+)?-amd64-unsigned$"))
                }
                if (ok) print ver, file, sha
            }
            pkg = file = sha = ver = ""
        }
        /^Package: / { pkg = $2 }
        /^Version: / { ver = $2 }
        /^Filename: / { file = $2 }
        /^SHA256: / { sha = $2 }
        /^$/ { flush() }
        END { flush() }
    ' "$idx" | sort -V | tail -1 | cut -d' ' -f2-
}

# Prints the path of the vmlinuz of VERSION, downloading and extracting the
# package on first use (modules next to it, as virtme-ng expects).
kernel() {
    local ver=$1 pinned="$cache/pin-$1" file sha stamp deb dir
    if [ -s "$pinned" ]; then
        read -r file sha stamp <"$pinned"
    fi
    deb="$cache/debs/$(basename "${file:-none}")"
    if [ -z "${file:-}" ] || ! [ -s "$deb" ]; then
        read -r file sha < <(resolve "$ver") || true
        stamp=$(date -u +%Y%m%dT%H%M%SZ)
        [ -n "${file:-}" ] || die "no linux-image package for $ver in the $(suite_of "$ver") index"
        deb="$cache/debs/$(basename "$file")"
    fi
    if ! [ -s "$deb" ]; then
        mkdir -p "$cache/debs"
        say "downloading $file"
        curl -fsSL -o "$deb.part" "https://deb.debian.org/debian/$file" ||
            curl -fsSL -o "$deb.part" "https://snapshot.debian.org/archive/debian/${stamp:-now}/$file" ||
            die "cannot download $file"
        echo "$sha  $deb.part" | sha256sum -c --quiet - >&2 || { rm -f "$deb.part"; die "sha256 mismatch for $file"; }
        mv "$deb.part" "$deb"
    fi
    # The pin: package file, its SHA256 from the index, and when it was
    # chosen (snapshot.debian.org serves it at that time once the pool
    # dropped it).
    echo "$file $sha ${stamp:-}" >"$pinned"
    dir="$cache/kernels/$(basename "$deb" .deb)"
    if ! [ -e "$dir/.done" ]; then
        say "extracting $(basename "$deb")"
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        touch "$dir/.done"
    fi
    local img
    img=$(ls "$dir"/boot/vmlinuz-* 2>/dev/null | head -1)
    [ -n "$img" ] || die "no vmlinuz in $deb"
    echo "$img"
}

vng_run() { # IMG ACCEL CMD...
    local img=$1 acc=$2
    shift 2
    local flags=(--run "$img" --cpus "$cpus" --memory "$mem" --rwdir "$repo" --rwdir "$out" --verbose)
    [ "$acc" = kvm ] || flags+=(--disable-kvm)
    vng "${flags[@]}" --exec "$*"
}

# KVM here may exist and still refuse ordinary guests (QEMU aborts setting
# MSRs): boot once with it and fall back to TCG when that fails.
pick_accel() {
    local img=$1
    case $accel in
        kvm|tcg) echo "$accel"; return ;;
        auto) ;;
        *) die "CRUST_KERNELS_ACCEL must be auto, kvm or tcg" ;;
    esac
    if [ -w /dev/kvm ] && timeout 120 bash -c "$(declare -f vng_run); cpus=$cpus mem=$mem repo=$repo out=$out vng_run '$img' kvm 'echo crust-kvm-ok'" 2>&1 | grep -q '^crust-kvm-ok'; then
        echo kvm
    else
        echo tcg
    fi
}

setup
build
say "results in $out"
printf '%s\n' "${engine_bins[@]}" >"$out/engine-tests"
printf '%s\n' "${zargs[@]}" >"$out/zdtm-args"
echo "${CRUST_KERNELS_ENGINE_ARGS:-}" >"$out/engine-args"

vm_pid=""
trap '[ -z "$vm_pid" ] || kill -- -"$vm_pid" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
rc=0
summary=()
acc=""
for ver in "${versions[@]}"; do
    img=$(kernel "$ver")
    [ -n "$acc" ] || { acc=$(pick_accel "$img"); say "accelerator: $acc"; }
    kdir="$out/$ver"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    say "booting $(basename "$img") ($acc, $cpus CPUs, $mem)"
    start=$(date +%s)
    set +e
    # timeout(1) leads a process group of its own: the trap ends the VM
    # with this script.
    timeout --kill-after=30 "$vm_timeout" bash -c "$(declare -f vng_run); cpus=$cpus mem=$mem repo=$repo out=$out vng_run \"\$@\"" _ \
        "$img" "$acc" \
        "CRUST_KERNELS_EXPECT_TRACKER=${CRUST_KERNELS_EXPECT_TRACKER:-} CRUST_TRACKER=${CRUST_TRACKER:-} CRUST_KERNELS_KEEP_PAGES=${CRUST_KERNELS_KEEP_PAGES:-0} $repo/ci/kernels-guest.sh $kdir $out" \
        >"$kdir/console.log" 2>&1 &
    vm_pid=$!
    wait "$vm_pid"
    vrc=$?
    vm_pid=""
    set -e
    secs=$(($(date +%s) - start))
    status=$(cat "$kdir/status" 2>/dev/null || echo "no status (VM exit $vrc; see $kdir/console.log)")
    [ -f "$kdir/summary" ] && sed "s/^/  [$ver] /" "$kdir/summary"
    if [ "$status" = 0 ]; then
        summary+=("$ver: PASS in ${secs}s ($acc)")
    else
        rc=1
        summary+=("$ver: FAIL in ${secs}s ($acc): $status")
        tail -n 30 "$kdir/console.log" | sed "s/^/  [$ver console] /"
    fi
done

echo "kernels: results ($out)"
printf '  %s\n' "${summary[@]}"
exit $rc
