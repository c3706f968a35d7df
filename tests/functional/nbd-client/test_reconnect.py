#!/usr/bin/env python3
"""reconnect-delay: an NBD server killed and restarted under load.

1. nbdkit (file plugin, delay filter: writes stay in flight) serves a raw
   file; vdisk-io sends 256 concurrent 64k writes with distinct patterns. Once
   some have completed, the server is killed (SIGKILL) and restarted on the
   same socket. Every write must complete successfully (those in flight are
   sent again after the reconnect) and the file must hold every pattern.
2. reconnect-delay=1 and the server stays down: a request fails cleanly
   with an I/O error after about a second (no hang, no crash); once the
   server is back, the next request succeeds (background reconnect).
3. reconnect-delay=0: requests fail at once while the server is down."""
import os
import pty
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdclient import VDISK_IO, log, need, run, TempDir, Failures, nbdkit, qemu_nbd  # noqa

F = Failures()
N = 256
CHUNK = 64 << 10
SIZE = N * CHUNK


def opts(sock, delay, extra=""):
    return (f"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path={sock},"
            f"file.reconnect-delay={delay},file.open-timeout=30{extra}")


class IoProc:
    """vdisk-io with its output on a pseudo-terminal, so that every line
    arrives when it is printed (stdio buffers whole blocks on a pipe)."""

    def __init__(self, args):
        cmd = [VDISK_IO] + args
        log("+", " ".join(cmd))
        master, slave = pty.openpty()
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        self.stdout = os.fdopen(master, "r", errors="replace")
        self.returncode = None

    def __iter__(self):
        while True:
            try:
                line = self.stdout.readline()
            except OSError:   # EIO: the other side of the pty is closed
                return
            if not line:
                return
            yield line.replace("\r\n", "\n")

    def poll(self):
        self.returncode = self.p.poll()
        return self.returncode

    def kill(self):
        self.p.kill()

    def communicate(self, timeout):
        rest = "".join(self)
        self.returncode = self.p.wait(timeout)
        self.stdout.close()
        return rest, None


def start_io(args):
    return IoProc(args)


def wait_line(p, pred, what, out):
    """Read p's output until a line satisfies pred; returns that line."""
    for line in p:
        out.append(line)
        if pred(line):
            return line
    raise AssertionError(f"vdisk-io ended before {what}:\n{''.join(out)}")


def kill_and_restart_under_load(d):
    raw = os.path.join(d, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(SIZE)
    plugin = ["file", f"file={raw}", "wdelay=40ms"]
    srv = nbdkit(d, plugin, filters=["delay"])
    cmds = []
    for i in range(N):
        cmds += ["-c", "aio_write -P 0x%x %d %d" % (i % 255 + 1, i * CHUNK, CHUNK)]
    cmds += ["-c", "aio_flush"]
    p = start_io(["--image-opts"] + cmds + [opts(srv.sock, 30)])
    out = []
    try:
        wait_line(p, lambda l: l.startswith("wrote "), "the first write completed", out)
        srv.kill()
        log("server killed after the first completed write")
        time.sleep(0.3)   # down for a while (a fault, not a readiness wait)
        srv = nbdkit(d, plugin, filters=["delay"])
        log("server restarted")
        rest, _ = p.communicate(timeout=120)
        out.append(rest)
    finally:
        if p.poll() is None:
            p.kill()
        srv.kill()
    text = "".join(out)
    wrote = text.count("wrote 65536/65536")
    F.check(p.returncode == 0 and "failed" not in text, f"vdisk-io failed:\n{text[-3000:]}")
    F.check(wrote == N, f"{wrote} of {N} writes completed")
    F.check("connection lost" in text and "reconnected" in text,
            f"the connection was lost and re-established: {text[-2000:]}")
    # every write is in the file
    checks = []
    for i in range(N):
        checks += ["-c", "read -P 0x%x %d %d" % (i % 255 + 1, i * CHUNK, CHUNK)]
    r = run(["qemu-io", "-f", "raw"] + checks + [raw], quiet=True)
    F.check(r.rc == 0 and "verification failed" not in r.out and "failed" not in r.out,
            f"a write acknowledged to vdisk-io is missing from the file: "
            f"{[l for l in r.out.splitlines() if 'fail' in l][:5]}")


def past_the_delay(d):
    raw = os.path.join(d, "b.raw")
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    srv = qemu_nbd(d, raw, name="b")
    # kill after the first write; the read waits 1 s, then fails; the server
    # comes back; after a pause the next read reconnects and succeeds
    p = start_io(["--image-opts", "-c", "write -P 0x21 0 4k", "-c", "sleep 300",
                  "-c", "read -P 0x21 0 4k", "-c", "sleep 2500", "-c", "read -P 0x21 0 4k",
                  opts(srv.sock, 1, ",file.export=disk")])
    out = []
    try:
        wait_line(p, lambda l: l.startswith("wrote "), "the write", out)
        srv.kill()
        t0 = time.time()
        line = wait_line(p, lambda l: l.startswith("read") or "failed" in l, "the read", out)
        took = time.time() - t0
        F.check("read failed: Input/output error" in line,
                f"a read past reconnect-delay fails with EIO: {line!r}")
        F.check(0.8 < took < 8, f"the read failed after {took:.1f} s (reconnect-delay=1)")
        srv = qemu_nbd(d, raw, name="b")
        rest, _ = p.communicate(timeout=60)
        out.append(rest)
    finally:
        if p.poll() is None:
            p.kill()
        srv.kill()
    text = "".join(out)
    F.check(p.returncode >= 0 and "read 4096/4096 bytes at offset 0" in text,
            f"the read after the server came back succeeded: {text}")

    # reconnect-delay=0: fail at once
    srv = qemu_nbd(d, raw, name="c")
    p = start_io(["--image-opts", "-c", "read -P 0x21 0 4k", "-c", "sleep 200",
                  "-c", "read 0 4k", opts(srv.sock, 0, ",file.export=disk")])
    out = []
    try:
        wait_line(p, lambda l: l.startswith("read "), "the first read", out)
        srv.kill()
        t0 = time.time()
        line = wait_line(p, lambda l: l.startswith("read") or "failed" in l, "the read", out)
        took = time.time() - t0
        F.check("read failed: Input/output error" in line and took < 5,
                f"reconnect-delay=0: read fails at once ({took:.1f} s): {line!r}")
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    F.check(p.returncode >= 0, "no crash")


def main():
    need(VDISK_IO, "qemu-io", "qemu-nbd", "nbdkit")
    with TempDir(prefix="vdisk-nbdr-") as d:
        kill_and_restart_under_load(d)
        past_the_delay(d)
    F.finish()


if __name__ == "__main__":
    main()
