"""Helpers for vdiskd functional tests: start/stop the daemon, a small QMP
client, free ports. Running commands, skipping, scratch directories and
qemu-img check come from ../vdtest.py, the one helper module of the
functional tests."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest  # noqa: E402
from vdtest import SKIP, log, need, qemu_img_check  # noqa: E402,F401


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert port != 10809
    return port


def run(cmd, check=True, timeout=120, **kw):
    """vdtest.run with the daemon tests' defaults: output merged and logged,
    a failure raises."""
    return vdtest.run(cmd, check=check, timeout=timeout, merge=True, echo=True, **kw)


class TempDir(vdtest.TempDir):
    """A scratch directory with a short path (UNIX socket paths are limited)."""

    def __init__(self, prefix="vdisk-nbd-"):
        super().__init__(prefix, base=tempfile.gettempdir())


class QMP:
    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self._recv()
        assert "QMP" in self.greeting, self.greeting
        r = self.cmd("qmp_capabilities")
        assert r == {"return": {}}, r

    def _recv(self):
        while b"\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise EOFError("monitor closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, execute, **args):
        req = {"execute": execute}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            r = self._recv()
            if "event" not in r:
                return r

    def wait_event(self, name, timeout=30):
        """The next event called name (other messages dropped), within timeout seconds."""
        self.sock.settimeout(timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self._recv()
            if r.get("event") == name:
                return r
        raise AssertionError(f"no {name} event")

    def ok(self, execute, **args):
        r = self.cmd(execute, **args)
        if "return" not in r:
            raise AssertionError(f"{execute} failed: {r}")
        return r["return"]

    def close(self):
        self.sock.close()


class Vdiskd:
    """vdiskd with the given arguments plus a monitor on <dir>/qmp.sock."""

    def __init__(self, binary, workdir, args, wait_for=None, monitor=True, preexec_fn=None):
        self.workdir = workdir
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        full = [binary]
        if monitor:
            full += ["--chardev", f"socket,id=mon0,path={self.qmp_path},server=on,wait=off",
                     "--monitor", "chardev=mon0"]
        full += args
        log("+", " ".join(full))
        self.logf = open(os.path.join(workdir, "vdiskd.log"), "w+")
        self.proc = subprocess.Popen(full, stdout=self.logf, stderr=subprocess.STDOUT,
                                     cwd=workdir, preexec_fn=preexec_fn)
        waits = ([self.qmp_path] if monitor else []) + (wait_for or [])
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vdiskd exited with {self.proc.returncode}: {self.log()}")
            if all(os.path.exists(w) for w in waits):
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise AssertionError("vdiskd did not start")
        self.qmp = QMP(self.qmp_path) if monitor else None

    def log(self):
        self.logf.flush()
        self.logf.seek(0)
        return self.logf.read()

    def move_under_load(self, proc, node, each, seconds=180):
        """While proc runs (at most seconds), move node round the IOThreads
        io1, the main loop, io0 (x-blockdev-set-iothread); after each move
        call each(target, moves, nodes) with query-named-block-nodes' answer.
        Returns the number of moves."""
        targets = ["io1", None, "io0", "io1", "io0"]
        moves = 0
        deadline = time.time() + seconds
        while proc.poll() is None and time.time() < deadline:
            t = targets[moves % len(targets)]
            self.qmp.ok("x-blockdev-set-iothread", **{"node-name": node, "iothread": t})
            moves += 1
            each(t, moves, self.qmp.ok("query-named-block-nodes"))
            time.sleep(0.05)
        return moves

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("vdiskd did not exit after signal")
        out = self.log()
        log(out)
        if rc != 0:
            raise AssertionError(f"vdiskd exited with {rc}")
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def blockdev_qcow2(path, node="disk0", direct=False):
    s = f"driver=qcow2,node-name={node},file.driver=file,file.filename={path}"
    if direct:
        s += ",cache.direct=on"
    return s


def blockdev_raw(path, node="disk0"):
    return f"driver=raw,node-name={node},file.driver=file,file.filename={path}"


def main(fn):
    """Run fn(vdiskd_binary) and turn exceptions into a failing exit code."""
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("VDISKD", "vdiskd")
    try:
        fn(os.path.abspath(binary))
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.exit(1)
    log("PASS")
