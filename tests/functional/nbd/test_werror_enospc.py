#!/usr/bin/env python3
"""werror=stop on a really full filesystem (a 64 MiB tmpfs the test mounts):
while the export is paused with a write held, every way to stop or change it
answers at once. x-blockdev-set-iothread is refused, a second monitor gets its
greeting, block-export-del mode=hard and nbd-server-stop reply (the held write
fails with its error), `quit` and SIGTERM exit 0 within seconds, and the
writes acknowledged before the pause are in the image afterwards.
Skipped (exit 77) where mounting a tmpfs is not permitted."""
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import (QMP, SKIP, TempDir, Vdiskd, log, main, need, qemu_img_check, run)

FS_SIZE = 64 << 20


class Tmpfs:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", self.path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            log(f"SKIP: cannot mount a tmpfs here ({p.stdout.strip()}); this test needs root "
                "and permission to mount")
            sys.exit(SKIP)
        return self.path

    def __exit__(self, *exc):
        subprocess.run(["umount", "-l", self.path])


def fill(fs, keep):
    """Take all free space of fs but `keep` bytes."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(fs, "filler")
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - keep))
    return filler


def start_paused(binary, d, fs, extra=()):
    """A daemon serving a qcow2 on the full tmpfs, paused by a held write.
    Returns (daemon, uri, image, filler, the held qemu-io process)."""
    img = os.path.join(fs, "disk.qcow2")
    run(["qemu-img", "create", "-f", "qcow2", img, "256M"])
    sock = os.path.join(d, "nbd.sock")
    v = Vdiskd(binary, d, ["--object", "iothread,id=io0", "--object", "iothread,id=io1",
                           "--blockdev", "driver=qcow2,node-name=disk0,file.driver=file,"
                           f"file.filename={img}",
                           "--nbd-server", f"addr.type=unix,addr.path={sock}",
                           "--export", "type=nbd,id=e0,node-name=disk0,name=disk,writable=on,"
                           "iothread=io0,werror=stop"] + list(extra), wait_for=[sock])
    uri = f"nbd+unix:///disk?socket={sock}"
    # acknowledged, not flushed by the client
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", uri])
    filler = fill(fs, 512 << 10)
    held = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x22 32M 8M", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ev = v.qmp.wait_event("BLOCK_IO_ERROR", 30)
    log("event:", ev)
    assert ev["data"]["nospace"] is True and ev["data"]["action"] == "stop", ev
    time.sleep(0.3)
    assert held.poll() is None, "the write was not held: " + held.stdout.read()
    return v, uri, img, filler, held


def timed(what, fn, limit=5):
    t0 = time.time()
    r = fn()
    dt = time.time() - t0
    log(f"{what}: {dt:.2f}s -> {r}")
    assert dt < limit, f"{what} took {dt:.1f}s"
    return r


def held_failed(held):
    out, _ = held.communicate(timeout=30)
    log(out)
    assert "wrote" not in out, out
    assert held.returncode != 0 or "failed" in out, out


def check_image(img, filler):
    os.unlink(filler)
    qemu_img_check(img)
    run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 1M", img])


def test(binary):
    need("qemu-io", "qemu-img", "mount")
    with TempDir() as d:
        fs = os.path.join(d, "fs")
        os.mkdir(fs)
        with Tmpfs(fs):
            v, uri, img, filler, held = start_paused(binary, d, fs)
            try:
                q = v.qmp
                r = timed("x-blockdev-set-iothread", lambda: q.cmd(
                    "x-blockdev-set-iothread", **{"node-name": "disk0", "iothread": "io1"}))
                assert "error" in r and "cont" in r["error"]["desc"], r
                # the monitor keeps answering, a new client included
                q2 = timed("second monitor", lambda: QMP(v.qmp_path, timeout=5))
                nodes = q2.ok("query-named-block-nodes")
                assert [n["paused"] for n in nodes if n["node-name"] == "disk0"] == [True], nodes
                q2.close()
                r = timed("block-export-del mode=hard",
                          lambda: q.cmd("block-export-del", id="e0", mode="hard"))
                assert r == {"return": {}}, r
                held_failed(held)

                # paused again under a new export, then nbd-server-stop
                os.unlink(filler)
                sock2 = os.path.join(d, "nbd2.sock")
                q.ok("nbd-server-start", addr={"type": "unix", "path": sock2})
                q.ok("block-export-add", type="nbd", id="e1", **{"node-name": "disk0"},
                     name="disk", writable=True, werror="stop")
                uri2 = f"nbd+unix:///disk?socket={sock2}"
                filler = fill(fs, 512 << 10)
                held = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x22 64M 8M",
                                         uri2], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                q.wait_event("BLOCK_IO_ERROR", 30)
                r = timed("nbd-server-stop", lambda: q.cmd("nbd-server-stop"))
                assert r == {"return": {}}, r
                held_failed(held)

                # paused again, then SIGTERM: exit 0 promptly
                os.unlink(filler)
                sock3 = os.path.join(d, "nbd3.sock")
                q.ok("nbd-server-start", addr={"type": "unix", "path": sock3})
                uri3 = f"nbd+unix:///disk?socket={sock3}"
                filler = fill(fs, 512 << 10)
                held = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x22 96M 8M",
                                         uri3], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                q.wait_event("BLOCK_IO_ERROR", 30)
                timed("SIGTERM", lambda: v.stop(signal.SIGTERM, timeout=30), limit=8)
                held_failed(held)
            finally:
                v.kill()
            check_image(img, filler)

    # quit while paused
    with TempDir() as d:
        fs = os.path.join(d, "fs")
        os.mkdir(fs)
        with Tmpfs(fs):
            v, uri, img, filler, held = start_paused(binary, d, fs)
            try:
                assert v.qmp.cmd("quit") == {"return": {}}
                rc = timed("quit", lambda: v.proc.wait(30), limit=8)
                assert rc == 0, v.log()
                held_failed(held)
            finally:
                v.kill()
            check_image(img, filler)


if __name__ == "__main__":
    main(test)
