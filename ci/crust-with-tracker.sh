#!/bin/sh
# crust with a chosen dirty tracker, for a zdtm without `--tracker`:
#   CRUST_TRACKER=soft-dirty zdtm run --crust ci/crust-with-tracker.sh ...
# adds `--tracker $CRUST_TRACKER` to every pre-dump and dump and runs
# $CRUST_BIN (default: target/release/crust beside this script's repo).
here=$(dirname "$0")
bin=${CRUST_BIN:-$here/../target/release/crust}
case ${1:-} in
    pre-dump|dump)
        [ -n "${CRUST_TRACKER:-}" ] && exec "$bin" "$@" --tracker "$CRUST_TRACKER" ;;
esac
exec "$bin" "$@"
