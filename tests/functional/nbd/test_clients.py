#!/usr/bin/env python3
"""vdiskd served to real NBD clients: qemu-img info/convert/compare over
nbd+unix:// and nbd://127.0.0.1, qemu-io patterns (write, zero, discard,
flush), nbdinfo --list/--map (base:allocation and qemu:allocation-depth),
nbdcopy both directions; SIGTERM exits 0 and the image checks clean."""
import os
import sys

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import (Vdiskd, TempDir, run, need, free_port, qemu_img_check, main,
                     log)


def test(vdiskd):
    need("qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
    with TempDir() as d:
        base = os.path.join(d, "base.qcow2")
        top = os.path.join(d, "top.qcow2")
        run(["qemu-img", "create", "-f", "qcow2", base, "64M"])
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", base])
        run(["qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 4M 1M", top])
        sock = os.path.join(d, "nbd.sock")
        port = free_port()
        dmn = Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0",
            "--blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={top}",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--nbd-server", f"addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
            "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on,iothread=io0,"
                        "description=test disk",
        ], wait_for=[sock])
        try:
            uri = f"nbd+unix:///disk?socket={sock}"
            tcp = f"nbd://127.0.0.1:{port}/disk"
            out = run(["qemu-img", "info", "--output=json", uri]).stdout
            assert '"virtual-size": 67108864' in out, out
            run(["qemu-img", "info", tcp])

            # data from both layers through the export
            run(["qemu-io", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 4M 1M",
                 "-c", "read -P 0 8M 1M", uri])
            # writes, zeroes, discard, flush, unaligned I/O
            run(["qemu-io", "-f", "raw",
                 "-c", "write -P 0xab 16M 64k",
                 "-c", "write -P 0xcd 16M 512",
                 "-c", "write -P 0xef 17M 3",
                 "-c", "write -z 18M 128k",
                 "-c", "write -P 0x5a 20M 256k",
                 "-c", "discard 20M 64k",
                 "-c", "write -f -P 0x44 24M 4k",
                 "-c", "write -z -u 25M 64k",
                 "-c", "aio_write -P 0x45 26M 4k", "-c", "aio_write -P 0x46 27M 4k",
                 "-c", "aio_flush",
                 "-c", "flush", tcp])
            run(["qemu-io", "-f", "raw",
                 "-c", "read -P 0xcd 16M 512",
                 "-c", "read -P 0xab 16777728 65024",
                 "-c", "read -P 0xef 17M 3",
                 "-c", "read -P 0 18M 128k",
                 "-c", "read -P 0x5a 21037056 192k",
                 "-c", "read -P 0x44 24M 4k", "-c", "read -P 0 25M 64k",
                 "-c", "read -P 0x45 26M 4k", "-c", "read -P 0x46 27M 4k", uri])
            # a read-back pattern mismatch must be detected (the check can fail)
            bad = run(["qemu-io", "-f", "raw", "-c", "read -P 0x99 16M 512", uri], check=False)
            assert "Pattern verification failed" in bad.stdout, bad.stdout

            # nbdinfo
            out = run(["nbdinfo", "--list", f"nbd+unix:///?socket={sock}"]).stdout
            assert "export=\"disk\"" in out or "export: disk" in out or "disk" in out, out
            assert "test disk" in out, out
            out = run(["nbdinfo", f"nbd+unix:///disk?socket={sock}"]).stdout
            assert "can_multi_conn: true" in out and "can_fua: true" in out, out
            assert "base:allocation" in out, out
            out = run(["nbdinfo", "--map", uri]).stdout
            lines = [l.split() for l in out.strip().splitlines()]
            assert lines[0][0] == "0" and lines[0][2] == "0", out   # data at 0
            assert any(l[0] == str(8 << 20) and "hole" in " ".join(l) for l in lines) or \
                any("hole" in " ".join(l) for l in lines), out
            out = run(["nbdinfo", "--map=qemu:allocation-depth", uri]).stdout
            assert "backing depth 2" in out, out
            assert "local" in out and "absent" in out, out

            # qemu-img convert / compare
            conv = os.path.join(d, "conv.qcow2")
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, conv])
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", tcp, conv])
            qemu_img_check(conv)

            # nbdcopy out and in
            raw = os.path.join(d, "copy.raw")
            run(["nbdcopy", uri, raw])
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, conv])
            run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 4M", raw])
            run(["nbdcopy", raw, tcp])
            run(["qemu-img", "compare", "-f", "raw", "-F", "raw", raw, uri])
            run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 0 4M", uri])
        finally:
            if dmn.alive():
                dmn.stop()
        qemu_img_check(top)
        qemu_img_check(base)
        run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x77 0 4M", "-c", "read -P 0xcd 16M 512",
             top])
        # the base was never written through the export
        run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 1M", base])
        assert not os.path.exists(sock), "socket not removed on exit"


main(test)
