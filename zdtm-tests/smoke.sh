#!/bin/bash
# Smoke test of the zdtm test programs WITHOUT checkpoint/restore.
#
# For each test: start it with --pidfile/--outfile, wait for the pidfile,
# check the daemon is single-threaded, sleeping, and holds no socket,
# anon_inode or unlinked-file fds (memfds are fine; its fds are listed), send SIGTERM, wait for it to exit
# and require PASS in the outfile.
#
# Tests with `steps = true` in their metadata (meta/NAME.toml) first get STEPS step requests
# (signal SIGRTMAX-1); each must be acknowledged in <outfile>.step within
# 10 s. Tests with `continuous = true` keep running (state R is fine).
#
# Usage: zdtm-tests/smoke.sh [TEST...]      (default: every test in meta/)
# Env:   BIN_DIR  directory of the built binaries
#               (default: ${CARGO_TARGET_DIR:-target}/debug)
#        HOLD     seconds to leave the test blocked before SIGTERM (default 1)
#        STEPS    step requests sent to tests with steps (default 3; 0: none)
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${BIN_DIR:-${CARGO_TARGET_DIR:-$here/../target}/debug}
hold=${HOLD:-1}
steps=${STEPS:-3}
step_sig=$(( $(kill -l RTMAX) - 1 ))
# The value of KEY in meta/TEST.toml (raw, quotes kept).
key_of() {
    awk -v k="$2" '$1==k {sub(/^[^=]*= */,""); print}' "$here/meta/$1.toml"
}
if [ $# -eq 0 ]; then
    set -- $(cd "$here/meta" && for f in *.toml; do echo "${f%.toml}"; done)
fi
work=$(mktemp -d /tmp/zdtm-smoke.XXXXXX)
failed=()
for t in "$@"; do
    pidfile=$work/$t.pid outfile=$work/$t.out
    opts=$(key_of "$t" opts | sed 's/^\[//; s/\] *$//; s/[",]/ /g')
    has_steps=$(key_of "$t" steps) continuous=$(key_of "$t" continuous)
    start=$(date +%s.%N)
    # Start the test with only fds 0-2 (close whatever this shell inherited).
    # shellcheck disable=SC2086
    if ! (for fd in $(ls /proc/$BASHPID/fd); do
              [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
          exec "$bin_dir/$t" --pidfile="$pidfile" --outfile="$outfile" $opts) </dev/null \
            >>"$work/$t.log" 2>&1; then
        echo "FAIL $t: launcher failed ($(tail -1 "$work/$t.log"))"
        failed+=("$t"); continue
    fi
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -z "$pid" ]; then
        echo "FAIL $t: no pidfile"; failed+=("$t"); continue
    fi
    problems=""
    if [ "$has_steps" = true ]; then
        for i in $(seq 1 "$steps"); do
            kill -"$step_sig" "$pid"
            for _ in $(seq 1 1000); do
                [ "$(cat "$outfile.step" 2>/dev/null)" = "$i" ] && break
                sleep 0.01
            done
            if [ "$(cat "$outfile.step" 2>/dev/null)" != "$i" ]; then
                problems+=" step-$i-not-acknowledged"; break
            fi
        done
    fi
    sleep "$hold"
    ntask=$(ls /proc/"$pid"/task | wc -l)
    [ "$ntask" = 1 ] || problems+=" threads=$ntask"
    state=$(awk '/^State:/{print $2}' /proc/"$pid"/status)
    if [ "$continuous" = true ]; then
        case "$state" in R|S) ;; *) problems+=" state=$state";; esac
    else
        [ "$state" = S ] || problems+=" state=$state"
    fi
    fds=$(cd /proc/"$pid"/fd && for f in *; do echo -n "$f->$(readlink "$f") "; done)
    # memfds are dumped (their links end in "(deleted)"); unlinked files are not.
    others=$(echo "$fds" | sed 's#->/memfd:[^ ]* (deleted) #-> #g')
    case "$others" in *socket:*|*anon_inode:*|*"(deleted)"*) problems+=" bad-fds";; esac
    kill -TERM "$pid"
    for _ in $(seq 1 600); do
        [ -d /proc/"$pid" ] && [ "$(awk '/^State:/{print $2}' /proc/"$pid"/status 2>/dev/null)" != Z ] || break
        sleep 0.1
    done
    if [ -d /proc/"$pid" ] && [ "$(awk '/^State:/{print $2}' /proc/"$pid"/status 2>/dev/null)" != Z ]; then
        problems+=" did-not-exit"; kill -KILL "$pid"
    fi
    res=$(cat "$outfile" 2>/dev/null)
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    if [ "$res" = PASS ] && [ -z "$problems" ]; then
        printf 'PASS %-20s %5.1fs fds: %s\n' "$t" "$secs" "$fds"
    else
        echo "FAIL $t: ${res:-no outfile}$problems fds: $fds"
        sed 's/^/    /' "$work/$t.log"
        failed+=("$t")
    fi
done
rm -rf "$work"
if [ ${#failed[@]} -ne 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all passed"
