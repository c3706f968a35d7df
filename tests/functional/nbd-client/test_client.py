#!/usr/bin/env python3
"""NBD client (src/protocols/nbd) against qemu-nbd, nbdkit and vdiskd, with
qemu-img/qemu-io as oracles:
- URI syntax and errors; info equal to qemu-img's over the same URI;
- differential workloads through vdisk-io on NBD URIs (qemu-nbd raw file,
  nbdkit memory) against a raw reference written by qemu-io;
- map over NBD equal to qemu-img's map over the same URI;
- convert from and to NBD, compare over NBD, sparse convert keeps holes;
- a qcow2 overlay on an NBD base, and a qcow2 image read/written over NBD;
- vdiskd --blockdev driver=nbd re-exporting a qemu-nbd export;
- nbdkit error filter: failures reported, no crash; delay filter: depth;
- vdisk-img create -f raw|qcow2|qed on an NBD export, as qemu-img does."""
import json
import os
import random
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdclient import (VDISK_IMG, VDISK_IO, VDISKD, log, need, run, qemu_img_check,  # noqa
                       qemu_img_compare, TempDir, Failures, io_args, uri, qemu_nbd, nbdkit,
                       workload, reference_cmds, io_ok)

SIZE = 16 << 20
F = Failures()


def check_uri_errors(d):
    sock = os.path.join(d, "none.sock")
    cases = [
        ("nbd://", "needs a host"),
        ("nbd://h:99999/x", "bad port"),
        ("nbd+unix:///x", "socket=PATH"),
        ("nbd+unix:///x?socket=", "empty socket path"),
        ("nbd+unix://host/x?socket=/s", "take no host"),
        ("nbd://h/x?socket=/s", "no query"),
        ("nbd:nothing", "nbd:HOST:PORT"),
        ("nbd+unix:///x?socket=/a%zz", "percent-escape"),
        (uri(sock, "x"), "Failed to connect"),
    ]
    for name, want in cases:
        r = run([VDISK_IMG, "info", name])
        F.check(r.rc == 1 and want in r.err and r.err.startswith("vdisk-img: "),
                f"info {name}: expected error containing {want!r}, got rc={r.rc} {r.err!r}")
    r = run([VDISK_IO, "--image-opts", "-c", "read 0 512",
             f"driver=nbd,server.type=unix,server.path={sock},server.host=x"])
    F.check(r.rc != 0 and "do not apply" in r.out + r.err, f"server.host with unix: {r!r}")
    r = run([VDISK_IO, "--image-opts", "-c", "read 0 512",
             f"driver=nbd,server.type=unix,server.path={sock},server.bogus=1"])
    F.check(r.rc != 0 and "server" in r.out + r.err, f"server.bogus: {r!r}")


def differential(d, name, target_uri, served_file, seed, discard=True):
    """Apply a workload through vdisk-io to target_uri and through qemu-io to a
    raw reference; the served image must then equal the reference."""
    rng = random.Random(seed)
    ref = os.path.join(d, f"ref-{name}.raw")
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", target_uri, ref], check=True)
    cmds = workload(rng, SIZE, discard=discard)
    r = run([VDISK_IO, "-f", "raw", "-d", "unmap"] + io_args(cmds) + [target_uri])
    F.check(io_ok(r), f"{name}: vdisk-io workload failed: {r!r}")
    r = run(["qemu-io", "-f", "raw"] + io_args(reference_cmds(cmds)) + [ref])
    F.check(io_ok(r), f"{name}: qemu-io reference failed")
    if served_file:
        qemu_img_compare(served_file, ref)
    else:
        r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", target_uri, ref])
        F.check(r.rc == 0, f"{name}: contents differ from the reference: {r!r}")
    # and read back through vdisk itself
    r = run([VDISK_IMG, "compare", "-f", "raw", "-F", "raw", target_uri, ref])
    F.check(r.rc == 0, f"{name}: vdisk-img compare over NBD: {r!r}")


