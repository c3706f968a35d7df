#!/usr/bin/env python3
"""vdisk-io's command-line error paths against qemu-io's: missing file, bad
option, bad cache/aio mode, unknown format, commands without an image,
exclusive options. Same stderr (program name aside), exit status 1."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def main():
    vt.need("qemu-io", "qemu-img", vt.VDISK_IO)
    f = vt.Failures()
    with vt.TempDir() as d:
        img = os.path.join(d, "e.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"], check=True)
        cases = [
            ["-f", "raw", os.path.join(d, "nonexist.raw")],
            ["-f", "raw", "-c", "length", os.path.join(d, "nonexist.raw")],
            ["-x", img],
            ["--bogus", img],
            ["-c"],
            ["-t", "bogus", "-c", "length", img],
            ["-i", "bogus", "-c", "length", img],
            ["-f", "foo", "-c", "length", img],
            ["-c", "length"],
            ["-c", "read 0 512"],
            ["--image-opts", "-f", "raw", img],
            ["-r", "-f", "raw", "-c", "write 0 512", img],
            ["-f", "raw", "-c", "open " + img, img],
            ["-f", "raw", "-c", "close", "-c", "length", img],
        ]
        for args in cases:
            q = vt.run(["qemu-io"] + args, input="")
            v = vt.run([vt.VDISK_IO] + args, input="")
            what = " ".join(args)
            f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), f"{what}: stderr")
            f.equal(q.rc, v.rc, f"{what}: exit status")
            f.check(v.rc == 1, f"{what}: exit status 1")
        # Number syntax: suffixes, fractions, hex, junk, overflow. Each value is
        # used as an offset and a length on a 1 GiB null image; the messages
        # (parse errors, range errors) and the silent successes must match.
        numbers = ["0", "1", "512", "1k", "1K", "1.5k", "1.6k", "0.5k", "1.k", ".5k", "1.5",
                   "1.5b", "1B", "1b", "4m", "1M", "1g", "1G", "2G", "1T", "1P", "1E", "8E",
                   "0x10", "0x", "0xg", "0x1k", "1k5", "abc", "-1", "+5", "1e", "5e",
                   "99999999999999999999", "18446744073709551615", "1kk", "1 ", "1.0", "01",
                   "0X20", "1.25M", "1.999k", "0.0001k", "1023.9999k"]
        cmds = []
        for n in numbers:
            cmds += ["-c", f"write -z -q 0 {n}", "-c", f"read -q {n} 512", "-c", f"alloc {n} 1"]
        q = vt.run(["qemu-io", "--image-opts"] + cmds + ["driver=null-co,size=1G"], merge=True)
        v = vt.run([vt.VDISK_IO, "--image-opts"] + cmds + ["driver=null-co,size=1G"], merge=True)
        qo = [l for l in vt.filter_all(q.out).splitlines() if "warning: Using a multiplier" not in l]
        f.equal(qo, vt.filter_all(v.out).splitlines(), "number parsing")

        # Bad options also print the usage on stdout, as qemu-io.
        v = vt.run([vt.VDISK_IO, "-x", img])
        f.check("Usage: vdisk-io" in v.out, "usage printed after a bad option")
        vt.qemu_img_check(img, "raw")
    f.finish()


if __name__ == "__main__":
    main()
