#!/usr/bin/env python3
"""vdisk-img create and info against qemu-img for raw images: the same
"Formatting" lines, the same info (human and --output=json, disk usage
filtered), images qemu-img accepts; and the error paths (unknown command,
bad option, missing file, bad size) give qemu-img's message and exit 1."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402


def both(f, d, args, what, filt=vt.filter_all):
    q = vt.run(["qemu-img"] + args)
    v = vt.run([vt.VDISK_IMG] + args)
    f.equal(filt(q.out, d), filt(v.out, d), f"{what}: stdout")
    f.equal(filt(q.err, d), filt(v.err, d), f"{what}: stderr")
    f.equal(q.rc, v.rc, f"{what}: exit status")
    return q, v


def main():
    vt.need("qemu-img", vt.VDISK_IMG)
    f = vt.Failures()
    with vt.TempDir() as d:
        def p(name):
            return os.path.join(d, name)

        sizes = ["1G", "1.5M", "64k", "1048576", "0", "4096", "1T"]
        for i, size in enumerate(sizes):
            args = ["create", "-f", "raw", p(f"c{i}.raw"), size]
            q = vt.run(["qemu-img"] + args[:3] + [p(f"q{i}.raw"), size])
            v = vt.run([vt.VDISK_IMG] + args)
            f.equal(vt.filter_all(q.out, d).replace(f"q{i}.raw", "X"),
                    vt.filter_all(v.out, d).replace(f"c{i}.raw", "X"), f"create {size}: stdout")
            f.equal(q.rc, v.rc, f"create {size}: exit status")
            vt.qemu_img_check(p(f"c{i}.raw"), "raw")
            vt.qemu_img_compare(p(f"q{i}.raw"), p(f"c{i}.raw"))
            # info of the same image by both tools
            both(f, d, ["info", "-f", "raw", p(f"c{i}.raw")], f"info {size}",
                 lambda t, dd: vt.filter_actual_size(vt.filter_all(t, dd)))
            both(f, d, ["info", "--output=json", "-f", "raw", p(f"c{i}.raw")], f"info json {size}",
                 lambda t, dd: vt.filter_actual_size(vt.filter_all(t, dd)))
            v = vt.run([vt.VDISK_IMG, "info", "--output=json", p(f"c{i}.raw")])
            try:
                info = json.loads(v.out)
                f.check(list(info)[:3] == ["virtual-size", "filename", "format"],
                        f"json key order {list(info)}")
            except ValueError:
                f.check(False, f"info json is not JSON: {v.out!r}")

        # -q, -o preallocation, -o size, -o help
        both(f, d, ["create", "-q", "-f", "raw", p("quiet.raw"), "1M"], "create -q")
        both(f, d, ["create", "-f", "raw", "-o", "size=2M", p("osize.raw")], "create -o size")
        vt.qemu_img_check(p("osize.raw"), "raw")
        both(f, d, ["create", "-f", "raw", "-o", "preallocation=full", p("full.raw"), "1M"],
             "create preallocation=full")
        vt.qemu_img_check(p("full.raw"), "raw")
        both(f, d, ["info", "-f", "raw", "-U", p("full.raw")], "info -U",
             lambda t, dd: vt.filter_actual_size(vt.filter_all(t, dd)))
        both(f, d, ["info", "--image-opts", f"driver=raw,file.filename={p('full.raw')}"],
             "info --image-opts", lambda t, dd: vt.filter_actual_size(vt.filter_all(t, dd)))
        v = vt.run([vt.VDISK_IMG, "create", "-f", "raw", "-o", "help"])
        f.check(v.rc == 0 and "size=<size>" in v.out, "create -o help lists size")

        # qcow2 (when built): create lines, backing chains, snapshots in info.
        if vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-o", "help"]).rc == 0:
            ifilt = lambda t, dd: vt.filter_actual_size(vt.filter_all(t, dd))  # noqa: E731
            q = vt.run(["qemu-img", "create", "-f", "qcow2", p("qbase.qcow2"), "64M"])
            v = vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", p("vbase.qcow2"), "64M"])
            f.equal(q.out.replace("qbase", "X"), v.out.replace("vbase", "X"), "create qcow2")
            vt.qemu_img_check(p("vbase.qcow2"))
            for opts in ["cluster_size=4k,lazy_refcounts=on,refcount_bits=8",
                         "compat=0.10", "cluster_size=128k,preallocation=metadata"]:
                q = vt.run(["qemu-img", "create", "-f", "qcow2", "-o", opts, p("qo.qcow2"), "1G"])
                v = vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-o", opts, p("vo.qcow2"), "1G"])
                f.equal(q.out.replace("qo.", "X."), v.out.replace("vo.", "X."), f"create -o {opts}")
                f.equal(q.rc, v.rc, f"create -o {opts}: exit status")
                if v.rc == 0:
                    vt.qemu_img_check(p("vo.qcow2"))
                    both(f, d, ["info", p("vo.qcow2")], f"info qcow2 {opts}", ifilt)
            # overlay with backing taken from the base (size from the backing file)
            q = vt.run(["qemu-img", "create", "-f", "qcow2", "-b", "vbase.qcow2", "-F", "qcow2",
                        p("qtop.qcow2")])
            v = vt.run([vt.VDISK_IMG, "create", "-f", "qcow2", "-b", "vbase.qcow2", "-F", "qcow2",
                        p("vtop.qcow2")])
            f.equal(q.out.replace("qtop", "X"), v.out.replace("vtop", "X"), "create overlay")
            vt.qemu_img_check(p("vtop.qcow2"))
            both(f, d, ["create", "-f", "qcow2", "-b", "vbase.qcow2", p("nofmt.qcow2")],
                 "overlay without -F")
            both(f, d, ["create", "-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2",
                        p("nob.qcow2"), "1M"], "overlay of a missing backing file")
            for args in (["info", p("vtop.qcow2")], ["info", "--backing-chain", p("vtop.qcow2")],
                         ["info", "--output=json", "--backing-chain", p("vtop.qcow2")]):
                both(f, d, args, " ".join(args), ifilt)
            vt.run(["qemu-img", "snapshot", "-c", "snap1", p("qbase.qcow2")], check=True)
            vt.run(["qemu-img", "snapshot", "-c", "second", p("qbase.qcow2")], check=True)
            for args in (["info", p("qbase.qcow2")], ["info", "--output=json", p("qbase.qcow2")]):
                both(f, d, args, "snapshots: " + " ".join(args), ifilt)

        # Error paths: message as qemu-img's (program name aside), exit 1.
        for args, what in [
            (["bogus"], "unknown command"),
            (["create", "--bogus"], "bad long option"),
            (["create", "-x", p("x.raw"), "1M"], "bad short option"),
            (["create", "-f"], "missing option argument"),
            (["create", "-f", "raw", p("x.raw")], "missing size"),
            (["create", "-f", "raw", p("x.raw"), "abc"], "bad size"),
            (["create", "-f", "foo", p("x.raw"), "1M"], "unknown format"),
            (["create", "-f", "raw", "-o", "foo=bar", p("x.raw"), "1M"], "unknown -o option"),
            (["create", "-f", "raw", p("x.raw"), "1M", "2M"], "extra argument"),
            (["create", "-f", "raw", "-o", "size=5M", p("x.raw"), "1M"], "size twice"),
            (["create", "-f", "raw", "-b", p("c0.raw"), p("x.raw"), "1M"], "raw with backing"),
            (["create", "-f", "raw", p("nodir/x.raw"), "1M"], "create in missing dir"),
            (["info", p("nonexist.raw")], "info missing file"),
            (["info"], "info without file"),
            (["info", "--output=xml", p("c0.raw")], "info bad --output"),
            (["bench"], "bench without file"),
        ]:
            q, v = both(f, d, args, what)
            f.check(v.rc == 1, f"{what}: exit status 1 (got {v.rc})")
            f.check(v.err.startswith("vdisk-img: "), f"{what}: message starts with 'vdisk-img: '")
        f.check(not os.path.exists(p("x.raw")), "failed creates left no file")
    f.finish()


if __name__ == "__main__":
    main()
