#!/usr/bin/env python3
"""Numbers at the edges of every number-taking option and command of
vdisk-img and vdisk-io (issue 9, item 10).

Each command must end with a clean exit status (0 or 1, no signal), within
its time limit, and without an UndefinedBehaviorSanitizer report: run from
the ASan+UBSan build (scripts/check.sh, `meson test -C build-asan`) this is
the tools' option paths under UBSan. A few cases also check the answer
itself (so the test fails without the fix in a normal build too):
`sleep 99999999999999` is refused at once instead of overflowing into an
instant or endless sleep, a resize past 2^63 is refused as too large, a
bench offset past the end of the image reports the failed request.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import vdtest as vt  # noqa: E402

MAX = "9223372036854775807"      # INT64_MAX
UMAX = "18446744073709551615"    # UINT64_MAX
HUGE = [MAX, UMAX, "9223372036854775808", "-1", "-9223372036854775808", "8E", "16E", "7.99E",
        "0x7fffffffffffffff", "0xffffffffffffffff", "99999999999999999999"]

# vdisk-io commands run on a 1 MiB qcow2 image; {} takes each HUGE value
IO_COMMANDS = [
    "read {} 512", "read 0 {}", "read {} {}", "read -P 1 -l {} 0 512", "read -P 1 -s {} 0 512",
    "read -v {} 512", "readv {} 512", "readv 0 512 {}", "write {} 512", "write 0 {}",
    "write -z {} 512", "write -z 0 {}", "writev {} 512", "writev 0 {} {}", "aio_read {} 512",
    "aio_write {} 512", "aio_write -z 0 {}", "discard {} 512", "discard 0 {}", "alloc {} 512",
    "alloc 0 {}", "map", "truncate {}", "sleep {}", "flush", "length",
]
IMG_COMMANDS = [
    ["create", "-f", "qcow2", "@new", "{}"],
    ["create", "-f", "raw", "@new", "{}"],
    ["create", "-f", "qcow2", "-o", "cluster_size={}", "@new", "1M"],
    ["create", "-f", "qcow2", "-o", "refcount_bits={}", "@new", "1M"],
    ["create", "-f", "qcow2", "-o", "size={}", "@new"],
    ["resize", "@img", "+{}"],
    ["resize", "--shrink", "@img", "--", "-{}"],
    ["resize", "@img", "{}"],
    ["bench", "-c", "2", "-o", "{}", "@img"],
    ["bench", "-c", "2", "-s", "{}", "@img"],
    ["bench", "-c", "2", "-S", "{}", "@img"],
    ["bench", "-c", "{}", "-d", "1", "-s", "512", "@img"],
    ["bench", "-c", "2", "-d", "{}", "@img"],
    ["bench", "-w", "-c", "2", "--flush-interval={}", "@img"],
    ["bench", "-c", "2", "--pattern={}", "@img"],
    ["convert", "-S", "{}", "-O", "raw", "@img", "@new"],
    ["convert", "-m", "{}", "-O", "raw", "@img", "@new"],
    ["convert", "-r", "{}", "-O", "raw", "@img", "@new"],
    ["convert", "-O", "qcow2", "-o", "cluster_size={}", "@img", "@new"],
    ["map", "--start-offset={}", "@img"],
    ["map", "--max-length={}", "@img"],
    ["map", "--start-offset={}", "--max-length={}", "@img"],
    ["measure", "--size", "{}", "-O", "qcow2"],
    ["measure", "--size", "{}", "-O", "raw"],
    ["measure", "-O", "qcow2", "-o", "cluster_size={}", "@img"],
    ["commit", "-r", "{}", "@top"],
    ["amend", "-o", "size={}", "@img"],
    ["amend", "-o", "refcount_bits={}", "@img"],
    ["snapshot", "-c", "{}", "@img"],
]
TIMEOUT = 60


def ubsan_env():
    env = dict(os.environ)
    env.setdefault("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    return env


def check_one(f, cmd, env, what):
    try:
        r = vt.run(cmd, env=env, timeout=TIMEOUT, quiet=True)
    except Exception as e:  # noqa: BLE001  (timeout)
        f.check(False, f"{what}: {e}")
        return None
    f.check(r.rc in (0, 1), f"{what}: exit status {r.rc}: {r.err[-1500:]}")
    f.check("runtime error:" not in r.err and "runtime error:" not in r.out,
            f"{what}: sanitizer report: {(r.err + r.out)[-1500:]}")
    return r


def main():
    vt.need("qemu-img", vt.VDISK_IMG, vt.VDISK_IO)
    f = vt.Failures()
    env = ubsan_env()
    with vt.TempDir() as d:
        img = os.path.join(d, "a.qcow2")
        base = os.path.join(d, "base.qcow2")
        top = os.path.join(d, "top.qcow2")
        new = os.path.join(d, "new.img")
        fresh = lambda: vt.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"],  # noqa
                               check=True, quiet=True)
        vt.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1M"], check=True)
        vt.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top],
               check=True)
        fresh()
        n = 0
        for tmpl in IO_COMMANDS:
            for v in HUGE if "{}" in tmpl else [None]:
                c = tmpl.replace("{}", v) if v else tmpl
                check_one(f, [vt.VDISK_IO, "-c", c, "-c", "aio_flush", img], env,
                          f"vdisk-io -c '{c}'")
                n += 1
        for tmpl in IMG_COMMANDS:
            for v in HUGE:
                cmd = [a.replace("{}", v).replace("@img", img).replace("@new", new)
                       .replace("@top", top) for a in tmpl]
                check_one(f, [vt.VDISK_IMG] + cmd, env, "vdisk-img " + " ".join(cmd))
                n += 1
                if os.path.exists(new):
                    os.unlink(new)
                if tmpl[0] in ("resize", "amend", "snapshot"):
                    fresh()
        vt.log(f"{n} commands run")

        # the answers, not only the absence of undefined behaviour
        r = check_one(f, [vt.VDISK_IO, "-c", "sleep 99999999999999", img], env, "sleep")
        if r:
            f.check(r.rc == 1 and "99999999999999" in r.out and "too long" in r.out,
                    f"sleep 99999999999999 must be refused: {r!r}")
        r = check_one(f, [vt.VDISK_IO, "-c", "sleep 1", img], env, "sleep 1")
        if r:
            f.check(r.rc == 0 and r.out == "", f"sleep 1: {r!r}")
        for arg in ("+" + MAX, "+9223372036853727232"):      # the latter: 1 MiB + it = 2^63
            fresh()
            r = check_one(f, [vt.VDISK_IMG, "resize", img, arg], env, "resize " + arg)
            if r:
                f.check(r.rc == 1 and "too large" in r.err, f"resize {arg}: {r!r}")
        vt.qemu_img_check(img)
        r = check_one(f, [vt.VDISK_IMG, "bench", "-c", "1", "-o", MAX, img], env, "bench -o")
        if r:
            f.check(r.rc == 1 and "Failed request" in r.err, f"bench -o {MAX}: {r!r}")
        vt.qemu_img_check(img)
    f.finish()


if __name__ == "__main__":
    main()
