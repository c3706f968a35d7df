#!/bin/bash
# vdisk-img convert beside qemu-img convert, in one run: raw->qcow2, raw->raw
# and qcow2->raw of a deterministic 1 GiB raw image with data and holes.
# Prints the median wall time of RUNS runs of each tool and the ratio
# vdisk/qemu (lower is better; target <= 0.8 for raw->qcow2, <= 1.0 others).
#
#   bench/convert/run.sh [BUILD_DIR] [WORK_DIR]
#   RUNS=5 bench/convert/run.sh /tmp/vd-conv /var/tmp/vd-convert-bench
#
# WORK_DIR should be on a real file system (default /var/tmp/vdisk-convert-bench);
# /dev/shm shows tmpfs behaviour. Needs about 2.5 GiB of free space.
set -eu

BUILD=${1:-build}
WORK=${2:-/var/tmp/vdisk-convert-bench}
RUNS=${RUNS:-5}
VI=$BUILD/tools/vdisk-img/vdisk-img
[ -x "$VI" ] || { echo "run.sh: $VI not found (ninja -C $BUILD)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run.sh: qemu-img not found" >&2; exit 1; }
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -f "$WORK"/src.raw "$WORK"/src.qcow2 "$WORK"/q.* "$WORK"/v.*' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

# --- source: 1 GiB raw -------------------------------------------------------
# Every 8 MiB: 2 MiB of a pattern, a 64 KiB block 3 MiB further and, every
# 32 MiB, 1 MiB of written zeros (allocated on disk, zero content). Between
# them: holes. About 300 MiB of data in all.
SRC=$WORK/src.raw
rm -f "$SRC"; truncate -s 1G "$SRC"
cmds=()
for i in $(seq 0 127); do
    b=$((i * 8))
    cmds+=(-c "write -P $((i % 250 + 1)) ${b}M 2M")
    cmds+=(-c "write -P $(((i * 7) % 250 + 1)) $((b * 1024 + 3 * 1024))K 64K")
    if [ $((i % 4)) -eq 0 ]; then
        cmds+=(-c "write -P 0 $((b + 5))M 1M")
    fi
done
qemu-io -f raw "${cmds[@]}" "$SRC" >/dev/null
qemu-img convert -f raw -O qcow2 "$SRC" "$WORK/src.qcow2"
sync

# run NAME SRC SRCFMT OUTFMT TARGET
run() {
    local name=$1 src=$2 sfmt=$3 ofmt=$4 target=$5 q="" v="" t0 t1 t2
    for _ in $(seq "$RUNS"); do
        rm -f "$WORK/q.$ofmt" "$WORK/v.$ofmt"
        t0=$(now)
        qemu-img convert -f "$sfmt" -O "$ofmt" "$src" "$WORK/q.$ofmt"
        t1=$(now)
        "$VI" convert -f "$sfmt" -O "$ofmt" "$src" "$WORK/v.$ofmt"
        t2=$(now)
        q="$q $(echo "$t1 - $t0" | bc)"
        v="$v $(echo "$t2 - $t1" | bc)"
    done
    qemu-img compare -q -f "$sfmt" -F "$ofmt" "$src" "$WORK/v.$ofmt"
    if [ "$ofmt" = qcow2 ]; then qemu-img check -q "$WORK/v.$ofmt"; fi
    local qm vm
    qm=$(echo $q | tr ' ' '\n' | median)
    vm=$(echo $v | tr ' ' '\n' | median)
    awk -v n="$name" -v q="$qm" -v v="$vm" -v t="$target" 'BEGIN {
        r = v / q; printf "%-22s qemu-img %7.3fs  vdisk-img %7.3fs  ratio %5.2f  (target <= %s) %s\n",
        n, q, v, r, t, (r <= t ? "ok" : "ABOVE TARGET") }'
    echo "    qemu-img:$q" ; echo "    vdisk-img:$v"
}

echo "convert, $RUNS runs each, work dir $WORK"
run "raw -> qcow2" "$SRC" raw qcow2 0.8
run "raw -> raw" "$SRC" raw raw 1.0
run "qcow2 -> raw" "$WORK/src.qcow2" qcow2 raw 1.0
