#!/bin/sh
# QED benchmarks: vdisk-img bench beside qemu-img bench on QED images, in one
# run. Prints the median of RUNS runs of each and the ratio (>1: vdisk is
# faster).
#
#   bench/qed/run.sh [BUILD_DIR] [WORK_DIR]
#   RUNS=5 COUNT_SCALE=1 bench/qed/run.sh build /var/tmp/qb
#
# BUILD_DIR holds tools/vdisk-img/vdisk-img (default ./build); WORK_DIR must be
# on a real file system (O_DIRECT), default /var/tmp/vdisk-qed-bench. It needs
# about 2 GiB of free space.
#
# Targets (issue 12): 4K random reads (depth 32, cache=none, allocated image)
# >= 1.0x; 4K allocating writes at a 64K stride (depth 16) >= 2x; 64K
# sequential allocating writes (depth 16) >= 1.3x.
set -eu

BUILD=${1:-build}
WORK=${2:-/var/tmp/vdisk-qed-bench}
RUNS=${RUNS:-5}
SCALE=${COUNT_SCALE:-1}
VI=$BUILD/tools/vdisk-img/vdisk-img
[ -x "$VI" ] || { echo "run.sh: $VI not found (ninja -C $BUILD)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run.sh: qemu-img not found" >&2; exit 1; }
mkdir -p "$WORK"
trap 'rm -f "$WORK"/*.qed "$WORK"/*.raw' EXIT

# seconds from "Run completed in X seconds."
secs() { sed -n 's/.*completed in \([0-9.]*\) seconds.*/\1/p' | tail -1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

result() {  # name qemu_median vdisk_median target "per-run ratios"
    mr=$(echo $5 | tr ' ' '\n' | median)
    awk -v n="$1" -v q="$2" -v v="$3" -v t="$4" -v mr="$mr" 'BEGIN {
        r = q / v
        printf "%-46s qemu %8.3fs  vdisk %8.3fs  ratio %5.2fx  (median of per-run ratios %5.2fx, target >= %s) %s\n",
        n, q, v, r, mr, t, (r >= t ? "ok" : "BELOW TARGET") }'
}

ratios() {  # "q1 q2 ..." "v1 v2 ..." -> "r1 r2 ..."
    echo "$1|$2" | awk -F'|' '{ n = split($1, q, " "); split($2, v, " ");
        for (i = 1; i <= n; i++) printf "%s%.4f", (i > 1 ? " " : ""), q[i] / v[i] }'
}

# --- 1. 4K random reads, depth 32, cache=none, fully allocated 1 GiB ------------
RAW=$WORK/full.raw
IMG=$WORK/full.qed
rm -f "$RAW"; truncate -s 1G "$RAW"
qemu-io -f raw -c "write -P 0x5a 0 1G" "$RAW" >/dev/null
qemu-img convert -f raw -O qed "$RAW" "$IMG"
rm -f "$RAW"
N=$((100000 * SCALE))
STEP=50335744   # 4k * 12289: a pseudo-random walk over the whole image
q=""; v=""
for i in $(seq "$RUNS"); do
    q="$q $(qemu-img bench -f qed -c $N -d 32 -s 4k -S $STEP -t none "$IMG" | secs)"
    v="$v $("$VI" bench -f qed -c $N -d 32 -s 4k -S $STEP -t none "$IMG" | secs)"
done
result "4K random reads, depth 32, cache=none" \
    "$(echo $q | tr ' ' '\n' | median)" "$(echo $v | tr ' ' '\n' | median)" 1.0 "$(ratios "$q" "$v")"
rm -f "$IMG"

# --- 2./3. allocating writes into an empty image (cache=none) ----------------------
alloc_bench() {  # name size step count target
    q=""; v=""
    for i in $(seq "$RUNS"); do
        rm -f "$WORK/e.qed"; qemu-img create -q -f qed "$WORK/e.qed" 4G
        q="$q $(qemu-img bench -f qed -w -c "$4" -d 16 -s "$2" -S "$3" -t none "$WORK/e.qed" | secs)"
        rm -f "$WORK/e.qed"; qemu-img create -q -f qed "$WORK/e.qed" 4G
        v="$v $("$VI" bench -f qed -w -c "$4" -d 16 -s "$2" -S "$3" -t none "$WORK/e.qed" | secs)"
        qemu-img check -q "$WORK/e.qed"
    done
    result "$1" "$(echo $q | tr ' ' '\n' | median)" "$(echo $v | tr ' ' '\n' | median)" "$5" \
        "$(ratios "$q" "$v")"
}
alloc_bench "4K allocating writes at 64K stride, depth 16" 4k 64k $((16384 * SCALE)) 2
alloc_bench "64K sequential allocating writes, depth 16" 64k 64k $((16384 * SCALE)) 1.3