def test_qemu_nbd(d):
    raw = os.path.join(d, "served.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE)], check=True)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 192k", "-c", "write -P 0x33 9M 4k",
         raw], check=True)
    srv = qemu_nbd(d, raw, extra=["--discard=unmap", "--cache=none", "--aio=native"])
    try:
        u = uri(srv.sock, "disk")
        # info as qemu-img prints it (text and json)
        for fmt in ([], ["--output=json"]):
            a = run([VDISK_IMG, "info", "-f", "raw"] + fmt + [u])
            b = run(["qemu-img", "info", "-f", "raw"] + fmt + [u])
            F.equal(b.out, a.out, f"info {fmt} over NBD")
        # the same export by the structured options, and the legacy syntax
        r = run([VDISK_IO, "--image-opts", "-c", "read -P 0x5a 1M 192k",
                 f"driver=raw,file.driver=nbd,file.server.type=unix,"
                 f"file.server.path={srv.sock},file.export=disk"])
        F.check(io_ok(r), f"--image-opts server.*: {r!r}")
        r = run([VDISK_IO, "-f", "raw", "-c", "read -P 0x33 9M 4k",
                 f"nbd:unix:{srv.sock}:exportname=disk"])
        F.check(io_ok(r), f"legacy nbd:unix: {r!r}")
        # map over NBD equals QEMU's (the server's block status)
        for fmt in ("json", "human"):
            a = run([VDISK_IMG, "map", "-f", "raw", f"--output={fmt}", u])
            b = run(["qemu-img", "map", "-f", "raw", f"--output={fmt}", u])
            F.check(a.rc == 0, f"map: {a!r}")
            F.equal(b.out, a.out, f"map --output={fmt} over NBD")
        entries = json.loads(run([VDISK_IMG, "map", "-f", "raw", "--output=json", u]).out)
        F.check(any(not e["data"] for e in entries) and any(e["data"] for e in entries),
                f"map over NBD shows both data and holes: {entries}")
        # convert from NBD to a local qcow2 (sparse), compare with qemu-img
        out = os.path.join(d, "from-nbd.qcow2")
        r = run([VDISK_IMG, "convert", "-f", "raw", "-O", "qcow2", u, out])
        F.check(r.rc == 0, f"convert from NBD: {r!r}")
        qemu_img_check(out)
        qemu_img_compare(out, raw, fmt_a="qcow2")
        # sparse: the same allocation as converting the served file directly
        lout = os.path.join(d, "from-local.qcow2")
        run([VDISK_IMG, "convert", "-f", "raw", "-O", "qcow2", raw, lout], check=True)
        a = run(["qemu-img", "map", "--output=json", out]).out
        b = run(["qemu-img", "map", "--output=json", lout]).out
        F.equal(b, a, "allocation of a convert from NBD vs from the local file")
        F.check(len(json.loads(a)) > 2, f"the convert from NBD kept holes: {a}")
        # differential workload over the export
        differential(d, "qemu-nbd", u, raw, seed=1)
        # convert a local image onto the export (-n: target exists)
        src = os.path.join(d, "src.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", src, str(SIZE)], check=True)
        run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 3M 1M", src], check=True)
        r = run([VDISK_IMG, "convert", "-n", "-f", "qcow2", "-O", "raw", src, u])
        F.check(r.rc == 0, f"convert onto NBD: {r!r}")
        qemu_img_compare(src, raw, fmt_a="qcow2")
        r = run([VDISK_IMG, "compare", "-f", "qcow2", "-F", "raw", src, u])
        F.check(r.rc == 0 and "Images are identical" in r.out, f"compare over NBD: {r!r}")
        # qcow2 overlay on the NBD base
        ov = os.path.join(d, "overlay.qcow2")
        r = run([VDISK_IMG, "create", "-f", "qcow2", "-b", u, "-F", "raw", ov])
        F.check(r.rc == 0, f"create overlay on NBD: {r!r}")
        r = run([VDISK_IO, "-c", "read -P 0x77 3M 1M", "-c", "write -P 0x99 3M 64k",
                 "-c", "read -P 0x99 3M 64k", "-c", "read -P 0x77 3136k 960k", ov])
        F.check(io_ok(r), f"overlay on NBD: {r!r}")
        qemu_img_check(ov)
        r = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x99 3M 64k",
                 "-c", "read -P 0x77 3136k 960k", ov])
        F.check(io_ok(r), f"qemu-io reads the overlay on NBD: {r!r}")
        # the base was not written through the overlay
        r = run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 3M 64k", raw])
        F.check(io_ok(r), "base untouched")
    finally:
        srv.stop()

    # a qcow2 image served raw: vdisk's qcow2 driver over the NBD protocol
    q = os.path.join(d, "served.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", q, str(SIZE)], check=True)
    # an NBD export cannot grow: give qcow2 room to allocate inside the file
    os.truncate(q, SIZE)
    srv = qemu_nbd(d, q, fmt="raw", name="qsrv")
    try:
        u = uri(srv.sock, "disk")
        r = run([VDISK_IMG, "info", u])
        F.check("file format: qcow2" in r.out, f"qcow2 probed over NBD: {r!r}")
        r = run([VDISK_IO, "-f", "qcow2", "-c", "write -P 0x42 1M 300k", "-c", "write -z 5M 1M",
                 "-c", "discard 1M 64k", "-c", "read -P 0x42 1088k 236k", u])
        F.check(io_ok(r), f"qcow2 over NBD: {r!r}")
    finally:
        srv.stop()
    qemu_img_check(q)
    r = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x42 1088k 236k", "-c", "read -P 0 1M 64k",
             q])
    F.check(io_ok(r), f"qcow2 written over NBD reads back in qemu-io: {r!r}")

    # QED over NBD: reads, and writes to allocated clusters (a QED image
    # allocates at its end, which an NBD export cannot grow: as in QEMU)
    e = os.path.join(d, "served.qed")
    run(["qemu-img", "create", "-q", "-f", "qed", e, str(SIZE)], check=True)
    run(["qemu-io", "-f", "qed", "-c", "write -P 0x24 2M 512k", e], check=True)
    srv = qemu_nbd(d, e, fmt="raw", name="esrv")
    try:
        u = uri(srv.sock, "disk")
        r = run([VDISK_IMG, "info", u])
        F.check("file format: qed" in r.out, f"QED probed over NBD: {r!r}")
        r = run([VDISK_IO, "-f", "qed", "-c", "read -P 0x24 2M 512k", "-c", "read -P 0 0 1M",
                 "-c", "write -P 0x25 2M 64k", "-c", "read -P 0x25 2M 64k", u])
        F.check(io_ok(r), f"QED over NBD: {r!r}")
    finally:
        srv.stop()
    r = run(["qemu-img", "check", "-f", "qed", e])
    F.check(r.rc == 0 and "No errors" in r.out, f"qemu-img check of QED written over NBD: {r!r}")
    r = run(["qemu-io", "-f", "qed", "-c", "read -P 0x25 2M 64k", "-c", "read -P 0x24 2112k 448k", e])
    F.check(io_ok(r), f"QED written over NBD reads back in qemu-io: {r!r}")


