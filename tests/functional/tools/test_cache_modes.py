#!/usr/bin/env python3
"""Cache modes reach the file: with -t none / directsync (and -n) the image is
opened with O_DIRECT, with writeback / writethrough / unsafe it is not
(checked with strace on openat); data written in each mode reads back."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def opens_of(trace, img):
    """Flags of every openat of img in an strace log."""
    flags = []
    for line in trace.splitlines():
        if "openat(" in line and img in line and "= -1" not in line:
            m = re.search(r'openat\([^,]+, "[^"]*", ([A-Z_|]+)', line)
            if m:
                flags.append(m.group(1))
    return flags


def main():
    vt.need("strace", "qemu-img", vt.VDISK_IO)
    f = vt.Failures()
    with vt.TempDir() as d:
        img = os.path.join(d, "cache.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"], check=True)
        cases = [(["-t", "none"], True), (["-t", "directsync"], True), (["-n"], True),
                 (["-t", "writeback"], False), (["-t", "writethrough"], False),
                 (["-t", "unsafe"], False), ([], False)]
        for i, (opts, direct) in enumerate(cases):
            log_path = os.path.join(d, f"strace{i}.log")
            r = vt.run(["strace", "-f", "-e", "trace=openat", "-o", log_path, vt.VDISK_IO,
                        "-f", "raw"] + opts + ["-c", f"write -P {i + 1} 4k 4k",
                                               "-c", f"read -P {i + 1} 4k 4k", img])
            f.check(r.rc == 0 and "failed" not in r.out, f"{opts}: I/O works: {r!r}")
            with open(log_path) as fh:
                flags = opens_of(fh.read(), img)
            f.check(len(flags) > 0, f"{opts}: strace saw the image opened")
            has_direct = any("O_DIRECT" in fl for fl in flags)
            f.check(has_direct == direct,
                    f"{opts}: O_DIRECT {'expected' if direct else 'not expected'}, opens: {flags}")
            r = vt.run(["qemu-io", "-f", "raw", "-c", f"read -P {i + 1} 4k 4k", img])
            f.check(r.rc == 0, f"{opts}: qemu-io reads the data back")
        vt.qemu_img_check(img, "raw")
    f.finish()


if __name__ == "__main__":
    main()
