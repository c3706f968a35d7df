#!/usr/bin/env python3
"""vdisk-img bench: the same output lines as qemu-img bench (run time
filtered) for read, write and flush-interval runs on null-co and raw; written
data is really there (pattern), error paths as qemu-img's."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def main():
    vt.need("qemu-img", "qemu-io", vt.VDISK_IMG)
    f = vt.Failures()
    with vt.TempDir() as d:
        img = os.path.join(d, "bench.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", img, "64M"], check=True)
        runs = [
            ["-c", "20000", "-d", "64", "-s", "4k", "--image-opts", "driver=null-co,size=1G"],
            ["-c", "2000", "-d", "8", "-f", "raw", img],
            ["-c", "2000", "-d", "32", "-t", "none", "-i", "io_uring", "-f", "raw", img],
            ["-c", "500", "-d", "4", "-w", "--pattern=0x5e", "-s", "8k", "-S", "16k", "-o", "1M",
             "-f", "raw", img],
            ["-c", "200", "-d", "16", "-w", "--flush-interval=16", "-t", "writethrough",
             "-f", "raw", img],
            ["-c", "200", "-d", "16", "-w", "--flush-interval=32", "--no-drain", "-f", "raw", img],
            ["-c", "100", "-d", "2", "-w", "-i", "threads", "-f", "raw", img],
            ["-c", "2", "-o", "64M", "-f", "raw", img],
            ["-c", "3", "--flush-interval=1", "-f", "raw", img],
            ["-c", "3", "-w", "--flush-interval=1", "-d", "4", "-f", "raw", img],
            ["-c", "abc", "-f", "raw", img],
            ["-c", "3", "-s", "xyz", "-f", "raw", img],
            ["-c", "3", "--pattern=300", "-w", "-f", "raw", img],
            ["-c", "3", "-t", "bogus", "-f", "raw", img],
            ["-c", "3", "-i", "bogus", "-f", "raw", img],
        ]
        for args in runs:
            q = vt.run(["qemu-img", "bench"] + args)
            v = vt.run([vt.VDISK_IMG, "bench"] + args)
            what = " ".join(args)
            f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), f"bench {what}: stdout")
            f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), f"bench {what}: stderr")
            f.equal(q.rc, v.rc, f"bench {what}: exit status")
        # The pattern write above landed: 500 x 8k at 1M + i*16k.
        r = vt.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5e 1M 8k",
                    "-c", f"read -P 0x5e {1024 * 1024 + 499 * 16384} 8k",
                    "-c", f"read -P 0 {1024 * 1024 + 8192} 8k", img])
        f.check(r.rc == 0 and "failed" not in r.out, f"bench -w data is on disk: {r!r}")
        vt.qemu_img_check(img, "raw")
    f.finish()


if __name__ == "__main__":
    main()
