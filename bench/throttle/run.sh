#!/bin/bash
# Cost of a throttle node: vdiskd's null-co NBD export with and without a
# throttle node above it, beside qemu-storage-daemon 7.2 doing the same, in
# one run. fio's nbd engine, 4k random reads at depth 32 over a UNIX socket;
# the figure of merit is the server's CPU time per request (user + system
# from /proc/<pid>/stat), medians of RUNS runs, every case once per run.
#
#   bench/throttle/run.sh [path/to/vdiskd]     (default: build/tools/vdiskd/vdiskd)
#   RUNS=7 RUNTIME=10 bench/throttle/run.sh
#
# Cases, each server restarted:
#   none       null-co exported directly
#   unlimited  throttle node in a group without limits (target: <= 5 % more
#              CPU per request than none)
#   high       throttle node in a group limited far above what the box can
#              do (iops-total=1e9): the full accounting path, lock included
# then the same three cases under vdisk-img bench (no network, no polling
# thread: a stable measure of what the node itself costs per request).
# qemu-storage-daemon runs its export in the main loop (7.2 aborts when an
# NBD client leaves an export that uses an IOThread); vdiskd uses one IOThread.
set -euo pipefail

VDISKD=$(realpath "${1:-build/tools/vdiskd/vdiskd}")
RUNS=${RUNS:-5}
RUNTIME=${RUNTIME:-5}
for t in fio qemu-storage-daemon; do
    command -v $t >/dev/null || { echo "missing $t"; exit 1; }
done
[ -x "$VDISKD" ] || { echo "vdiskd not found at $VDISKD"; exit 1; }

NAME=throttle
. "$(dirname "$0")/../lib-server.sh"

measure() {   # measure <tag> <uri>: appends IOPS and server CPU us/request
    local t0 t1
    t0=$(cpu_ticks)
    fio --ioengine=nbd --rw=randread --bs=4k --iodepth=32 --runtime="$RUNTIME" --time_based \
        --ramp_time=1 --size=256M --output-format=json --name=j --uri="$2" > "$DIR/fio.json"
    t1=$(cpu_ticks)
    python3 -c 'import json,sys,os
t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]["read"]
hz=os.sysconf("SC_CLK_TCK"); us=(int(sys.argv[3])-int(sys.argv[2]))*1e6/hz
open(sys.argv[4]+".iops","a").write("%d\n" % j["iops"])
open(sys.argv[4]+".cpu","a").write("%.3f\n" % (us/max(j["total_ios"],1)))' \
        "$DIR/fio.json" "$t0" "$t1" "$DIR/$1"
}

S=$DIR/nbd.sock
U="nbd+unix:///disk?socket=$S"
NULL="driver=null-co,node-name=n0,size=1073741824,read-zeroes=off"
VD_BASE=(--object iothread,id=io0 --blockdev "$NULL" --nbd-server "addr.type=unix,addr.path=$S")
VD_EXPORT=(--export type=nbd,id=e0,name=disk,iothread=io0)
QSD_BASE=(--blockdev "$NULL" --nbd-server "addr.type=unix,addr.path=$S")
QSD_EXPORT=(--export type=nbd,id=e0,name=disk)
THR="driver=throttle,node-name=t0,throttle-group=tg0,file=n0"

for r in $(seq "$RUNS"); do
    start "$S" "$VDISKD" "${VD_BASE[@]}" "${VD_EXPORT[0]}" "${VD_EXPORT[1]},node-name=n0"
    measure vd_none "$U"; stop
    start "$S" "$VDISKD" --object throttle-group,id=tg0 "${VD_BASE[@]}" --blockdev "$THR" \
        "${VD_EXPORT[0]}" "${VD_EXPORT[1]},node-name=t0"
    measure vd_unlimited "$U"; stop
    start "$S" "$VDISKD" --object throttle-group,id=tg0,limits.iops-total=1000000000 \
        "${VD_BASE[@]}" --blockdev "$THR" "${VD_EXPORT[0]}" "${VD_EXPORT[1]},node-name=t0"
    measure vd_high "$U"; stop
    start "$S" qemu-storage-daemon "${QSD_BASE[@]}" "${QSD_EXPORT[0]}" "${QSD_EXPORT[1]},node-name=n0"
    measure q_none "$U"; stop
    start "$S" qemu-storage-daemon --object throttle-group,id=tg0 "${QSD_BASE[@]}" \
        --blockdev "$THR" "${QSD_EXPORT[0]}" "${QSD_EXPORT[1]},node-name=t0"
    measure q_unlimited "$U"; stop
    echo "run $r: CPU us/request vdiskd none $(tail -1 "$DIR/vd_none.cpu") unlimited" \
         "$(tail -1 "$DIR/vd_unlimited.cpu") high $(tail -1 "$DIR/vd_high.cpu") |" \
         "qsd none $(tail -1 "$DIR/q_none.cpu") unlimited $(tail -1 "$DIR/q_unlimited.cpu")"
