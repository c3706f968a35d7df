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
    ("reopen", [
        "write -P 1 0 4k", "reopen -r", "write 0 1", "discard 0 1", "aio_write 0 1",
        "read -P 1 0 4k", "reopen -w", "write -P 2 0 4k", "reopen -r -w", "reopen -c bogus",
        "reopen -c none", "write -P 3 4k 4k", "read -P 3 4k 4k", "reopen -c writeback",
        "read -P 2 0 4k", "sigraise abc",
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

        # The same scripts on qcow2 (when built): same output (info's vm state
        # offset and map/alloc included), qemu-img check clean, same contents.
        qbase = os.path.join(d, "base.qcow2")
        if vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-o", "help"]).rc == 0:
            vt.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", base, qbase], check=True)
            for name, cmds in SCRIPTS:
                ref, mine = os.path.join(d, f"{name}-qemu.qcow2"), os.path.join(d, f"{name}-vdisk.qcow2")
                shutil.copy(qbase, ref)
                shutil.copy(qbase, mine)
                q = run_script("qemu-io", ref, cmds, ["-f", "qcow2"])
                v = run_script(vt.VDISK_IO, mine, cmds, ["-f", "qcow2"])
                qo, vo = vt.filter_all(q.out, d), vt.filter_all(v.out, d)
                if name.endswith("-unordered"):
                    qo, vo = sorted(qo.splitlines()), sorted(vo.splitlines())
                f.equal(qo, vo, f"qcow2 {name}: stdout")
                f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), f"qcow2 {name}: stderr")
                f.equal(q.rc, v.rc, f"qcow2 {name}: exit status")
                try:
                    vt.qemu_img_check(mine, "qcow2")
                    vt.qemu_img_compare(ref, mine, "qcow2", "qcow2")
                except AssertionError as e:
                    f.check(False, f"qcow2 {name}: {e}")

            # A backing chain: map/alloc look at the top image only, reads fall
            # through to the backing file, writes land in the overlay.
            chain = ["map", "alloc 0 4M", "alloc 1M 128k", "read -P 0x77 1M 64k",
                     "write -P 0x21 1M 4k", "read -P 0x21 1M 4k", "read -P 0x77 1028k 60k",
                     "write -z 1536k 64k", "read -P 0 1536k 64k", "discard 1M 64k", "map",
                     "info", "length"]
            for who, tool in (("qemu", "qemu-io"), ("vdisk", vt.VDISK_IO)):
                vt.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", qbase, "-F", "qcow2",
                        os.path.join(d, f"top-{who}.qcow2")], check=True)
            q = run_script("qemu-io", os.path.join(d, "top-qemu.qcow2"), chain, ["-f", "qcow2"])
            v = run_script(vt.VDISK_IO, os.path.join(d, "top-vdisk.qcow2"), chain, ["-f", "qcow2"])
            f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), "chain: stdout")
            f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), "chain: stderr")
            f.equal(q.rc, v.rc, "chain: exit status")
            try:
                vt.qemu_img_check(os.path.join(d, "top-vdisk.qcow2"), "qcow2")
                vt.qemu_img_compare(os.path.join(d, "top-qemu.qcow2"),
                                    os.path.join(d, "top-vdisk.qcow2"), "qcow2", "qcow2")
            except AssertionError as e:
                f.check(False, f"chain: {e}")

        # O_DIRECT (-n) with misaligned buffers (-m): unaligned requests need
        # read-modify-write below; same results as qemu-io.
        for name in ("unaligned", "aio", "zeroes-discard"):
            cmds = next(c for n, c in SCRIPTS if n == name)
            ref, mine = os.path.join(d, f"{name}-n-qemu.raw"), os.path.join(d, f"{name}-n-vdisk.raw")
            shutil.copy(base, ref)
            shutil.copy(base, mine)
            q = run_script("qemu-io", ref, cmds, ["-n", "-m", "-f", "raw"])
            v = run_script(vt.VDISK_IO, mine, cmds, ["-n", "-m", "-f", "raw"])
            f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), f"{name} -n -m: stdout")
            f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), f"{name} -n -m: stderr")
            f.equal(q.rc, v.rc, f"{name} -n -m: exit status")
            vt.qemu_img_compare(ref, mine)

        # -s: writes go to a temporary overlay, the image itself is unchanged.
        snap = ["write -P 0x11 0 64k", "read -P 0x11 0 64k", "read -P 0x77 1M 64k",
                "write -z 1M 4k", "read -P 0 1M 4k", "length", "map", "alloc 0 2M"]
        ref, mine = os.path.join(d, "snap-qemu.raw"), os.path.join(d, "snap-vdisk.raw")
        shutil.copy(base, ref)
        shutil.copy(base, mine)
        q = run_script("qemu-io", ref, snap, ["-s", "-f", "raw"])
        v = run_script(vt.VDISK_IO, mine, snap, ["-s", "-f", "raw"])
        f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), "snapshot: stdout")
        f.equal(vt.filter_all(q.err, d), vt.filter_all(v.err, d), "snapshot: stderr")
        f.equal(q.rc, v.rc, "snapshot: exit status")
        with open(base, "rb") as a, open(mine, "rb") as b:
            f.check(a.read() == b.read(), "snapshot: the image itself is unchanged")

        # Output and errors merged (2>&1, as iotests run qemu-io): same order,
        # since both tools buffer stdout the same way.
        name, cmds = next(s for s in SCRIPTS if s[0] == "failures")
        ref, mine = os.path.join(d, "merged-qemu.raw"), os.path.join(d, "merged-vdisk.raw")
        shutil.copy(base, ref)
        shutil.copy(base, mine)
        q = vt.run(["qemu-io", "-f", "raw"] + vt.io_args(cmds) + [ref], merge=True)
        v = vt.run([vt.VDISK_IO, "-f", "raw"] + vt.io_args(cmds) + [mine], merge=True)
        f.equal(vt.filter_all(q.out, d), vt.filter_all(v.out, d), f"{name} merged: output")

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
