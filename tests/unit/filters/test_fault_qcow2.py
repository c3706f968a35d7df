#!/usr/bin/env python3
"""qcow2 under injected I/O errors through the blkdebug filter (docs/filters.md).

crash-workload writes patterns to a qcow2 image over blkdebug, carrying on
after errors as a guest would. For each N, the Nth write (and, with the
writeback cache, the Nth flush) reaching the file fails once; afterwards the image must pass `qemu-img check`
(leaks allowed, no corruption) and every write that succeeded before a
successful flush must read back with qemu-io. Then each metadata event the
qcow2 driver raises arms a rule failing the next write after it; events the
driver does not raise (yet) are listed, not failed.

usage: test_fault_qcow2.py CRASH_WORKLOAD
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

EVENTS = ["l1_update", "l1_grow_write_table", "l2_load", "l2_update", "l2_alloc_write",
          "refblock_load", "refblock_update", "refblock_alloc", "refblock_alloc_write",
          "reftable_grow", "reftable_update", "cluster_alloc", "cow_read", "cow_write",
          "header_update"]
MAX_N = 300


def run(*args, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s%s" % (" ".join(args), p.returncode,
                                                        p.stdout, p.stderr))
    return p


def one_case(workload, base, img, rules, cache):
    """Run the workload with rules; check the image. Returns the failed count."""
    shutil.copyfile(base, img)
    out = run(workload, "fail", img, rules, cache).stdout.splitlines()
    failed = int(out[-1].split()[1])
    durable = [tuple(int(x) for x in line.split()[1:]) for line in out if line.startswith("durable")]
    p = run("qemu-img", "check", "--output=json", img, check=False)
    if p.returncode not in (0, 3):
        raise SystemExit("FAIL: %s (cache=%s): qemu-img check exited %d:\n%s%s"
                         % (rules, cache, p.returncode, p.stdout, p.stderr))
    info = json.loads(p.stdout)
    if info.get("corruptions", 0) or info.get("check-errors", 0):
        raise SystemExit("FAIL: %s (cache=%s): %s" % (rules, cache, p.stdout))
    if durable:
        cmds = []
        for off, length, pat in durable:
            cmds += ["-c", "read -P %d %d %d" % (pat, off, length)]
        q = run("qemu-io", "-f", "qcow2", "-r", *cmds, img, check=False)
        if q.returncode != 0 or "verification failed" in q.stdout:
            raise SystemExit("FAIL: %s (cache=%s): flushed data lost:\n%s%s"
                             % (rules, cache, q.stdout, q.stderr))
    return failed


def sweep(workload, base, img, rule, cache):
    """Fail the Nth matching request for N = 0, 1, ... until none is hit."""
    for n in range(MAX_N):
        if one_case(workload, base, img, "%s,skip=%d,once=on" % (rule, n), cache) == 0:
            return n
    raise SystemExit("FAIL: %s: still failing requests after %d runs" % (rule, MAX_N))


def main():
    workload = sys.argv[1]
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print("SKIP: %s not found" % tool)
            return 77
    with tempfile.TemporaryDirectory(prefix="vdisk-fault-") as tmp:
        base = os.path.join(tmp, "base.qcow2")
        img = os.path.join(tmp, "a.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", base, "32M")
        # writethrough flushes after every write: its flush sweep adds little but time
        for cache, what in (("writeback", ("write", "flush")), ("writethrough", ("write",))):
            for kind in what:
                event = "write_aio" if kind == "write" else "flush_to_disk"
                n = sweep(workload, base, img, "event=%s,iotype=%s" % (event, kind), cache)
                print("cache=%s: failed each of %d %ss in turn" % (cache, n, kind))
        raised, missing = [], []
        for ev in EVENTS:
            rule = "inject-error.0.event=%s,inject-error.0.iotype=write,inject-error.0.once=on" % ev
            if one_case(workload, base, img, rule, "writeback"):
                raised.append(ev)
            else:
                missing.append(ev)
        print("events failing the next write: %s" % (" ".join(raised) or "none"))
        print("events the qcow2 driver does not raise: %s" % (" ".join(missing) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
