#!/usr/bin/env python3
"""Backing chains a hostile or careless user can make (issue 9, items 2 and 3).

- Loops (a -> b -> a, a -> a, a -> sub/../a) are refused with a message that
  names the chain, by vdisk-io, vdisk-img info/check/convert/map, vdiskd
  --blockdev and QMP blockdev-add; a daemon with a live export survives.
- A chain of 1,000 backing files below the top (the documented minimum of
  VD_MAX_BACKING_CHAIN is far above) opens and reads through every tool and
  the daemon (it used to overflow the coroutine stack at 92 images).
- vdisk-img create refuses an image that would back itself, comparing the
  resolved paths (a.qcow2 vs ./a.qcow2 vs a symlink), as qemu-img does.
"""
import json
import os
import resource
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbd"))
import vdtest as vt  # noqa: E402
import nbdtest  # noqa: E402

DEPTH = 1000          # backing files below the top image
LOOP_MSG = "creates an infinite loop"


def make_chain(d, depth):
    """c0000.qcow2 (data 0x5a in the first 64k) <- c0001 <- ... <- c<depth>.
    One template made by qemu-img, the backing name patched per layer (same
    length), so every image is exactly what qemu-img writes."""
    base = os.path.join(d, "c0000.qcow2")
    vt.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1M"], check=True)
    vt.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", base], check=True)
    tmpl = os.path.join(d, "template")
    vt.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "cXXXX.qcow2", "-F", "qcow2",
            tmpl, "1M"], check=True)
    with open(tmpl, "rb") as f:
        t = f.read()
    os.unlink(tmpl)
    assert t.count(b"cXXXX.qcow2") == 1
    for i in range(1, depth + 1):
        with open(os.path.join(d, f"c{i:04d}.qcow2"), "wb") as f:
            f.write(t.replace(b"cXXXX.qcow2", f"c{i - 1:04d}.qcow2".encode()))
    return os.path.join(d, f"c{depth:04d}.qcow2")


def make_loops(d):
    """Images whose backing chains loop; returns [(top image, chain text)]."""
    def create(path, backing):
        vt.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2",
                path, "1M"], check=True)
    create(os.path.join(d, "a.qcow2"), "b.qcow2")
    create(os.path.join(d, "b.qcow2"), "a.qcow2")
    # qemu-img refuses to create a self-loop: patch one (same-length name)
    create(os.path.join(d, "s.qcow2"), "x.qcow2")
    p = os.path.join(d, "s.qcow2")
    with open(p, "rb") as f:
        t = f.read()
    with open(p, "wb") as f:
        f.write(t.replace(b"x.qcow2", b"s.qcow2"))
    # the same file under another name: sub/../l.qcow2
    os.mkdir(os.path.join(d, "sub"))
    create(os.path.join(d, "l.qcow2"), "sub/m.qcow2")
    create(os.path.join(d, "sub", "m.qcow2"), "../l.qcow2")
    return [("a.qcow2", "a.qcow2 -> b.qcow2 -> a.qcow2"),
            ("s.qcow2", "s.qcow2 -> s.qcow2"),
            ("l.qcow2", "l.qcow2 -> sub/m.qcow2 -> sub/../l.qcow2")]


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return True


def not_a_crash(f, r, what):
    return f.check(r.rc in (0, 1), f"{what}: exit {r.rc} (signal?): {r.err[-2000:]}")


def check_loops(f, d):
    for top, chain in make_loops(d):
        before = {n: open(os.path.join(d, n), "rb").read()
                  for n in ("a.qcow2", "b.qcow2", "s.qcow2", "l.qcow2")}
        cmds = [
            ("vdisk-io", [vt.VDISK_IO, "-c", "read 0 512", top]),
            ("vdisk-io -r", [vt.VDISK_IO, "-r", "-c", "read 0 512", top]),
            ("info --backing-chain", [vt.VDISK_IMG, "info", "--backing-chain", top]),
            ("check", [vt.VDISK_IMG, "check", top]),
            ("convert", [vt.VDISK_IMG, "convert", "-O", "raw", top, "out.raw"]),
            ("map", [vt.VDISK_IMG, "map", top]),
            ("vdiskd --blockdev", [vt.VDISKD, "--blockdev",
                                   f"driver=qcow2,node-name=x,file.driver=file,"
                                   f"file.filename={top}"]),
        ]
        for what, cmd in cmds:
            r = vt.run(cmd, cwd=d)
            not_a_crash(f, r, f"{top}: {what}")
            f.check(r.rc == 1, f"{top}: {what} should fail: {r!r}")
            f.check(LOOP_MSG in r.err and chain in r.err,
                    f"{top}: {what}: message should name the loop '{chain}': {r.err!r}")
        for n, data in before.items():
            f.check(open(os.path.join(d, n), "rb").read() == data, f"{n} was modified")


