#!/usr/bin/env python3
"""Run qemu-io scripts through the real qemu-io and through vdisk-io on copies
of the same raw image: stdout (times filtered), stderr (program name
filtered), exit status and the resulting image bytes must be the same."""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402

SIZE = 4 * 1024 * 1024

# Each script: (name, [qemu-io -c commands]).
SCRIPTS = [
    ("patterns", [
        "write -P 0xab 0 64k", "read -P 0xab 0 64k", "write -P 0x11 64k 4k",
        "read -P 0x11 64k 4k", "read -v 60k 48", "readv -P 0xab 0 512 1k 512",
        "writev -P 0x22 128k 512 4k 1k", "read -P 0x22 128k 5632", "length",
    ]),
    ("overlap", [
        "write -P 1 0 16k", "write -P 2 4k 4k", "write -P 3 6k 8k", "read -P 1 0 4k",
        "read -P 2 4k 2k", "read -P 3 6k 8k", "read -P 1 14k 2k", "read -C 0 16k",
    ]),
    ("unaligned", [
        "write -P 0x5a 1 3", "write -P 0x5b 511 2", "write -P 0x5c 4095 4097",
        "read -v 0 16", "read -P 0x5c 4095 4097", "write 100 33", "read -P 0xcd 100 33",
        "write -z 4097 100", "read -P 0 4097 100", "read -P 0x5c 4197 3995",
        "write 0x100 0x20", "read -v 0x100 0x20",
    ]),
    ("zeroes-discard", [
        "write -P 0xff 0 1M", "write -z 64k 64k", "write -z -u 256k 128k", "write -z -n 512k 4k",
        "read -P 0 64k 64k", "read -P 0 256k 128k", "read -P 0xff 0 64k", "discard 768k 64k",
        "read -P 0xff 1M 4k", "flush", "alloc 0 1M", "map",
    ]),
    ("aio", [
        "aio_write -P 0x41 0 4k", "aio_flush", "aio_write -P 0x42 8k 4k 4k", "aio_flush",
        "aio_read -P 0x41 0 4k", "aio_flush", "aio_read -P 0x42 8k 8k", "aio_flush",
        "aio_write -z 64k 4k", "aio_flush", "aio_read -P 0 64k 4k", "aio_flush",
        "aio_read -q 0 4k", "aio_flush", "aio_read -P 0x99 0 4k", "aio_flush", "flush",
    ]),
    # Several requests in flight: completion order may differ, compare sorted lines.
    ("aio-unordered", [
        "aio_write -P 0x51 0 64k", "aio_write -P 0x52 64k 64k", "aio_write -P 0x53 128k 4k 4k",
        "aio_flush", "aio_read -P 0x51 0 64k", "aio_read -P 0x52 64k 64k",
        "aio_read -P 0x53 128k 8k", "aio_read -P 0x54 128k 8k", "aio_flush",
    ]),
    ("failures", [
        "write -P 0x33 0 8k", "read -P 0x34 0 4k", "read -P 0x33 -s 100 -l 50 0 4k",
        "read -P 0x34 -s 100 -l 50 0 4k", "read -P 0 -s 8k 0 4k", "readv -P 0x35 0 512 512",
        "aio_read -P 0x36 0 4k", "aio_flush", "write 4M 512", "read 4095k 2k",
        "write -P 0x1ff 0 1", "write -P xyz 0 1", "write 0 abc", "write abc 4k",
        "write 0 3G", "read 0 3G", "write -z -P 1 0 4k", "write -u 0 4k", "write -n 0 4k",
        "write -x 0 4k", "bogus", "write 0", "sleep abc", "sleep 1", "read -P 0x33 0 8k",
    ]),
    ("info", [
        "info", "length", "alloc 0", "alloc 4M", "alloc 5 1", "write -f -P 9 0 4k",
        "read -P 9 0 4k", "write -q 0 4k", "read -q 0 4k", "help nosuch",
    ]),
]


def run_script(tool, img, cmds, fmt_args):
    return vt.run([tool] + fmt_args + vt.io_args(cmds) + [img])


def main():
    vt.need("qemu-io", "qemu-img", vt.VDISK_IO)
    f = vt.Failures()
    with vt.TempDir() as d:
        base = os.path.join(d, "base.raw")
        # A base with some data so reads see more than zeros.
        vt.run(["qemu-img", "create", "-q", "-f", "raw", base, str(SIZE)], check=True)
        vt.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 1M 1M", base], check=True)
        for name, cmds in SCRIPTS:
            ref, mine = os.path.join(d, f"{name}-qemu.raw"), os.path.join(d, f"{name}-vdisk.raw")
            shutil.copy(base, ref)
            shutil.copy(base, mine)
            q = run_script("qemu-io", ref, cmds, ["-f", "raw"])
            v = run_script(vt.VDISK_IO, mine, cmds, ["-f", "raw"])
            qo, vo = vt.filter_all(q.out, d), vt.filter_all(v.out, d)
            if name.endswith("-unordered"):
                qo, vo = sorted(qo.splitlines()), sorted(vo.splitlines())
            f.equal(qo, vo, f"{name}: stdout")
            f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), f"{name}: stderr")
            f.equal(q.rc, v.rc, f"{name}: exit status")
            vt.qemu_img_check(mine, "raw")
            try:
                vt.qemu_img_compare(ref, mine)
            except AssertionError as e:
                f.check(False, f"{name}: images differ: {e}")

        # Commands from standard input (no -c): same output, prompt included.
        ref, mine = os.path.join(d, "stdin-qemu.raw"), os.path.join(d, "stdin-vdisk.raw")
        shutil.copy(base, ref)
        shutil.copy(base, mine)
        script = "write -P 0x66 0 4k\nread -P 0x66 0 4k\nlength\nbogus\n"
        q = vt.run(["qemu-io", "-f", "raw", ref], input=script)
        v = vt.run([vt.VDISK_IO, "-f", "raw", mine], input=script)
        f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), "stdin: stdout")
        f.equal(q.rc, v.rc, "stdin: exit status")
        vt.qemu_img_compare(ref, mine)

        # --image-opts and the null driver.
        q = vt.run(["qemu-io", "--image-opts", "-c", "length", "-c", "read -P 0 0 4k",
                    "driver=null-co,size=1G,read-zeroes=on"])
        v = vt.run([vt.VDISK_IO, "--image-opts", "-c", "length", "-c", "read -P 0 0 4k",
                    "driver=null-co,size=1G,read-zeroes=on"])
        f.equal(vt.filter_all(q.out), vt.filter_all(v.out), "image-opts null-co: stdout")
        f.equal(q.rc, v.rc, "image-opts null-co: exit status")
    f.finish()


if __name__ == "__main__":
    main()
