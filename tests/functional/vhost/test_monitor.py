"""vhost-user-blk through the monitor: block-export-add / query-block-exports /
block-export-del (safe refused while a front-end is connected, hard
disconnects it), x-blockdev-set-iothread back and forth under a write+verify
load on two queues, split then packed rings (nothing lost), SIGTERM under load (clean exit, image
intact)."""
import os
import subprocess
import sys
import time

import vhosttest as vt


def start_load(client, sock, seconds, *extra):
    cmd = [client, "--size", str(vt.SIZE), "--seconds", str(seconds), "--nq", "2",
           "--depth", "16", "--qsize", "64"] + list(extra) + [sock, "load"]
    vt.log("+", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p, expect_ok=True):
    out, _ = p.communicate(timeout=120)
    vt.log(out)
    if expect_ok and p.returncode != 0:
        raise AssertionError("the load failed")
    return out


def test(vdiskd):
    client = os.path.abspath(sys.argv[2])
    vt.need("qemu-img")
    with vt.TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        sock = os.path.join(d, "vhost.sock")
        vt.create(img, "qcow2")
        v = vt.Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0", "--object", "iothread,id=io1",
            "--blockdev", vt.blockdev(img, "qcow2")])
        q = v.qmp
        try:
            args = {"type": "vhost-user-blk", "id": "v0", "node-name": "disk0",
                    "addr": {"type": "unix", "path": sock}, "writable": True, "num-queues": 2,
                    "iothread": "io0"}
            q.ok("block-export-add", **args)
            r = q.cmd("block-export-add", **args)
            assert "error" in r and "already exists" in r["error"]["desc"], r
            r = q.cmd("block-export-add", **dict(args, id="v1", **{"num-queues": 99}))
            assert "error" in r, r
            e = q.ok("query-block-exports")
            assert len(e) == 1 and e[0]["type"] == "vhost-user-blk" and e[0]["iothread"] == "io0", e
            r = q.cmd("blockdev-del", **{"node-name": "disk0"})
            assert "error" in r, "blockdev-del of an exported node must fail"

            for ring in [[], ["--packed"]]:
                load = start_load(client, sock, 5, *ring)
                vt.wait_clients(q, 1, "v0")
                r = q.cmd("block-export-del", id="v0")
                assert "error" in r and "in use" in r["error"]["desc"], r
                for it in ["io1", None, "io0", "io1", "io0", None, "io1"]:
                    time.sleep(0.3)
                    q.ok("x-blockdev-set-iothread", **{"node-name": "disk0", "iothread": it})
                    e = q.ok("query-block-exports")[0]
                    assert e["iothread"] == (it or "main-loop"), e
                finish(load)
                vt.wait_clients(q, 0, "v0")

            # hard delete under load: the front-end is disconnected
            load = start_load(client, sock, 30, "--allow-disconnect")
            vt.wait_clients(q, 1, "v0")
            time.sleep(0.5)
            q.ok("block-export-del", id="v0", mode="hard")
            out = finish(load)
            assert "disconnected by the server" in out, out
            assert q.ok("query-block-exports") == [], "export still listed"
            assert not os.path.exists(sock), "socket left behind"

            # SIGTERM under load
            q.ok("block-export-add", **args)
            load = start_load(client, sock, 30, "--allow-disconnect")
            vt.wait_clients(q, 1, "v0")
            time.sleep(0.5)
        except BaseException:
            v.kill()
            raise
        v.stop()
        finish(load)
        vt.qemu_img_check(img)


if __name__ == "__main__":
    from nbdtest import main
    main(test)
