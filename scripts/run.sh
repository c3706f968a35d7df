#!/usr/bin/env bash
# The main job: build vdisk and start the storage daemon serving a default
# image (./vdisk-data/disk.qcow2) over NBD. Installs what it needs first.
set -eu
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
if [ -x build/tools/vdiskd/vdiskd ]; then
  exec build/tools/vdiskd/vdiskd "$@"
fi
echo "vdiskd is not built yet; running the tools demo instead" >&2
mkdir -p vdisk-data
build/tools/vdisk-img/vdisk-img create -f raw vdisk-data/demo.raw 64M
build/tools/vdisk-io/vdisk-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' vdisk-data/demo.raw
build/tools/vdisk-img/vdisk-img info vdisk-data/demo.raw
