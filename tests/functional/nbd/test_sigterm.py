#!/usr/bin/env python3
"""SIGTERM while fio writes: vdiskd stops accepting, lets in-flight requests
finish, flushes, closes the image (qcow2 dirty flag clear) and exits 0. Data
acknowledged by a flush before the signal is present afterwards."""
import json
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, run, need, qemu_img_check, main, log


def test(vdiskd):
    need("fio", "qemu-img", "qemu-io")
    with TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        run(["qemu-img", "create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "128M"])
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0",
            # qemu-storage-daemon style: the protocol node is its own --blockdev
            "--blockdev", f"driver=file,node-name=file0,filename={img},aio=io_uring",
            "--blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on,iothread=io0",
        ], wait_for=[sock])
        uri = f"nbd+unix:///disk?socket={sock}"
        fio = None
        try:
            run(["qemu-io", "-f", "raw", "-c", "write -P 0x3c 100M 1M", "-c", "flush", uri])
            cmd = ["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                   "--bs=4k", "--iodepth=32", "--numjobs=2", "--size=32M",
                   "--offset_increment=32M", "--time_based", "--runtime=30"]
            log("+", " ".join(cmd))
            fio = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
            time.sleep(2)
            assert fio.poll() is None, fio.communicate()[0]
            t0 = time.time()
            dmn.stop(signal.SIGTERM, timeout=60)   # asserts exit status 0
            log(f"exited {time.time() - t0:.2f}s after SIGTERM")
            fio.communicate(timeout=60)
        finally:
            if fio and fio.poll() is None:
                fio.kill()
            dmn.kill()
        qemu_img_check(img)
        info = json.loads(run(["qemu-img", "info", "--output=json", img]).stdout)
        assert info.get("dirty-flag", False) is False, info
        spec = info.get("format-specific", {}).get("data", {})
        assert spec.get("corrupt", False) is False, info
        run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x3c 100M 1M", img])
        assert not os.path.exists(sock)


main(test)
