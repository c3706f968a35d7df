#!/bin/bash
# RBD benchmark: `vdisk-img bench` beside `qemu-img bench` (QEMU's rbd driver,
# qemu-block-extra) on the same RBD image of a throwaway single-node Ceph
# (tests/functional/rbd/cephcluster.py: mon + memstore OSD + mgr on
# 127.0.0.1), 4k requests at depth 16, reads then writes, alternating tools
# in each run. qemu-img bench has no random pattern, so both walk the image
# with the same step (-S 1M: every request in a different 4 MiB object
# region, which spreads them over the OSD's PGs like random I/O would).
#
#   bench/rbd/run.sh [path/to/vdisk-img]     RUNS=5 COUNT=20000
#
# With a single memstore OSD on the same two cores the OSD is the limit:
# both clients wait on it, so the ratio says whether ours adds overhead.
set -euo pipefail

VDIMG=$(realpath "${1:-build/tools/vdisk-img/vdisk-img}")
RUNS=${RUNS:-5}
COUNT=${COUNT:-20000}
HERE=$(cd "$(dirname "$0")" && pwd)
HELPER=$HERE/../../tests/functional/rbd/cephcluster.py
for t in qemu-img ceph-mon ceph-osd ceph-mgr rbd python3; do
    command -v $t >/dev/null || { echo "missing $t (install the Ceph packages: scripts/install-deps.sh)"; exit 1; }
done
qemu-img --help | grep -qw rbd || { echo "qemu-img has no rbd driver (qemu-block-extra)"; exit 1; }

DIR=$(mktemp -d /tmp/vdisk-bench-rbd.XXXXXX)
mkfifo "$DIR/ctl"
python3 "$HELPER" "$DIR" < "$DIR/ctl" > "$DIR/ceph.out" 2>&1 &
CEPH_PID=$!
exec 3>"$DIR/ctl"
cleanup() {
    exec 3>&- || true          # Enter/EOF: the helper stops its daemons
    wait "$CEPH_PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
# readiness: the helper prints "Ceph ready" once HEALTH_OK and all PGs clean
for _ in $(seq 1200); do
    grep -q "Ceph ready" "$DIR/ceph.out" && break
    kill -0 "$CEPH_PID" 2>/dev/null || { cat "$DIR/ceph.out"; exit 1; }
    sleep 0.25
done
grep -q "Ceph ready" "$DIR/ceph.out" || { echo "Ceph did not start"; cat "$DIR/ceph.out"; exit 1; }
CONF=$DIR/ceph/ceph.conf
IMG="rbd:rbd/bench:conf=$CONF"
OUT=$DIR/run
rbd -c "$CONF" create --size 256M rbd/bench
qemu-img bench -f raw -w -c 256 -d 16 -s 1M "$IMG" >/dev/null   # allocate every object

onerun() {   # onerun <tool> <extra args...>: prints "seconds client-cpu-seconds"
    local tool=$1; shift        # (exits the script on failure)
    if ! OUT=$OUT python3 -c 'import os, resource, subprocess, sys
out = os.environ["OUT"]
rc = subprocess.call(sys.argv[1:], stdout=open(out + ".out", "w"), stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(out + ".cpu", "w").write(f"{r.ru_utime + r.ru_stime:.3f}")
sys.exit(rc)' "$tool" bench -f raw -c "$COUNT" -d 16 -s 4k -S 1M "$@" "$IMG"; then
        echo "$tool bench $* failed:" >&2; cat "$OUT.out" >&2; kill -TERM $$
    fi
    echo "$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$OUT.out") $(cat "$OUT.cpu")"
}

declare -a vr qr vw qw
for r in $(seq "$RUNS"); do
    # who goes first alternates: the memstore OSD slows down as a run goes on
    if (( r % 2 )); then
        vr+=("$(onerun "$VDIMG")"); qr+=("$(onerun qemu-img)")
        vw+=("$(onerun "$VDIMG" -w)"); qw+=("$(onerun qemu-img -w)")
    else
        qr+=("$(onerun qemu-img)"); vr+=("$(onerun "$VDIMG")")
        qw+=("$(onerun qemu-img -w)"); vw+=("$(onerun "$VDIMG" -w)")
    fi
    echo "run $r (seconds, client CPU seconds): read vdisk ${vr[-1]} qemu ${qr[-1]} | write vdisk ${vw[-1]} qemu ${qw[-1]}"
done
python3 - "${vr[*]}" "${qr[*]}" "${vw[*]}" "${qw[*]}" "$COUNT" <<'PY'
import statistics, sys
def pairs(a):
    x = [float(v) for v in a.split()]
    return x[0::2], x[1::2]
(vr, vrc), (qr, qrc), (vw, vwc), (qw, qwc) = (pairs(a) for a in sys.argv[1:5])
n = int(sys.argv[5])
print(f"\n4k requests, depth 16, step 1M over a 256 MiB RBD image (memstore OSD), {n} per run, "
      f"median of {len(vr)} runs (shared host)")
for name, v, q, vc, qc in (("read ", vr, qr, vrc, qrc), ("write", vw, qw, vwc, qwc)):
    mv, mq = statistics.median(v), statistics.median(q)
    r = sorted(b / a for a, b in zip(v, q))
    cv, cq = statistics.median(vc) / n * 1e6, statistics.median(qc) / n * 1e6
    print(f"  {name}: vdisk-img {n / mv:8.0f} IOPS  qemu-img {n / mq:8.0f} IOPS  "
          f"ratio {mq / mv:.2f} (target >= 1.0; per-run median {statistics.median(r):.2f})")
    print(f"         client CPU per request: vdisk-img {cv:.1f} us  qemu-img {cq:.1f} us "
          f"(qemu/vdisk {cq / cv:.2f})")
PY
