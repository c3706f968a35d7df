#!/usr/bin/env python3
"""Images in formats vdisk has no driver for are refused by name, never read
as raw (issue 9, item 7).

qemu-img makes vmdk (sparse and a monolithicFlat descriptor), vdi, vpc,
vhdx, qcow (v1), qed and parallels images, and names each format (the
oracle for the names); luks, bochs, cloop and dmg headers are written by
hand. vdisk-img info/convert and vdisk-io must exit 1 with "image format
'<name>' is not supported" and leave the file alone; -f raw still opens the
file as raw (the user asked for it); data that matches no magic is raw.
A format whose driver is registered (QED once its driver lands) must open
with that driver instead.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402

MiB = 1 << 20


def make_images(d):
    """[(path, QEMU's format name, qemu can open it)]"""
    out = []
    for fmt, opts in (("vmdk", []), ("vdi", []), ("vpc", []), ("vhdx", []), ("qcow", []),
                      ("qed", []), ("parallels", [])):
        p = os.path.join(d, "x." + fmt)
        vt.run(["qemu-img", "create", "-q", "-f", fmt] + opts + [p, "1M"], check=True)
        out.append((p, fmt, True))
    p = os.path.join(d, "desc.vmdk")
    vt.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", p, "1M"],
           check=True)
    out.append((p, "vmdk", True))

    def write(name, head, size=MiB, tail=None):
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.truncate(size)
            f.write(head)
            if tail is not None:
                f.seek(size - 512)
                f.write(tail)
        return p
    out.append((write("x.luks", b"LUKS\xba\xbe\x00\x01" + b"aes".ljust(32, b"\0")), "luks", False))
    bochs = (b"Bochs Virtual HD Image".ljust(32, b"\0") + b"Redolog".ljust(16, b"\0")
             + b"Growing".ljust(16, b"\0") + struct.pack("<I", 0x00020000))
    out.append((write("x.bochs", bochs), "bochs", False))
    cloop = (b"#!/bin/sh\n#V2.0 Format\n"
             b"modprobe cloop file=$IMAGE && mount -r -t iso9660 /dev/cloop $1\n")
    out.append((write("x.cloop", cloop), "cloop", False))
    out.append((write("x.img", b"", tail=b"koly" + struct.pack(">II", 4, 512)), "dmg", False))
    return out


def supported_formats():
    r = vt.run([vt.VDISK_IMG, "--help"])
    for line in r.out.splitlines():
        if line.startswith("Supported formats:"):
            return line.split(":", 1)[1].split("(")[0].split()
    return []


def main():
    vt.need("qemu-img", vt.VDISK_IMG, vt.VDISK_IO)
    f = vt.Failures()
    have = supported_formats()
    with vt.TempDir() as d:
        for path, name, qemu_opens in make_images(d):
            if qemu_opens:
                r = vt.run(["qemu-img", "info", "--output=json", path])
                f.equal(name, json.loads(r.out)["format"], f"qemu's name for {path}")
            before = open(path, "rb").read()
            out = os.path.join(d, "out.raw")
            if name in have:
                # its driver landed: probing must pick it, not refuse it
                r = vt.run([vt.VDISK_IMG, "info", "--output=json", path])
                f.check(r.rc == 0 and json.loads(r.out)["format"] == name,
                        f"{path}: {name} has a driver and should open with it: {r!r}")
                continue
            msg = f"image format '{name}' is not supported"
            for what, cmd in (("info", [vt.VDISK_IMG, "info", path]),
                              ("convert", [vt.VDISK_IMG, "convert", "-O", "raw", path, out]),
                              ("vdisk-io", [vt.VDISK_IO, "-c", "read 0 512", path]),
                              ("vdisk-io -r", [vt.VDISK_IO, "-r", "-c", "read 0 512", path])):
                r = vt.run(cmd)
                f.check(r.rc == 1 and msg in r.err, f"{path}: {what} should say {msg!r}: {r!r}")
            f.check(not os.path.exists(out), f"{path}: convert wrote {out}")
            if os.path.exists(out):
                os.unlink(out)
            f.check(open(path, "rb").read() == before, f"{path} was modified")
            # the user may still ask for raw explicitly
            r = vt.run([vt.VDISK_IMG, "info", "-f", "raw", "--output=json", path])
            f.check(r.rc == 0 and json.loads(r.out)["format"] == "raw", f"{path} -f raw: {r!r}")

        # no magic: raw, as before (and the same as qemu-img's answer)
        plain = os.path.join(d, "plain.img")
        with open(plain, "wb") as fp:
            fp.write(bytes(range(256)) * 4096)
        for tool in ("qemu-img", vt.VDISK_IMG):
            r = vt.run([tool, "info", "--output=json", plain])
            f.check(r.rc == 0 and json.loads(r.out)["format"] == "raw", f"{tool} on raw: {r!r}")
        # a probed raw image refuses a first sector that would now probe as vmdk
        src = os.path.join(d, "kdmv.bin")
        with open(src, "wb") as fp:
            fp.write(b"KDMV" + b"\1" * 508)
        r = vt.run([vt.VDISK_IO, "-c", f"write -s {src} 0 512", plain])
        f.check(r.rc in (0, 1) and "Operation not permitted" in r.out + r.err,
                f"probed raw must refuse a VMDK magic in sector 0: {r!r}")
        f.check(open(plain, "rb").read(4) == bytes(range(4)), "sector 0 changed")
    f.finish()


if __name__ == "__main__":
    main()
