#!/usr/bin/env python3
"""Move a throttled node between IOThreads and the main loop with
x-blockdev-set-iothread while fio writes and verifies through it (qcow2
below the throttle): nothing is lost or corrupted (fio verify, then a
verify-only pass and qemu-img check), queued requests complete across the
moves, and the moves do not let fio past the limit."""
import os
import subprocess
import time

from throttletest import (Vdiskd, TempDir, run, need, main, log, fio_cmd, fio_results,
                          qemu_img_check, within)

LIMIT = 1500


def test(vdiskd):
    need("fio", "qemu-img")
    with TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        run(["qemu-img", "create", "-f", "qcow2", img, "64M"])
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0", "--object", "iothread,id=io1",
            "--object", f"throttle-group,id=tg0,limits.iops-total={LIMIT}",
            "--blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={img}",
            "--blockdev", "driver=throttle,node-name=t0,throttle-group=tg0,file=disk0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=t0,name=d0,writable=on,iothread=io0",
        ], wait_for=[sock])
        uri = f"nbd+unix:///d0?socket={sock}"
        opts = ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=3M",
                "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1"]
        try:
            cmd, out = fio_cmd(d, [("m0", uri, opts + ["--offset=0"]),
                                   ("m1", uri, opts + ["--offset=8M"])])
            log("+", " ".join(cmd))
            start = time.time()
            p = subprocess.Popen(cmd)
            targets = ["io1", None, "io0"]
            moves = 0
            while p.poll() is None and time.time() - start < 120:
                t = targets[moves % len(targets)]
                dmn.qmp.ok("x-blockdev-set-iothread", **{"node-name": "t0", "iothread": t})
                moves += 1
                time.sleep(0.1)
            assert p.wait(timeout=60) == 0, "fio failed during IOThread moves"
            log(f"{moves} moves under throttled load")
            assert moves >= 5, "fio finished before the node moved"
            jobs = fio_results(out)
            ios = sum(j["write"]["total_ios"] + j["read"]["total_ios"] for j in jobs)
            # writes, then fio's verify reads, each job at the group's pace
            runtime = max(j["write"]["runtime"] + j["read"]["runtime"] for j in jobs) / 1000
            log(f"{ios} requests in {runtime:.2f} s")
            assert ios == 2 * 2 * 768, ios
            # never faster than the limit (the first tenth of a second is free);
            # released queues are charged, so moves cannot buy more
            within("IOPS through the moves", ios / runtime, LIMIT, 0.10)
            # everything fio wrote is there
            cmd, _ = fio_cmd(d, [("m0", uri, opts + ["--offset=0", "--verify_only"]),
                                 ("m1", uri, opts + ["--offset=8M", "--verify_only"])])
            run(cmd, timeout=120)
        finally:
            if dmn.alive():
                dmn.stop()
        qemu_img_check(img)


main(test)
