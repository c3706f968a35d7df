#!/usr/bin/env python3
"""Functional tests of the img-cmds commands (check, map, compare, convert,
resize, snapshot, amend, measure, commit, rebase) against qemu-img 7.2 as
the oracle: same output (qemu-img -> vdisk-img in messages), same exit
status, same effect on the images. Images are made with qemu-img/qemu-io;
every image a test writes must pass `qemu-img check`."""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

RUNNER = os.environ.get("IMG_CMDS_RUNNER", "")


def run(args, check_rc=None):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    if check_rc is not None and p.returncode != check_rc:
        raise AssertionError("%s: rc %d (expected %d)\nstdout: %s\nstderr: %s"
                             % (" ".join(args), p.returncode, check_rc, out, err))
    return p.returncode, out, err


def vd(*args, rc=None):
    return run([RUNNER] + list(args), rc)


def qi(*args, rc=None):
    return run(["qemu-img"] + list(args), rc)


def qio(img, *cmds, fmt="qcow2"):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    run(args + [img], 0)


def norm(text):
    return text.replace("qemu-img", "vdisk-img")


class ImgCmdsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="vd-imgcmds-")
        self.written = []

    def tearDown(self):
        try:
            for img in self.written:
                rc, out, err = qi("check", img)
                self.assertEqual(rc, 0, "qemu-img check %s:\n%s%s" % (img, out, err))
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def qcow2(self, name, size="64M", *cmds, backing=None, opts=None):
        p = self.path(name)
        args = ["create", "-q", "-f", "qcow2"]
        if backing:
            args += ["-b", backing, "-F", "qcow2"]
        if opts:
            args += ["-o", opts]
        qi(*(args + [p, size]), rc=0)
        if cmds:
            qio(p, *cmds)
        return p

    def raw(self, name, size="16M", *cmds):
        p = self.path(name)
        qi("create", "-q", "-f", "raw", p, size, rc=0)
        if cmds:
            qio(p, *cmds, fmt="raw")
        return p

    def copy(self, src, name):
        p = self.path(name)
        shutil.copyfile(src, p)
        return p

    def same(self, vd_args, qemu_args=None, stderr=True):
        """Run both tools; compare exit status, stdout and (normalised) stderr."""
        r1 = vd(*vd_args)
        r2 = qi(*(qemu_args if qemu_args is not None else vd_args))
        self.assertEqual(r1[1], r2[1], "stdout differs for %s" % (vd_args,))
        if stderr:
            self.assertEqual(r1[2], norm(r2[2]), "stderr differs for %s" % (vd_args,))
        self.assertEqual(r1[0], r2[0], "exit status differs for %s: %s" % (vd_args, r1[2]))
        return r1

    def assert_same_content(self, a, b, fa=None, fb=None):
        args = ["compare"]
        if fa:
            args += ["-f", fa]
        if fb:
            args += ["-F", fb]
        rc, out, err = qi(*(args + [a, b]))
        self.assertEqual(rc, 0, "qemu-img compare %s %s: %s%s" % (a, b, out, err))

    def info(self, img, *extra):
        rc, out, err = qi("info", "--output=json", *(list(extra) + [img]), rc=0)
        return json.loads(out)

    # ---- usage errors: same message and exit status ---------------------------------

    def test_usage_errors(self):
        img = self.qcow2("u.qcow2", "1M")
        cases = ["check", "check -x I", "check -qx I", "check -f", "check --bogus=1 I",
                 "check -r leaks -U I", "map", "map --output", "map --output=x I",
                 "compare I", "compare -z I I", "resize I", "resize", "resize I -- -2M",
                 "snapshot I", "snapshot -l -c x I", "snapshot -c x -U I", "amend I",
                 "amend -o compat=1.1", "commit", "rebase", "rebase -b x", "measure I I",
                 "measure", "convert", "convert -O", "convert -m 0 I x", "map missing"]
        for c in cases:
            args = [a if a != "I" else img for a in c.split()]
            self.same(args)

    # ---- check ---------------------------------------------------------------------------

    def test_check_clean(self):
        img = self.qcow2("a.qcow2", "64M", "write -P 1 0 64k", "write -z 1M 64k",
                         "write -P 2 2M 128k")
        self.same(["check", img])
        self.same(["check", "--output=json", img])
        self.same(["check", "-f", "qcow2", "-U", img])
        self.same(["check", "-r", "foo", img])
        opts = "driver=qcow2,file.filename=" + img
        self.same(["check", "--output=json", "--image-opts", opts])
        self.same(["map", "--image-opts", opts])

    def test_check_raw_unsupported(self):
        img = self.raw("r.raw")
        self.same(["check", "-f", "raw", img])

    def _make_leak(self, img):
        """Drop the L2 entry of guest cluster 0: its data cluster keeps
        refcount 1 with no reference, i.e. a leaked cluster."""
        with open(img, "r+b") as f:
            hdr = f.read(72)
            l1_size, l1_off = struct.unpack(">IQ", hdr[36:48])
            self.assertGreater(l1_size, 0)
            f.seek(l1_off)
            (l1e,) = struct.unpack(">Q", f.read(8))
            l2_off = l1e & 0x00fffffffffffe00
            self.assertNotEqual(l2_off, 0)
            f.seek(l2_off)
            f.write(b"\0" * 8)

    def test_check_leaks_and_repair(self):
        img = self.qcow2("l.qcow2", "16M", "write -P 1 0 64k", "write -P 2 1M 64k")
        self._make_leak(img)
        rc, out, err = qi("check", img)
        self.assertEqual(rc, 3, "the leak was not made: " + out)
        self.same(["check", img], stderr=False)
        self.same(["check", "--output=json", img], stderr=False)
        a = self.copy(img, "fix-vd.qcow2")
        b = self.copy(img, "fix-qemu.qcow2")
        r1 = vd("check", "-r", "leaks", a)
        r2 = qi("check", "-r", "leaks", b)
        self.assertEqual(r1[1].replace(a, "X"), r2[1].replace(b, "X"))
        self.assertEqual(r1[0], r2[0])
        self.assertIn("1 leaked clusters", r1[1])
        self.written += [a]
        self.assert_same_content(a, b)

    def test_check_corruption_and_repair(self):
        img = self.qcow2("c.qcow2", "16M", "write -P 1 0 64k", "write -P 2 1M 64k")
        with open(img, "r+b") as f:      # refcount of guest cluster 0's data := 0
            hdr = f.read(72)
            l1_size, l1_off = struct.unpack(">IQ", hdr[36:48])
            (rt_off,) = struct.unpack(">Q", hdr[48:56])
            f.seek(rt_off)
            (rb_off,) = struct.unpack(">Q", f.read(8))
            f.seek(l1_off)
            l2_off = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
            f.seek(l2_off)
            data = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
            f.seek(rb_off + (data >> 16) * 2)   # 64k clusters, 16-bit refcounts
            f.write(b"\0\0")
        self.assertEqual(qi("check", img)[0], 2, "the corruption was not made")
        self.same(["check", img], stderr=False)
        self.same(["check", "--output=json", img], stderr=False)
        a = self.copy(img, "fix-vd.qcow2")
        b = self.copy(img, "fix-qemu.qcow2")
        r1 = vd("check", "-r", "all", a)
        r2 = qi("check", "-r", "all", b)
        self.assertEqual(r1[0], r2[0])
        self.assertEqual(r1[1].split("Double checking")[0], r2[1].split("Double checking")[0])
        self.assertIn("No errors were found on the image.", r1[1])
        self.written.append(a)
        self.assert_same_content(a, b)

    # ---- map -----------------------------------------------------------------------------

    def test_map_qcow2_chain(self):
        base = self.qcow2("base.qcow2", "16M", "write -P 1 0 1M", "write -P 4 8M 64k")
        top = self.qcow2("top.qcow2", "16M", "write -P 2 512k 1M", "write -z 8M 64k",
                         backing=base)
        for img in (base, top):
            self.same(["map", img])
            self.same(["map", "--output=json", img])
        self.same(["map", "--output=json", "--start-offset=1M", "--max-length=8M", top])
        self.same(["map", "--start-offset", "600k", top])
        self.same(["map", "--output=yaml", top])
        self.same(["map", "--start-offset=12Q", top])
        self.same(["map", "--max-length=1x", top])

    def test_map_metadata_preallocated(self):
        # Allocated clusters with holes behind them: the file decides whether
        # they read as zeros (qemu-img reports "zero": true there); a normally
        # written image must not be asked (qcow2 recursion heuristic).
        pre = self.qcow2("pre.qcow2", "16M", "write -P 1 1M 1M", opts="preallocation=metadata")
        plain = self.qcow2("plain.qcow2", "16M", "write -P 1 1M 1M", "write -z 8M 1M")
        for img in (pre, plain):
            self.same(["map", img])
            self.same(["map", "--output=json", img])

    def test_map_raw(self):
        img = self.raw("r.raw", "4M", "write -P 3 1M 4k")
        self.same(["map", "-f", "raw", img])
        self.same(["map", "-f", "raw", "--output=json", img])

    # ---- compare --------------------------------------------------------------------------

    def test_compare(self):
        a = self.qcow2("a.qcow2", "16M", "write -P 1 0 64k", "write -P 2 2M 128k")
        b = self.copy(a, "b.qcow2")
        self.same(["compare", a, b])
        qio(b, "write -P 9 3M 512")
        self.same(["compare", a, b])
        r = self.raw("r.raw", "16M")
        run(["qemu-img", "convert", "-O", "raw", a, r], 0)
        self.same(["compare", "-F", "raw", a, r])
        self.same(["compare", "-s", "-F", "raw", a, r])
        self.same(["compare", "-s", a, self.copy(a, "a2.qcow2")])
        c = self.qcow2("c.qcow2", "17M")
        self.same(["compare", a, c])
        self.same(["compare", "-s", a, c])
        longer = self.copy(a, "longer.qcow2")
        run(["qemu-img", "resize", "-q", longer, "20M"], 0)
        self.same(["compare", a, longer])
        qio(longer, "write -P 1 18M 4k")
        self.same(["compare", a, longer])
        self.same(["compare", a, self.path("missing")])

    # ---- convert ---------------------------------------------------------------------------

    def _map_data(self, img):
        rc, out, err = qi("map", "--output=json", img, rc=0)
        runs = []
        for e in json.loads(out):
            if not e["data"]:
                continue
            if runs and runs[-1][0] + runs[-1][1] == e["start"]:
                runs[-1] = (runs[-1][0], runs[-1][1] + e["length"])
            else:
                runs.append((e["start"], e["length"]))
        return runs

    def test_convert_qcow2_raw(self):
        src = self.qcow2("src.qcow2", "64M", "write -P 1 0 1M", "write -z 4M 64k",
                         "write -P 2 10M 3M", "write -P 0 20M 1M", "write -P 3 63M 4k")
        out_raw = self.path("out.raw")
        vd("convert", "-O", "raw", src, out_raw, rc=0)
        self.assert_same_content(src, out_raw, fb="raw")
        out_q = self.path("out.qcow2")
        vd("convert", "-f", "raw", "-O", "qcow2", "-m", "4", "-p", out_raw, out_q, rc=0)
        self.written.append(out_q)
        self.assert_same_content(out_raw, out_q, fa="raw")
        # Sparse: the zero-filled MiB at 20M is not allocated, as with qemu-img.
        ref = self.path("ref.qcow2")
        qi("convert", "-f", "raw", "-O", "qcow2", out_raw, ref, rc=0)
        self.assertEqual(self._map_data(out_q), self._map_data(ref))
        # Out-of-order writes and -S 0 (fully allocated) give the same content.
        out_w = self.path("out-w.qcow2")
        vd("convert", "-W", "-S", "0", "-O", "qcow2", src, out_w, rc=0)
        self.written.append(out_w)
        self.assert_same_content(src, out_w)
        self.assertEqual(self._map_data(out_w), [(0, 64 * 1024 * 1024)])

    def test_convert_options(self):
        a = self.qcow2("a.qcow2", "4M", "write -P 1 0 1M")
        b = self.raw("b.raw", "2M", "write -P 2 512k 1M")
        out = self.path("cat.qcow2")
        vd("convert", "-O", "qcow2", "-o", "cluster_size=4k,compat=0.10", a, b, out, rc=0)
        self.written.append(out)
        ref = self.path("cat-ref.qcow2")
        qi("convert", "-O", "qcow2", a, b, ref, rc=0)
        self.assert_same_content(out, ref)
        data = self.info(out)
        self.assertEqual(data["cluster-size"], 4096)
        self.assertEqual(data["format-specific"]["data"]["compat"], "0.10")
        x = self.path("x")
        for args in (["-m", "20"], ["-S", "1000"], ["-S", "12Q"], ["-W", "-c", "-O", "qcow2"]):
            self.same(["convert"] + args + [a, x])
        self.same(["convert", self.path("missing"), x])
        self.same(["convert", "--bitmaps", a, self.path("bm.raw")])
        for o in (["-O", "qcow2", "-o", "bogus=1"], ["-O", "raw", "-o", "cluster_size=4k"],
                  ["-O", "nosuchfmt"]):
            self.same(["convert"] + o + [a, x])
        self.same(["convert", "--target-image-opts", a, x])
        # into an existing qcow2 named by options, rate-limited, salvage mode
        t = self.qcow2("t.qcow2", "8M", "write -P 9 0 8M")
        vd("convert", "-n", "--salvage", "-r", "64M", "--target-image-opts", a,
           "driver=qcow2,file.filename=" + t, rc=0)
        self.written.append(t)
        rc, text, err = qi("compare", a, t)
        self.assertEqual(rc, 1)                     # t is longer: its tail is not zero
        self.assertIn("Content mismatch at offset 4194304", text)
        self.same(["convert", a])

    def test_convert_compressed(self):
        src = self.qcow2("src.qcow2", "8M", "write -P 1 0 1M", "write -P 2 3M 100k")
        out = self.path("c.qcow2")
        vd("convert", "-c", "-O", "qcow2", src, out, rc=0)
        self.written.append(out)
        self.assert_same_content(src, out)
        rc, text, err = qi("check", "--output=json", out, rc=0)
        self.assertGreater(json.loads(text).get("compressed-clusters", 0), 0)
        self.same(["map", "--output=json", out])
        self.same(["compare", "-s", src, out])
        self.same(["convert", "-c", "-O", "raw", src, self.path("x.raw")], stderr=True)

    def test_convert_backing(self):
        base = self.qcow2("base.qcow2", "16M", "write -P 1 0 2M")
        top = self.qcow2("top.qcow2", "16M", "write -P 2 1M 1M", "write -z 8M 64k",
                         backing=base)
        out = self.path("out.qcow2")
        vd("convert", "-O", "qcow2", "-B", base, "-F", "qcow2", top, out, rc=0)
        self.written.append(out)
        self.assert_same_content(top, out)
        self.assertEqual(self.info(out)["backing-filename"], base)
        ref = self.path("ref.qcow2")
        qi("convert", "-O", "qcow2", "-B", base, "-F", "qcow2", top, ref, rc=0)
        self.assertEqual(self._map_data(out), self._map_data(ref))
        # -n into an existing image
        exist = self.raw("exist.raw", "16M", "write -P 7 0 16M")
        vd("convert", "-n", top, exist, rc=0)
        self.assert_same_content(top, exist, fb="raw")

    # ---- resize ------------------------------------------------------------------------------

    def test_resize(self):
        for fmt in ("qcow2", "raw"):
            a = self.path("a." + fmt)
            b = self.path("b." + fmt)
            for p in (a, b):
                qi("create", "-q", "-f", fmt, p, "16M", rc=0)
            for args in (["+4M"], ["--", "-2M"], ["--shrink", "--", "-2M"], ["30M"],
                         ["--shrink", "8M"], ["0"], ["12Q"]):
                r1 = vd("resize", "-f", fmt, *([a] + args))
                r2 = qi("resize", "-f", fmt, *([b] + args))
                self.assertEqual((r1[0], r1[1]), (r2[0], r2[1]), args)
                self.assertEqual(r1[2].splitlines()[:1], norm(r2[2]).splitlines()[:1], args)
                self.assertEqual(self.info(a)["virtual-size"], self.info(b)["virtual-size"])
            if fmt == "qcow2":
                self.written.append(a)
                self.same(["resize", "--preallocation=metadata", a, "40M"],
                          ["resize", "--preallocation=metadata", b, "40M"])
                self.assertEqual(qi("check", a)[1].splitlines()[1],
                                 qi("check", b)[1].splitlines()[1])
                self.same(["resize", "--preallocation=full", "--shrink", a, "30M"],
                          ["resize", "--preallocation=full", "--shrink", b, "30M"])

    # ---- snapshot ----------------------------------------------------------------------------

    def _snapshot_rows(self, out):
        # ID, TAG, VM SIZE columns (the date differs between runs)
        return [line[:42] for line in out.splitlines()]

    def test_snapshot(self):
        img = self.qcow2("s.qcow2", "16M", "write -P 1 0 64k")
        ref = self.copy(img, "ref.qcow2")
        self.same(["snapshot", "-l", img])
        vd("snapshot", "-c", "first", img, rc=0)
        qio(img, "write -P 2 0 64k")
        vd("snapshot", "-c", "second", img, rc=0)
        self.written.append(img)
        out_vd = vd("snapshot", "-l", img, rc=0)[1]
        out_q = qi("snapshot", "-l", img, rc=0)[1]
        self.assertEqual(out_vd, out_q)
        self.assertIn("second", out_q)
        qio(img, "write -P 3 0 64k")
        vd("snapshot", "-a", "first", img, rc=0)
        self.assert_same_content(img, ref)
        vd("snapshot", "-d", "1", img, rc=0)          # by ID
        self.assertNotIn("first", qi("snapshot", "-l", img, rc=0)[1])
        vd("snapshot", "-a", "second", img, rc=0)
        rc, out, err = run(["qemu-io", "-c", "read -P 2 0 64k", img], 0)
        self.assertNotIn("Pattern verification failed", out)
        vd("snapshot", "-d", "second", img, rc=0)     # by name
        self.assertEqual(qi("snapshot", "-l", img, rc=0)[1], "")
        other = self.copy(img, "other.qcow2")
        self.same(["snapshot", "-a", "nope", img], ["snapshot", "-a", "nope", other])
        self.same(["snapshot", "-d", "nope", img], ["snapshot", "-d", "nope", other])
        r = self.raw("r.raw")
        for action in (["-l"], ["-c", "x"], ["-d", "x"]):
            self.same(["snapshot"] + action + [r])
        # list made by qemu-img, read by vdisk
        qi("snapshot", "-c", "q1", other, rc=0)
        self.assertEqual(vd("snapshot", "-l", other)[1], qi("snapshot", "-l", other)[1])

    # ---- amend -------------------------------------------------------------------------------

    def test_amend_compat(self):
        img = self.qcow2("am.qcow2", "16M", "write -P 1 0 1M", "write -z 2M 64k")
        ref = self.path("ref.raw")
        qi("convert", "-O", "raw", img, ref, rc=0)
        self.written.append(img)
        vd("amend", "-o", "compat=0.10", img, rc=0)
        self.assertEqual(self.info(img)["format-specific"]["data"]["compat"], "0.10")
        self.assert_same_content(img, ref, fb="raw")
        self.assertEqual(qi("check", img)[0], 0)
        vd("amend", "-o", "compat=1.1", img, rc=0)
        self.assertEqual(self.info(img)["format-specific"]["data"]["compat"], "1.1")
        self.assert_same_content(img, ref, fb="raw")
        r = self.raw("r.raw")
        self.same(["amend", "-f", "raw", "-o", "size=1M", r])
        self.same(["amend", img], stderr=False)
        for o in ("bogus=1", "cluster_size=4k", "compat=0.10,lazy_refcounts=on"):
            self.same(["amend", "-o", o, img])
        self.same(["amend", "-o", "lazy_refcounts=on,size=32M", img])
        self.assertEqual(self.info(img)["virtual-size"], 32 << 20)

    # ---- measure ------------------------------------------------------------------------------

    def test_measure(self):
        img = self.qcow2("a.qcow2", "64M", "write -P 1 0 64k", "write -P 2 2M 128k")
        r = self.raw("r.raw", "8M", "write -P 1 0 1M")
        cases = [
            ["-O", "qcow2", img],
            ["--output=json", "-O", "qcow2", img],
            ["-O", "qcow2", "-o", "compat=0.10", img],
            ["-O", "raw", img],
            ["--size", "1G", "-O", "qcow2"],
            ["--output=json", "--size", "1G", "-O", "raw"],
            ["--size", "10G", "-O", "qcow2", "-o", "cluster_size=4k"],
            ["-f", "raw", "-O", "qcow2", r],
            ["--size", "1G", "-O", "qcow2", img],
            ["-O", "qcow2"],
        ]
        for c in cases:
            self.same(["measure"] + c)
        self.same(["measure", "--size", "12Q"])
        self.same(["measure", "-O", "qcow2", "-o", "bogus=1", "--size", "1M"])
        self.same(["measure", "-O", "raw", "-o", "preallocation=full", "--size", "1M"])

    # ---- commit --------------------------------------------------------------------------------

    def _chain(self, prefix):
        base = self.qcow2(prefix + "base.qcow2", "16M", "write -P 1 0 1M", "write -P 5 6M 1M")
        mid = self.qcow2(prefix + "mid.qcow2", "16M", "write -P 2 512k 1M", backing=base)
        top = self.qcow2(prefix + "top.qcow2", "16M", "write -P 3 1M 1M", "write -z 6M 64k",
                         backing=mid)
        return base, mid, top

    def test_commit(self):
        base, mid, top = self._chain("v-")
        qbase, qmid, qtop = self._chain("q-")
        ref = self.path("ref.raw")
        qi("convert", "-O", "raw", top, ref, rc=0)
        self.same(["commit", top], ["commit", qtop])
        self.written += [top, mid]
        for a, b in ((mid, qmid), (top, qtop), (base, qbase)):
            self.assert_same_content(a, b)
        self.assert_same_content(top, ref, fb="raw")
        self.assertEqual(self._map_data(top), self._map_data(qtop))
        # -b base: through the intermediate image, top left as is (implied -d)
        base, mid, top = self._chain("v2-")
        qbase, qmid, qtop = self._chain("q2-")
        self.same(["commit", "-b", base, top], ["commit", "-b", qbase, qtop])
        self.written += [base]
        self.assert_same_content(base, qbase)
        self.assert_same_content(base, ref, fb="raw")
        self.assert_same_content(top, ref, fb="raw")
        self.same(["commit", base], ["commit", qbase])
        self.same(["commit", "-b", "nothere", top], ["commit", "-b", "nothere", qtop],
                  stderr=False)

    # ---- rebase --------------------------------------------------------------------------------

    def test_rebase_safe(self):
        base, mid, top = self._chain("v-")
        qbase, qmid, qtop = self._chain("q-")
        ref = self.path("ref.raw")
        qi("convert", "-O", "raw", top, ref, rc=0)
        self.same(["rebase", "-b", base, "-F", "qcow2", top],
                  ["rebase", "-b", qbase, "-F", "qcow2", qtop])
        self.written.append(top)
        self.assertEqual(self.info(top)["backing-filename"], base)
        self.assert_same_content(top, ref, fb="raw")
        self.assert_same_content(top, qtop)
        self.assertEqual(self._map_data(top), self._map_data(qtop))
        # onto nothing: the image takes all the data
        self.same(["rebase", "-b", "", top], ["rebase", "-b", "", qtop])
        self.assertNotIn("backing-filename", self.info(top))
        self.assert_same_content(top, ref, fb="raw")

    def test_rebase_unsafe(self):
        base, mid, top = self._chain("v-")
        qbase, qmid, qtop = self._chain("q-")
        self.same(["rebase", "-u", "-b", base, "-F", "qcow2", top],
                  ["rebase", "-u", "-b", qbase, "-F", "qcow2", qtop])
        self.written.append(top)
        self.assertEqual(self.info(top)["backing-filename"], base)
        self.assertEqual(self.info(top)["backing-filename-format"], "qcow2")
        self.assert_same_content(top, qtop)
        self._chain("x-")
        self.same(["rebase", top], ["rebase", qtop])
        self.same(["rebase", "-b", mid, top], ["rebase", "-b", qmid, qtop], stderr=False)


if __name__ == "__main__":
    if not RUNNER or not os.access(RUNNER, os.X_OK):
        print("IMG_CMDS_RUNNER not set to an executable", file=sys.stderr)
        sys.exit(1)
    unittest.main(verbosity=2)