def check_deep_chain(f, d):
    top = make_chain(d, DEPTH)
    r = vt.run([vt.VDISK_IO, "-c", "read -P 0x5a 0 64k", "-c", "read -P 0 64k 64k",
                "-c", "write -P 0x33 128k 4k", top])
    not_a_crash(f, r, "vdisk-io on the deep chain")
    f.check(r.rc == 0 and "Pattern verification failed" not in r.out,
            f"vdisk-io cannot read the deep chain: {r!r}")
    # qemu-img check of the top alone (qemu takes ~10 s to open 1,000 layers)
    spec = {"driver": "qcow2", "file": {"driver": "file", "filename": top}, "backing": None}
    r = vt.run(["qemu-img", "check", "json:" + json.dumps(spec)])
    f.check(r.rc == 0 and "No errors were found" in r.out, f"qemu-img check of the top: {r!r}")

    r = vt.run([vt.VDISK_IMG, "info", "--backing-chain", "--output=json", top])
    not_a_crash(f, r, "info --backing-chain")
    if f.check(r.rc == 0, f"info --backing-chain: {r!r}"):
        f.check(len(json.loads(r.out)) == DEPTH + 1, "info lists every image of the chain")
    r = vt.run([vt.VDISK_IMG, "check", top])
    f.check(r.rc == 0 and "No errors" in r.out, f"check on the deep chain: {r!r}")
    r = vt.run([vt.VDISK_IMG, "map", "--output=json", top])
    f.check(r.rc == 0 and f'"depth": {DEPTH}' in r.out, f"map on the deep chain: {r!r}")
    out = os.path.join(d, "flat.raw")
    r = vt.run([vt.VDISK_IMG, "convert", "-O", "raw", top, out])
    f.check(r.rc == 0, f"convert of the deep chain: {r!r}")
    if r.rc == 0:
        ref = os.path.join(d, "ref.raw")
        vt.run(["qemu-img", "create", "-q", "-f", "raw", ref, "1M"], check=True)
        vt.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c",
                "write -P 0x33 128k 4k", ref], check=True)
        vt.qemu_img_compare(ref, out)
    return top


def check_daemon(f, d, deep_top):
    """A daemon serving an export gets loops and a deep chain by blockdev-add."""
    scratch = os.path.join(d, "live.raw")
    vt.run(["qemu-img", "create", "-q", "-f", "raw", scratch, "1M"], check=True)
    sock = os.path.join(d, "nbd.sock")
    dm = nbdtest.Vdiskd(vt.VDISKD, d, [
        "--blockdev", nbdtest.blockdev_raw(scratch, "live"),
        "--nbd-server", f"addr.type=unix,addr.path={sock}",
        "--export", "type=nbd,id=e0,node-name=live,name=live,writable=on"], wait_for=[sock])
    try:
        live = f"nbd+unix:///live?socket={sock}"
        vt.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", live], check=True)
        loopdir = os.path.join(d, "qmp-loops")
        os.mkdir(loopdir)
        for top, chain in make_loops(loopdir):
            r = dm.qmp.cmd("blockdev-add", **{
                "node-name": "loop", "driver": "qcow2",
                "file": {"driver": "file", "filename": os.path.join(loopdir, top)}})
            desc = r.get("error", {}).get("desc", "").replace(loopdir + "/", "")
            f.check(LOOP_MSG in desc and chain in desc, f"blockdev-add of {top}: {r}")
            f.check(dm.alive(), f"vdiskd died on blockdev-add of the loop {top}")
            if not dm.alive():
                return
        r = dm.qmp.cmd("blockdev-add", **{
            "node-name": "deep", "driver": "qcow2", "read-only": True,
            "file": {"driver": "file", "filename": deep_top}})
        f.check(r == {"return": {}}, f"blockdev-add of the deep chain: {r}")
        f.check(dm.alive(), "vdiskd died on blockdev-add of the deep chain")
        if not dm.alive():
            return
        dm.qmp.ok("block-export-add", type="nbd", id="e1", **{"node-name": "deep"}, name="deep")
        r = vt.run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 64k",
                    "-c", "read -P 0x33 128k 4k", f"nbd+unix:///deep?socket={sock}"])
        f.check(r.rc == 0 and "Pattern verification failed" not in r.out,
                f"reading the deep chain through the export: {r!r}")
        r = vt.run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 0 64k", live])
        f.check(r.rc == 0 and "Pattern verification failed" not in r.out,
                f"the live export after the loops: {r!r}")
        dm.qmp.ok("block-export-del", id="e1")
        # closing 1,001 nodes from the monitor recurses as deep as opening them;
        # the export lets go of the node when BLOCK_EXPORT_DELETED comes
        while dm.qmp._recv().get("event") != "BLOCK_EXPORT_DELETED":
            pass
        r = dm.qmp.cmd("blockdev-del", **{"node-name": "deep"})
        f.check(r == {"return": {}}, f"blockdev-del of the deep chain: {r}")
        f.check(dm.alive(), "vdiskd died on blockdev-del of the deep chain")
    finally:
        if dm.alive():
            dm.stop()
        else:
            f.check(False, f"vdiskd exited: {dm.log()}")