def test_nbdkit(d):
    srv = nbdkit(d, ["memory", str(SIZE)])
    try:
        u = uri(srv.sock)
        differential(d, "nbdkit-memory", u, None, seed=2)
        a = run([VDISK_IMG, "map", "-f", "raw", "--output=json", u])
        b = run(["qemu-img", "map", "-f", "raw", "--output=json", u])
        F.equal(b.out, a.out, "map over nbdkit memory")
        # write zeroes with NO_FALLBACK (FAST_ZERO) via convert's zero pass
        r = run([VDISK_IO, "-f", "raw", "-c", "write -z -u 0 1M", "-c", "read -P 0 0 1M", u])
        F.check(io_ok(r), f"zero on nbdkit: {r!r}")
    finally:
        srv.stop()
    # a failing server: every write fails with EIO; reads work
    srv = nbdkit(d, ["memory", str(SIZE), "error-pwrite-rate=1", "error=EIO"],
                 filters=["error"], name="err")
    try:
        r = run([VDISK_IO, "-f", "raw", "-c", "write -P 1 0 4k", "-c", "read -P 0 0 4k",
                 uri(srv.sock)])
        text = r.out + r.err
        F.check("write failed: Input/output error" in text and "read 4096/4096" in text
                and r.rc >= 0, f"error filter: {r!r}")
    finally:
        srv.stop()
    # a slow server: 32 reads in flight take about one delay, not 32
    srv = nbdkit(d, ["memory", str(SIZE), "rdelay=200ms"], filters=["delay"], name="slow")
    try:
        r = run([VDISK_IMG, "bench", "-f", "raw", "-c", "64", "-d", "32", "-s", "4k",
                 uri(srv.sock)])
        import re
        m = re.search(r"Run completed in ([0-9.]+) seconds", r.out)
        F.check(m is not None and float(m.group(1)) < 3.0,
                f"64 reads at depth 32 with 200 ms per read took {m and m.group(1)} s "
                f"(serial would be 12.8 s): {r!r}")
    finally:
        srv.stop()


