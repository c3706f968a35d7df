#!/bin/bash
# vhost-user-blk benchmark: our front-end (tests/functional/vhost/vhu-client,
# memfd guest memory, split ring, eventfds) drives vdiskd and
# qemu-storage-daemon in the same run; medians of RUNS runs each, ratios,
# server CPU per request and IOPS per server CPU-second (from /proc/PID/stat).
#
#   bench/vhost/run.sh [BUILD_DIR]             (default: build)
#   RUNS=5 RUNTIME=10 SIZE=1G bench/vhost/run.sh
#
# 1. null-co export (read-zeroes=off), 4k random reads, depth 64, one queue,
#    one IOThread each. Target: vdiskd >= 2x qsd IOPS.
# 2. qcow2 on a file, cache.direct=on, aio=io_uring, 4k random reads,
#    depth 32, one queue, one IOThread. Target >= 1.3x.
# 3. (information, no target) case 1 with the front-end busy-polling the
#    used ring (--spin-us 50, yielding the CPU between looks) instead of
#    sleeping on the call eventfd after each batch.
# 4. (information) case 1 with poll-max-ns=0 on both IOThreads: neither
#    server busy-polls, every batch is a kick and a wake-up.
# Cases 1-3: both servers' IOThreads keep the default poll-max-ns (32768). vdiskd
# busy-polls the ring itself and suppresses kicks meanwhile;
# qemu-storage-daemon 7.2's vhost-user-blk export registers its kick fds
# without a poll callback, so its polling never looks at the ring.
# The front-end behaves like a Linux virtio driver (kicks only past
# avail_event, asks for a call with used_event and sleeps on it) and runs
# on the same 2 cores as the server: it is part of what is measured,
# equally for both servers. For the qcow2 case, fio on a raw copy of the
# image (O_DIRECT, io_uring, same depth) shows what the disk gives.
set -euo pipefail

BUILD=$(realpath "${1:-build}")
VDISKD=$BUILD/tools/vdiskd/vdiskd
CLIENT=$BUILD/tests/functional/vhost/vhu-client
RUNS=${RUNS:-5}
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
for t in qemu-img qemu-io qemu-storage-daemon; do
    command -v $t >/dev/null || { echo "missing $t"; exit 1; }
done
[ -x "$VDISKD" ] && [ -x "$CLIENT" ] || { echo "build vdiskd and vhu-client in $BUILD first"; exit 1; }

NAME=vhost
. "$(dirname "$0")/../lib-server.sh"

