"""Shared helpers for vdisk functional tests.

Paths of the built tools come from the environment that meson sets
(VDISK_IMG, VDISK_IO, VDISKD); run() runs a command and captures its output;
filter_*() remove what differs from run to run (times, rates, temp paths,
program names) so vdisk's output can be compared with qemu-img's/qemu-io's;
qemu_img_check() and qemu_img_compare() use the real qemu-img as the oracle;
TempDir gives a scratch directory on a real filesystem (not tmpfs, so
O_DIRECT and fallocate behave as on a disk).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77

VDISK_IMG = os.environ.get("VDISK_IMG", "vdisk-img")
VDISK_IO = os.environ.get("VDISK_IO", "vdisk-io")
VDISKD = os.environ.get("VDISKD", "vdiskd")


def log(*a):
    print(*a, flush=True)


def need(*tools):
    """Exit with the 'skipped' status if a tool is not installed."""
    for t in tools:
        if shutil.which(t) is None and not os.path.exists(t):
            log(f"SKIP: {t} not installed")
            sys.exit(SKIP)


class Result:
    def __init__(self, cmd, rc, out, err):
        self.cmd, self.rc, self.out, self.err = cmd, rc, out, err

    # subprocess.CompletedProcess's names, for tests written against it
    @property
    def returncode(self):
        return self.rc

    @property
    def stdout(self):
        return self.out

    def __repr__(self):
        return f"<{' '.join(self.cmd)} rc={self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


def run(cmd, check=False, timeout=120, input=None, env=None, quiet=False, merge=False,
        echo=False, **kw):
    """Run cmd (a list); returns Result with rc, out (stdout) and err (stderr).
    merge: stderr goes into out, as a shell's 2>&1 (err is then empty).
    echo: log the output too (the daemon tests' habit)."""
    cmd = [str(c) for c in cmd]
    if not quiet:
        log("+", " ".join(repr(c) if " " in c else c for c in cmd))
    p = subprocess.run(cmd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True,
                       timeout=timeout, input=input, env=env, **kw)
    r = Result(cmd, p.returncode, p.stdout, p.stderr or "")
    if echo and (r.out or r.err):
        log((r.out + r.err).rstrip())
    if check and r.rc != 0:
        raise AssertionError(f"command failed: {r!r}")
    return r


_RATE_RE = re.compile(r"^(.*, \d+ ops; ).*$")
_CSV_RE = re.compile(r"^(\d+,\d+,)[0-9:.]+,[0-9.]+,[0-9.]+$")
_RUN_RE = re.compile(r"^Run completed in [0-9.]+ seconds\.$")


def filter_times(text):
    """Replace qemu-io's rate lines and -C lines, and bench's run time."""
    out = []
    for line in text.splitlines():
        line = _RATE_RE.sub(r"\1TIME", line)
        line = _CSV_RE.sub(r"\1TIME", line)
        line = _RUN_RE.sub("Run completed in TIME seconds.", line)
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def filter_progname(text):
    """Make 'qemu-img: x' and 'vdisk-img: x' (qemu-io/vdisk-io) the same."""
    text = re.sub(r"\bqemu-img\b", "IMG", text)
    text = re.sub(r"\bvdisk-img\b", "IMG", text)
    text = re.sub(r"\bqemu-io\b", "IO", text)
    text = re.sub(r"\bvdisk-io\b", "IO", text)
    return text


def filter_path(text, *paths):
    for p in paths:
        text = text.replace(str(p), "TEST_DIR")
    return text


def filter_actual_size(text):
    """Drop disk-usage figures, which depend on the filesystem."""
    text = re.sub(r'("actual-size": )\d+', r"\1SIZE", text)
    text = re.sub(r"^disk size: .*$", "disk size: SIZE", text, flags=re.M)
    return text


def filter_all(text, *paths):
    return filter_path(filter_progname(filter_times(text)), *paths)


def qemu_img_check(path, fmt="qcow2"):
    """qemu-img check must find no errors (raw has no check: just open it)."""
    if fmt == "raw":
        r = run(["qemu-img", "info", "-U", "-f", "raw", path])
        if r.rc != 0:
            raise AssertionError(f"qemu-img cannot open {path}: {r!r}")
        return
    r = run(["qemu-img", "check", "-U", "-f", fmt, path])
    if r.rc != 0 or "No errors were found" not in r.out:
        raise AssertionError(f"qemu-img check failed on {path}: {r!r}")


def qemu_img_compare(a, b, fmt_a="raw", fmt_b="raw", strict=False):
    """qemu-img compare must report identical contents; virtual sizes must be
    equal too. strict adds -s (allocation must match as well)."""
    cmd = ["qemu-img", "compare", "-U", "-f", fmt_a, "-F", fmt_b]
    if strict:
        cmd.append("-s")
    sizes = []
    for img, fmt in ((a, fmt_a), (b, fmt_b)):
        r = run(["qemu-img", "info", "-U", "--output=json", "-f", fmt, img], quiet=True)
        if r.rc != 0:
            raise AssertionError(f"qemu-img cannot open {img}: {r!r}")
        import json
        sizes.append(json.loads(r.out)["virtual-size"])
    if sizes[0] != sizes[1]:
        raise AssertionError(f"virtual sizes differ: {a} {sizes[0]}, {b} {sizes[1]}")
    r = run(cmd + [a, b])
    if r.rc != 0:
        raise AssertionError(f"images differ: {a} {b}: {r!r}")


def _on_tmpfs(path):
    try:
        with open("/proc/mounts") as f:
            mounts = [l.split() for l in f]
    except OSError:
        return False
    best, fstype = "", ""
    path = os.path.realpath(path)
    for m in mounts:
        if len(m) > 2 and (path == m[1] or path.startswith(m[1].rstrip("/") + "/")):
            if len(m[1]) > len(best):
                best, fstype = m[1], m[2]
    return fstype in ("tmpfs", "ramfs")


def scratch_base():
    """A directory on a real filesystem: $VDISK_TEST_DIR, the build dir, /var/tmp or /tmp."""
    for cand in (os.environ.get("VDISK_TEST_DIR"), os.environ.get("MESON_BUILD_ROOT"),
                 "/var/tmp", tempfile.gettempdir()):
        if cand and os.path.isdir(cand) and os.access(cand, os.W_OK) and not _on_tmpfs(cand):
            return cand
    return tempfile.gettempdir()


class TempDir:
    """with TempDir() as d: ... -- removed afterwards. base: where (default a
    real filesystem, see scratch_base; the daemon tests want a short path
    for their UNIX sockets)."""

    def __init__(self, prefix="vdisk-test-", base=None):
        self.prefix = prefix
        self.base = base

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix=self.prefix, dir=self.base or scratch_base())
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def hold_open(tool, img, fmt, readonly=False, command="write -P 0x42 0 4k",
              expect="wrote 4096/4096"):
    """Start tool (qemu-io or vdisk-io) in stdin mode holding img open; return
    once it has run command through it (the image is open and locked then).
    Give it back with release()."""
    cmd = [tool, "-f", fmt] + (["-r"] if readonly else []) + [img]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write(command + "\n")
    p.stdin.flush()
    buf = ""
    deadline = time.time() + 30
    while expect not in buf and time.time() < deadline:
        ch = os.read(p.stdout.fileno(), 4096).decode()
        if not ch:
            break
        buf += ch
    if expect not in buf:
        p.kill()
        raise AssertionError(f"{tool} did not open {img}: {buf!r}")
    return p


def release(p):
    """Make a hold_open() holder quit."""
    p.stdin.write("quit\n")
    p.stdin.close()
    p.wait(timeout=30)


def io_args(cmds):
    """['write 0 1', 'read 0 1'] -> ['-c', 'write 0 1', '-c', 'read 0 1']"""
    out = []
    for c in cmds:
        out += ["-c", c]
    return out


class Failures:
    """Collect failed checks and report them all at the end."""

    def __init__(self):
        self.items = []

    def check(self, cond, msg):
        if not cond:
            log("FAIL:", msg)
            self.items.append(msg)
        return cond

    def equal(self, a, b, what):
        if a != b:
            import difflib
            diff = "\n".join(difflib.unified_diff(str(a).splitlines(), str(b).splitlines(),
                                                  "qemu", "vdisk", lineterm=""))
            log(f"FAIL: {what} differs:\n{diff}")
            self.items.append(what)
            return False
        return True

    def finish(self):
        if self.items:
            log(f"{len(self.items)} check(s) failed")
            sys.exit(1)
        log("all checks passed")
        sys.exit(0)
