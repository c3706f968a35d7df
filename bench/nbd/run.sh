#!/bin/bash
# NBD server benchmark: vdiskd beside qemu-storage-daemon and nbdkit in the
# same run, fio's nbd engine over UNIX sockets, medians of RUNS runs each.
#
#   bench/nbd/run.sh [path/to/vdiskd]      (default: build/tools/vdiskd/vdiskd)
#   RUNS=9 RUNTIME=10 SIZE=1G bench/nbd/run.sh ...
#
# Each run measures every case once, in turn, so slow drifts of the disk or
# the host hit all of them alike; the ratios are printed from the medians and,
# as a check on them, as the median of the per-run ratios.
#
# 1. qcow2, 4k random reads, depth 32: vdiskd (one IOThread) vs
#    qemu-storage-daemon, both cache.direct=on + aio=io_uring on the same image.
#    qemu-storage-daemon 7.2 aborts when an NBD client disconnects while its
#    export uses an IOThread, so it runs without --object iothread (its export
#    is served from the main loop). Target ratio >= 1.3.
# 2. null export vs `nbdkit null`, same fio job. Both send the 4k of data
#    (null-co read-zeroes=off: no hole chunks). Target >= 1.0.
# 3. two null exports on two IOThreads with one fio job each (aggregate) vs
#    one export on one IOThread with one job. Target >= 1.6.
set -euo pipefail

VDISKD=$(realpath "${1:-build/tools/vdiskd/vdiskd}")
RUNS=${RUNS:-5}
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
for t in fio qemu-img qemu-io qemu-storage-daemon nbdkit; do
    command -v $t >/dev/null || { echo "missing $t"; exit 1; }
done
[ -x "$VDISKD" ] || { echo "vdiskd not found at $VDISKD"; exit 1; }

NAME=nbd
. "$(dirname "$0")/../lib-server.sh"

IMG=$DIR/disk.qcow2
qemu-img create -q -f qcow2 "$IMG" "$SIZE"
# fill it so reads hit allocated clusters
qemu-io -f qcow2 -c "write -P 0x5a 0 $SIZE" "$IMG" >/dev/null

fio_iops() {   # fio_iops <uri> [<uri2>]: total read IOPS; server CPU us/IO -> $DIR/cpu
    local args=(--ioengine=nbd --rw=randread --bs=4k --iodepth=32 --runtime="$RUNTIME"
                --time_based --ramp_time=1 --size=256M --output-format=json --group_reporting)
    local t0 t1
    t0=$(cpu_ticks)
    if [ $# -eq 1 ]; then
        fio "${args[@]}" --name=j1 --uri="$1" > "$DIR/fio.json"
    else
        fio "${args[@]}" --name=j1 --uri="$1" --name=j2 --uri="$2" > "$DIR/fio.json"
    fi
    t1=$(cpu_ticks)
    python3 -c 'import json,sys,os
t=open(sys.argv[1]).read(); d=json.loads(t[t.index("{"):])
iops=sum(j["read"]["iops"] for j in d["jobs"]); ios=sum(j["read"]["total_ios"] for j in d["jobs"])
hz=os.sysconf("SC_CLK_TCK"); cpu_us=(int(sys.argv[3])-int(sys.argv[2]))*1e6/hz
open(sys.argv[4],"a").write("%.2f\n" % (cpu_us/max(ios,1)))
print(int(iops))' "$DIR/fio.json" "$t0" "$t1" "$DIR/cpu.$CPUTAG"
}

median() { python3 -c 'import sys,statistics; print(int(statistics.median(map(float, sys.argv[1:]))))' "$@"; }
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }

S=$DIR/nbd.sock
U="nbd+unix:///disk?socket=$S"
VD_QCOW2=(--object iothread,id=io0
          --blockdev "driver=qcow2,node-name=disk0,file.driver=file,file.filename=$IMG,file.aio=io_uring,cache.direct=on"
          --nbd-server "addr.type=unix,addr.path=$S"
          --export type=nbd,id=e0,node-name=disk0,name=disk,iothread=io0)
QSD_QCOW2=(--blockdev "driver=file,node-name=f0,filename=$IMG,aio=io_uring,cache.direct=on"
           --blockdev driver=qcow2,node-name=disk0,file=f0
           --nbd-server "addr.type=unix,addr.path=$S"
           --export type=nbd,id=e0,node-name=disk0,name=disk)
