#!/usr/bin/env python3
"""qcow2 under injected I/O errors through the blkdebug filter (docs/filters.md).

crash-workload writes patterns to a qcow2 image over blkdebug, carrying on
after errors as a guest would. For each N, the Nth write (and, with the
writeback cache, the Nth flush) reaching the file fails once; afterwards the image must pass `qemu-img check`
(leaks allowed, no corruption) and every write that succeeded before a
successful flush must read back with qemu-io. Then each metadata event
the qcow2 driver raises arms a rule failing the next write after it: every
event must fire in one of the image set-ups (CONFIGS), and the matrix event x
{EIO, ENOSPC} x {once, always} x {writeback, writethrough} must leave an
image that passes check, holds what was flushed, and takes the workload again
without an error once the fault is gone.

usage: test_fault_qcow2.py CRASH_WORKLOAD
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

# The metadata events the qcow2 driver raises before each kind of metadata
# write (and table load), each with the image set-ups (CONFIGS) in which the
# workload makes it happen. Every one must fire: an event that is never
# raised fails the test.
EVENTS = ["l1_update", "l2_load", "l2_update", "l2_alloc_write", "refblock_load",
          "refblock_update", "refblock_alloc", "refblock_alloc_write", "refblock_alloc_hookup",
          "reftable_grow", "reftable_update",
          "refblock_alloc_switch_table", "cluster_alloc", "cow_read", "cow_write",
          "header_update"]
# name, create options, qemu-io commands run on the base first, snapshot after
CONFIGS = [
    ("plain", "cluster_size=4096", [], False),
    # every cluster shared with a snapshot: COW of data and of L2 tables,
    # tables loaded from disk
    ("snapshot", "cluster_size=4096", ["write -P 0x5 0 32M"], True),
    # the dirty bit: header writes
    ("lazy", "cluster_size=4096,lazy_refcounts=on", [], False),
    # 512-byte clusters, 64-bit refcounts: a refcount block covers 32K and
    # the first refcount table 2M, so new blocks and a new table are needed
    ("small", "cluster_size=512,refcount_bits=64", ["write -P 0x6 0 1800k"], False),
]
MAX_N = 300


def run(*args, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s%s" % (" ".join(args), p.returncode,
                                                        p.stdout, p.stderr))
    return p


def one_case(workload, base, img, rules, cache, copy=True):
    """Run the workload with rules; check the image. Returns the failed count."""
    if copy:
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
        bases = {}
        for name, opts, cmds, snap in CONFIGS:
            b = os.path.join(tmp, "base-%s.qcow2" % name)
            run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, b, "32M")
            if cmds:
                args = []
                for c in cmds:
                    args += ["-c", c]
                run("qemu-io", "-f", "qcow2", "-t", "unsafe", *args, b)
            if snap:
                run("qemu-img", "snapshot", "-c", "s1", b)
            bases[name] = b
        # each event must fire in some set-up (it fails the next write)
        where, missing = {}, []
        for ev in EVENTS:
            rule = "inject-error.0.event=%s,inject-error.0.iotype=write,inject-error.0.once=on" % ev
            for name, _, _, _ in CONFIGS:
                if one_case(workload, bases[name], img, rule, "writeback"):
                    where[ev] = name
                    break
            else:
                missing.append(ev)
        print("events and the set-up raising them: %s"
              % " ".join("%s(%s)" % (ev, where[ev]) for ev in EVENTS if ev in where))
        if missing:
            raise SystemExit("FAIL: events the qcow2 driver never raises: %s" % " ".join(missing))
        # the fault matrix: event x errno x once/always x cache mode. The image
        # passes check, what was flushed is there, and with the fault gone the
        # workload runs again without an error
        cases = 0
        for ev in EVENTS:
            for errno_ in (5, 28):               # EIO, ENOSPC
                for once in ("on", "off"):
                    for cache in ("writeback", "writethrough"):
                        rule = ("inject-error.0.event=%s,inject-error.0.iotype=write,"
                                "inject-error.0.once=%s,inject-error.0.errno=%d"
                                % (ev, once, errno_))
                        failed = one_case(workload, bases[where[ev]], img, rule, cache)
                        if failed == 0:
                            raise SystemExit("FAIL: %s (cache=%s): no request failed"
                                             % (rule, cache))
                        if one_case(workload, None, img, "", cache, copy=False):
                            raise SystemExit("FAIL: %s (cache=%s): the retry without the "
                                             "fault failed" % (rule, cache))
                        cases += 1
        print("fault matrix: %d cases (%d events x EIO/ENOSPC x once/always x "
              "writeback/writethrough) ok" % (cases, len(EVENTS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
