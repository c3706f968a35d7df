#!/usr/bin/env python3
"""Move a live node and its export between IOThreads (and the main loop)
with x-blockdev-set-iothread while fio writes and verifies over 4
connections: no request may be lost or corrupted; a second export on another
IOThread keeps working meanwhile."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, run, need, qemu_img_check, main, log


def test(vdiskd):
    need("fio", "qemu-img", "qemu-io")
    with TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        img2 = os.path.join(d, "disk2.qcow2")
        run(["qemu-img", "create", "-f", "qcow2", img, "64M"])
        run(["qemu-img", "create", "-f", "qcow2", img2, "16M"])
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0", "--object", "iothread,id=io1",
            "--object", "iothread,id=io2",
            "--blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={img}",
            "--blockdev", f"driver=qcow2,node-name=disk1,file.driver=file,file.filename={img2}",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on,iothread=io0",
            "--export", "type=nbd,id=exp1,node-name=disk1,name=other,writable=on,iothread=io2",
        ], wait_for=[sock])
        try:
            uri = f"nbd+unix:///disk?socket={sock}"
            cmd = ["fio", "--name=move", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                   "--bs=4k", "--iodepth=32", "--numjobs=4", "--size=12M",
                   "--offset_increment=12M", "--verify=crc32c", "--verify_state_save=0", "--verify_backlog=256",
                   "--verify_fatal=1", "--group_reporting"]
            log("+", " ".join(cmd))
            fio = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)

            def each(t, moves, nodes):
                where = [n["iothread"] for n in nodes if n["node-name"] == "disk0"][0]
                assert where == (t or "main-loop"), (where, t)
                if moves % 3 == 0:
                    # the other export, on its own IOThread, is served meanwhile
                    run(["qemu-io", "-f", "raw", "-c", f"write -P {moves % 250} 0 64k",
                         "-c", f"read -P {moves % 250} 0 64k",
                         f"nbd+unix:///other?socket={sock}"])

            moves = dmn.move_under_load(fio, "disk0", each)
            out = fio.communicate(timeout=60)[0]
            log(out)
            assert fio.returncode == 0, "fio failed during IOThread moves"
            log(f"{moves} moves under load")
            assert moves >= 3, "fio finished before the node moved"
            exports = dmn.qmp.ok("query-block-exports")
            assert all(e["clients"] == 0 for e in exports), exports
            # full verification of what fio wrote, after the moves
            run(["fio", "--name=move", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                 "--bs=4k", "--iodepth=32", "--numjobs=4", "--size=12M",
                 "--offset_increment=12M", "--verify=crc32c", "--verify_state_save=0", "--verify_only",
                 "--verify_fatal=1", "--group_reporting"], timeout=120)
        finally:
            if dmn.alive():
                dmn.stop()
        qemu_img_check(img)
        qemu_img_check(img2)


main(test)
