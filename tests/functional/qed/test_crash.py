#!/usr/bin/env python3
"""QED crash consistency (log-writes replay) and injected faults (blkdebug).

Crash: crash-workload (driver=qed) writes patterns to a QED image over log-writes,
flushing every few writes; for every prefix k of the write log,
vdisk-log-replay builds the image a crash after k entries could leave. Each
state must open read-write through vdisk (which checks and repairs it first
when need-check is set), then pass `qemu-img check` (no corruption; leaks in
the middle of the file are allowed: append-only allocation cannot reuse
them), and the data of every guest flush within the prefix must read back
with qemu-io. Without a backing file and with a raw one (COW'd clusters:
their data must be stable before the L2 entry).

Faults: the same workload over blkdebug; for each QED metadata write kind
(header_update, l1_update, l2_update, l2_alloc_write, plus cow_write and
write_aio) the next write after the event fails once, and each of the first
N data writes and flushes in turn; afterwards the same checks.

usage: test_crash.py CRASH_WORKLOAD VDISK_LOG_REPLAY VDISK_IO
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

WORKLOAD, REPLAY, VIO = sys.argv[1], sys.argv[2], sys.argv[3]
EVENTS = ["header_update", "l1_update", "l2_update", "l2_alloc_write", "l2_load",
          "cow_read", "cow_write", "write_aio", "read_backing_aio"]
MAX_N = 200


def run(*args, check=True):
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if check and p.returncode != 0:
        raise SystemExit("FAIL: %s exited %d:\n%s%s" % (" ".join(str(a) for a in args),
                                                        p.returncode, p.stdout, p.stderr))
    return p


def needs_check(path):
    with open(path, "rb") as f:
        f.seek(16)
        return int.from_bytes(f.read(8), "little") & 2 != 0


def check_state(path, what, durable):
    """Open (repair), qemu-img check, durable data. Returns ranges read back."""
    run(VIO, "-f", "qed", "-c", "read 0 512", path)
    if needs_check(path):
        raise SystemExit("FAIL: %s: need-check still set after a clean close" % what)
    p = run("qemu-img", "check", "--output=json", path, check=False)
    if p.returncode not in (0, 3):
        raise SystemExit("FAIL: %s: qemu-img check exited %d:\n%s%s"
                         % (what, p.returncode, p.stdout, p.stderr))
    info = json.loads(p.stdout)
    if info.get("corruptions", 0) or info.get("check-errors", 0):
        raise SystemExit("FAIL: %s: %s" % (what, p.stdout))
    if durable:
        cmds = []
        for off, length, pat in durable:
            cmds += ["-c", "read -P %d %d %d" % (pat, off, length)]
        out = run("qemu-io", "-f", "qed", "-r", *cmds, path).stdout
        if "verification failed" in out or "error" in out.lower():
            raise SystemExit("FAIL: %s: flushed data lost:\n%s" % (what, out))
    return len(durable)


def create(tmp, img, backing):
    opts = "cluster_size=4096,table_size=4"
    if backing:
        base = os.path.join(tmp, "base.raw")
        run("qemu-img", "create", "-q", "-f", "raw", base, "32M")
        run("qemu-io", "-f", "raw", "-c", "write -P 0x70 0 32M", base)
        opts += ",backing_file=%s,backing_fmt=raw" % base
    run("qemu-img", "create", "-q", "-f", "qed", "-o", opts, img, "32M")


def crash_mode(tmp, cache, backing):
    img = os.path.join(tmp, "a.qed")
    base = os.path.join(tmp, "base.qed")
    log = os.path.join(tmp, "w.log")
    expect = os.path.join(tmp, "expect")
    crash = os.path.join(tmp, "crash.qed")
    create(tmp, img, backing)
    shutil.copyfile(img, base)
    run(WORKLOAD, "log", img, log, expect, cache, "driver=qed")
    run("qemu-img", "check", img)
    flushes = []
    with open(expect) as f:
        for line in f:
            fields = line.split()
            flushes.append((int(fields[0]),
                            [tuple(int(x) for x in w.split(":")) for w in fields[1:]]))
    n = int(run(REPLAY, "list", log).stdout.splitlines()[-1].split()[1])
    checked = dirty = 0
    for k in range(n + 1):
        run(REPLAY, "replay", log, base, crash, k)
        dirty += needs_check(crash)
        durable = []
        for entries, data in flushes:
            if entries <= k:
                durable = data
        checked += check_state(crash, "cache=%s backing=%s prefix %d" % (cache, backing, k),
                               durable)
    a = run("qemu-img", "compare", "-f", "qed", "-F", "qed", img, crash, check=False)
    if a.returncode != 0:
        raise SystemExit("FAIL: full replay differs from the image:\n%s" % a.stdout)
    print("crash cache=%s backing=%s: %d states (%d with need-check, repaired on open), "
          "%d durable ranges read back" % (cache, backing, n + 1, dirty, checked), flush=True)


def one_fault(tmp, base, img, rules, cache):
    shutil.copyfile(base, img)
    out = run(WORKLOAD, "fail", img, rules, cache, "driver=qed").stdout.splitlines()
    failed = int(out[-1].split()[1])
    durable = [tuple(int(x) for x in l.split()[1:]) for l in out if l.startswith("durable")]
    check_state(img, "%s cache=%s" % (rules, cache), durable)
    return failed


def faults(tmp, backing):
    base = os.path.join(tmp, "fbase.qed")
    img = os.path.join(tmp, "f.qed")
    create(tmp, base, backing)
    for kind, event in (("write", "write_aio"), ("flush", "flush_to_disk")):
        for n in range(MAX_N):
            if one_fault(tmp, base, img, "event=%s,iotype=%s,skip=%d,once=on" % (event, kind, n),
                         "writeback") == 0:
                break
        print("faults backing=%s: failed each of %d %ss in turn" % (backing, n, kind), flush=True)
    raised, missing = [], []
    for ev in EVENTS:
        rule = "inject-error.0.event=%s,inject-error.0.iotype=write,inject-error.0.once=on" % ev
        (raised if one_fault(tmp, base, img, rule, "writeback") else missing).append(ev)
    print("faults backing=%s: events failing the next write: %s; not raised here: %s"
          % (backing, " ".join(raised), " ".join(missing) or "none"), flush=True)
    for ev in ("header_update", "l1_update", "l2_update", "l2_alloc_write"):
        if ev not in raised:
            raise SystemExit("FAIL: the QED driver does not raise %s" % ev)


def main():
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print("SKIP: %s not found" % tool)
            return 77
    with tempfile.TemporaryDirectory(prefix="vdisk-qed-crash-",
                                     dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        crash_mode(tmp, "writeback", False)
        crash_mode(tmp, "writethrough", True)
        faults(tmp, False)
        faults(tmp, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
