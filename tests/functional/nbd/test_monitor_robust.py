#!/usr/bin/env python3
"""The monitor under churn and at the descriptor limit, and its argument checks.
- 500 clients that close before the greeting leave no socket behind.
- At EMFILE the monitor backs off instead of spinning, and serves again once
  descriptors are free (as the NBD listener does).
- nbd-server-start on a path already served is refused; a wrongly typed
  argument is reported as such ("expected: string"), not as missing;
  min-block-size=0 is refused."""
import os
import resource
import socket
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import QMP, TempDir, Vdiskd, log, main

FD_LIMIT = 64


def n_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def connect_qmp(path, within=10):
    """A UNIX connect with a timeout fails with EAGAIN while the backlog is
    full: retry until the daemon has accepted what is queued."""
    deadline = time.time() + within
    while True:
        try:
            return QMP(path, timeout=5)
        except (OSError, EOFError, AssertionError):
            assert time.time() < deadline, "monitor unreachable"
            time.sleep(0.1)


def churn(v):
    pid = v.proc.pid
    before = n_fds(pid)
    for _ in range(500):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(v.qmp_path)
        s.close()
    # the daemon notices the closes asynchronously
    for _ in range(100):
        after = n_fds(pid)
        if after <= before + 2:
            break
        time.sleep(0.05)
    log(f"descriptors: {before} before, {after} after 500 connect/close cycles")
    assert after <= before + 2, f"monitor leaked {after - before} sockets"
    q = connect_qmp(v.qmp_path)
    q.ok("query-version")
    q.close()


def exhaust(v):
    pid = v.proc.pid
    held = []
    deadline = time.time() + 20
    # connect until the daemon is at its limit and its backlog is full
    while time.time() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        if s.connect_ex(v.qmp_path) == 0:
            held.append(s)
            continue
        s.close()
        if n_fds(pid) >= FD_LIMIT:
            break
        time.sleep(0.02)
    assert n_fds(pid) >= FD_LIMIT, f"descriptor limit not reached ({n_fds(pid)})"
    time.sleep(0.5)
    log(f"{len(held)} clients connected, daemon has {n_fds(pid)} descriptors")
    c0 = cpu_seconds(pid)
    time.sleep(1.5)
    busy = cpu_seconds(pid) - c0
    log(f"CPU used at the descriptor limit: {busy:.2f}s in 1.5s")
    assert busy < 0.5, f"monitor spins at EMFILE ({busy:.2f}s of CPU in 1.5s)"
    for s in held:
        s.close()
    # serves again once descriptors are free
    q = connect_qmp(v.qmp_path)
    q.ok("query-version")
    q.close()


def arguments(v, d):
    q = v.qmp
    sock = os.path.join(d, "nbd.sock")
    r = q.cmd("nbd-server-start", addr={"type": "unix", "path": sock})
    assert "already running" in r["error"]["desc"], r
    q.ok("nbd-server-start", addr={"type": "unix", "path": os.path.join(d, "nbd2.sock")})
    r = q.cmd("blockdev-del", **{"node-name": 5})
    assert "expected: string" in r["error"]["desc"], r
    r = q.cmd("block-export-del", id=["x"])
    assert "expected: string" in r["error"]["desc"], r
    r = q.cmd("blockdev-del")
    assert "missing" in r["error"]["desc"], r
    r = q.cmd("block-export-add", type="nbd", id="z", **{"node-name": "n0"},
              **{"min-block-size": 0})
    assert "min-block-size" in r["error"]["desc"], r
    q.ok("block-export-add", type="nbd", id="z", **{"node-name": "n0"},
         **{"min-block-size": 512})


def test(binary):
    with TempDir() as d:
        sock = os.path.join(d, "nbd.sock")
        v = Vdiskd(binary, d, ["--blockdev", "driver=null-co,node-name=n0,size=1M",
                               "--nbd-server", f"addr.type=unix,addr.path={sock}"],
                   wait_for=[sock])
        try:
            churn(v)
            arguments(v, d)
            assert v.alive()
        finally:
            v.stop()
    with TempDir() as d:
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        sock = os.path.join(d, "nbd.sock")
        v = Vdiskd(binary, d, ["--blockdev", "driver=null-co,node-name=n0,size=1M",
                               "--nbd-server", f"addr.type=unix,addr.path={sock}"],
                   wait_for=[sock], preexec_fn=limit)
        try:
            v.qmp.close()
            v.qmp = None
            exhaust(v)
            assert v.alive()
        finally:
            v.stop()


if __name__ == "__main__":
    main(test)