done

# The throttle layer alone, without the network and the busy-polling loop
# (whose spinning makes the NBD figures above noisy on a shared machine):
# vdisk-img bench, 4M reads of 4k at depth 64 on null-co, process CPU time.
VDIMG=$(dirname "$VDISKD")/../vdisk-img/vdisk-img
COUNT=${COUNT:-4000000}
NULLB="file.driver=null-co,file.size=1073741824"
if [ -x "$VDIMG" ] && [ -x /usr/bin/time ]; then
    for r in $(seq "$RUNS"); do
        for c in none unlimited high; do
            case $c in
            none) o=(--image-opts driver=null-co,size=1073741824) ;;
            unlimited) o=(--object throttle-group,id=tg0 --image-opts
                          "driver=throttle,throttle-group=tg0,$NULLB") ;;
            high) o=(--object throttle-group,id=tg0,x-iops-total=1000000000 --image-opts
                     "driver=throttle,throttle-group=tg0,$NULLB") ;;
            esac
            /usr/bin/time -f "%U %S" -o "$DIR/time" "$VDIMG" bench -c "$COUNT" -d 64 "${o[@]}" >/dev/null
            python3 -c 'import sys; u,s=open(sys.argv[1]).read().split()[-2:]
open(sys.argv[2],"a").write("%.4f\n" % ((float(u)+float(s))*1e6/int(sys.argv[3])))' \
                "$DIR/time" "$DIR/img_$c.cpu" "$COUNT"
        done
    done
fi

python3 - "$DIR" "$RUNS" "$RUNTIME" <<'PY'
import statistics, sys
d, runs, rt = sys.argv[1], sys.argv[2], sys.argv[3]
def vals(tag, kind):
    return [float(x) for x in open(f"{d}/{tag}.{kind}")]
med = lambda tag, kind: statistics.median(vals(tag, kind))
print(f"\n4k randread, iodepth 32, UNIX socket, fio nbd engine, median of {runs} x {rt}s")
print(f"{'case':44s} {'IOPS':>9s} {'CPU us/req':>11s}")
for tag, name in [("vd_none", "vdiskd null-co, no throttle"),
                  ("vd_unlimited", "vdiskd + throttle node, group without limits"),
                  ("vd_high", "vdiskd + throttle node, iops-total=1e9"),
                  ("q_none", "qemu-storage-daemon null-co, no throttle"),
                  ("q_unlimited", "qemu-storage-daemon + throttle, no limits")]:
    print(f"{name:44s} {med(tag, 'iops'):9.0f} {med(tag, 'cpu'):11.3f}")
def over(a, b):
    per = sorted(x / y - 1 for x, y in zip(vals(a, "cpu"), vals(b, "cpu")))
    return (med(a, "cpu") / med(b, "cpu") - 1) * 100, statistics.median(per) * 100
for a, b, what in [("vd_unlimited", "vd_none", "vdiskd unlimited throttle (target <= 5 %)"),
                   ("vd_high", "vd_none", "vdiskd throttle with a high limit"),
                   ("q_unlimited", "q_none", "qemu-storage-daemon unlimited throttle")]:
    m, p = over(a, b)
    print(f"CPU per request overhead, {what}: {m:+.1f} % (median of per-run: {p:+.1f} %)")
import os
if os.path.exists(f"{d}/img_none.cpu"):
    print(f"\nvdisk-img bench, null-co, 4k reads at depth 64, process CPU us per request (median of {runs}):")
    for tag, name in [("img_none", "null-co"), ("img_unlimited", "throttle, no limits"),
                      ("img_high", "throttle, iops-total=1e9")]:
        print(f"  {name:28s} {med(tag, 'cpu'):.4f}")
    for a, what in [("img_unlimited", "no limits"), ("img_high", "iops-total=1e9")]:
        extra = med(a, "cpu") - med("img_none", "cpu")
        print(f"  throttle node ({what}) adds {extra:+.4f} us per request = "
              f"{extra / med('vd_none', 'cpu') * 100:+.2f} % of the NBD export's CPU per request")
print("(the machine is shared: compare the ratios, not the absolute figures)")
PY
