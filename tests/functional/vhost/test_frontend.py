"""vdiskd's vhost-user-blk export driven by our front-end: every request type,
EVENT_IDX on and off, indirect descriptors, split and packed rings, multi-queue, batched
completions, reconnect and inflight resume; then qemu-img check and the data
read on the host by qemu-io, and a read-only export of the same image."""
import os
import sys

import vhosttest as vt


def test(vdiskd):
    client = os.path.abspath(sys.argv[2])
    vt.need("qemu-img", "qemu-io")
    for fmt in ["qcow2", "raw"]:
        with vt.TempDir() as d:
            img = os.path.join(d, "disk." + fmt)
            sock = os.path.join(d, "vhost.sock")
            vt.create(img, fmt)
            v = vt.Vdiskd(vdiskd, d, [
                "--object", "iothread,id=io0",
                "--blockdev", vt.blockdev(img, fmt),
                "--export", vt.vhost_export(sock, extra="num-queues=2,iothread=io0")],
                wait_for=[sock])
            try:
                vt.client(client, sock, "basic")
                vt.client(client, sock, "basic", "--no-event-idx")
                vt.client(client, sock, "basic", "--indirect", "--nq", "2")
                vt.client(client, sock, "mq", "--nq", "2", "--depth", "16", "--qsize", "64")
                vt.client(client, sock, "mq", "--nq", "2", "--depth", "64", "--qsize", "128",
                          "--indirect", "--no-event-idx")
                vt.client(client, sock, "basic", "--packed")
                vt.client(client, sock, "basic", "--packed", "--indirect", "--no-event-idx")
                vt.client(client, sock, "mq", "--packed", "--nq", "2", "--depth", "64",
                          "--qsize", "64", "--indirect")
                vt.client(client, sock, "mq", "--packed", "--nq", "2", "--depth", "21",
                          "--qsize", "64")
                vt.client(client, sock, "reconnect", "--packed")
                vt.client(client, sock, "reconnect")
                vt.client(client, sock, "inflight")
                vt.client(client, sock, "inflight", "--indirect")
                e = vt.wait_clients(v.qmp, 0)
                assert e["type"] == "vhost-user-blk" and e["iothread"] == "io0", e
            finally:
                v.stop()
            if fmt == "qcow2":
                vt.qemu_img_check(img)
            vt.verify_on_host(img, fmt)
            # read-only export of the same image
            v = vt.Vdiskd(vdiskd, d, [
                "--blockdev", vt.blockdev(img, fmt),
                "--export", vt.vhost_export(sock, writable=False)], wait_for=[sock])
            try:
                vt.client(client, sock, "basic", "--ro")
                vt.client(client, sock, "verify")
            finally:
                v.stop()
    # logical-block-size=4096: misaligned requests fail
    with vt.TempDir() as d:
        sock = os.path.join(d, "vhost.sock")
        img = os.path.join(d, "disk.raw")
        vt.create(img, "raw")
        v = vt.Vdiskd(vdiskd, d, [
            "--blockdev", vt.blockdev(img, "raw"),
            "--export", vt.vhost_export(sock, extra="logical-block-size=4096")],
            wait_for=[sock])
        try:
            vt.client(client, sock, "basic")
        finally:
            v.stop()
    # batched completions on a null-co export
    with vt.TempDir() as d:
        sock = os.path.join(d, "vhost.sock")
        v = vt.Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0",
            "--blockdev", "driver=null-co,node-name=n0,size=64M,read-zeroes=on",
            "--export", vt.vhost_export(sock, node="n0", extra="iothread=io0")],
            wait_for=[sock])
        try:
            vt.client(client, sock, "batch", "--depth", "32", "--qsize", "128")
            vt.client(client, sock, "batch", "--depth", "32", "--qsize", "128",
                      "--no-event-idx")
        finally:
            v.stop()
    # kick suppression while the IOThread busy-polls the ring
    null_export_tests(vdiskd, client, 100000000, "polled")
    # notifications left off in guest memory by a server that polled: the
    # next server (here one that does not poll) turns them back on
    null_export_tests(vdiskd, client, 0, "stale-notify")


def null_export_tests(vdiskd, client, poll_max_ns, test):
    """test with and without EVENT_IDX and on packed rings, against a null-co
    export served from an IOThread with poll-max-ns."""
    with vt.TempDir() as d:
        sock = os.path.join(d, "vhost.sock")
        v = vt.Vdiskd(vdiskd, d, [
            "--object", f"iothread,id=io0,poll-max-ns={poll_max_ns}",
            "--blockdev", "driver=null-co,node-name=n0,size=64M,read-zeroes=on",
            "--export", vt.vhost_export(sock, node="n0", extra="iothread=io0")],
            wait_for=[sock])
        try:
            for opts in ([], ["--no-event-idx"], ["--packed"]):
                vt.client(client, sock, test, *opts)
        finally:
            v.stop()

if __name__ == "__main__":
    from nbdtest import main
    main(test)
