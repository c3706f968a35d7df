#!/usr/bin/env python3
"""log-writes' log=PATH must not destroy a file in use or an image (issue 9,
item 6). It used to open PATH with O_TRUNC before anything else.

- victim.qcow2 held by a running qemu-io (read-write, then read-only): the
  filter refuses with the image-lock message, from vdisk-io, vdiskd
  --blockdev and QMP blockdev-add; the victim is byte-for-byte unchanged and
  passes qemu-img check.
- Not held by anyone, an image (any file that is not a write log) is refused
  too ("exists and is not a write log").
- A new path, an empty file and an old write log are (over)written as before,
  and the log the filter writes is locked like an image written to: qemu-io
  cannot open it read-write meanwhile.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbd"))
import vdtest as vt  # noqa: E402
import nbdtest  # noqa: E402


def hold_open(img, readonly):
    """qemu-io holding img (stdin mode) until release(); returns once open."""
    return vt.hold_open("qemu-io", img, "qcow2", readonly, "read 0 512", "read 512/512")


release = vt.release


def spec(log, disk):
    return (f"driver=raw,file.driver=log-writes,file.log={log},"
            f"file.file.driver=file,file.file.filename={disk}")


def main():
    vt.need("qemu-img", "qemu-io", vt.VDISK_IO, vt.VDISKD)
    f = vt.Failures()
    with vt.TempDir() as d:
        victim = os.path.join(d, "victim.qcow2")
        disk = os.path.join(d, "disk.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "qcow2", victim, "1M"], check=True)
        vt.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", victim], check=True)
        vt.run(["qemu-img", "create", "-q", "-f", "raw", disk, "1M"], check=True)
        before = open(victim, "rb").read()

        def unchanged(what):
            f.check(open(victim, "rb").read() == before, f"{what}: victim.qcow2 was changed")

        for readonly in (False, True):
            holder = hold_open(victim, readonly)
            try:
                what = f"qemu-io {'-r ' if readonly else ''}holding it"
                r = vt.run([vt.VDISK_IO, "--image-opts", "-c", "write -P 0x22 0 4k",
                            spec(victim, disk)])
                f.check(r.rc == 1 and "Failed to get" in r.err and "lock" in r.err,
                        f"vdisk-io, {what}: {r!r}")
                unchanged(f"vdisk-io, {what}")
                r = vt.run([vt.VDISKD, "--blockdev", f"node-name=lw,{spec(victim, disk)}"])
                f.check(r.rc == 1 and "lock" in r.err, f"vdiskd --blockdev, {what}: {r!r}")
                unchanged(f"vdiskd --blockdev, {what}")
            finally:
                release(holder)
        vt.qemu_img_check(victim)

        # nobody holds it: still an image, not a log
        r = vt.run([vt.VDISK_IO, "--image-opts", "-c", "write -P 0x22 0 4k", spec(victim, disk)])
        f.check(r.rc == 1 and "is not a write log" in r.err, f"unheld image as log: {r!r}")
        unchanged("unheld image")

        # through the monitor of a daemon that keeps running
        holder = hold_open(victim, False)
        dm = nbdtest.Vdiskd(vt.VDISKD, d, [])
        try:
            r = dm.qmp.cmd("blockdev-add", **{
                "node-name": "lw", "driver": "raw", "file": {
                    "driver": "log-writes", "log": victim,
                    "file": {"driver": "file", "filename": disk}}})
            f.check("error" in r and "lock" in r["error"]["desc"], f"blockdev-add: {r}")
            f.check(dm.alive(), "vdiskd died")
            unchanged("blockdev-add")
        finally:
            release(holder)
            dm.stop()
        vt.qemu_img_check(victim)

        # new, empty and old logs are written; the log is locked while in use
        log = os.path.join(d, "w.log")
        for state in ("new", "empty", "old log"):
            if state == "empty":
                open(log, "wb").close()
            r = vt.run([vt.VDISK_IO, "--image-opts", "-c", "write -P 0x33 0 4k",
                        spec(log, disk)])
            f.check(r.rc == 0, f"log {state}: {r!r}")
            f.check(open(log, "rb").read(8) == b"VDWLOG01", f"log {state}: no header")
        p = subprocess.Popen([vt.VDISK_IO, "--image-opts", spec(log, disk)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            p.stdin.write("write -P 0x44 0 4k\n")
            p.stdin.flush()
            buf = ""
            deadline = time.time() + 30
            while "wrote 4096/4096" not in buf and time.time() < deadline:
                ch = os.read(p.stdout.fileno(), 4096).decode()
                if not ch:
                    break
                buf += ch
            r = vt.run(["qemu-io", "-f", "raw", "-c", "write 0 512", log])
            f.check(r.rc != 0 and "lock" in (r.out + r.err),
                    f"qemu-io could write the log in use: {r!r}")
        finally:
            p.stdin.write("quit\n")
            p.stdin.close()
            p.wait(timeout=30)
    f.finish()


if __name__ == "__main__":
    main()
