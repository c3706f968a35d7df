#!/bin/bash
# Block-layer benchmark: the same workloads through vdisk-img bench and
# qemu-img bench in one run, several repetitions each (alternating), and a
# table of median run times and the speed ratio vdisk/qemu (qemu time divided
# by vdisk time: > 1 means vdisk is faster).
#
# usage: bench/block/run.sh [BUILD_DIR]    (default: ./build, or $VDISK_IMG)
# env:   REPS=5  SCRATCH=/var/tmp  (directory for the 1 GiB image, not tmpfs)
#        QUICK=1 (fewer requests: checks that the script runs)
set -euo pipefail

BUILD=${1:-build}
VDISK_IMG=${VDISK_IMG:-$BUILD/tools/vdisk-img/vdisk-img}
QEMU_IMG=${QEMU_IMG:-qemu-img}
REPS=${REPS:-5}
SCRATCH=${SCRATCH:-/var/tmp}

for t in "$VDISK_IMG" "$QEMU_IMG"; do
    if ! command -v "$t" >/dev/null 2>&1; then
        echo "bench/block: $t not found (build first: ninja -C $BUILD)" >&2
        exit 1
    fi
done

if [[ -n "${QUICK:-}" ]]; then
    N1=200000; N2=20000; N3=2000
else
    N1=2000000; N2=200000; N3=20000
fi

DIR=$(mktemp -d "$SCRATCH/vdisk-bench-block.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
IMG=$DIR/bench.raw
WIMG=$DIR/write.raw
echo "Preparing 1 GiB raw images in $DIR ..."
"$QEMU_IMG" create -q -f raw -o preallocation=full "$IMG" 1G
"$QEMU_IMG" create -q -f raw -o preallocation=full "$WIMG" 1G

# A stride of 769 x 4 KiB (prime multiple of the block size) walks the whole
# 1 GiB image in a scattered order, 4 KiB aligned: "random" reads for a tool
# whose offsets are offset += step (mod size).
STRIDE=$((4096 * 769))

NAMES=("null-co read 4k depth 64" "raw 4k scattered read, none, io_uring, depth 32"
       "raw 4k write, writethrough, flush/16, depth 16")
TARGETS=("2.00" "0.95" "1.00")
ARGS=(
    "-c $N1 -d 64 -s 4k --image-opts driver=null-co,size=1G"
    "-c $N2 -d 32 -s 4k -S $STRIDE -t none -i io_uring -f raw $IMG"
    "-c $N3 -d 16 -s 4k -w --flush-interval=16 -t writethrough -f raw $WIMG"
)

# run TOOL ARGS -> prints seconds
run_one() {
    local out
    # shellcheck disable=SC2086
    out=$("$1" bench $2 2>&1) || { echo "bench failed: $1 bench $2: $out" >&2; exit 1; }
    sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p' <<<"$out"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

declare -a ROWS
for i in "${!NAMES[@]}"; do
    v=(); q=()
    for ((r = 0; r < REPS; r++)); do
        v+=("$(run_one "$VDISK_IMG" "${ARGS[$i]}")")
        q+=("$(run_one "$QEMU_IMG" "${ARGS[$i]}")")
    done
    mv=$(median "${v[@]}")
    mq=$(median "${q[@]}")
    ratio=$(awk -v a="$mq" -v b="$mv" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "inf" }')
    ok=$(awk -v r="$ratio" -v t="${TARGETS[$i]}" 'BEGIN { print (r == "inf" || r + 0 >= t + 0) ? "yes" : "NO" }')
    echo "  ${NAMES[$i]}: vdisk ${v[*]} s, qemu ${q[*]} s"
    ROWS+=("$(printf '%-48s %10s %10s %8s %8s %5s' "${NAMES[$i]}" "$mv" "$mq" "$ratio" "${TARGETS[$i]}" "$ok")")
done

echo
echo "Block benchmark (median of $REPS runs; ratio = qemu time / vdisk time, higher is better)"
printf '%-48s %10s %10s %8s %8s %5s\n' "workload" "vdisk s" "qemu s" "ratio" "target" "met"
for row in "${ROWS[@]}"; do
    echo "$row"
done