IMG=$DIR/disk.qcow2
qemu-img create -q -f qcow2 "$IMG" "$SIZE"
qemu-io -f qcow2 -c "write -P 0x5a 0 $SIZE" "$IMG" >/dev/null
BYTES=$(qemu-img info --output=json "$IMG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

run_client() {   # run_client <depth> [client options]: prints IOPS; appends server
                 # "us/req iops/cpu-s kicks/req" to cpu.$TAG
    local t0 t1 out depth=$1
    shift
    t0=$(cpu_ticks)
    out=$("$CLIENT" --size "$BYTES" --depth "$depth" --qsize 256 --indirect --seconds "$RUNTIME" "$@" "$S" bench)
    t1=$(cpu_ticks)
    python3 -c 'import sys,os,re
m=re.search(r"bench: (\d+) requests in ([\d.]+) s: (\d+) IOPS, (\d+) kicks", sys.argv[1])
n,el,iops,kicks=int(m.group(1)),float(m.group(2)),int(m.group(3)),int(m.group(4))
hz=os.sysconf("SC_CLK_TCK"); cpu_s=(int(sys.argv[3])-int(sys.argv[2]))/hz
open(sys.argv[4],"a").write("%.3f %.0f %.4f\n" % (cpu_s*1e6/max(n,1), n/max(cpu_s,1e-9), kicks/max(n,1)))
print(iops)' "$out" "$t0" "$t1" "$DIR/cpu.$TAG"
}

S=$DIR/vhost.sock
VD_NULL=(--object iothread,id=io0
         --blockdev driver=null-co,node-name=n0,size=$BYTES,read-zeroes=off
         --export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$S,iothread=io0")
QSD_NULL=(--object iothread,id=io0
          --blockdev driver=null-co,node-name=n0,size=$BYTES,read-zeroes=off
          --export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$S,iothread=io0")
VD_NULL0=(--object iothread,id=io0,poll-max-ns=0 "${VD_NULL[@]:2}")
QSD_NULL0=(--object iothread,id=io0,poll-max-ns=0 "${QSD_NULL[@]:2}")
VD_QCOW2=(--object iothread,id=io0
          --blockdev "driver=qcow2,node-name=disk0,file.driver=file,file.filename=$IMG,file.aio=io_uring,cache.direct=on"
          --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$S,iothread=io0")
QSD_QCOW2=(--object iothread,id=io0
           --blockdev "driver=file,node-name=f0,filename=$IMG,aio=io_uring,cache.direct=on"
           --blockdev driver=qcow2,node-name=disk0,file=f0
           --export "type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path=$S,iothread=io0")

FIO=""
if command -v fio >/dev/null; then
    qemu-img convert -O raw "$IMG" "$DIR/disk.raw"
    FIO=yes
fi
fio_iops() {
    fio --name=ceiling --filename="$DIR/disk.raw" --direct=1 --rw=randread --bs=4k --iodepth=32 \
        --ioengine=io_uring --runtime="$RUNTIME" --time_based --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'
}

declare -a vn qn vq qq vs qs v0 q0 fc
for r in $(seq "$RUNS"); do
    TAG=vn; start "$S" "$VDISKD" "${VD_NULL[@]}"; vn+=("$(run_client 64)"); stop
    TAG=qn; start "$S" qemu-storage-daemon "${QSD_NULL[@]}"; qn+=("$(run_client 64)"); stop
    TAG=vq; start "$S" "$VDISKD" "${VD_QCOW2[@]}"; vq+=("$(run_client 32)"); stop
    TAG=qq; start "$S" qemu-storage-daemon "${QSD_QCOW2[@]}"; qq+=("$(run_client 32)"); stop
    TAG=vs; start "$S" "$VDISKD" "${VD_NULL[@]}"; vs+=("$(run_client 64 --spin-us 50)"); stop
    TAG=qs; start "$S" qemu-storage-daemon "${QSD_NULL[@]}"; qs+=("$(run_client 64 --spin-us 50)"); stop
    TAG=v0; start "$S" "$VDISKD" "${VD_NULL0[@]}"; v0+=("$(run_client 64)"); stop
    TAG=q0; start "$S" qemu-storage-daemon "${QSD_NULL0[@]}"; q0+=("$(run_client 64)"); stop
    [ -z "$FIO" ] || fc+=("$(fio_iops)")
    echo "run $r: null vdiskd ${vn[-1]} qsd ${qn[-1]} | qcow2 vdiskd ${vq[-1]} qsd ${qq[-1]}" \
         "${FIO:+(fio ${fc[-1]})} | null, spinning front-end: vdiskd ${vs[-1]} qsd ${qs[-1]}" \
         "| null, poll-max-ns=0: vdiskd ${v0[-1]} qsd ${q0[-1]}"
done

median() { python3 -c 'import sys,statistics; print(int(statistics.median(map(float, sys.argv[1:]))))' "$@"; }
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
pmed() {
    python3 -c 'import sys,statistics
a=list(map(float,sys.argv[1].split())); b=list(map(float,sys.argv[2].split()))
r=sorted(x/y for x,y in zip(a,b)); print("%.2f (runs: %s)" % (statistics.median(r), " ".join("%.2f" % x for x in r)))' "$1" "$2"
}
cpu() {   # cpu <tag> <column 1|2|3>: median
    python3 -c 'import sys,statistics
c=int(sys.argv[2]); v=statistics.median(float(l.split()[c-1]) for l in open(sys.argv[1]))
print("%.2f" % v if c==1 else "%.0f" % v if c==2 else "%.3f" % v)' "$DIR/cpu.$1" "$2"
}
mvn=$(median "${vn[@]}"); mqn=$(median "${qn[@]}"); mvq=$(median "${vq[@]}"); mqq=$(median "${qq[@]}")
mvs=$(median "${vs[@]}"); mqs=$(median "${qs[@]}"); mv0=$(median "${v0[@]}"); mq0=$(median "${q0[@]}")
echo
echo "vhost-user-blk, 4k randread, 1 queue, 1 IOThread, our front-end, median of $RUNS x ${RUNTIME}s"
printf '%-52s %10s IOPS\n' "null-co depth 64: vdiskd" "$mvn"
printf '%-52s %10s IOPS\n' "null-co depth 64: qemu-storage-daemon 7.2" "$mqn"
printf '%-52s %10s   (target >= 2.0)\n' "ratio" "$(ratio "$mvn" "$mqn")"
printf '%-52s %10s IOPS\n' "qcow2 cache.direct depth 32: vdiskd" "$mvq"
printf '%-52s %10s IOPS\n' "qcow2 cache.direct depth 32: qemu-storage-daemon" "$mqq"
printf '%-52s %10s   (target >= 1.3)\n' "ratio" "$(ratio "$mvq" "$mqq")"
[ -z "$FIO" ] || printf '%-52s %10s IOPS\n' "  the disk: fio on a raw copy, same depth" "$(median "${fc[@]}")"
printf '%-52s %10s IOPS\n' "null-co depth 64, spinning front-end: vdiskd" "$mvs"
printf '%-52s %10s IOPS\n' "null-co depth 64, spinning front-end: qsd" "$mqs"
printf '%-52s %10s   (information)\n' "ratio" "$(ratio "$mvs" "$mqs")"
printf '%-52s %10s IOPS\n' "null-co depth 64, poll-max-ns=0: vdiskd" "$mv0"
printf '%-52s %10s IOPS\n' "null-co depth 64, poll-max-ns=0: qsd" "$mq0"
printf '%-52s %10s   (information)\n' "ratio" "$(ratio "$mv0" "$mq0")"
echo
echo "median of per-run ratios: null $(pmed "${vn[*]}" "${qn[*]}")"
echo "                          qcow2 $(pmed "${vq[*]}" "${qq[*]}")"
echo "                          null, spinning front-end $(pmed "${vs[*]}" "${qs[*]}")"
echo "                          null, poll-max-ns=0 $(pmed "${v0[*]}" "${q0[*]}")"
echo
echo "server CPU per request (us, median), requests per server CPU-second, front-end kicks per request:"
for c in "null:vn:qn" "qcow2:vq:qq" "null, spinning front-end:vs:qs" "null, poll-max-ns=0:v0:q0"; do
    IFS=: read -r name v q <<<"$c"
    printf '  %s: vdiskd %s us (%s/s, %s kicks/req)   qsd %s us (%s/s, %s kicks/req)\n' "$name" \
        "$(cpu "$v" 1)" "$(cpu "$v" 2)" "$(cpu "$v" 3)" "$(cpu "$q" 1)" "$(cpu "$q" 2)" "$(cpu "$q" 3)"
done
echo "1,000,000 IOPS from one data-plane thread needs <= 1.00 us of server CPU per request."
echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); the machine may be shared)"
