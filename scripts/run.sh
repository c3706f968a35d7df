#!/usr/bin/env bash
# The main job: build vdisk and start the storage daemon serving a default
# image (./vdisk-data/disk.qcow2) over NBD. Installs what it needs first.
#
#   bash scripts/run.sh [--port N] [--socket PATH]   default mode (127.0.0.1:10809,
#                                                   ./vdisk-data/nbd.sock)
#   bash scripts/run.sh --blockdev ... --export ...   any vdiskd command line
#
# In the default mode the TCP port is checked before anything is installed or
# built, and vdiskd itself binds its listeners before it creates the 16 GiB
# image, so a taken port fails fast and leaves nothing behind.
set -eu
cd "$(dirname "$0")/.."

port=${VDISKD_NBD_PORT:-10809}
sock=${VDISKD_NBD_SOCKET:-}
default_mode=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || { echo "run.sh: --port needs a value" >&2; exit 1; }
            port=$2; shift 2 ;;
    --port=*) port=${1#--port=}; shift ;;
    --socket) [ $# -ge 2 ] || { echo "run.sh: --socket needs a value" >&2; exit 1; }
              sock=$2; shift 2 ;;
    --socket=*) sock=${1#--socket=}; shift ;;
    *) default_mode=0; args+=("$1"); shift ;;
  esac
done
if [ "$default_mode" = 0 ] && { [ "$port" != "${VDISKD_NBD_PORT:-10809}" ] || [ -n "$sock" ]; }; then
  echo "run.sh: --port/--socket apply to the default mode only (no vdiskd options)" >&2
  exit 1
fi
case "$port" in
  ''|*[!0-9]*) echo "run.sh: --port '$port' is not a port number" >&2; exit 1 ;;
esac

if [ "$default_mode" = 1 ] && command -v python3 >/dev/null; then
  if ! python3 - "$port" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    sys.exit(f"run.sh: 127.0.0.1:{sys.argv[1]} is not available ({e.strerror}); "
             "use --port N to serve on another port")
PY
  then
    exit 1
  fi
fi

bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
if [ -x build/tools/vdiskd/vdiskd ]; then
  if [ "$default_mode" = 1 ]; then
    export VDISKD_NBD_PORT=$port
    [ -z "$sock" ] || export VDISKD_NBD_SOCKET=$sock
    exec build/tools/vdiskd/vdiskd
  fi
  exec build/tools/vdiskd/vdiskd "${args[@]}"
fi
echo "vdiskd is not built yet; running the tools demo instead" >&2
mkdir -p vdisk-data
build/tools/vdisk-img/vdisk-img create -f raw vdisk-data/demo.raw 64M
build/tools/vdisk-io/vdisk-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' vdisk-data/demo.raw
build/tools/vdisk-img/vdisk-img info vdisk-data/demo.raw
