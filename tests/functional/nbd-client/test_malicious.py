#!/usr/bin/env python3
"""A malicious NBD server (this script) against vdisk's NBD client: wrong
magic numbers in the handshake and in replies, replies to handles that were
never sent, short reads, oversized replies, structured-reply chunks out of
the request's bounds, bad block-status extents, structured replies that were
never negotiated. Each case must end with a clear error from vdisk-io /
vdisk-img (non-zero status or a "failed" line), never a crash or a hang."""
import os
import socket
import struct
import sys
import threading

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdclient import VDISK_IO, VDISK_IMG, log, need, run, TempDir, Failures  # noqa

F = Failures()
SIZE = 1 << 20
NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF
OPT_GO, OPT_STRUCTURED, OPT_SET_META = 7, 8, 10
REP_ACK, REP_INFO, REP_META, REP_ERR_UNSUP = 1, 3, 4, (1 << 31) + 1
FLAGS = 1 | 4 | 8     # HAS_FLAGS, SEND_FLUSH, SEND_FUA


def recv_exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def opt_reply(c, opt, typ, data=b"", magic=REPLY_MAGIC):
    c.sendall(struct.pack(">QIII", magic, opt, typ, len(data)) + data)


def handshake(c, case):
    """Fixed newstyle handshake; returns True if structured replies were agreed."""
    c.sendall((b"NBDMAGIX" if case == "bad-init-magic" else NBDMAGIC) +
              struct.pack(">QH", IHAVEOPT, 1 | 2))
    recv_exact(c, 4)
    structured = False
    while True:
        magic, opt, ln = struct.unpack(">QII", recv_exact(c, 16))
        data = recv_exact(c, ln)
        if opt == OPT_STRUCTURED:
            if case in ("no-structured", "unnegotiated-chunk"):
                opt_reply(c, opt, REP_ERR_UNSUP)
            else:
                structured = True
                opt_reply(c, opt, REP_ACK)
        elif opt == OPT_SET_META:
            if structured:
                name = b"base:allocation"
                opt_reply(c, opt, REP_META, struct.pack(">I", 1) + name)
            opt_reply(c, opt, REP_ACK)
        elif opt == OPT_GO:
            size = (1 << 63) + 5 if case == "huge-size" else SIZE
            info = struct.pack(">HQH", 0, size, FLAGS)
            magic = 0x1234 if case == "bad-option-magic" else REPLY_MAGIC
            opt_reply(c, opt, REP_INFO, info, magic=magic)
            opt_reply(c, opt, REP_ACK)
            return structured
        else:
            opt_reply(c, opt, REP_ERR_UNSUP)


def chunk(cookie, typ, payload, flags=1, magic=STRUCT_MAGIC, length=None):
    ln = len(payload) if length is None else length
    return struct.pack(">IHHQI", magic, flags, typ, cookie, ln) + payload


