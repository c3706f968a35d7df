#!/usr/bin/env python3
"""Move an NBD client node between IOThreads under load: vdiskd opens a
qemu-nbd export with --blockdev driver=nbd (raw on top) and serves it; fio
writes and verifies through vdiskd while x-blockdev-set-iothread moves the
node around (IOThreads and the main loop). The NBD socket handler and the
reconnect timer move with the node: no request is lost or corrupted, and
what fio wrote is in the file behind qemu-nbd."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from nbdclient import VDISKD, log, need, run, TempDir, Failures, qemu_nbd, uri  # noqa
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "nbd"))
from nbdtest import Vdiskd  # noqa

F = Failures()


def fio_cmd(u, verify_only=False):
    c = ["fio", "--name=move", "--ioengine=nbd", f"--uri={u}", "--rw=randwrite", "--bs=4k",
         "--iodepth=32", "--numjobs=2", "--size=8M", "--offset_increment=8M",
         "--verify=crc32c", "--verify_state_save=0", "--verify_fatal=1", "--group_reporting"]
    return c + (["--verify_only"] if verify_only else ["--verify_backlog=256"])


def main():
    need(VDISKD, "fio", "qemu-nbd", "qemu-img")
    with TempDir(prefix="vdisk-nbdi-") as d:
        raw = os.path.join(d, "disk.raw")
        run(["qemu-img", "create", "-q", "-f", "raw", raw, "16M"], check=True)
        up = qemu_nbd(d, raw, name="up")
        sock = os.path.join(d, "vd.sock")
        dmn = Vdiskd(VDISKD, d, [
            "--object", "iothread,id=io0", "--object", "iothread,id=io1",
            "--blockdev", f"driver=nbd,node-name=nbd0,server.type=unix,server.path={up.sock},"
                          "export=disk,reconnect-delay=5",
            "--blockdev", "driver=raw,node-name=disk0,file=nbd0",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=disk0,name=disk,writable=on,iothread=io0"],
            wait_for=[sock])
        try:
            u = uri(sock, "disk")
            cmd = fio_cmd(u)
            log("+", " ".join(cmd))
            fio = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)

            def each(t, moves, nodes):
                where = {n["node-name"]: n.get("iothread") for n in nodes}
                F.check(where.get("nbd0") == (t or "main-loop"),
                        f"the nbd node moved with its parent to {t}: {where}")

            moves = dmn.move_under_load(fio, "disk0", each)
            out = fio.communicate(timeout=60)[0]
            log(out)
            F.check(fio.returncode == 0, "fio failed during IOThread moves")
            F.check(moves >= 3, f"fio finished before the node moved ({moves} moves)")
            log(f"{moves} moves under load")
            # after the moves the node still serves (socket handler in the new thread)
            r = run(fio_cmd(u, verify_only=True), timeout=120)
            F.check(r.rc == 0, "verification through vdiskd after the moves")
        finally:
            if dmn.alive():
                dmn.stop()
            up.stop()
        # what fio wrote reached qemu-nbd's file: verify it there directly
        up = qemu_nbd(d, raw, name="up2")
        try:
            r = run(fio_cmd(uri(up.sock, "disk"), verify_only=True), timeout=120)
            F.check(r.rc == 0, "fio's data is in the file behind qemu-nbd")
        finally:
            up.stop()
    F.finish()


if __name__ == "__main__":
    main()
