#!/usr/bin/env python3
"""SIGTERM with clients that never read their replies: vdiskd cuts them after
the documented 10 s grace period, once for all of them (not once per export
or per client), and exits 0 within ~10 s."""
import os
import signal
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, main, log

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
OPT_GO = 7
CMD_READ = 0
GRACE = 10.0


def stuck_client(sock, name):
    """Connect, GO to export name, send 64 reads of 1 MiB, never read a reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(sock)
    buf = b""
    while len(buf) < 18:
        buf += s.recv(18 - len(buf))
    m, o, _ = struct.unpack(">QQH", buf)
    assert m == NBDMAGIC and o == IHAVEOPT
    s.sendall(struct.pack(">I", 3))
    n = name.encode()
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 4 + len(n) + 2) + struct.pack(">I", len(n))
              + n + struct.pack(">H", 0))
    # read option replies up to the ACK
    while True:
        hdr = b""
        while len(hdr) < 20:
            hdr += s.recv(20 - len(hdr))
        _, _, t, ln = struct.unpack(">QIII", hdr)
        left = ln
        while left:
            left -= len(s.recv(left))
        if t == 1:
            break
        assert t == 3, hex(t)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for i in range(64):
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, CMD_READ, i + 1, i << 20, 1 << 20))
    return s


def run_case(binary, d, exports, clients):
    sock = os.path.join(d, "nbd.sock")
    args = []
    for i in range(exports):
        args += ["--blockdev", f"driver=null-co,node-name=n{i},size=256M,read-zeroes=off",
                 "--object", f"iothread,id=x{i}"]
    args += ["--nbd-server", f"addr.type=unix,addr.path={sock}"]
    for i in range(exports):
        args += ["--export", f"type=nbd,id=e{i},node-name=n{i},name=d{i},iothread=x{i}"]
    v = Vdiskd(binary, d, args, wait_for=[sock])
    try:
        held = [stuck_client(sock, f"d{i % exports}") for i in range(clients)]
        time.sleep(0.5)
        t0 = time.time()
        v.stop(signal.SIGTERM, timeout=60)
        dt = time.time() - t0
        log(f"{exports} export(s), {clients} stuck clients: exited {dt:.1f}s after SIGTERM")
        assert dt < GRACE + 3, f"shutdown took {dt:.1f}s (grace period is {GRACE:.0f}s)"
        for s in held:
            s.close()
    finally:
        v.kill()


def test(binary):
    # two stuck clients on one export, one on another
    with TempDir() as d:
        run_case(binary, d, exports=2, clients=3)


if __name__ == "__main__":
    main(test)