def serve(c, case):
    structured = handshake(c, case)
    while True:
        magic, flags, typ, cookie, off, ln = struct.unpack(">IHHQQI", recv_exact(c, 28))
        if typ == 2:      # NBD_CMD_DISC
            return
        if typ == 1:      # write: swallow the data
            recv_exact(c, ln)
        if typ == 7 and structured:   # block status
            if case == "extent-zero-length":
                ext = struct.pack(">III", 1, 0, 0)
            elif case == "extent-too-long":
                ext = struct.pack(">III", 1, ln + (64 << 20), 0)
            else:
                ext = struct.pack(">III", 1, ln, 0)
            c.sendall(chunk(cookie, 5, ext))
            continue
        if typ != 0:      # flush, write, ...: plain success
            c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie))
            continue
        # read
        if case == "bad-reply-magic":
            c.sendall(struct.pack(">IIQ", 0xDEADBEEF, 0, cookie) + bytes(ln))
        elif case == "wrong-cookie":
            c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie + 1000) + bytes(ln))
        elif case == "short-read":
            c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie) + bytes(ln // 2))
            c.shutdown(socket.SHUT_RDWR)
            return
        elif case == "oversized-simple":
            # more data than asked: the extra bytes are read as the next reply
            c.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie) + b"\xff" * (ln + 4096))
        elif case == "chunk-out-of-bounds":
            c.sendall(chunk(cookie, 1, struct.pack(">Q", off + ln) + bytes(ln)))
        elif case == "chunk-oversized":
            c.sendall(chunk(cookie, 1, struct.pack(">Q", off) + bytes(ln + 4096)))
        elif case == "chunk-huge-length":
            c.sendall(chunk(cookie, 1, struct.pack(">Q", off), length=0x7FFFFFF0))
        elif case == "chunk-bad-magic":
            c.sendall(chunk(cookie, 1, struct.pack(">Q", off) + bytes(ln), magic=0x11111111))
        elif case == "hole-out-of-bounds":
            c.sendall(chunk(cookie, 2, struct.pack(">QI", off, ln + 512)))
        elif case == "unnegotiated-chunk":
            c.sendall(chunk(cookie, 1, struct.pack(">Q", off) + bytes(ln)))
        elif case == "error-chunk-bad-length":
            c.sendall(chunk(cookie, 32769, struct.pack(">IH", 5, 1000)))
        else:
            raise AssertionError(case)


class EvilServer:
    def __init__(self, path, case):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.case = case
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        try:
            serve(c, self.case)
        except (EOFError, OSError, struct.error):
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


# case -> (tool command, what must appear in the output)
READ = ["read 0 4k"]
CASES = {
    "bad-init-magic": (READ, "can't open"),
    "bad-option-magic": (READ, "can't open"),
    "huge-size": (READ, "can't open"),
    "bad-reply-magic": (READ, "read failed"),
    "wrong-cookie": (READ, "read failed"),
    "short-read": (READ, "read failed"),
    "oversized-simple": (["read 0 4k", "read 4k 4k"], "failed"),
    "chunk-out-of-bounds": (READ, "read failed"),
    "chunk-oversized": (READ, "read failed"),
    "chunk-huge-length": (READ, "read failed"),
    "chunk-bad-magic": (READ, "read failed"),
    "hole-out-of-bounds": (READ, "read failed"),
    "unnegotiated-chunk": (READ, "read failed"),
    "error-chunk-bad-length": (READ, "read failed"),
    "extent-zero-length": ("map", "vdisk-img:"),
    "extent-too-long": ("map-ok", ""),
}


def main():
    need(VDISK_IO, VDISK_IMG)
    with TempDir(prefix="vdisk-nbdm-") as d:
        for i, (case, (cmds, want)) in enumerate(CASES.items()):
            path = os.path.join(d, f"evil{i}.sock")
            srv = EvilServer(path, case)
            try:
                u = f"nbd+unix:///?socket={path}"
                if cmds in ("map", "map-ok"):
                    r = run([VDISK_IMG, "map", "-f", "raw", "--output=json", u], timeout=60)
                else:
                    args = [VDISK_IO, "--image-opts"]
                    for c in cmds:
                        args += ["-c", c]
                    r = run(args + [f"driver=raw,file.driver=nbd,file.server.type=unix,"
                                    f"file.server.path={path}"], timeout=60)
                text = r.out + r.err
                log(f"{case}: rc={r.rc}\n{text.strip()}")
                F.check(r.rc >= 0 and "AddressSanitizer" not in text and "runtime error" not in text
                        and "Assertion" not in text, f"{case}: crashed: {r!r}")
                if cmds == "map-ok":
                    # an extent longer than asked is clamped to the request
                    F.check(r.rc == 0 and '"length": 1048576' in r.out, f"{case}: {r!r}")
                else:
                    F.check(want in text, f"{case}: expected {want!r} in the output: {r!r}")
                    F.check(r.rc != 0 or "failed" in text, f"{case}: no failure reported: {r!r}")
            finally:
                srv.close()
    F.finish()


if __name__ == "__main__":
    main()
