#!/bin/sh
# qcow2 benchmarks, vdisk side by side with qemu-img in one run. Prints the
# median of RUNS runs of each and the ratio (>1: vdisk is faster).
#
#   bench/qcow2/run.sh [BUILD_DIR] [WORK_DIR]
#   RUNS=5 COUNT_SCALE=1 bench/qcow2/run.sh /tmp/vd-build /var/tmp/qb
#
# BUILD_DIR holds bench/qcow2/qcow2-bench (default ./build); WORK_DIR must be
# on a real file system (O_DIRECT), default /var/tmp/vdisk-qcow2-bench. It
# needs about 2.5 GiB of free space.
#
# Targets: 4K random reads (depth 32, cache=none, fully allocated 1 GiB)
# >= 0.95x; 64K sequential allocating writes (depth 16, cache=none) >= 1.2x;
# 4K allocating writes at a 64K stride (depth 16, cache=none) >= 1.5x;
# convert of a 1 GiB raw with data and holes: time <= 0.8x qemu-img's.
set -eu

BUILD=${1:-build}
WORK=${2:-/var/tmp/vdisk-qcow2-bench}
RUNS=${RUNS:-3}
SCALE=${COUNT_SCALE:-1}
VB=$BUILD/bench/qcow2/qcow2-bench
[ -x "$VB" ] || { echo "run.sh: $VB not found (ninja -C $BUILD bench/qcow2/qcow2-bench)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run.sh: qemu-img not found" >&2; exit 1; }
mkdir -p "$WORK"
trap 'rm -f "$WORK"/*.qcow2 "$WORK"/*.raw' EXIT

# seconds from "Run completed in X seconds." / "Convert completed in X seconds."
secs() { sed -n 's/.*completed in \([0-9.]*\) seconds.*/\1/p' | tail -1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

result() {  # name qemu_median vdisk_median target
    awk -v n="$1" -v q="$2" -v v="$3" -v t="$4" 'BEGIN {
        r = q / v; printf "%-44s qemu %8.3fs  vdisk %8.3fs  ratio %5.2fx  (target >= %s) %s\n",
        n, q, v, r, t, (r >= t ? "ok" : "BELOW TARGET") }'
}

# --- 1. 4K random reads, depth 32, cache=none, fully allocated 1 GiB ---------
IMG=$WORK/full.qcow2
qemu-img create -q -f qcow2 -o preallocation=full "$IMG" 1G
N=$((100000 * SCALE))
STEP=50335744   # 4k * 12289: a pseudo-random walk over the whole image
q=""; v=""
for i in $(seq "$RUNS"); do
    q="$q $(qemu-img bench -c $N -d 32 -s 4k -S $STEP -t none "$IMG" | secs)"
    v="$v $("$VB" bench -c $N -d 32 -s 4k -S $STEP -t none "$IMG" | secs)"
done
result "4K random reads, depth 32, cache=none" \
    "$(echo $q | tr ' ' '\n' | median)" "$(echo $v | tr ' ' '\n' | median)" 0.95
rm -f "$IMG"

# --- 2./3. allocating writes into an empty image --------------------------------
alloc_bench() {  # name size step count target
    q=""; v=""
    for i in $(seq "$RUNS"); do
        rm -f "$WORK/e.qcow2"; qemu-img create -q -f qcow2 "$WORK/e.qcow2" 1G
        q="$q $(qemu-img bench -w -c "$4" -d 16 -s "$2" -S "$3" -t none "$WORK/e.qcow2" | secs)"
        rm -f "$WORK/e.qcow2"; qemu-img create -q -f qcow2 "$WORK/e.qcow2" 1G
        v="$v $("$VB" bench -w -c "$4" -d 16 -s "$2" -S "$3" -t none "$WORK/e.qcow2" | secs)"
        qemu-img check -q "$WORK/e.qcow2"
    done
    result "$1" "$(echo $q | tr ' ' '\n' | median)" "$(echo $v | tr ' ' '\n' | median)" "$5"
}
alloc_bench "64K sequential allocating writes, depth 16" 64k 64k $((16384 * SCALE)) 1.2
alloc_bench "4K allocating writes at 64K stride, depth 16" 4k 64k $((16384 * SCALE)) 1.5

# --- 4. convert 1 GiB raw (data and holes) to qcow2 -------------------------------
SRC=$WORK/src.raw
rm -f "$SRC"; truncate -s 1G "$SRC"
i=0
while [ $i -lt 16 ]; do   # 32 MiB of data every 64 MiB, plus scattered 64K blocks
    qemu-io -f raw -c "write -P $((i + 1)) $((i * 64))M 32M" \
        -c "write -P 0x$((i + 10)) $((i * 64 + 40))M 64k" "$SRC" >/dev/null
    i=$((i + 2))
done
q=""; v=""
for i in $(seq "$RUNS"); do
    rm -f "$WORK/c1.qcow2" "$WORK/c2.qcow2"
    t0=$(date +%s.%N)
    qemu-img convert -f raw -O qcow2 "$SRC" "$WORK/c1.qcow2"
    t1=$(date +%s.%N)
    "$VB" convert "$SRC" "$WORK/c2.qcow2" >/dev/null
    t2=$(date +%s.%N)
    q="$q $(echo "$t1 - $t0" | bc)"
    v="$v $(echo "$t2 - $t1" | bc)"
    qemu-img compare -q "$WORK/c1.qcow2" "$WORK/c2.qcow2"
    qemu-img check -q "$WORK/c2.qcow2"
done
# target: vdisk's time <= 0.8x qemu-img's, i.e. ratio >= 1.25
result "convert 1 GiB raw -> qcow2 (time ratio)" \
    "$(echo $q | tr ' ' '\n' | median)" "$(echo $v | tr ' ' '\n' | median)" 1.25
