#!/usr/bin/env python3
"""The throttle filter in vdisk-io and vdisk-img through --object and
--image-opts: requests wait for their limit (the run takes the time the
limit implies), data is unchanged (qemu-io reads back what vdisk-io wrote
through the throttle; qemu-img compare and check after a throttled convert),
and a throttle node naming an unknown group is refused."""
import os
import sys
import time

from throttletest import TempDir, run, need, log, qemu_img_check


def timed(cmd, **kw):
    t = time.time()
    p = run(cmd, **kw)
    return p, time.time() - t


def main():
    vdisk_img = os.environ.get("VDISK_IMG")
    vdisk_io = os.environ.get("VDISK_IO")
    if not vdisk_img or not vdisk_io:
        log("SKIP: VDISK_IMG / VDISK_IO not set")
        sys.exit(77)
    need("qemu-img", "qemu-io")
    with TempDir() as d:
        raw = os.path.join(d, "a.raw")
        run(["qemu-img", "create", "-f", "raw", raw, "8M"])
        # vdisk-io: 30 writes at 50 IOPS (5 at once, then 20 ms each): >= 0.5 s
        cmds = []
        for i in range(30):
            cmds += ["-c", f"write -P {i + 1} {i * 4096} 4k"]
        p, secs = timed([vdisk_io, "--object", "throttle-group,id=tg0,limits.iops-total=50",
                         "--image-opts", *cmds,
                         f"driver=throttle,throttle-group=tg0,file.driver=file,"
                         f"file.filename={raw}"])
        log(f"30 writes at iops-total=50 took {secs:.2f} s")
        assert 0.45 <= secs, f"not throttled: {secs:.2f} s"
        for i in (0, 17, 29):
            run(["qemu-io", "-f", "raw", "-c", f"read -P {i + 1} {i * 4096} 4k", raw])
        # vdisk-img convert from a throttled source: 8 MiB at 4 MiB/s. A read
        # waits for the excess of the bytes before it over the bucket (0.4 MiB),
        # so with chunks of up to 2 MiB: >= (8 - 2 - 0.4) / 4 = 1.4 s
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 8M", raw])
        dst = os.path.join(d, "b.qcow2")
        p, secs = timed([vdisk_img, "convert", "--object",
                         "throttle-group,id=tg1,limits.bps-read=4194304", "--image-opts",
                         f"driver=throttle,throttle-group=tg1,file.driver=file,"
                         f"file.filename={raw}", "-O", "qcow2", dst])
        log(f"convert of 8 MiB at bps-read=4 MiB/s took {secs:.2f} s")
        assert 1.3 <= secs, f"not throttled: {secs:.2f} s"
        run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, dst])
        qemu_img_check(dst)
        p = run([vdisk_io, "--image-opts", "-c", "read 0 4k",
                 f"driver=throttle,throttle-group=nosuch,file.driver=file,file.filename={raw}"],
                check=False)
        assert p.returncode != 0 and "nosuch" in p.stdout, p.stdout
        p = run([vdisk_img, "info", "--object", "throttle-group,id=x,limits.iops-read=5,"
                 "limits.iops-total=5", raw], check=False)
        assert p.returncode != 0 and "same time" in p.stdout, p.stdout
    log("PASS")


main()
