#!/usr/bin/env bash
# Run every benchmark (runtime, block, qcow2, nbd, throttle) against QEMU's tools in one
# go and keep each one's output under bench/results/<date>/ (not committed).
#
#   bash bench/run-all.sh [BUILD_DIR]        (default: build, optimised)
#
# Each suite prints medians and vdisk/QEMU ratios itself. Run it on an idle
# machine: the figures are only meaningful as ratios taken in the same run.
set -u
cd "$(dirname "$0")/.."
BUILD=${1:-build}
bash scripts/install-deps.sh
[ -f "$BUILD/build.ninja" ] || meson setup "$BUILD" >/dev/null
ninja -C "$BUILD" >/dev/null || exit 1
out=bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
status=0
run() {
    local name=$1; shift
    echo "=== $name"
    if "$@" 2>&1 | tee "$out/$name.txt"; then :; else status=1; fi
}
run runtime "$BUILD/bench/runtime/bench-runtime"
run block bash bench/block/run.sh "$BUILD"
run qcow2 bash bench/qcow2/run.sh "$BUILD"
run convert bash bench/convert/run.sh "$BUILD"
run nbd bash bench/nbd/run.sh "$BUILD/tools/vdiskd/vdiskd"
run throttle bash bench/throttle/run.sh "$BUILD/tools/vdiskd/vdiskd"
run vhost bash bench/vhost/run.sh "$BUILD"
echo "results in $out"
exit $status