VD_NULL=(--object iothread,id=io0 --object iothread,id=io1
         --blockdev driver=null-co,node-name=n0,size=$SIZE,read-zeroes=off
         --blockdev driver=null-co,node-name=n1,size=$SIZE,read-zeroes=off
         --nbd-server "addr.type=unix,addr.path=$S"
         --export type=nbd,id=e0,node-name=n0,name=disk,iothread=io0
         --export type=nbd,id=e1,node-name=n1,name=disk2,iothread=io1)

declare -a vq qq vn kn one two
for r in $(seq "$RUNS"); do
    CPUTAG=vq; start "$S" "$VDISKD" "${VD_QCOW2[@]}"; vq+=("$(fio_iops "$U")"); stop
    CPUTAG=qq; start "$S" qemu-storage-daemon "${QSD_QCOW2[@]}"; qq+=("$(fio_iops "$U")"); stop
    CPUTAG=vn; start "$S" "$VDISKD" "${VD_NULL[@]}"
    vn+=("$(fio_iops "$U")")
    one+=("${vn[-1]}")
    CPUTAG=two; two+=("$(fio_iops "$U" "nbd+unix:///disk2?socket=$S")")
    stop
    CPUTAG=kn; start "$S" nbdkit --foreground -U "$S" null size=$SIZE; kn+=("$(fio_iops "nbd+unix:///?socket=$S")"); stop
    echo "run $r: qcow2 vdiskd ${vq[-1]} qsd ${qq[-1]} | null vdiskd ${vn[-1]} nbdkit ${kn[-1]} | 2 exports ${two[-1]}"
done

mvq=$(median "${vq[@]}"); mqq=$(median "${qq[@]}"); mvn=$(median "${vn[@]}"); mkn=$(median "${kn[@]}")
mone=$(median "${one[@]}"); mtwo=$(median "${two[@]}")
echo
echo "4k randread, iodepth 32, UNIX socket, fio nbd engine, median of $RUNS x ${RUNTIME}s"
printf '%-58s %10s IOPS\n' "qcow2 vdiskd (1 IOThread, io_uring, cache.direct)" "$mvq"
printf '%-58s %10s IOPS\n' "qcow2 qemu-storage-daemon 7.2 (main loop, no IOThread)" "$mqq"
printf '%-58s %10s   (target >= 1.3)\n' "ratio vdiskd / qemu-storage-daemon" "$(ratio "$mvq" "$mqq")"
printf '%-58s %10s IOPS\n' "null-co vdiskd" "$mvn"
printf '%-58s %10s IOPS\n' "nbdkit null" "$mkn"
printf '%-58s %10s   (target >= 1.0)\n' "ratio vdiskd / nbdkit" "$(ratio "$mvn" "$mkn")"
printf '%-58s %10s IOPS\n' "null-co, 1 export on 1 IOThread, 1 job" "$mone"
printf '%-58s %10s IOPS\n' "null-co, 2 exports on 2 IOThreads, 2 jobs (aggregate)" "$mtwo"
printf '%-58s %10s   (target >= 1.6)\n' "ratio two / one" "$(ratio "$mtwo" "$mone")"
pmed() {   # pmed "a1 a2 .." "b1 b2 ..": median of a_i/b_i
    python3 -c 'import sys,statistics
a=list(map(float,sys.argv[1].split())); b=list(map(float,sys.argv[2].split()))
r=sorted(x/y for x,y in zip(a,b)); print("%.2f (runs: %s)" % (statistics.median(r), " ".join("%.2f" % x for x in r)))' "$1" "$2"
}
echo
echo "median of per-run ratios:"
printf '  vdiskd / qemu-storage-daemon %s\n' "$(pmed "${vq[*]}" "${qq[*]}")"
printf '  vdiskd / nbdkit               %s\n' "$(pmed "${vn[*]}" "${kn[*]}")"
printf '  two / one                     %s\n' "$(pmed "${two[*]}" "${one[*]}")"
cpu() { median $(python3 -c 'import sys; print(" ".join(str(int(float(l)*100)) for l in open(sys.argv[1])))' "$DIR/cpu.$1") | python3 -c 'import sys; print("%.2f" % (int(sys.stdin.read())/100))'; }
echo
echo "server CPU time per request (us, median; lower is better; a disk-bound run can"
echo "tie on IOPS while using less CPU):"
printf '  qcow2: vdiskd %s  qemu-storage-daemon %s   null: vdiskd %s  nbdkit %s\n' \
    "$(cpu vq)" "$(cpu qq)" "$(cpu vn)" "$(cpu kn)"
