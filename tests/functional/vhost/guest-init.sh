#!/bin/busybox sh
# /init of the test guest (tests/functional/vhost/test_guest.py): load the
# virtio modules, exercise /dev/vda through the vhost-user-blk device and
# print one verdict line. Parameters come from the kernel command line:
# vdtest.size=BYTES vdtest.queues=N
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "insmod $m failed"; done
size=0; queues=1; crash=0
for a in $(cat /proc/cmdline); do
  case $a in
    vdtest.size=*) size=${a#vdtest.size=} ;;
    vdtest.queues=*) queues=${a#vdtest.queues=} ;;
    vdtest.crash=*) crash=${a#vdtest.crash=} ;;
  esac
done
fail() { dmesg -n 1; echo "VDTEST-RESULT: FAIL $*"; poweroff -f; }
i=0
while [ ! -b /dev/vda ]; do
  i=$((i+1)); [ $i -gt 300 ] && fail "no /dev/vda"
  sleep 0.1
done
# vdtest.crash=2: the disk is a slow null-co (reads return zeros after
# 2 s): only O_DIRECT reads for 6 s, so one is always in flight when the
# host kills the server.
if [ "$crash" = 2 ]; then
  dd if=/dev/zero of=/z bs=4096 count=1 2>/dev/null
  echo "VDTEST-LOOP"
  end=$(( $(date +%s) + 6 )); n=0
  while [ "$(date +%s)" -lt $end ]; do
    dd if=/dev/vda of=/r bs=4096 count=1 skip=$n iflag=direct 2>/dev/null || fail "read $n"
    cmp -s /r /z || fail "read $n: not zeroes"
    n=$((n+1))
  done
  dmesg -n 1
  echo "VDTEST-ROUNDS $n"
  echo "VDTEST-RESULT: PASS"
  poweroff -f
fi
got=$(blockdev --getsize64 /dev/vda)
[ "$got" = "$size" ] || fail "size $got, expected $size"
# The device offers CONFIG_WCE; make the guest send flushes.
echo "write back" > /sys/block/vda/cache_type || fail "cannot set write back"
cat /sys/block/vda/cache_type
# pattern FILE BYTE(octal) KIB
pattern() { dd if=/dev/zero bs=1024 count=$3 2>/dev/null | tr '\000' "\\$2" > $1; }
pattern /p1 132 64      # 0x5a
pattern /p2 153 8       # 0x6b
pattern /p3 174 64      # 0x7c
pattern /p4 215 1024    # 0x8d
pattern /p5 236 4       # 0x9e
last=$((size / 1024 - 64))
# seek in KiB units: at 0; across the 64k cluster boundary at 188k; the
# last 64 KiB; 4M-4k, 4M..5M (discarded below), 5M
dd if=/p1 of=/dev/vda bs=1024 seek=0 conv=notrunc,fsync 2>/dev/null || fail "write 0"
dd if=/p2 of=/dev/vda bs=1024 seek=188 conv=notrunc,fsync 2>/dev/null || fail "write 188k"
dd if=/p3 of=/dev/vda bs=1024 seek=$last conv=notrunc,fsync 2>/dev/null || fail "write last"
dd if=/p5 of=/dev/vda bs=1024 seek=4092 conv=notrunc,fsync 2>/dev/null || fail "write 4092k"
dd if=/p4 of=/dev/vda bs=1024 seek=4096 conv=notrunc,fsync 2>/dev/null || fail "write 4M"
dd if=/p5 of=/dev/vda bs=1024 seek=5120 conv=notrunc,fsync 2>/dev/null || fail "write 5M"
# a 512-byte direct write at an odd sector
dd if=/p2 of=/dev/vda bs=512 count=1 seek=2049 oflag=direct conv=notrunc,fsync 2>/dev/null || \
  fail "direct write at sector 2049"
sync
blockdev --flushbufs /dev/vda || fail "flushbufs"
echo 3 > /proc/sys/vm/drop_caches
# check FILE SEEK_KIB KIB: read back from the device, not the page cache
check() {
  dd if=/dev/vda of=/r bs=1024 skip=$2 count=$3 iflag=direct 2>/dev/null || fail "read $2k"
  cmp -s /r $1 || fail "data at $2k differs"
}
check /p1 0 64
check /p2 188 8
check /p3 $last 64
check /p5 4092 4
check /p4 4096 1024
check /p5 5120 4
dd if=/dev/vda of=/r bs=512 skip=2049 count=1 iflag=direct 2>/dev/null
head -c 512 /p2 > /r2
cmp -s /r /r2 || fail "direct write at sector 2049 differs"
if [ -e /sys/block/vda/queue/discard_max_bytes ] && \
   [ "$(cat /sys/block/vda/queue/discard_max_bytes)" != 0 ]; then
  blkdiscard -o 4194304 -l 1048576 /dev/vda || fail "blkdiscard"
  check /p5 4092 4
  check /p5 5120 4
else
  fail "the device offers no discard"
fi
# vdtest.crash=1: O_DIRECT write+verify rounds for 10 s; the host kills the
# server (SIGKILL) when it sees VDTEST-LOOP and starts it again: QEMU
# reconnects and the server resumes the requests in flight.
if [ "$crash" = 1 ]; then
  pattern /pa 301 64      # 0xc1
  pattern /pb 322 64      # 0xd2
  echo "VDTEST-LOOP"
  end=$(( $(date +%s) + 10 )); n=0
  while [ "$(date +%s)" -lt $end ]; do
    f=/pa; [ $((n % 2)) = 1 ] && f=/pb
    off=$((8192 + (n % 16) * 64))
    dd if=$f of=/dev/vda bs=1024 seek=$off oflag=direct conv=notrunc 2>/dev/null || fail "write round $n"
    dd if=/dev/vda of=/r bs=1024 skip=$off count=64 iflag=direct 2>/dev/null || fail "read round $n"
    cmp -s /r $f || fail "round $n: data differs"
    n=$((n+1))
  done
  echo "VDTEST-ROUNDS $n"
fi
# every queue takes requests: read from each CPU
if [ "$queues" -gt 1 ]; then
  n=0
  while [ $n -lt $queues ]; do
    taskset -c $n dd if=/dev/vda of=/dev/null bs=4096 count=256 skip=$((n * 256)) iflag=direct \
      2>/dev/null || fail "read on cpu $n"
    n=$((n+1))
  done
fi
sync
grep virtio /proc/interrupts | sed 's/^/IRQ: /'
dmesg -n 1
echo "VDTEST-RESULT: PASS"
poweroff -f
