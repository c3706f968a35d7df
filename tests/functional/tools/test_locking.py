#!/usr/bin/env python3
"""Image locking between vdisk-io and a running qemu-io, both directions, for
qcow2 and raw: next to a writer, every action (write, read-only, -U) succeeds
or fails exactly as it does with qemu's own tools (qcow2 refuses writers and
plain readers, raw shares the file)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def hold_open(tool, img, fmt):
    """tool holding img open read-write (it has written through it)."""
    return vt.hold_open(tool, img, fmt)


release = vt.release


# What another process may do next to a writer, per format, as QEMU 7.2 does:
# qcow2 keeps metadata in the file, so it refuses other writers and plain
# readers (-U still reads); raw shares the file with everyone.
ACTIONS = [
    ("write", ["-c", "write 64k 512"]),
    ("read-only", ["-r", "-c", "read 0 512"]),
    ("force-share", ["-r", "-U", "-c", "read -P 0x42 0 4k"]),
]
EXPECT_OK = {"qcow2": {"write": False, "read-only": False, "force-share": True},
             "raw": {"write": True, "read-only": True, "force-share": True}}


def main():
    vt.need("qemu-io", "qemu-img", vt.VDISK_IO)
    f = vt.Failures()
    with vt.TempDir() as d:
        for fmt in ("qcow2", "raw"):
            img = os.path.join(d, "lock." + fmt)
            vt.run(["qemu-img", "create", "-q", "-f", fmt, img, "1M"], check=True)
            # A writer holds the image (qemu-io, then vdisk-io); the other tool
            # acts next to it and must get what qemu's own tool gets.
            for holder_tool, other, other_img in (("qemu-io", vt.VDISK_IO, vt.VDISK_IMG),
                                                  (vt.VDISK_IO, "qemu-io", "qemu-img")):
                holder = hold_open(holder_tool, img, fmt)
                try:
                    for name, args in ACTIONS:
                        r = vt.run([other, "-f", fmt] + args + [img])
                        ok = r.rc == 0 and "failed" not in r.out
                        want = EXPECT_OK[fmt][name]
                        f.check(ok == want,
                                f"{fmt}: {other} {name} next to {holder_tool}: expected "
                                f"{'success' if want else 'a lock error'}: {r!r}")
                        if not want:
                            f.check("lock" in r.err.lower(),
                                    f"{fmt}: {other} {name}: lock error message: {r!r}")
                        # the same action by qemu's own tool next to the same holder
                        q = vt.run(["qemu-io", "-f", fmt] + args + [img])
                        qok = q.rc == 0 and "failed" not in q.out
                        f.check(qok == want, f"{fmt}: qemu-io {name} next to {holder_tool} "
                                f"disagrees with the expectation: {q!r}")
                    r = vt.run([other_img, "info", "-U", "-f", fmt, img])
                    f.check(r.rc == 0, f"{other_img} info -U must work: {r!r}")
                finally:
                    release(holder)

            # Once released, both can write again.
            r = vt.run([vt.VDISK_IO, "-f", fmt, "-c", "write -P 0x43 0 4k", img])
            f.check(r.rc == 0, f"write after release: {r!r}")
            r = vt.run(["qemu-io", "-f", fmt, "-c", "read -P 0x43 0 4k", img])
            f.check(r.rc == 0 and "failed" not in r.out, f"qemu-io reads vdisk-io's data: {r!r}")
            vt.qemu_img_check(img, fmt)
    f.finish()


if __name__ == "__main__":
    main()
