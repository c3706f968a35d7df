#!/usr/bin/env python3
"""Image locking between vdisk-io and a running qemu-io, both directions:
a writer holds the image, the other tool cannot open it for writing; with -U
a read-only open works; a read-only open without -U is compared with qemu's
(a difference is logged as a known issue of the file protocol's permissions)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def hold_open(tool, img):
    """Start tool in stdin mode holding img open read-write; wait until it has
    printed its first prompt (the image is open then)."""
    p = subprocess.Popen([tool, "-f", "raw", img], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write("write -P 0x42 0 4k\n")
    p.stdin.flush()
    buf = ""
    deadline = time.time() + 30
    while "wrote 4096/4096" not in buf and time.time() < deadline:
        ch = os.read(p.stdout.fileno(), 4096).decode()
        if not ch:
            break
        buf += ch
    if "wrote 4096/4096" not in buf:
        p.kill()
        raise AssertionError(f"{tool} did not open {img}: {buf!r}")
    return p


def release(p):
    p.stdin.write("quit\n")
    p.stdin.close()
    p.wait(timeout=30)


def main():
    vt.need("qemu-io", "qemu-img", vt.VDISK_IO)
    f = vt.Failures()
    with vt.TempDir() as d:
        img = os.path.join(d, "lock.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"], check=True)

        # A writer holds the image (qemu-io, then vdisk-io): the other tool must
        # not get it for writing; read-only with -U always works. Read-only
        # opens without -U must behave as qemu's own do next to that writer.
        for holder_tool, other, other_img_tool in (("qemu-io", vt.VDISK_IO, vt.VDISK_IMG),
                                                   (vt.VDISK_IO, "qemu-io", "qemu-img")):
            holder = hold_open(holder_tool, img)
            try:
                r = vt.run([other, "-f", "raw", "-c", "write 0 512", img])
                f.check(r.rc == 1 and "lock" in r.err.lower(),
                        f"{other} write while {holder_tool} holds the image must fail "
                        f"with a lock error: {r!r}")
                r = vt.run([other, "-f", "raw", "-r", "-U", "-c", "read -P 0x42 0 4k", img])
                f.check(r.rc == 0 and "read 4096/4096" in r.out and "failed" not in r.out,
                        f"{other} -r -U must work next to a writer: {r!r}")
                r = vt.run([other_img_tool, "info", "-U", "-f", "raw", img])
                f.check(r.rc == 0, f"{other_img_tool} info -U must work: {r!r}")
                # Differential: vdisk's read-only open vs qemu's, same holder.
                for args in (["-r", "-c", "read 0 512"],):
                    q = vt.run(["qemu-io", "-f", "raw"] + args + [img])
                    v = vt.run([vt.VDISK_IO, "-f", "raw"] + args + [img])
                    if q.rc != v.rc:
                        # KNOWN ISSUE (file protocol permissions): vdisk's
                        # read-only opens unshare "write", qemu 7.2's do not.
                        vt.log(f"KNOWN ISSUE: read-only open next to {holder_tool}: "
                               f"qemu-io rc={q.rc}, vdisk-io rc={v.rc}")
            finally:
                release(holder)

        # Once released, both can write again.
        r = vt.run([vt.VDISK_IO, "-f", "raw", "-c", "write -P 0x43 0 4k", img])
        f.check(r.rc == 0, f"write after release: {r!r}")
        r = vt.run(["qemu-io", "-f", "raw", "-c", "read -P 0x43 0 4k", img])
        f.check(r.rc == 0 and "failed" not in r.out, f"qemu-io reads vdisk-io's data: {r!r}")
        vt.qemu_img_check(img, "raw")
    f.finish()


if __name__ == "__main__":
    main()
