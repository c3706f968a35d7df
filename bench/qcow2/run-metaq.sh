#!/bin/sh
# Benchmarks of the qcow2 metadata write-back queue (issue 11), vdisk-img
# bench beside qemu-img bench in the same run. Prints medians of RUNS runs,
# the ratio (>1: vdisk is faster) and, for the first one, the fdatasync
# counts (ours from `vdisk-img bench --counters`, QEMU's from strace).
#
#   bench/qcow2/run-metaq.sh [BUILD_DIR] [WORK_DIR]
#   RUNS=5 bench/qcow2/run-metaq.sh build /var/tmp/mq
#
# WORK_DIR must be on a real file system (O_DIRECT); default
# /var/tmp/vdisk-metaq-bench. Images are sparse (a few hundred MiB used).
#
# Targets: 1. 4k clusters, 4K allocating writes spread over many L2 tables,
# flush every 16, depth 16, cache=none: >= 2x QEMU's IOPS and no more
# fdatasyncs; 2. writethrough allocating writes (64k clusters, depth 16):
# >= 0.8x our own cache=none figure; 3. l2-cache-size=64K, random 4K
# rewrites of a 4 GiB image with all metadata allocated: >= 1.5x QEMU.
set -eu

BUILD=${1:-build}
WORK=${2:-/var/tmp/vdisk-metaq-bench}
RUNS=${RUNS:-3}
VI=$BUILD/tools/vdisk-img/vdisk-img
[ -x "$VI" ] || { echo "run-metaq.sh: $VI not found (ninja -C $BUILD)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "run-metaq.sh: qemu-img not found" >&2; exit 1; }
mkdir -p "$WORK"
trap 'rm -f "$WORK"/*.qcow2' EXIT

secs() { sed -n 's/.*completed in \([0-9.]*\) seconds.*/\1/p' | tail -1; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
result() {  # name a_median b_median target a_name b_name (ratio = a/b: b faster if > 1)
    awk -v n="$1" -v q="$2" -v v="$3" -v t="$4" -v an="${5:-qemu}" -v bn="${6:-vdisk}" 'BEGIN {
        r = q / v; printf "%-58s %s %7.3fs  %s %7.3fs  ratio %5.2fx  (target >= %s) %s\n",
        n, an, q, bn, v, r, t, (r >= t ? "ok" : "BELOW TARGET") }'
}

# --- 1. allocating writes over many L2 tables, flush every 16 ------------------
ARGS1="-w -c 16384 -d 16 -s 4k -S 2101248 --flush-interval=16 -t none"
q=""; v=""
for i in $(seq "$RUNS"); do
    rm -f "$WORK/a.qcow2"; qemu-img create -q -f qcow2 -o cluster_size=4k "$WORK/a.qcow2" 1G
    q="$q $(qemu-img bench -i threads $ARGS1 "$WORK/a.qcow2" | secs)"
    rm -f "$WORK/a.qcow2"; qemu-img create -q -f qcow2 -o cluster_size=4k "$WORK/a.qcow2" 1G
    v="$v $("$VI" bench $ARGS1 "$WORK/a.qcow2" | secs)"
    qemu-img check -q "$WORK/a.qcow2"
done
result "4K alloc writes over L2 tables, flush/16, depth 16" \
    "$(echo $q | median)" "$(echo $v | median)" 2.0
if command -v strace >/dev/null; then
    rm -f "$WORK/a.qcow2"; qemu-img create -q -f qcow2 -o cluster_size=4k "$WORK/a.qcow2" 1G
    qs=$(strace -f -qq -e trace=fdatasync,fsync -o /dev/stdout qemu-img bench -q -i threads \
         $ARGS1 "$WORK/a.qcow2" | grep -c 'sync(')
    rm -f "$WORK/a.qcow2"; qemu-img create -q -f qcow2 -o cluster_size=4k "$WORK/a.qcow2" 1G
    vs=$("$VI" bench --counters $ARGS1 "$WORK/a.qcow2" | sed -n 's/.*(file).* flushes \([0-9]*\)/\1/p')
    echo "    fdatasync: qemu $qs  vdisk $vs  $( [ "$vs" -le "$qs" ] && echo ok || echo MORE THAN QEMU)"
fi

# --- 2. writethrough allocating writes vs our own cache=none ----------------------
ARGS2="-w -c 8192 -d 16 -s 4k -S 64k"
n=""; w=""
for i in $(seq "$RUNS"); do
    rm -f "$WORK/b.qcow2"; qemu-img create -q -f qcow2 "$WORK/b.qcow2" 1G
    n="$n $("$VI" bench $ARGS2 -t none "$WORK/b.qcow2" | secs)"
    rm -f "$WORK/b.qcow2"; qemu-img create -q -f qcow2 "$WORK/b.qcow2" 1G
    w="$w $("$VI" bench $ARGS2 -t writethrough "$WORK/b.qcow2" | secs)"
    qemu-img check -q "$WORK/b.qcow2"
done
result "writethrough vs cache=none, 4K alloc writes, 64k clusters" \
    "$(echo $n | median)" "$(echo $w | median)" 0.8 none wthru

# --- 3. small L2 cache, random rewrites of a populated 4 GiB image --------------
rm -f "$WORK/c.qcow2"; qemu-img create -q -f qcow2 -o preallocation=metadata "$WORK/c.qcow2" 4G
STEP=799993856    # 4k * 195311: a pseudo-random walk over the whole image
OPTS="driver=qcow2,l2-cache-size=65536,file.driver=file,file.filename=$WORK/c.qcow2"
ARGS3="-w -c 65536 -d 16 -s 4k -S $STEP -t none --image-opts"
q=""; v=""
for i in $(seq "$RUNS"); do
    q="$q $(qemu-img bench -i threads $ARGS3 "$OPTS" | secs)"
    v="$v $("$VI" bench $ARGS3 "$OPTS" | secs)"
done
qemu-img check -q "$WORK/c.qcow2"
result "l2-cache-size=64K random 4K rewrites, 4 GiB, depth 16" \
    "$(echo $q | median)" "$(echo $v | median)" 1.5
