"""A hostile vhost-user front-end: bad descriptor chains (outside memory,
wrapping lengths, loops, nested/empty/misaligned indirect tables, wrong
header/status placement), an avail index that jumps, bad messages (wrong
version, huge payload, unknown requests, a region larger than its fd),
rings set before the memory table, the memory table replaced under
in-flight requests, a disconnect mid-request. The server answers each, keeps
serving another export meanwhile, exits cleanly and the image is intact."""
import os
import subprocess
import sys

import vhosttest as vt


def test(vdiskd):
    client = os.path.abspath(sys.argv[2])
    vt.need("qemu-img")
    with vt.TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        sock0 = os.path.join(d, "vhost0.sock")
        sock1 = os.path.join(d, "vhost1.sock")
        vt.create(img, "qcow2")
        v = vt.Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0",
            "--blockdev", vt.blockdev(img, "qcow2"),
            "--blockdev", "driver=null-co,node-name=n0,size=64M,read-zeroes=on",
            "--export", vt.vhost_export(sock0, extra="iothread=io0"),
            "--export", vt.vhost_export(sock1, node="n0", id="exp1")],
            wait_for=[sock0, sock1])
        try:
            # the other export serves while the hostile one runs
            other = subprocess.Popen([client, "--size", str(vt.SIZE), "--seconds", "8",
                                      "--depth", "16", "--qsize", "64", sock1, "bench"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            vt.client(client, sock0, "hostile")
            vt.client(client, sock0, "hostile", "--no-event-idx")
            out, _ = other.communicate(timeout=120)
            vt.log(out)
            assert other.returncode == 0, "the other export stopped serving"
            assert v.alive(), "vdiskd died"
            vt.client(client, sock0, "basic")
            v.qmp.ok("query-block-exports")
        finally:
            out = v.stop()
        assert "returned unprocessed" in out, "bad chains were not reported"
        vt.qemu_img_check(img)


if __name__ == "__main__":
    from nbdtest import main
    main(test)
