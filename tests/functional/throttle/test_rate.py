#!/usr/bin/env python3
"""A throttled null-co export (read-zeroes=on: without the throttle's
no-bypass rule the NBD server would answer these reads from block status and
never reach the node) measured with fio's nbd engine:
- 10 s of 4k random reads under iops-total=1000 with a burst of 3000 IOPS
  for 2 s: the burst is visible in the first second, the rate after it is
  within 10 % of the limit;
- bps-read: 64k reads, bandwidth within 10 %;
- iops-size: 64k writes counted as 4 operations of 16k;
- iops-read and iops-write together: a reader and a writer each at its own
  limit (reads and writes are queued apart).
Limits change between runs with qom-set (which also resets the buckets).
THROTTLE_SECONDS=N (the slow suite: 10) makes every run N seconds long."""
import os

from throttletest import (Vdiskd, TempDir, need, main, log, null_exports, uri, fio,
                          iops_per_second, within, short, first_tenth)


def test(vdiskd):
    need("fio")
    with TempDir() as d:
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "throttle-group,id=tg0,limits.iops-total=1000,"
                        "limits.iops-total-max=3000,limits.iops-total-max-length=2",
            *null_exports(sock, 1)], wait_for=[sock])
        try:
            lim = dmn.qmp.ok("qom-get", path="tg0", property="limits")
            assert lim["iops-total"] == 1000 and lim["iops-total-max"] == 3000, lim
            # 1. iops with a burst, 10 s
            jobs = fio(d, [("burst", uri(sock), ["--rw=randread", "--bs=4k", "--iodepth=32"])],
                       runtime=10, iops_log="burst")
            secs = iops_per_second(d, "burst")[1]
            log(f"IOPS per second: {secs}")
            assert len(secs) >= 9, secs
            # burst: 3000/s (plus max/10 at once) until the bucket of
            # max * length = 6000 fills at 2000/s net: ~3 s
            assert secs[0] >= 2 * 1000, f"no burst in the first second: {secs[0]}"
            steady = secs[4:10]
            within("IOPS after the burst (s 5-10)", sum(steady) / len(steady), 1000, 0.10)
            total = jobs[0]["read"]["total_ios"]
            # 3 s at 3000 + 7 s at 1000 + max/10 at once
            within("operations in 10 s", total, 3 * 3000 + 7 * 1000 + 300, 0.10)

            # 2. bandwidth: 8 MiB/s of 64k reads
            dmn.qmp.ok("qom-set", path="tg0", property="limits",
                       value={"iops-total": 0, "iops-total-max": 0,
                              "iops-total-max-length": 1, "bps-read": 8 << 20})
            jobs = fio(d, [("bw", uri(sock), ["--rw=randread", "--bs=64k", "--iodepth=8"])],
                       runtime=short(4))
            # fio's bw is KiB/s; avg/10 goes at once (2.5 % over 4 s)
            within("read bandwidth (KiB/s)", jobs[0]["read"]["bw"], 8192 * first_tenth(4),
                   0.10)

            # 3. iops-size: 64k writes at iops-total=200 with iops-size=16k: 50/s
            dmn.qmp.ok("qom-set", path="tg0", property="limits",
                       value={"bps-read": 0, "iops-total": 200, "iops-size": 16384})
            jobs = fio(d, [("size", uri(sock), ["--rw=randwrite", "--bs=64k", "--iodepth=8"])],
                       runtime=short(3))
            within("64k write IOPS (4 ops each)", jobs[0]["write"]["iops"],
                   50 * first_tenth(3), 0.10)

            # 4. reads and writes apart: a reader at 600/s beside a writer at 200/s
            dmn.qmp.ok("qom-set", path="tg0", property="limits",
                       value={"iops-total": 0, "iops-size": 0, "iops-read": 600,
                              "iops-write": 200})
            jobs = fio(d, [("rd", uri(sock), ["--rw=randread", "--bs=4k", "--iodepth=16"]),
                           ("wr", uri(sock), ["--rw=randwrite", "--bs=4k", "--iodepth=16"])],
                       runtime=short(3))
            within("read IOPS beside writes", jobs[0]["read"]["iops"], 600 * first_tenth(3),
                   0.10)
            within("write IOPS beside reads", jobs[1]["write"]["iops"], 200 * first_tenth(3),
                   0.10)
        finally:
            if dmn.alive():
                dmn.stop()


main(test)
