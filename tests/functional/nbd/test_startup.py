#!/usr/bin/env python3
"""Startup and command-line errors.
- No client is served before the whole command line is processed: a client
  connecting the moment the NBD socket appears lists all 40 exports and can
  pick the last one (before the fix, exports appeared one by one while a
  later option polled the main loop); --daemonize returns only when serving.
- --export without --nbd-server is refused ("NBD server not running"), and so
  is a second --nbd-server on the same path.
- Option errors name the argument (--blockdev #2 (node-name 'y')), and the
  program calls itself "vdiskd:", not the path it was started by.
- The zero-argument mode checks its listeners before creating its 16 GiB
  image, and takes another port and socket from VDISKD_NBD_PORT/_SOCKET."""
import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import TempDir, free_port, log, main, need, run

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003e889045565a9
OPT_LIST, OPT_GO, OPT_ABORT = 3, 7, 2
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
N_EXPORTS = 40


def recvn(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError(f"EOF after {len(b)} of {n} bytes")
        b += d
    return b


def list_and_go(sock_path, last):
    """Returns (names listed, reply type of GO for export `last`)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(sock_path)
    m, o, _ = struct.unpack(">QQH", recvn(s, 18))
    assert m == NBDMAGIC and o == IHAVEOPT
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
    names = []
    while True:
        rm, ro, t, n = struct.unpack(">QIII", recvn(s, 20))
        assert rm == REPMAGIC and ro == OPT_LIST
        data = recvn(s, n)
        if t != REP_SERVER:
            break
        ln, = struct.unpack(">I", data[:4])
        names.append(data[4:4 + ln].decode())
    name = last.encode()
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 4 + len(name) + 2) +
              struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        rm, ro, t, n = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, n)
        if t != REP_INFO:
            break
    s.close()
    return names, t


def many_exports_args(d, sock):
    args = ["--object", "iothread,id=io0", "--nbd-server", f"addr.type=unix,addr.path={sock}"]
    for i in range(N_EXPORTS):
        args += ["--blockdev", f"driver=null-co,node-name=n{i},size=1M",
                 # iothread=: the node moves, which polls the main loop
                 "--export", f"type=nbd,id=e{i},node-name=n{i},name=x{i},iothread=io0"]
    return args


def race_startup(binary, d):
    sock = os.path.join(d, "nbd.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen([binary] + many_exports_args(d, sock), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not os.path.exists(sock):
            assert p.poll() is None, p.stdout.read()
            assert time.time() < deadline, "no socket"
            time.sleep(0.0005)
        names, go = list_and_go(sock, f"x{N_EXPORTS - 1}")
        log(f"listed {len(names)} exports as the socket appeared; GO -> {go:#x}")
        assert len(names) == N_EXPORTS, f"partial NBD_OPT_LIST: {len(names)} of {N_EXPORTS}"
        assert go == REP_ACK, f"GO to the last export: {go:#x}"
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out


def daemonize(binary, d):
    sock = os.path.join(d, "dnbd.sock")
    pidfile = os.path.join(d, "vdiskd.pid")
    r = run([binary, "--daemonize", "--pidfile", pidfile] + many_exports_args(d, sock),
            timeout=60)
    assert r.returncode == 0
    pid = int(open(pidfile).read())
    try:
        # the parent returned: the child serves everything right away
        names, go = list_and_go(sock, f"x{N_EXPORTS - 1}")
        assert len(names) == N_EXPORTS and go == REP_ACK, (len(names), go)
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(600):
            if not os.path.exists(pidfile):
                break
            time.sleep(0.05)
    assert not os.path.exists(pidfile), "daemon did not stop"


def fails(binary, args, expect, cwd=None, env=None):
    p = subprocess.run([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60, cwd=cwd, env=env)
    log(f"+ vdiskd {' '.join(args)}\n{p.stdout.rstrip()}")
    assert p.returncode == 1, p.returncode
    for e in expect:
        assert e in p.stdout, f"expected {e!r} in {p.stdout!r}"
    return p.stdout


def command_line_errors(binary, d):
    sock = os.path.join(d, "e.sock")
    # an NBD export needs a running NBD server
    fails(binary, ["--blockdev", "driver=null-co,node-name=n0",
                   "--export", "type=nbd,id=e0,node-name=n0"], ["NBD server not running"])
    # a second listener on the same path would make the first unreachable
    fails(binary, ["--nbd-server", f"addr.type=unix,addr.path={sock}",
                   "--nbd-server", f"addr.type=unix,addr.path={sock}"],
          ["--nbd-server #2", "already running"])
    fails(binary, ["--blockdev", "driver=null-co,node-name=n0",
                   "--nbd-server", f"addr.type=unix,addr.path={sock}",
                   "--export", "type=nbd,id=e0,node-name=n0,min-block-size=0"],
          ["--export #1 (id 'e0')", "min-block-size"])
    # errors name the argument; the program is "vdiskd:", not a path
    out = fails(binary, ["--blockdev", "driver=null-co,node-name=x",
                         "--blockdev", "driver=null-co,node-name=y,bogus=1"],
                ["vdiskd: --blockdev #2 (node-name 'y'): ", "'bogus'"])
    assert binary not in out, out
    out = fails(binary, ["--blockdev", "driver=null-co,node-name=x",
                         "--blockdev", "driver=null-co,bogus=1"], ["--blockdev #2: "])
    out = fails(binary, ["--no-such-option"], ["vdiskd: unrecognized option"])
    assert binary not in out, out


def default_mode(binary, d):
    # port taken: fail before creating anything
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    env = dict(os.environ, VDISKD_NBD_PORT=str(port))
    wd = os.path.join(d, "default")
    os.mkdir(wd)
    fails(binary, [], [f"127.0.0.1:{port}", "VDISKD_NBD_PORT"], cwd=wd, env=env)
    assert not os.path.exists(os.path.join(wd, "vdisk-data", "disk.qcow2")), \
        "image created although the port was taken"
    # scripts/run.sh checks the port before installing, building, creating
    run_sh = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                          "scripts", "run.sh")
    p = subprocess.run(["bash", run_sh, "--port", str(port)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    log(p.stdout)
    assert p.returncode == 1 and f"127.0.0.1:{port} is not available" in p.stdout, p.stdout
    busy.close()
    # another port and socket
    port = free_port()
    sock = os.path.join(d, "default.sock")
    env = dict(os.environ, VDISKD_NBD_PORT=str(port), VDISKD_NBD_SOCKET=sock)
    p = subprocess.Popen([binary], cwd=wd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not os.path.exists(sock):
            assert p.poll() is None, p.stdout.read()
            assert time.time() < deadline
            time.sleep(0.05)
        names, go = list_and_go(sock, "disk")
        assert names == ["disk"] and go == REP_ACK, (names, go)
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert struct.unpack(">Q", recvn(c, 8))[0] == NBDMAGIC
        c.close()
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        log(out)
    assert p.returncode == 0
    assert f"nbd://127.0.0.1:{port}/disk" in out, out
    run(["qemu-img", "check", os.path.join(wd, "vdisk-data", "disk.qcow2")])


def test(binary):
    need("qemu-img")
    with TempDir() as d:
        for _ in range(5):
            race_startup(binary, d)
        daemonize(binary, d)
        command_line_errors(binary, d)
        default_mode(binary, d)


if __name__ == "__main__":
    main(test)
