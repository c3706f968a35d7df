#!/usr/bin/env python3
"""The JSON monitor: greeting and capabilities negotiation, queries, adding
and removing IOThreads, block devices, exports and the NBD server at run
time, error replies for bad input, I/O statistics, and quit."""
import os
import socket
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, run, need, free_port, QMP, main, log


def test(vdiskd):
    need("qemu-img", "qemu-io", "nbdinfo")
    with TempDir() as d:
        img = os.path.join(d, "a.raw")
        run(["qemu-img", "create", "-f", "raw", img, "32M"])
        # command line basics
        p = run([vdiskd, "--help"])
        assert "--blockdev" in p.stdout and "--nbd-server" in p.stdout
        assert "vdiskd version" in run([vdiskd, "-V"]).stdout
        p = run([vdiskd, "--export", "type=nbd,id=e,node-name=nope"], check=False)
        assert p.returncode == 1 and "nope" in p.stdout, p.stdout
        p = run([vdiskd, "--object", "iothread,id=a,bogus=1"], check=False)
        assert p.returncode == 1 and "bogus" in p.stdout, p.stdout

        # --daemonize and --pidfile: the parent returns once the export is up
        pidfile = os.path.join(d, "vd.pid")
        dsock = os.path.join(d, "daemon.sock")
        run([vdiskd, "--daemonize", "--pidfile", pidfile,
             "--blockdev", '{"driver": "null-co", "node-name": "j0", "size": 1048576}',
             "--nbd-server", f"addr.type=unix,addr.path={dsock}",
             "--export", "type=nbd,id=e0,node-name=j0"])
        pid = int(open(pidfile).read())
        out = run(["nbdinfo", f"nbd+unix:///j0?socket={dsock}"]).stdout
        assert "1048576" in out, out
        os.kill(pid, 15)
        for _ in range(200):
            if not os.path.exists(pidfile):
                break
            time.sleep(0.05)
        assert not os.path.exists(pidfile) and not os.path.exists(dsock)
        p = run([vdiskd, "--daemonize", "--blockdev", "driver=nope,node-name=x"], check=False)
        assert p.returncode == 1 and "nope" in p.stdout, p.stdout

        dmn = Vdiskd(vdiskd, d, [])
        q = dmn.qmp
        assert q.greeting["QMP"]["capabilities"] == [], q.greeting
        assert "qemu" in q.greeting["QMP"]["version"]

        # negotiation is needed on a new connection; a second one is refused
        q2 = socket.socket(socket.AF_UNIX)
        q2.connect(dmn.qmp_path)
        f = q2.makefile("rwb")
        f.readline()
        f.write(b'{"execute": "query-version"}\n')
        f.flush()
        assert b"CommandNotFound" in f.readline()
        q2.close()
        r = q.cmd("qmp_capabilities")
        assert r["error"]["class"] == "CommandNotFound", r

        assert "package" in q.ok("query-version")
        assert q.ok("query-iothreads") == []
        assert q.ok("query-block-exports") == []

        # bad input: not JSON, not an object, unknown command, bad arguments
        q.sock.sendall(b'[1, 2]\n')
        r = q._recv()
        assert r["error"]["class"] == "GenericError", r
        q.sock.sendall(b'{"execute": \n')
        q.sock.sendall(b'}\n')
        r = q._recv()
        assert "JSON parse error" in r["error"]["desc"], r
        r = q.cmd("no-such-command")
        assert r["error"]["class"] == "CommandNotFound", r
        r = q.cmd("blockdev-add", driver="raw")
        assert "node-name" in r["error"]["desc"], r
        r = q.cmd("blockdev-add", **{"node-name": "x", "driver": "nope"})
        assert "error" in r, r
        r = q.cmd("block-export-add", type="nbd", id="e", **{"node-name": "missing"})
        assert "missing" in r["error"]["desc"], r
        r = q.cmd("object-add", **{"qom-type": "iothread", "id": "t", "poll-max-ns": -1})
        assert "error" in r, r
        r = q.cmd("x-blockdev-set-iothread", **{"node-name": "missing", "iothread": None})
        assert "error" in r, r
        # the id is echoed
        q.sock.sendall(b'{"execute": "query-version", "id": "abc"}\n')
        assert q._recv()["id"] == "abc"

        # build an export at run time
        q.ok("object-add", **{"qom-type": "iothread", "id": "io0", "poll-max-ns": 0})
        assert [t["id"] for t in q.ok("query-iothreads")] == ["io0"]
        q.ok("blockdev-add", **{"node-name": "disk0", "driver": "raw",
                                "file": {"driver": "file", "filename": img}})
        r = q.cmd("blockdev-add", **{"node-name": "disk0", "driver": "raw",
                                     "file": {"driver": "file", "filename": img}})
        assert "error" in r, r
        sock = os.path.join(d, "nbd.sock")
        q.ok("nbd-server-start", addr={"type": "unix", "data": {"path": sock}})
        port = free_port()
        q.ok("nbd-server-start", addr={"type": "inet", "host": "127.0.0.1", "port": str(port)})
        q.ok("block-export-add", type="nbd", id="exp0", **{"node-name": "disk0"}, name="d",
             writable=True, iothread="io0")
        r = q.cmd("block-export-add", type="nbd", id="exp0", **{"node-name": "disk0"})
        assert "error" in r, r
        r = q.cmd("object-del", id="io0")
        assert "error" in r, r      # in use by disk0
        uri = f"nbd+unix:///d?socket={sock}"
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", "-c", "read -P 0x61 0 1M", uri])
        run(["nbdinfo", f"nbd://127.0.0.1:{port}/d"])
        nodes = q.ok("query-named-block-nodes")
        n = [x for x in nodes if x["node-name"] == "disk0"][0]
        assert n["drv"] == "raw" and n["iothread"] == "io0", n
        assert n["stats"]["wr_bytes"] >= 1 << 20 and n["stats"]["rd_bytes"] >= 1 << 20, n
        assert sum(n["stats"]["latency_histogram_us_log2"]) >= 2, n
        # per-node counters (docs/block.md): the 1M write reached the driver
        c = n["counters"]
        assert c["writes"] >= 1 and c["metadata-writes"] == 0, n
        assert set(c) == {"writes", "metadata-writes", "flush-requests", "flushes"}, n
        ex = q.ok("query-block-exports")
        assert ex[0]["id"] == "exp0" and ex[0]["node-name"] == "disk0", ex

        # busy objects cannot go; a connected client blocks a safe export-del
        r = q.cmd("blockdev-del", **{"node-name": "disk0"})
        assert "error" in r, r
        c = socket.socket(socket.AF_UNIX)
        c.connect(sock)
        c.recv(18)
        c.sendall(b"\0\0\0\3")
        name = b"d"
        c.sendall(b"IHAVEOPT" + (7).to_bytes(4, "big") + (4 + 1 + 2).to_bytes(4, "big")
                  + (1).to_bytes(4, "big") + name + b"\0\0")
        time.sleep(0.3)
        assert q.ok("query-block-exports")[0]["clients"] == 1
        r = q.cmd("block-export-del", id="exp0")
        assert "in use" in r["error"]["desc"], r
        q.ok("block-export-del", id="exp0", mode="hard")
        ev = q._recv()
        assert ev["event"] == "BLOCK_EXPORT_DELETED" and ev["data"]["id"] == "exp0", ev
        assert "seconds" in ev["timestamp"]
        assert c.recv(65536) is not None
        c.close()
        assert q.ok("query-block-exports") == []
        q.ok("x-blockdev-set-iothread", **{"node-name": "disk0", "iothread": None})
        q.ok("blockdev-del", **{"node-name": "disk0"})
        q.ok("object-del", id="io0")
        q.ok("nbd-server-stop")
        r = q.cmd("nbd-server-stop")
        assert "error" in r, r
        assert not os.path.exists(sock)
        q.ok("cont")
        # quit: reply, then the daemon exits 0
        assert q.cmd("quit") == {"return": {}}
        ev = q._recv()
        assert ev["event"] == "SHUTDOWN" and ev["data"]["reason"] == "host-qmp-quit", ev
        assert dmn.proc.wait(30) == 0
        log(dmn.log())


main(test)
