#!/usr/bin/env python3
"""werror=stop on an export: a failed write is held (not failed) while the
export is paused, the monitor says BLOCK_IO_ERROR, and `cont` retries it so the
client's write succeeds and its data is on disk. werror=report fails it."""
import os
import subprocess
import time

from nbdtest import (QMP, TempDir, Vdiskd, log, main, need, run)


def start(binary, d, werror):
    img = os.path.join(d, "disk.raw")
    run(["qemu-img", "create", "-f", "raw", img, "64M"])
    sock = os.path.join(d, "nbd.sock")
    # blkdebug under raw fails the first data write reaching it, once.
    bdev = ("driver=raw,node-name=disk0,file.driver=blkdebug,file.image.driver=file,"
            f"file.image.filename={img},file.inject-error.0.event=write_aio,"
            "file.inject-error.0.errno=5,file.inject-error.0.once=on")
    v = Vdiskd(binary, d, ["--blockdev", bdev,
                           "--nbd-server", f"addr.type=unix,addr.path={sock}",
                           "--export", "type=nbd,id=e0,node-name=disk0,name=disk0,writable=on,"
                           f"werror={werror}"], wait_for=[sock])
    return v, f"nbd+unix:///disk0?socket={sock}", img


def test(binary):
    need("qemu-io", "qemu-img")
    with TempDir() as d:
        v, uri, img = start(binary, d, "stop")
        try:
            w = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 64k", uri],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            ev = v.qmp.wait_event("BLOCK_IO_ERROR", 20)
            log("event:", ev)
            data = ev["data"]
            assert data["node-name"] == "disk0" and data["operation"] == "write", data
            assert data["action"] == "stop", data
            time.sleep(0.5)
            assert w.poll() is None, "write completed while the export was paused: " + \
                w.stdout.read()
            assert v.qmp.ok("cont") == {}
            out, _ = w.communicate(timeout=30)
            log(out)
            assert w.returncode == 0 and "wrote 65536/65536 bytes at offset 4096" in out, out
            run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 4096 64k", uri])
        finally:
            v.stop()
        # the held write reached the image itself
        run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 4096 64k", img])

    with TempDir() as d:
        v, uri, img = start(binary, d, "report")
        try:
            p = run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", uri], check=False)
            assert "write failed: Input/output error" in p.stdout, p.stdout
            # once=on: the next write succeeds
            run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 64k", "-c",
                 "read -P 0x33 0 64k", uri])
        finally:
            v.stop()

    with TempDir() as d:
        img = os.path.join(d, "x.raw")
        run(["qemu-img", "create", "-f", "raw", img, "1M"])
        p = subprocess.run([binary, "--blockdev",
                            f"driver=raw,node-name=n,file.driver=file,file.filename={img}",
                            "--export", "type=nbd,id=e,node-name=n,rerror=enospc"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=30)
        log(p.stdout)
        assert p.returncode == 1 and "rerror=enospc" in p.stdout, p.stdout


if __name__ == "__main__":
    main(test)
