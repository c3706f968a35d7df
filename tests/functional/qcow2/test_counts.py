#!/usr/bin/env python3
"""fdatasync counts of the qcow2 metadata write-back queue against QEMU's.

Each case runs the same `bench` workload twice on copies of one image:
`qemu-img bench -i threads` under `strace -f -e fdatasync,fsync` (QEMU's
count, measured here, in this run) and `vdisk-img bench --counters` (our
file node's "flushes" counter: the fdatasyncs that reached it). Ours must be
at most QEMU's. Both images must pass `qemu-img check`. The counters are
checked against strace once, so that the comparison cannot be fooled by a
counter that misses flushes.

usage: test_counts.py VDISK_IMG
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

PREFILL_TABLES = 512          # one cluster in each of the first 512 L2 tables (4k clusters)

# name, create options, prefill, bench args, image options (None: plain file
# name), our own extra image options, must be <= QEMU's
CASES = [
    ("allocating writes over 16 existing L2 tables per flush",
     "cluster_size=4k", True,
     "-w -c 512 -d 16 -s 4k -o 4k -S 2M --flush-interval=16 -t none", None, None, True),
    ("64 writes into 64 tables then flush, twice",
     "cluster_size=4k", True,
     "-w -c 128 -d 64 -s 4k -o 8k -S 2M --flush-interval=64 -t none", None, None, True),
    ("5k sequential allocating writes, no flush (new L2 tables)",
     "cluster_size=4k", False,
     "-w -c 5000 -d 16 -s 4k -t none", None, None, True),
    # QEMU keeps every dirty table until close; so do we with the background
    # triggers off (then only close costs flushes) ...
    ("5k allocating writes over existing L2s, no flush, triggers off",
     "cluster_size=4k", True,
     "-w -c 5000 -d 16 -s 4k -o 4k -S 2101248 -t none", "",
     "metadata-writeback-interval=0,metadata-writeback-tables=0", True),
    # ... with them on (default: 1 s age, 256 tables) a write-back costs its
    # levels' flushes: reported, bounded by the run time, not compared
    ("5k allocating writes over existing L2s, no flush, default triggers",
     "cluster_size=4k", True,
     "-w -c 5000 -d 16 -s 4k -o 4k -S 2101248 -t none", None, None, False),
    ("l2-cache-size=64K, 512 writes over existing L2 tables",
     "cluster_size=4k", True,
     "-w -c 512 -d 16 -s 4k -o 12k -S 2M -t none", "l2-cache-size=65536", None, True),
    ("lazy refcounts, writethrough, depth 1",
     "cluster_size=64k,lazy_refcounts=on", False,
     "-w -c 256 -d 1 -s 4k -S 64k -t writethrough", None, None, True),
    ("no lazy refcounts, writethrough, depth 1",
     "cluster_size=64k", False,
     "-w -c 256 -d 1 -s 4k -S 64k -t writethrough", None, None, True),
]


def run(args, **kw):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s%s" % (" ".join(args), p.returncode,
                                                        p.stdout[-2000:], p.stderr[-2000:]))
    return p


def strace_syncs(args):
    """Run args under strace; return (process, fdatasync+fsync count). vdisk
    without io_uring, so that its syncs are system calls strace sees."""
    env = dict(os.environ, VDISK_NO_IO_URING="1")
    # LeakSanitizer cannot run under ptrace (sanitizer builds)
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")
    p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o", "/dev/stderr"]
                       + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s" % (" ".join(args), p.returncode, p.stderr[-2000:]))
    n = len(re.findall(r"\b(fdatasync|fsync)\(\d+\)\s+=\s+0", p.stderr))
    return p, n


def file_flushes(out):
    m = re.search(r"Counters \S+ \(file\): writes (\d+), metadata writes \d+, "
                  r"flush requests \d+, flushes (\d+)", out)
    if not m:
        raise SystemExit("FAIL: no file counters in:\n" + out)
    return int(m.group(2))


def target(img, image_opts, extra=None):
    if image_opts is None and not extra:
        return [img]
    opts = "driver=qcow2,file.driver=file,file.filename=" + img
    for o in (image_opts, extra):
        if o:
            opts += "," + o
    return ["--image-opts", opts]


def main():
    vdisk_img = sys.argv[1]
    for tool in ("qemu-img", "qemu-io", "strace"):
        if not shutil.which(tool):
            print("SKIP: %s not found" % tool)
            return 77
    failed = []
    with tempfile.TemporaryDirectory(prefix="vdisk-counts-") as tmp:
        base = os.path.join(tmp, "base.qcow2")
        img = os.path.join(tmp, "a.qcow2")
        checked_counter = False
        for name, create, prefill, bench, iopts, ours, compare in CASES:
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", create, base, "1G"])
            if prefill:
                cmds = []
                for i in range(PREFILL_TABLES):
                    cmds += ["-c", "write -P 1 %dM 4k" % (2 * i)]
                run(["qemu-io", "-f", "qcow2", "-t", "unsafe"] + cmds + [base])
            shutil.copyfile(base, img)
            _, q = strace_syncs(["qemu-img", "bench", "-q", "-i", "threads"] + bench.split()
                                + target(img, iopts))
            run(["qemu-img", "check", "-q", img])
            shutil.copyfile(base, img)
            if not checked_counter:
                # the counter against the kernel's view, once
                p, s = strace_syncs([vdisk_img, "bench", "--counters"] + bench.split()
                                    + target(img, iopts, ours))
                v = file_flushes(p.stdout)
                if v != s:
                    raise SystemExit("FAIL: %s: counter says %d flushes, strace saw %d"
                                     % (name, v, s))
                checked_counter = True
            else:
                v = file_flushes(run([vdisk_img, "bench", "--counters"] + bench.split()
                                     + target(img, iopts, ours)).stdout)
            run(["qemu-img", "check", "-q", img])
            ok = v <= q or not compare
            print("%-70s qemu %5d  vdisk %5d  %s" % (name, q, v, "ok" if v <= q else
                                                     "MORE THAN QEMU" if compare else
                                                     "(not compared)"))
            if not ok:
                failed.append(name)
    if failed:
        print("FAIL: more fdatasyncs than QEMU: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
