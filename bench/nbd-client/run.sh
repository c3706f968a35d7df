#!/bin/bash
# NBD client benchmark: `vdisk-img bench` beside `qemu-img bench`, both
# against the same qemu-nbd null-co export over a UNIX socket (4k reads,
# depth 32), alternating in each run so drifts of the shared host hit both.
#
#   bench/nbd-client/run.sh [path/to/vdisk-img]   (default: build/tools/vdisk-img/vdisk-img)
#   RUNS=9 COUNT=400000 bench/nbd-client/run.sh
#
# Prints the median time of each tool, the ratio qemu-img time / vdisk-img
# time (= IOPS ratio; target >= 1.2) and the median of per-run ratios, plus
# each client's CPU time per request (user+sys), which is what the client
# can influence when the server is the limit.
set -euo pipefail

VDIMG=$(realpath "${1:-build/tools/vdisk-img/vdisk-img}")
RUNS=${RUNS:-5}
COUNT=${COUNT:-300000}
for t in qemu-img qemu-nbd python3; do
    command -v $t >/dev/null || { echo "missing $t"; exit 1; }
done
[ -x "$VDIMG" ] || { echo "vdisk-img not found at $VDIMG"; exit 1; }

DIR=$(mktemp -d /tmp/vdisk-bench-nbdc.XXXXXX)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

S=$DIR/nbd.sock
# --fork: qemu-nbd returns once the socket listens (a readiness signal, no sleep)
qemu-nbd --fork --pid-file="$DIR/pid" -k "$S" -x null --persistent -r -e 8 \
    --image-opts driver=null-co,size=1G
SERVER_PID=$(cat "$DIR/pid")
U="nbd+unix:///null?socket=$S"

onerun() {   # onerun <tool>: prints "<seconds> <cpu-us-per-request>"
    /usr/bin/time -f "%U %S" -o "$DIR/time" "$1" bench -f raw -c "$COUNT" -d 32 -s 4k "$U" \
        > "$DIR/out"
    python3 -c 'import re,sys
t=float(re.search(r"Run completed in ([0-9.]+) seconds", open(sys.argv[1]).read()).group(1))
u,s=map(float,open(sys.argv[2]).read().split()[-2:])
print(t, (u+s)*1e6/int(sys.argv[3]))' "$DIR/out" "$DIR/time" "$COUNT"
}

declare -a vt qt vc qc
for r in $(seq "$RUNS"); do
    read -r t c < <(onerun "$VDIMG"); vt+=("$t"); vc+=("$c")
    read -r t c < <(onerun qemu-img); qt+=("$t"); qc+=("$c")
    echo "run $r: vdisk-img ${vt[-1]} s, qemu-img ${qt[-1]} s"
done

python3 - "${vt[*]}" "${qt[*]}" "${vc[*]}" "${qc[*]}" "$COUNT" <<'PY'
import statistics, sys
vt, qt, vc, qc = ([float(x) for x in a.split()] for a in sys.argv[1:5])
n = int(sys.argv[5])
mv, mq = statistics.median(vt), statistics.median(qt)
print()
print(f"4k reads, depth 32, qemu-nbd null-co export over a UNIX socket, {n} requests, "
      f"median of {len(vt)} runs (shared host)")
print(f"  vdisk-img bench  {mv:7.3f} s  {n / mv:9.0f} IOPS  client CPU {statistics.median(vc):5.2f} us/req")
print(f"  qemu-img bench   {mq:7.3f} s  {n / mq:9.0f} IOPS  client CPU {statistics.median(qc):5.2f} us/req")
print(f"  ratio (IOPS vdisk / qemu)  {mq / mv:.2f}   (target >= 1.2)")
r = sorted(q / v for v, q in zip(vt, qt))
print(f"  median of per-run ratios   {statistics.median(r):.2f} (runs: {' '.join('%.2f' % x for x in r)})")
PY
