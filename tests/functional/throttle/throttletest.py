"""Helpers for the throttle functional tests: a vdiskd with throttled
null-co exports, fio's nbd engine with JSON results and per-second IOPS
logs, and range checks that print what they measured."""
import glob
import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nbd"))
from nbdtest import Vdiskd, TempDir, run, need, qemu_img_check, main, log  # noqa: F401,E402


def null_exports(sock, n, group="tg0", iothreads=True, size="1G"):
    """--blockdev/--export arguments: n null-co nodes (read-zeroes=on, so the
    NBD server would answer reads from block status) under throttle nodes
    t0..t<n-1> of group, exported as d0.. on IOThreads io0.. ."""
    args = []
    for i in range(n):
        if iothreads:
            args += ["--object", f"iothread,id=io{i}"]
        args += ["--blockdev", f"driver=null-co,node-name=null{i},size={size},read-zeroes=on",
                 "--blockdev", f"driver=throttle,node-name=t{i},throttle-group={group},"
                               f"file=null{i}"]
    args += ["--nbd-server", f"addr.type=unix,addr.path={sock}"]
    for i in range(n):
        e = f"type=nbd,id=e{i},node-name=t{i},name=d{i},writable=on"
        if iothreads:
            e += f",iothread=io{i}"
        args += ["--export", e]
    return args


def uri(sock, i=0):
    return f"nbd+unix:///d{i}?socket={sock}"


def fio_cmd(workdir, jobs, runtime=None, extra=(), iops_log=None):
    """fio command line: jobs is a list of (name, uri, [options]); results go
    to <workdir>/<first name>.json."""
    out = os.path.join(workdir, jobs[0][0] + ".json")
    cmd = ["fio", "--ioengine=nbd", f"--output={out}", "--output-format=json"]
    if runtime:
        cmd += ["--time_based", f"--runtime={runtime}"]
    if iops_log:
        cmd += [f"--write_iops_log={os.path.join(workdir, iops_log)}", "--log_avg_msec=1000"]
    cmd += list(extra)
    for name, u, opts in jobs:
        cmd += [f"--name={name}", f"--uri={u}", *opts]
    return cmd, out


def fio_results(out):
    with open(out) as f:
        text = f.read()
    return json.loads(text[text.index("{"):])["jobs"]


def fio(workdir, jobs, runtime=None, extra=(), iops_log=None, timeout=120):
    cmd, out = fio_cmd(workdir, jobs, runtime, extra, iops_log)
    run(cmd, timeout=timeout)
    return fio_results(out)


def iops_per_second(workdir, prefix):
    """{job index: [iops in second 1, second 2, ...]} from fio's iops logs
    (reads and writes of a second added up)."""
    res = {}
    for path in sorted(glob.glob(os.path.join(workdir, prefix + "_iops.*.log"))):
        idx = int(path.rsplit(".", 2)[-2])
        per = {}
        with open(path) as f:
            for line in f:
                t, v = [int(x) for x in line.split(",")[:2]]
                sec = (t + 500) // 1000
                per[sec] = per.get(sec, 0) + v
        res[idx] = [per[s] for s in sorted(per)]
    return res


def within(what, got, want, tol):
    lo, hi = want * (1 - tol), want * (1 + tol)
    log(f"{what}: measured {got:.1f}, limit {want}, allowed [{lo:.1f}, {hi:.1f}]")
    assert lo <= got <= hi, f"{what}: {got:.1f} not within {tol:.0%} of {want}"


def short(default):
    """Length of a run: default seconds, or THROTTLE_SECONDS (slow suite)."""
    return int(os.environ.get("THROTTLE_SECONDS", default))


def first_tenth(default):
    """What a run of short(default) seconds gets over the limit: a bucket
    holds avg/10 before it makes requests wait, so 0.1 s worth go at once."""
    return 1 + 0.1 / short(default)
