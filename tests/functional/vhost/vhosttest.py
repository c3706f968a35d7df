"""Helpers for the vhost-user-blk functional tests: the vdiskd/QMP helpers
of tests/functional/nbd plus running our front-end (vhu-client) and
qemu-storage-daemon, and checking the data layout the front-end writes."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbd"))
from nbdtest import (QMP, SKIP, TempDir, Vdiskd, blockdev_qcow2, blockdev_raw, log,  # noqa: F401
                     need, qemu_img_check, run)

SIZE = 64 * 1024 * 1024

# (offset, length, byte) that vhu-client's write_layout leaves behind.
LAYOUT = [(0, 4096, 0x11), (1 << 20, 65536, 0x22), (SIZE - 65536, 65536, 0x33),
          (8192, 512, 0), (8192 + 512, 1536, 0x44), (2 << 20, 131072, 0),
          ((3 << 20) - 4096, 4096, 0x67), ((3 << 20) + 65536, 4096, 0x68)]


def client(binary, sock, test, *opts, size=SIZE, check=True, timeout=300):
    return run([binary, "--size", str(size)] + list(opts) + [sock, test], check=check,
               timeout=timeout)


def verify_on_host(path, fmt, layout=LAYOUT):
    """Check the layout with qemu-io (QEMU reads the image, not us)."""
    cmds = []
    for off, ln, byte in layout:
        cmds += ["-c", f"read -P {byte} {off} {ln}"]
    p = run(["qemu-io", "-f", fmt, "-r"] + cmds + [path], check=False)
    if p.returncode != 0 or "Pattern verification failed" in p.stdout:
        raise AssertionError(f"data on the host differs from what the front-end wrote: {path}")


def create(path, fmt, size=SIZE):
    run(["qemu-img", "create", "-f", fmt, path, str(size)])


def blockdev(path, fmt, node="disk0", direct=False):
    return blockdev_qcow2(path, node, direct) if fmt == "qcow2" else blockdev_raw(path, node)


def vhost_export(sock, node="disk0", id="exp0", writable=True, extra=""):
    s = (f"type=vhost-user-blk,id={id},node-name={node},addr.type=unix,addr.path={sock},"
         f"writable={'on' if writable else 'off'}")
    return s + ("," + extra if extra else "")


class Qsd:
    """qemu-storage-daemon with the given arguments, ready when wait_for exists."""

    def __init__(self, workdir, args, wait_for):
        full = ["qemu-storage-daemon"] + args
        log("+", " ".join(full))
        self.logf = open(os.path.join(workdir, "qsd.log"), "w+")
        self.proc = subprocess.Popen(full, stdout=self.logf, stderr=subprocess.STDOUT,
                                     cwd=workdir)
        deadline = time.time() + 30
        while not all(os.path.exists(w) for w in wait_for):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError("qemu-storage-daemon did not start: " + self.log())
            time.sleep(0.05)

    def log(self):
        self.logf.flush()
        self.logf.seek(0)
        return self.logf.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log(self.log())


def wait_clients(qmp, n, export_id="exp0", timeout=30):
    """Poll query-block-exports until export_id has n clients (a front-end
    that closed its socket is torn down asynchronously)."""
    deadline = time.time() + timeout
    while True:
        exps = {e["id"]: e for e in qmp.ok("query-block-exports")}
        if exps[export_id]["clients"] == n:
            return exps[export_id]
        if time.time() > deadline:
            raise AssertionError(f"export {export_id}: {exps[export_id]}, expected {n} clients")
        time.sleep(0.02)
