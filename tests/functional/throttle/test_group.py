#!/usr/bin/env python3
"""Two exports whose throttle nodes share one group, on two IOThreads:
fio on both at once gets each half of the group's limit (within 15 %);
qom-set during a run changes the rate within a second; object-add,
qom-get, object-del (refused while a node uses the group) on the monitor."""
import os
import subprocess
import time

from throttletest import (Vdiskd, TempDir, need, main, log, null_exports, uri, fio, fio_cmd,
                          fio_results, iops_per_second, within, short, first_tenth)


def test(vdiskd):
    need("fio")
    with TempDir() as d:
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "throttle-group,id=tg0,x-iops-total=1000",
            *null_exports(sock, 2)], wait_for=[sock])
        try:
            # 1. fairness across IOThreads
            jobs = fio(d, [("a", uri(sock, 0), ["--rw=randread", "--bs=4k", "--iodepth=32"]),
                           ("b", uri(sock, 1), ["--rw=randread", "--bs=4k", "--iodepth=32"])],
                       runtime=short(5))
            a, b = jobs[0]["read"]["iops"], jobs[1]["read"]["iops"]
            within("group IOPS (both exports)", a + b, 1000 * first_tenth(5), 0.10)
            within("export d0 (IOThread io0)", a, 500, 0.15)
            within("export d1 (IOThread io1)", b, 500, 0.15)

            # 2. qom-set during a run: 400/s, then 1200/s from about second 3
            dmn.qmp.ok("qom-set", path="/objects/tg0", property="limits",
                       value={"iops-total": 400})
            cmd, out = fio_cmd(d, [("live", uri(sock, 0),
                                    ["--rw=randread", "--bs=4k", "--iodepth=32"])],
                               runtime=7, iops_log="live")
            log("+", " ".join(cmd))
            p = subprocess.Popen(cmd)
            time.sleep(3)
            dmn.qmp.ok("qom-set", path="tg0", property="limits", value={"iops-total": 1200})
            t_set = time.time()
            assert p.wait(timeout=60) == 0, "fio failed"
            log(f"qom-set at ~3.0 s, fio ended {time.time() - t_set:.1f} s later")
            secs = iops_per_second(d, "live")[1]
            log(f"IOPS per second: {secs}")
            # the change lands in fio's second 3 or 4 (fio connects first):
            # second 2 is before it, seconds 5-6 after it
            assert len(secs) >= 6, secs
            within("IOPS before qom-set (s 2)", secs[1], 400, 0.10)
            within("IOPS after qom-set (s 5-6)", sum(secs[4:6]) / 2, 1200, 0.10)
            fio_results(out)

            # 3. objects on the monitor
            dmn.qmp.ok("object-add", **{"qom-type": "throttle-group", "id": "tg1",
                                        "limits": {"bps-total": 1048576, "iops-total": 10}})
            lim = dmn.qmp.ok("qom-get", path="tg1", property="limits")
            assert lim["bps-total"] == 1048576 and lim["iops-total"] == 10, lim
            assert dmn.qmp.ok("qom-get", path="tg1", property="x-iops-total") == 10
            r = dmn.qmp.cmd("object-del", id="tg0")
            assert "error" in r and "in use" in r["error"]["desc"], r
            log(f"object-del of a group in use: {r['error']['desc']}")
            r = dmn.qmp.cmd("object-add", **{"qom-type": "throttle-group", "id": "bad",
                                             "limits": {"iops-total": 5, "iops-read": 5}})
            assert "error" in r and "same time" in r["error"]["desc"], r
            r = dmn.qmp.cmd("blockdev-add", driver="throttle", **{"node-name": "tx",
                            "throttle-group": "nosuch", "file": "null0"})
            assert "error" in r and "nosuch" in r["error"]["desc"], r
            # a node in tg1 (the group now has a member), then both go away
            dmn.qmp.ok("blockdev-add", driver="null-co", **{"node-name": "n9"})
            dmn.qmp.ok("blockdev-add", driver="throttle", **{"node-name": "t9",
                       "throttle-group": "tg1", "file": "n9"})
            r = dmn.qmp.cmd("object-del", id="tg1")
            assert "error" in r and "t9" in r["error"]["desc"], r
            dmn.qmp.ok("blockdev-del", **{"node-name": "t9"})
            dmn.qmp.ok("object-del", id="tg1")
            r = dmn.qmp.cmd("qom-get", path="tg1", property="limits")
            assert "error" in r, r
        finally:
            if dmn.alive():
                dmn.stop()


main(test)
