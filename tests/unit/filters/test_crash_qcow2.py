#!/usr/bin/env python3
"""qcow2 crash consistency through the log-writes filter (docs/filters.md).

crash-workload writes patterns to a qcow2 image over log-writes, flushing
every few writes; for every prefix k of the write log, vdisk-log-replay
builds the image a crash after k entries could leave. Each must pass
`qemu-img check` (leaks allowed, no corruption), and the data of every guest
flush whose log entries lie within the prefix must read back with qemu-io.

usage: test_crash_qcow2.py CRASH_WORKLOAD VDISK_LOG_REPLAY
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile


def run(*args, check=True, stderr=subprocess.STDOUT):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
    if check and p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s" % (" ".join(args), p.returncode, p.stdout))
    return p


def check_state(path, k, durable_data, lazy=False):
    if lazy:
        # lazy refcounts: refcount blocks are written at clean/close only, so
        # a crash state may hold references whose refcount is still 0 (as
        # QEMU's do); QEMU's repair must make it consistent
        p = run("qemu-img", "check", path, check=False, stderr=subprocess.PIPE)
        for line in p.stdout.splitlines():
            if line.startswith("ERROR") and not (
                    "refcount=0 reference=1" in line or
                    ("OFLAG_COPIED data cluster" in line and line.endswith("refcount=0"))):
                raise SystemExit("FAIL: prefix %d: %s" % (k, line))
        run("qemu-img", "check", "-q", "-r", "all", path, check=False)
    p = run("qemu-img", "check", "--output=json", path, check=False, stderr=subprocess.PIPE)
    # 0: clean, 3: leaks only; anything else is corruption or a check error
    if p.returncode not in (0, 3):
        raise SystemExit("FAIL: prefix %d: qemu-img check exited %d:\n%s" % (k, p.returncode, p.stdout + p.stderr))
    info = json.loads(p.stdout)
    if info.get("corruptions", 0) or info.get("check-errors", 0):
        raise SystemExit("FAIL: prefix %d: %s" % (k, p.stdout))
    leaks = info.get("leaks", 0)
    if not durable_data:
        return 0, leaks
    cmds = []
    for off, length, pat in durable_data:
        cmds += ["-c", "read -P %d %d %d" % (pat, off, length)]
    out = run("qemu-io", "-f", "qcow2", "-r", *cmds, path).stdout
    if "verification failed" in out or "error" in out.lower():
        raise SystemExit("FAIL: prefix %d: flushed data lost:\n%s" % (k, out))
    return len(durable_data), leaks


def one_mode(workload, replay, tmp, cache, cluster_size, create="", qopts=None, step=1):
    """One workload: every prefix (every step-th, and every flush point)."""
    img = os.path.join(tmp, "a.qcow2")
    base = os.path.join(tmp, "base.qcow2")
    log = os.path.join(tmp, "w.log")
    expect = os.path.join(tmp, "expect")
    crash = os.path.join(tmp, "crash.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
        "cluster_size=%d%s" % (cluster_size, create), img, "32M")
    shutil.copyfile(img, base)
    run(workload, "log", img, log, expect, cache, *([qopts] if qopts else []))
    run("qemu-img", "check", img)

    flushes = []   # (entries covered, [(off, len, pattern)])
    with open(expect) as f:
        for line in f:
            fields = line.split()
            flushes.append((int(fields[0]),
                            [tuple(int(x) for x in w.split(":")) for w in fields[1:]]))
    listing = run(replay, "list", log).stdout.splitlines()
    n = int(listing[-1].split()[1])
    assert n >= len(flushes) * 2, "log too short: %d entries" % n
    checked = 0
    points = set(range(0, n + 1, step)) | {n}
    for entries, _ in flushes:             # right before and at every flush point
        points |= {max(entries - 1, 0), min(entries, n)}
    lazy = "lazy_refcounts=on" in create
    at_flush = {min(entries, n) for entries, _ in flushes}
    flush_leaks = 0
    for k in sorted(points):
        run(replay, "replay", log, base, crash, str(k))
        durable = []
        for entries, data in flushes:
            if entries <= k:
                durable = data
        c, leaks = check_state(crash, k, durable, lazy)
        checked += c
        if k in at_flush:
            flush_leaks = max(flush_leaks, leaks)
    # the last state is the image itself, guest data and all
    a = run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, crash, check=False)
    if a.returncode != 0:
        raise SystemExit("FAIL: full replay differs from the image:\n%s" % a.stdout)
    print("cache=%s cluster_size=%d%s %s: %d of %d crash states checked, %d durable ranges "
          "read back, at most %d leaked clusters at a flush" % (cache, cluster_size, create,
                                                                qopts or "", len(points), n + 1,
                                                                checked, flush_leaks))
    return flush_leaks


def main():
    workload, replay = sys.argv[1], sys.argv[2]
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print("SKIP: %s not found" % tool)
            return 77
    with tempfile.TemporaryDirectory(prefix="vdisk-crash-") as tmp:
        # Without lazy refcounts data clusters are reserved ahead in chunks
        # (docs/qcow2.md "Reservation"): right after a flush the reserved
        # clusters not used yet are the only inconsistency - leaks, which
        # the checks allow (no corruption, flushed data intact); the clean
        # close gave them back (qemu-img check of the image exits 0). With
        # 4k clusters the workload stays inside its first chunk, within the
        # file, where qemu-img check sees them (it does not count clusters
        # past the end of the file): a crash state at a flush must show
        # them, which proves the reservation is exercised here.
        if one_mode(workload, replay, tmp, "writeback", 4096) == 0:
            raise SystemExit("FAIL: no crash state at a flush shows reserved clusters (leaks)")
        one_mode(workload, replay, tmp, "writethrough", 65536)
        # the metadata write-back queue under pressure: 4k clusters (the
        # workload spans 15 L2 tables), a 4-table L2 cache (evictions), the
        # background write-back after every 2 dirty tables; lazy refcounts
        # on and off, writeback and writethrough
        small = "l2-cache-size=16k,metadata-writeback-tables=2"
        for cache in ("writeback", "writethrough"):
            for create in ("", ",lazy_refcounts=on"):
                one_mode(workload, replay, tmp, cache, 4096, create, small, step=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
