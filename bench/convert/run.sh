#!/bin/bash
# vdisk-img convert beside qemu-img convert, in one run: raw->qcow2, raw->raw
# and qcow2->raw of a deterministic 1 GiB raw image with data and holes.
# Prints the median wall time of RUNS runs of each tool and the ratio
# vdisk/qemu (lower is better; target <= 0.8 for raw->qcow2, <= 1.0 others).
# Every output is checked: qemu-img compare with the source, qemu-img check
# (qcow2), and the same allocation map as qemu-img's own output.
#
#   bench/convert/run.sh [BUILD_DIR] [WORK_DIR]
#   RUNS=7 VERBOSE=1 bench/convert/run.sh /tmp/vd-conv /var/tmp/vd-convert-bench
#   bench/convert/run.sh /tmp/vd-conv /dev/shm/vd-convert-bench     (tmpfs)
#
# WORK_DIR should be on a real file system (default /var/tmp/vdisk-convert-bench);
# /dev/shm shows tmpfs behaviour. Needs about 2.5 GiB of free space. KEEP=1
# leaves the images in WORK_DIR. Wall times include process start and exit.
set -eu

BUILD=${1:-build}
WORK=${2:-/var/tmp/vdisk-convert-bench}
RUNS=${RUNS:-7}
VI=$BUILD/tools/vdisk-img/vdisk-img
[ -x "$VI" ] || { echo "run.sh: $VI not found (ninja -C $BUILD)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run.sh: qemu-img not found" >&2; exit 1; }
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -f "$WORK"/src.raw "$WORK"/src.qcow2 "$WORK"/q.* "$WORK"/v.*' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minimum() { sort -n | head -1; }
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

# time_one TOOL SRC SRCFMT OUTFMT DST: seconds of one convert into a fresh DST,
# started with no dirty page cache left by the previous run (sync), so that
# writeback throttling does not land on whichever tool runs second.
time_one() {
    local tool=$1 src=$2 sfmt=$3 ofmt=$4 dst=$5 t0 t1
    rm -f "$dst"; sync
    t0=$(now)
    "$tool" convert -f "$sfmt" -O "$ofmt" "$src" "$dst"
    t1=$(now)
    echo "$t1 - $t0" | bc
}

# run NAME SRC SRCFMT OUTFMT TARGET; the tool that goes first alternates.
run() {
    local name=$1 src=$2 sfmt=$3 ofmt=$4 target=$5 q="" v="" i
    for i in $(seq "$RUNS"); do
        if [ $((i % 2)) -eq 1 ]; then
            q="$q $(time_one qemu-img "$src" "$sfmt" "$ofmt" "$WORK/q.$ofmt")"
            v="$v $(time_one "$VI" "$src" "$sfmt" "$ofmt" "$WORK/v.$ofmt")"
        else
            v="$v $(time_one "$VI" "$src" "$sfmt" "$ofmt" "$WORK/v.$ofmt")"
            q="$q $(time_one qemu-img "$src" "$sfmt" "$ofmt" "$WORK/q.$ofmt")"
        fi
    done
    # same content as the source, and the same allocation as qemu-img's output
    qemu-img compare -q -f "$sfmt" -F "$ofmt" "$src" "$WORK/v.$ofmt"
    if [ "$ofmt" = qcow2 ]; then qemu-img check -q "$WORK/v.$ofmt"; fi
    if ! cmp -s <(qemu-img map --output=json -f "$ofmt" "$WORK/q.$ofmt") \
                <(qemu-img map --output=json -f "$ofmt" "$WORK/v.$ofmt"); then
        echo "$name: allocation differs from qemu-img's output" >&2
        exit 1
    fi
    local qm vm qn vn
    qm=$(echo $q | tr ' ' '\n' | median)
    vm=$(echo $v | tr ' ' '\n' | median)
    qn=$(echo $q | tr ' ' '\n' | minimum)
    vn=$(echo $v | tr ' ' '\n' | minimum)
    awk -v n="$name" -v q="$qm" -v v="$vm" -v t="$target" -v qn="$qn" -v vn="$vn" 'BEGIN {
        r = v / q; printf "%-14s qemu-img %6.3fs  vdisk-img %6.3fs  ratio %4.2f  (target <= %s) %s" \
        "   [fastest runs: %.3fs / %.3fs = %.2f]\n",
        n, q, v, r, t, (r <= t ? "ok" : "ABOVE TARGET"), qn, vn, vn / qn }'
    if [ -n "${VERBOSE:-}" ]; then echo "    qemu-img:$q"; echo "    vdisk-img:$v"; fi
}

echo "convert of a 1 GiB raw (~300 MiB data), median of $RUNS runs each, in $WORK" \
     "($(stat -f -c %T "$WORK"))"
run "raw -> qcow2" "$SRC" raw qcow2 0.8
run "raw -> raw" "$SRC" raw raw 1.0
run "qcow2 -> raw" "$WORK/src.qcow2" qcow2 raw 1.0
