#!/usr/bin/env bash
# Runs inside the VM that ci/kernels.sh boots (root, full capabilities, the
# host's filesystem shared read-only except the repository and the results
# dir). Not meant to be run by hand.
#
#   ci/kernels-guest.sh KERNEL-RESULTS-DIR RESULTS-DIR
#
# Reads RESULTS-DIR/engine-tests (prebuilt engine test binaries, one a line)
# and RESULTS-DIR/zdtm-args (`zdtm run` arguments, one a line); writes into
# KERNEL-RESULTS-DIR: check.txt, engine-NAME.log, zdtm-TRACKER.log, the
# kept work dirs of failed runs (zdtm-logs/), summary and status ("0", or
# what failed).
set -uo pipefail
kdir=$1
out=$2
cd "$(dirname "$0")/.."
repo=$(pwd)
export PATH="$repo/target/release:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export RUST_BACKTRACE=1
mkdir -p "$kdir"
failed=()
note() { echo "$*" | tee -a "$kdir/summary"; }

# Scratch space in guest memory: the shared filesystem (9p) is slow and the
# host's /tmp is not ours to write.
scratch=/run/crust-kernels
mkdir -p "$scratch"
# virtme-ng-init puts writable overlays over /usr, /usr/lib, /tmp...: they
# stay on /usr, so every library the tests map comes from an overlayfs (on
# 6.1 and 6.12 /proc/PID/maps names the lower layer's device there and
# stat(2) the overlay's: crust compares stat with stat, docs/kernels.md).
# /tmp's goes: the engine tests mount overlays of their own under $TMPDIR,
# and an overlay cannot be the upper layer of another; /tmp becomes a
# plain tmpfs.
modprobe veth 2>/dev/null || true
# The repository and the results dir are shared into the guest at their
# host paths: one under /tmp (a CI clone there) would vanish with /tmp's
# overlay, so it is bound aside first and back onto the new /tmp after.
kept=()
for d in "$repo" "$out"; do
    case "$d" in
    /tmp/*)
        case "$d" in "$repo"/*) [ "$d" = "$repo" ] || continue ;; esac
        k="$scratch/kept${#kept[@]}"
        mkdir -p "$k"
        mount --bind "$d" "$k"
        kept+=("$d" "$k")
        ;;
    esac
done
while mountpoint -q /tmp; do umount -l /tmp || break; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
export TMPDIR=/tmp
for ((i = 0; i < ${#kept[@]}; i += 2)); do
    mkdir -p "${kept[i]}"
    mount --bind "${kept[i + 1]}" "${kept[i]}"
done
cd "$repo"

note "kernel $(uname -r) ($(uname -v))"
grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr '\t' ' ' | while read -r l; do note "$l"; done

# 1. What the kernel offers.
crust check >"$kdir/check.txt" 2>&1
trackers=()
for t in uffd-wp soft-dirty content; do
    grep -qE "^ *yes +pre-dump tracker $t( |$)" "$kdir/check.txt" && trackers+=("$t")
done
auto=${trackers[0]:-none}
note "trackers offered: ${trackers[*]:-none}; crust's auto tracker picks $auto"
if [ -n "${CRUST_KERNELS_EXPECT_TRACKER:-}" ] && [ "$auto" != "$CRUST_KERNELS_EXPECT_TRACKER" ]; then
    note "FAIL: expected the auto tracker to be $CRUST_KERNELS_EXPECT_TRACKER"
    failed+=("auto tracker is $auto, not $CRUST_KERNELS_EXPECT_TRACKER")
fi

# 2. The engine's tests, prebuilt on the host.
read -r -a eargs <"$out/engine-args" || eargs=()
while read -r bin; do
    [ -n "$bin" ] || continue
    name=$(basename "$bin")
    name=${name%-*}
    t0=$(date +%s)
    "$bin" "${eargs[@]}" >"$kdir/engine-$name.log" 2>&1
    erc=$?
    res=$(grep -E '^test result:' "$kdir/engine-$name.log" | tail -1)
    note "engine $name ${eargs[*]}: ${res:-no result} (exit $erc, $(($(date +%s) - t0))s)"
    ((erc == 0)) || failed+=("engine test $name")
done <"$out/engine-tests"

# 3. The zdtm suite, once per tracker when zdtm can choose one.
zargs=()
while IFS= read -r a; do zargs+=("$a"); done <"$out/zdtm-args"
# zdtm's --tracker where it has it; else crust wrapped by
# ci/crust-with-tracker.sh, which adds --tracker to every (pre-)dump.
# The first run takes crust's own choice (auto); each other tracker the
# kernel offers then runs the flavors that pre-dump (the content tracker
# only in read mode: it refuses splice), unless ZDTM-ARGS name flavors.
tracker_opt=wrapper
zdtm run --help 2>/dev/null | grep -q -- '--tracker' && tracker_opt=zdtm
runs=(auto)
case " ${zargs[*]} " in
    *" --tracker"*|*" --crust"*|*" --engine"*) ;;
    *) for t in "${trackers[@]}"; do [ "$t" = "$auto" ] || runs+=("$t"); done ;;
esac
has_flavors=0
named=() # the flavors ZDTM-ARGS name
prev=
for a in "${zargs[@]}"; do
    case $a in -f|--flavor|--flavor=*|-f?*) has_flavors=1 ;; esac
    case $prev in -f|--flavor) named+=("$a") ;; esac
    case $a in --flavor=*) named+=("${a#--flavor=}") ;; -f?*) named+=("${a#-f}") ;; esac
    prev=$a
done
pre_flavors() { # TRACKER
    local f
    for f in "${ZDTM_FLAVORS_DIR:-$repo/flavors}"/*.toml; do
        grep -qE '^pre_dumps *= *[1-9]' "$f" || continue
        [ "$1" != content ] || grep -qE '^pre_dump_mode *= *"read"' "$f" || continue
        printf '%s\n' -f "$(basename "$f" .toml)"
    done
}
# Whether a named flavor runs with TRACKER (pre-dumps; read mode for
# content): else zdtm refuses --tracker for the selection (exit 2).
named_use() { # TRACKER
    local n
    for n in "${named[@]}"; do
        [ "$n" = all ] && return 0
        pre_flavors "$1" | grep -qx -- "$n" && return 0
    done
    return 1
}
for tr in "${runs[@]}"; do
    if [ "$tr" != auto ] && ((has_flavors == 1)) && ! named_use "$tr"; then
        note "zdtm with tracker $tr: not run, no named flavor pre-dumps with it"
        continue
    fi
    extra=()
    if [ "$tr" != auto ]; then
        if [ $tracker_opt = zdtm ]; then
            extra=(--tracker "$tr")
        else
            extra=(--crust "$repo/ci/crust-with-tracker.sh")
        fi
    fi
    label=$tr
    [ "$tr" = auto ] && label="auto-$auto"
    [ "$tr" = auto ] && [ -n "${CRUST_TRACKER:-}" ] && label=$CRUST_TRACKER
    # JUnit per tracker where zdtm writes it (and ZDTM-ARGS asked for none).
    if zdtm run --help 2>/dev/null | grep -q -- '--junit' && [[ " ${zargs[*]} " != *" --junit"* ]]; then
        extra+=(--junit "$kdir/junit-$label.xml")
    fi
    t0=$(date +%s)
    targs=("${zargs[@]}")
    if [ "$tr" != auto ] && ((has_flavors == 0)); then
        while IFS= read -r a; do targs+=("$a"); done < <(pre_flavors "$tr")
    fi
    CRUST_TRACKER=${CRUST_TRACKER:-${tr#auto}} zdtm run "${targs[@]}" "${extra[@]}" --log-dir "$scratch/zdtm-logs-$label" >"$kdir/zdtm-$label.log" 2>&1
    zrc=$?
    res=$(grep -E '^zdtm: [0-9]+ passed' "$kdir/zdtm-$label.log" | tail -1)
    note "zdtm ${targs[*]} ${extra[*]} (tracker $label): ${res:-no result} (exit $zrc, $(($(date +%s) - t0))s)"
    grep -E '^FAIL ' "$kdir/zdtm-$label.log" | sed 's/^/  /' | tee -a "$kdir/summary"
    ((zrc == 0)) || failed+=("zdtm with tracker $label")
    if [ -d "$scratch/zdtm-logs-$label" ] && [ -n "$(ls -A "$scratch/zdtm-logs-$label")" ]; then
        # Page images are left out unless asked for: writing them over the
        # shared filesystem (9p) takes minutes.
        mkdir -p "$kdir/zdtm-logs/$label"
        excl=(--exclude='pages-*.img')
        [ "${CRUST_KERNELS_KEEP_PAGES:-0}" = 1 ] && excl=()
        tar -C "$scratch/zdtm-logs-$label" -cf - "${excl[@]}" . | tar -C "$kdir/zdtm-logs/$label" -xf -
    fi
done

if ((${#failed[@]})); then
    (IFS=';'; echo "failed: ${failed[*]}") >"$kdir/status"
else
    echo 0 >"$kdir/status"
fi
sync
