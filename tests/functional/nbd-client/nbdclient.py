"""Helpers for the NBD client tests: NBD servers (qemu-nbd, nbdkit, vdiskd)
on UNIX sockets in a temp dir, started with a readiness signal (qemu-nbd
--fork returns once it listens; nbdkit writes its --pidfile once it listens),
and seeded random workloads in qemu-io syntax."""
import os
import random
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from vdtest import (VDISK_IMG, VDISK_IO, VDISKD, SKIP, log, need, run, qemu_img_check,  # noqa
                    qemu_img_compare, TempDir, Failures, io_args)


def uri(sock, export=""):
    return f"nbd+unix:///{export}?socket={sock}"


def pid_alive(pid):
    """False once pid is gone or a zombie (a daemon is not our child: its
    reaper may take a while)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Server:
    """A running NBD server process; stop() kills it and waits."""

    def __init__(self, pid, what, sock):
        self.pid, self.what, self.sock = pid, what, sock

    def kill(self, sig=signal.SIGKILL):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        # not our child (daemonised): wait until it is gone
        for _ in range(2000):
            if not pid_alive(self.pid):
                break
            time.sleep(0.005)
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass

    stop = kill


def qemu_nbd(d, image, fmt="raw", export="disk", extra=(), name="qemu-nbd"):
    """qemu-nbd on <d>/<name>.sock serving image; returns Server."""
    sock = os.path.join(d, name + ".sock")
    pidf = os.path.join(d, name + ".pid")
    args = ["qemu-nbd", "--fork", f"--pid-file={pidf}", "-k", sock, "-x", export,
            "--persistent", "-e", "8"] + list(extra)
    if fmt:
        args += ["-f", fmt]
    run(args + [image], check=True)
    return Server(int(open(pidf).read()), "qemu-nbd", sock)


def nbdkit(d, plugin_args, filters=(), name="nbdkit"):
    """nbdkit on <d>/<name>.sock; --pidfile is written once it listens."""
    sock = os.path.join(d, name + ".sock")
    pidf = os.path.join(d, name + ".pid")
    if os.path.exists(pidf):
        os.unlink(pidf)
    args = ["nbdkit", "-U", sock, "-P", pidf] + [f"--filter={f}" for f in filters] + \
        list(plugin_args)
    run(args, check=True)   # forks into the background once listening
    for _ in range(2000):
        if os.path.exists(pidf) and open(pidf).read().strip():
            break
        time.sleep(0.005)
    return Server(int(open(pidf).read()), "nbdkit", sock)


def workload(rng, size, discard=True, zero=True, n=40):
    """qemu-io commands over size bytes: writes with patterns at any offset
    and length, zero writes (some with -u: may unmap), discards, bursts of
    concurrent writes, flushes."""
    cmds = []
    for _ in range(n):
        k = rng.random()
        if k < 0.08:
            cmds.append("flush")
            continue
        if k < 0.25:
            pos = rng.randrange(0, size - (1 << 20)) // 512 * 512
            for _ in range(rng.randint(4, 16)):
                ln = rng.choice([512, 4096, 65536, 3 * 4096 + 512])
                if pos + ln > size:
                    break
                cmds.append("aio_write -P 0x%x %d %d" % (rng.randrange(1, 256), pos, ln))
                pos += ln + rng.choice([0, 512, 4096])
            cmds.append("aio_flush")
            continue
        off = rng.randrange(0, size - 1)
        ln = rng.randint(1, min(size - off, rng.choice([700, 5000, 200000, 1 << 20])))
        if zero and k < 0.35:
            cmds.append(("write -z -u %d %d" if rng.random() < 0.5 else "write -z %d %d")
                        % (off, ln))
        elif discard and k < 0.45:
            cmds.append("discard %d %d" % (off, ln))
        elif k < 0.5:
            cmds.append("write -P 0x%x -f %d %d" % (rng.randrange(0, 256), off, ln))  # FUA
        else:
            cmds.append("write -P 0x%x %d %d" % (rng.randrange(0, 256), off, ln))
    return cmds


def reference_cmds(cmds):
    """The same workload for a raw reference file (discarded ranges read as
    zeros on every server used here, so they become zero writes)."""
    out = []
    for c in cmds:
        if c == "aio_flush":
            continue
        c = c.replace("aio_write", "write").replace(" -f ", " ")
        if c.startswith("discard "):
            c = "write -z " + c[len("discard "):]
        out.append(c)
    return out


def io_ok(r):
    """A qemu-io/vdisk-io run succeeded and printed no failure."""
    text = (r.out + r.err).lower()
    return r.rc == 0 and "failed" not in text and "error" not in text
