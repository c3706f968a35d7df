#!/usr/bin/env python3
"""fio's nbd engine against vdiskd: random writes with crc32c verification at
queue depth 32 over 4 connections (one per job, separate regions), then a
read-only verify pass over a second daemon start. Image checked afterwards."""
import os
import sys

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, run, need, qemu_img_check, main


def fio(uri, rw, extra=()):
    return run(["fio", "--name=v", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k",
                "--iodepth=32", "--numjobs=4", "--size=8M", "--offset_increment=8M",
                "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--randrepeat=1",
                "--group_reporting", *extra], timeout=240)


def test(vdiskd):
    need("fio", "qemu-img")
    with TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        run(["qemu-img", "create", "-f", "qcow2", img, "64M"])
        sock = os.path.join(d, "nbd.sock")
        args = ["--object", "iothread,id=io0",
                "--blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,"
                              f"file.filename={img},cache.direct=on",
                "--nbd-server", f"addr.type=unix,addr.path={sock}",
                "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on,iothread=io0"]
        uri = f"nbd+unix:///disk?socket={sock}"
        dmn = Vdiskd(vdiskd, d, args, wait_for=[sock])
        try:
            out = fio(uri, "randwrite").stdout
            assert "verify" not in out.lower() or "err= 0" in out, out
            stats = dmn.qmp.ok("query-named-block-nodes")
            top = [n for n in stats if n["node-name"] == "disk0"][0]
            assert top["stats"]["wr_operations"] >= 4 * 2048, top["stats"]
            assert top["stats"]["rd_operations"] >= 4 * 2048, top["stats"]
        finally:
            if dmn.alive():
                dmn.stop()
        qemu_img_check(img)
        # the data survives a restart: verify-only pass
        dmn = Vdiskd(vdiskd, d, args, wait_for=[sock])
        try:
            fio(uri, "randwrite", ["--verify_only"])
        finally:
            dmn.stop()
        qemu_img_check(img)


main(test)
