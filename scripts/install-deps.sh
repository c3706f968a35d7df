#!/usr/bin/env bash
# Install the Debian packages vdisk needs to build, test and benchmark.
# Idempotent and quick when everything is already there. Run as root.
set -eu
pkgs=(
  gcc libc6-dev make meson ninja-build pkg-config    # toolchain and build
  g++                                                # C++ check of the public headers
  liburing-dev zlib1g-dev libzstd-dev                # libvdisk dependencies
  libnbd-dev                                         # NBD client protocol (src/protocols/nbd), required
  libcmocka-dev                                      # unit-test framework
  clang libclang-rt-14-dev                           # fuzzers (libFuzzer) and sanitizers
  python3-clang-14                                   # scripts/check-coroutine-fn.py (libclang)
  universal-ctags                                    # scripts/function-lengths.sh
  qemu-utils qemu-system-common                      # oracles: qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon
  libnbd-bin nbdkit fio                              # NBD clients and load for tests/benchmarks
  python3 strace util-linux procps                   # test helpers
  qemu-system-x86 busybox-static cpio                # vhost-user-blk real-guest test (QEMU TCG guest, initramfs)
  linux-image-cloud-amd64                            # the guest's kernel and virtio modules (vhost-user-blk test)
  librbd-dev                                         # Ceph RBD protocol (src/protocols/rbd), optional at build time
  # a throwaway single-node Ceph for the RBD tests and bench/rbd (tests/functional/rbd/
  # cephcluster.py), and QEMU's rbd driver as the reference. ~90 packages, ~55 MB;
  # about 1-2 minutes to install here.
  ceph-mon ceph-osd ceph-mgr ceph-common uuid-runtime qemu-block-extra
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