def check_create_self_backing(f, d):
    """vdisk-img create -b X X must not destroy X (item 3)."""
    img = os.path.join(d, "self.qcow2")
    vt.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"], check=True)
    vt.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", img], check=True)
    os.symlink("self.qcow2", os.path.join(d, "link.qcow2"))
    before = open(img, "rb").read()
    cases = [("self.qcow2", "self.qcow2"), ("./self.qcow2", "self.qcow2"),
             (img, "self.qcow2"), ("link.qcow2", "self.qcow2"),
             ("sub/../self.qcow2", "self.qcow2")]
    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    for backing, target in cases:
        r = vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                    target, "1M"], cwd=d)
        f.check(r.rc == 1 and "Trying to create an image with the same filename as the "
                "backing file" in r.err, f"create -b {backing} {target}: {r!r}")
        f.check(open(img, "rb").read() == before, f"create -b {backing} {target} changed it")
    # relative to the new image's directory: sub/x.qcow2 backed by "x.qcow2" is sub/x.qcow2
    vt.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(d, "sub", "x.qcow2"), "1M"],
           check=True)
    r = vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2",
                "sub/x.qcow2", "1M"], cwd=d)
    f.check(r.rc == 1 and "same filename" in r.err, f"create -b x.qcow2 sub/x.qcow2: {r!r}")
    # a different file with the same base name is fine (and -u too, qemu-img allows it)
    r = vt.run([vt.VDISK_IMG, "create", "-q", "-f", "qcow2", "-b", "../self.qcow2", "-F",
                "qcow2", "sub/self.qcow2", "1M"], cwd=d)
    f.check(r.rc == 0, f"create -b ../self.qcow2 sub/self.qcow2: {r!r}")
    vt.qemu_img_check(os.path.join(d, "sub", "self.qcow2"))
    vt.qemu_img_check(img)


def section(f, name, fn, *args):
    """Run one part; an exception fails it without hiding the other parts."""
    try:
        return fn(f, *args)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        f.check(False, f"{name}: {e}")
        return None


def main():
    vt.need("qemu-img", "qemu-io", vt.VDISK_IMG, vt.VDISK_IO, vt.VDISKD)
    f = vt.Failures()
    with vt.TempDir() as d:
        section(f, "create -b self", check_create_self_backing, d)
    with vt.TempDir() as d:
        section(f, "loops", check_loops, d)
    if not raise_fd_limit(DEPTH + 200):
        vt.log(f"SKIP (partly): the open-file limit is below {DEPTH + 200}: no deep chain")
    else:
        with vt.TempDir() as d:
            top = section(f, "deep chain", check_deep_chain, d)
            if top:
                section(f, "daemon", check_daemon, d, top)
    f.finish()


if __name__ == "__main__":
    main()