def test_create_on_nbd(d):
    """vdisk-img create on an NBD export, as qemu-img's (QEMU's simple create
    for protocols whose objects already exist): raw zeroes the first sector
    and refuses to grow the export; qcow2 writes its layout through the NBD
    node, the same bytes as qemu-img writes on a twin export; QED, which
    allocates at the end of its file, is refused."""
    ours, theirs = (nbdkit(d, ["memory", str(SIZE)], name=n) for n in ("c-ours", "c-qemu"))
    try:
        uo, uq = uri(ours.sock), uri(theirs.sock)
        run(["qemu-io", "-f", "raw", "-c", "write -P 0x51 0 64k", uo], check=True)
        r = run([VDISK_IMG, "create", "-f", "raw", uo, str(SIZE // 2)])
        F.check(r.rc == 0, f"create -f raw on NBD: {r!r}")
        r = run(["qemu-io", "-f", "raw", "-c", "read -P 0 0 512", "-c", "read -P 0x51 512 63k", uo])
        F.check(io_ok(r), f"create -f raw zeroed the first sector only: {r!r}")
        r = run([VDISK_IMG, "create", "-f", "raw", uo, str(2 * SIZE)])
        q = run(["qemu-img", "create", "-f", "raw", uq, str(2 * SIZE)])
        F.check(r.rc == 1 and q.rc == 1 and "Cannot grow NBD nodes" in r.err
                and "Cannot grow NBD nodes" in q.err, f"create larger than the export: {r!r} {q!r}")
        for fmt, extra in [("qcow2", []), ("qcow2", ["-o", "cluster_size=4k,lazy_refcounts=on"])]:
            r = run([VDISK_IMG, "create", "-q", "-f", fmt] + extra + [uo, "1G"])
            F.check(r.rc == 0, f"create -f {fmt} {extra} on NBD: {r!r}")
            run(["qemu-img", "create", "-q", "-f", fmt] + extra + [uq, "1G"], check=True)
            r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uo, uq])
            F.check(r.rc == 0, f"{fmt} {extra} on NBD: the bytes qemu-img writes: {r!r}")
            qemu_img_check(uo, fmt)
        r = run([VDISK_IO, "-c", "write -P 0x61 1M 64k", "-c", "read -P 0x61 1M 64k", uo])
        F.check(io_ok(r), f"I/O on the qcow2 created on NBD: {r!r}")
        qemu_img_check(uo)
        # QED allocates at the end of its file, which an export cannot move:
        # refused by both
        r = run([VDISK_IMG, "create", "-f", "qed", uo, "1G"])
        q = run(["qemu-img", "create", "-f", "qed", uq, "1G"])
        F.check(r.rc == 1 and q.rc == 1 and "Cannot resize NBD nodes" in r.err
                and "Cannot resize NBD nodes" in q.err, f"create -f qed on NBD: {r!r} {q!r}")
    finally:
        ours.stop()
        theirs.stop()


def test_vdiskd(d):
    """vdiskd as the server, and vdiskd consuming an NBD export."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "nbd"))
    from nbdtest import Vdiskd
    raw = os.path.join(d, "vd.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE)], check=True)
    sock = os.path.join(d, "vd.sock")
    dmn = Vdiskd(VDISKD, d, [
        "--blockdev", f"driver=raw,node-name=disk0,discard=unmap,file.driver=file,"
                      f"file.filename={raw}",
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=disk,writable=on"], wait_for=[sock])
    try:
        differential(d, "vdiskd", uri(sock, "disk"), None, seed=3)
    finally:
        dmn.stop()
    qemu_img_check(raw, "raw")

    # vdiskd --blockdev driver=nbd over qemu-nbd, re-exported; read by qemu-img
    src = os.path.join(d, "upstream.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", src, str(SIZE)], check=True)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 2M 1M", src], check=True)
    up = qemu_nbd(d, src, name="up")
    sock2 = os.path.join(d, "re.sock")
    dmn = Vdiskd(VDISKD, d, [
        "--blockdev", f"driver=nbd,node-name=up0,server.type=unix,server.path={up.sock},"
                      "export=disk",
        "--blockdev", "driver=raw,node-name=disk0,file=up0",
        "--nbd-server", f"addr.type=unix,addr.path={sock2}",
        "--export", "type=nbd,id=e0,node-name=disk0,name=re,writable=on"], wait_for=[sock2])
    try:
        u = uri(sock2, "re")
        r = run(["qemu-io", "-f", "raw", "-c", "read -P 0x61 2M 1M", "-c", "write -P 0x62 8M 64k",
                 u])
        F.check(io_ok(r), f"qemu-io through vdiskd's NBD client: {r!r}")
        r = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", u, src])
        F.check(r.rc == 0, f"re-export equals the upstream file: {r!r}")
    finally:
        dmn.stop()
        up.stop()


def main():
    need(VDISK_IMG, VDISK_IO, VDISKD, "qemu-img", "qemu-io", "qemu-nbd", "nbdkit")
    with TempDir(prefix="vdisk-nbdc-") as d:
        check_uri_errors(d)
        test_qemu_nbd(d)
        test_nbdkit(d)
        test_create_on_nbd(d)
        test_vdiskd(d)
    F.finish()


if __name__ == "__main__":
    main()
