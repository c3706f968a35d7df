"""The same front-end scenarios against qemu-storage-daemon's vhost-user-blk
export (the reference server): if our front-end passes there too, its
expectations are those of QEMU, not only of vdiskd."""
import os
import sys

import vhosttest as vt


def test(vdiskd):
    client = os.path.abspath(sys.argv[2])
    vt.need("qemu-storage-daemon", "qemu-img", "qemu-io")
    with vt.TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        sock = os.path.join(d, "vhost.sock")
        vt.create(img, "qcow2")
        q = vt.Qsd(d, ["--object", "iothread,id=io0",
                       "--blockdev", vt.blockdev(img, "qcow2"),
                       "--export", vt.vhost_export(sock, extra="num-queues=2,iothread=io0")],
                   wait_for=[sock])
        try:
            vt.client(client, sock, "basic", "--ref")
            vt.client(client, sock, "basic", "--ref", "--no-event-idx")
            vt.client(client, sock, "basic", "--ref", "--indirect", "--nq", "2")
            vt.client(client, sock, "mq", "--ref", "--nq", "2", "--depth", "16", "--qsize", "64")
            vt.client(client, sock, "reconnect", "--ref")
            vt.client(client, sock, "batch", "--ref", "--depth", "32", "--qsize", "128")
        finally:
            q.stop()
        vt.qemu_img_check(img)
        vt.verify_on_host(img, "qcow2")
        q = vt.Qsd(d, ["--blockdev", vt.blockdev(img, "qcow2"),
                       "--export", vt.vhost_export(sock, writable=False)], wait_for=[sock])
        try:
            vt.client(client, sock, "basic", "--ref", "--ro")
        finally:
            q.stop()


if __name__ == "__main__":
    from nbdtest import main
    main(test)
