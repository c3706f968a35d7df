# Shared by the server benchmarks (bench/nbd, bench/vhost, bench/throttle):
# a scratch directory removed on exit with every server started, starting a
# server and waiting for its socket, stopping it, and its CPU time.
# Source it after setting NAME (the scratch directory's name).

# bench_need <tool...>: exit if a tool is missing
bench_need() {
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }
    done
}

DIR=$(mktemp -d "/var/tmp/vdisk-bench-${NAME:-server}.XXXXXX")
PIDS=()
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap bench_cleanup EXIT

# The servers make their socket appear only once they are ready to serve.
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

start() {   # start <socket> <cmd...>; sets SERVER_PID
    rm -f "$1"
    local s=$1; shift
    "$@" >"$DIR/server.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_sock "$s"
}

stop() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }

# user + system clock ticks of the running server
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
