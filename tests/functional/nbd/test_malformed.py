#!/usr/bin/env python3
"""A hostile NBD client on raw sockets: every bad handshake and transmission
message gets the answer the spec asks for (error reply, or a hard disconnect
where the server cannot answer), and the server keeps serving others."""
import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True   # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbdtest import Vdiskd, TempDir, run, need, qemu_img_check, main, log

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003e889045565a9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_SR = 1, 2, 3, 5, 6, 7, 8
OPT_LIST_META, OPT_SET_META = 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID = ERR + 1, ERR + 2, ERR + 3
ERR_UNKNOWN, ERR_TOO_BIG = ERR + 6, ERR + 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WZ, CMD_BS = range(8)
EPERM, EINVAL, ENOSPC = 1, 22, 28
SIMPLE, STRUCT = 0x67446698, 0x668e33ef


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        self.s.connect(path)

    def recvn(self, n):
        b = b""
        while len(b) < n:
            d = self.s.recv(n - len(b))
            if not d:
                raise EOFError(f"EOF after {len(b)} of {n} bytes")
            b += d
        return b

    def greet(self, cflags=1):
        m, o, f = struct.unpack(">QQH", self.recvn(18))
        assert m == NBDMAGIC and o == IHAVEOPT and f & 1, (hex(m), hex(o), f)
        self.s.sendall(struct.pack(">I", cflags))

    def opt(self, o, data=b"", length=None):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, o, len(data) if length is None else length)
                       + data)

    def reply(self):
        m, o, t, n = struct.unpack(">QIII", self.recvn(20))
        assert m == REPMAGIC, hex(m)
        return o, t, self.recvn(n)

    def final(self, o):
        """Collect replies up to the final one; return (type, list of data)."""
        items = []
        while True:
            ro, t, d = self.reply()
            assert ro == o, (ro, o)
            if t in (REP_SERVER, REP_INFO, REP_META):
                items.append((t, d))
                continue
            return t, items

    def closed(self, timeout=20):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def go(self, name, structured=True, meta=("base:allocation",)):
        self.greet(3)
        if structured:
            self.opt(OPT_SR)
            assert self.final(OPT_SR)[0] == REP_ACK
        if meta:
            n = name.encode()
            q = b"".join(struct.pack(">I", len(x)) + x.encode() for x in meta)
            self.opt(OPT_SET_META, struct.pack(">I", len(n)) + n + struct.pack(">I", len(meta)) + q)
            t, items = self.final(OPT_SET_META)
            assert t == REP_ACK and len(items) == len(meta), (t, items)
        n = name.encode()
        self.opt(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">HH", 1, 3))
        t, items = self.final(OPT_GO)
        assert t == REP_ACK, hex(t)
        info = [d for (_, d) in items if struct.unpack(">H", d[:2])[0] == 0][0]
        self.size, self.flags = struct.unpack(">QH", info[2:12])
        self.structured = structured
        self.cookie = 0

    def send_req(self, cmd, off, length, flags=0, data=b"", magic=0x25609513):
        self.cookie += 1
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, self.cookie, off, length) + data)
        return self.cookie

    def read_reply(self, read_len=0):
        """Returns (cookie, error, payload chunks)."""
        magic, = struct.unpack(">I", self.recvn(4))
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recvn(12))
            data = self.recvn(read_len) if (read_len and err == 0) else b""
            return cookie, err, [("simple", data)]
        assert magic == STRUCT, hex(magic)
        chunks, err, cookie = [], 0, None
        while True:
            if chunks or cookie is not None:
                magic, = struct.unpack(">I", self.recvn(4))
                assert magic == STRUCT
            flags, typ, cookie, n = struct.unpack(">HHQI", self.recvn(16))
            payload = self.recvn(n)
            if typ & 0x8000:
                err = struct.unpack(">I", payload[:4])[0]
            chunks.append((typ, payload))
            if flags & 1:
                return cookie, err, chunks

    def req(self, cmd, off, length, flags=0, data=b""):
        c = self.send_req(cmd, off, length, flags, data)
        cookie, err, chunks = self.read_reply(length if cmd == CMD_READ else 0)
        assert cookie == c, (cookie, c)
        return err, chunks


def handshake_checks(sock):
    # unknown client flags: the server must drop the connection
    c = Client(sock)
    c.greet(cflags=0x80)
    assert c.closed(), "unknown client flag accepted"

    # bad option magic
    c = Client(sock)
    c.greet()
    c.s.sendall(struct.pack(">QII", 0x1234, OPT_GO, 0))
    assert c.closed(), "bad option magic accepted"

    # absurd option length: never allocated, connection dropped
    c = Client(sock)
    c.greet()
    c.opt(OPT_GO, b"", length=0x7fffffff)
    assert c.closed(), "2 GiB option payload not refused"

    c = Client(sock)
    c.greet()
    # moderately large payload: skipped and refused, negotiation continues
    c.opt(99, b"x" * 100000)
    assert c.final(99)[0] == ERR_TOO_BIG
    # unknown option
    c.opt(99, b"abc")
    assert c.final(99)[0] == ERR_UNSUP
    # export name longer than 4096 bytes
    name = b"n" * 5000
    c.opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    assert c.final(OPT_GO)[0] == ERR_INVALID
    # name length pointing past the payload
    c.opt(OPT_INFO, struct.pack(">I", 1000) + b"disk" + struct.pack(">H", 0))
    assert c.final(OPT_INFO)[0] == ERR_INVALID
    # request count inconsistent with the length
    c.opt(OPT_INFO, struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 5, 0))
    assert c.final(OPT_INFO)[0] == ERR_INVALID
    # NUL inside a name
    c.opt(OPT_INFO, struct.pack(">I", 4) + b"di\0k" + struct.pack(">H", 0))
    assert c.final(OPT_INFO)[0] == ERR_INVALID
    # unknown export
    c.opt(OPT_GO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    assert c.final(OPT_GO)[0] == ERR_UNKNOWN
    # LIST with data
    c.opt(OPT_LIST, b"junk")
    assert c.final(OPT_LIST)[0] == ERR_INVALID
    # meta contexts before structured replies
    c.opt(OPT_LIST_META, struct.pack(">II", 4, 0)[:4] + b"disk" + struct.pack(">I", 0))
    assert c.final(OPT_LIST_META)[0] == ERR_INVALID
    c.opt(OPT_STARTTLS)
    assert c.final(OPT_STARTTLS)[0] == ERR_POLICY
    c.opt(OPT_SR)
    assert c.final(OPT_SR)[0] == REP_ACK
    # meta query count larger than the payload
    c.opt(OPT_LIST_META, struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1000))
    assert c.final(OPT_LIST_META)[0] == ERR_INVALID
    # a valid list afterwards
    c.opt(OPT_LIST_META, struct.pack(">I", 4) + b"disk" + struct.pack(">I", 0))
    t, items = c.final(OPT_LIST_META)
    assert t == REP_ACK and len(items) == 2, items
    c.opt(OPT_LIST)
    t, items = c.final(OPT_LIST)
    assert t == REP_ACK and len(items) == 5, items
    c.opt(OPT_ABORT)
    assert c.final(OPT_ABORT)[0] == REP_ACK
    assert c.closed()

    # EXPORT_NAME of an unknown export cannot fail politely: disconnect
    c = Client(sock)
    c.greet()
    c.opt(OPT_EXPORT_NAME, b"nope")
    assert c.closed()

    # EXPORT_NAME success (no zeroes negotiated: 10 bytes)
    c = Client(sock)
    c.greet(3)
    c.opt(OPT_EXPORT_NAME, b"disk")
    size, flags = struct.unpack(">QH", c.recvn(10))
    assert size == 64 << 20 and flags & 1, (size, flags)
    c.s.close()

    # vanishing mid-handshake
    for cut in (3, 10, 20):
        c = Client(sock)
        c.greet()
        data = struct.pack(">QII", IHAVEOPT, OPT_GO, 20) + b"\0" * 20
        c.s.sendall(data[:cut])
        c.s.close()


def transmission_checks(sock, size):
    c = Client(sock)
    c.go("disk")
    assert c.size == size
    # past the end
    assert c.req(CMD_READ, size - 512, 1024)[0] == EINVAL
    assert c.req(CMD_WRITE, size - 512, 1024, data=b"x" * 1024)[0] == ENOSPC
    assert c.req(CMD_WZ, size, 512)[0] == ENOSPC
    assert c.req(CMD_BS, size - 512, 1024)[0] == EINVAL
    # zero length, unknown command, unknown flag, flush with a range
    assert c.req(CMD_READ, 0, 0)[0] == EINVAL
    assert c.req(42, 0, 512)[0] == EINVAL
    assert c.req(CMD_READ, 0, 512, flags=1 << 7)[0] == EINVAL
    assert c.req(CMD_FLUSH, 4096, 0)[0] == EINVAL
    # payload above the advertised maximum: error, payload skipped
    big = 32 * 1024 * 1024 + 4096
    assert c.req(CMD_WRITE, 0, big, data=b"\xee" * big)[0] == EINVAL
    assert c.req(CMD_READ, 0, big)[0] == EINVAL
    # still in sync: write/read/verify, FUA, zeroes with NO_HOLE and FAST_ZERO
    assert c.req(CMD_WRITE, 4096, 4096, flags=1, data=b"\xab" * 4096)[0] == 0
    err, chunks = c.req(CMD_READ, 4096, 4096)
    assert err == 0 and chunks[0][0] == 1 and chunks[0][1][8:] == b"\xab" * 4096, chunks[0][0]
    assert c.req(CMD_WZ, 8192, 4096, flags=2)[0] == 0
    err = c.req(CMD_WZ, 1 << 20, 1 << 20, flags=16)[0]
    assert err in (0, 95), err
    assert c.req(CMD_TRIM, 1 << 20, 65536)[0] == 0
    assert c.req(CMD_CACHE, 0, 65536)[0] == 0
    assert c.req(CMD_FLUSH, 0, 0)[0] == 0
    # a hole reads as a hole chunk, DF forces one data chunk
    err, chunks = c.req(CMD_READ, 32 << 20, 65536)
    assert err == 0 and chunks[0][0] == 2, chunks[0][0]
    err, chunks = c.req(CMD_READ, 0, 65536, flags=4)
    assert err == 0 and len(chunks) == 1 and chunks[0][0] == 1
    # block status, one extent only
    err, chunks = c.req(CMD_BS, 0, 1 << 20, flags=8)
    assert err == 0 and chunks[0][0] == 5 and len(chunks[0][1]) == 12, chunks
    # pipelined requests, answered in any order, each exactly once
    cookies = {c.send_req(CMD_READ, i * 4096, 4096) for i in range(64)}
    for _ in range(64):
        cookie, err, _ = c.read_reply()
        assert err == 0 and cookie in cookies
        cookies.remove(cookie)
    # bad request magic: hard disconnect
    c.send_req(CMD_READ, 0, 512, magic=0x12345678)
    assert c.closed()

    # write payload above the hard cap: never read, disconnect
    c = Client(sock)
    c.go("disk")
    c.send_req(CMD_WRITE, 0, 0xffffffff)
    assert c.closed()

    # simple replies (no structured): errors carry no payload
    c = Client(sock)
    c.go("disk", structured=False, meta=())
    assert c.req(CMD_READ, size, 512)[0] == EINVAL
    assert c.req(CMD_BS, 0, 512)[0] == EINVAL   # no meta context negotiated
    err, chunks = c.req(CMD_READ, 4096, 4096)
    assert err == 0 and chunks[0][1] == b"\xab" * 4096
    c.send_req(CMD_DISC, 0, 0)
    assert c.closed()

    # read-only export, min block size 512
    c = Client(sock)
    c.go("ro")
    assert c.flags & 2, "read-only flag not advertised"
    assert c.req(CMD_WRITE, 0, 512, data=b"y" * 512)[0] == EPERM
    assert c.req(CMD_TRIM, 0, 512)[0] == EPERM
    assert c.req(CMD_READ, 1, 512)[0] == EINVAL
    assert c.req(CMD_READ, 0, 100)[0] == EINVAL
    err, chunks = c.req(CMD_READ, 4096, 512)
    assert err == 0

    # vanishing mid-request (header + part of the payload) and with replies pending
    c = Client(sock)
    c.go("disk")
    c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, CMD_WRITE, 1, 0, 1 << 20) + b"z" * 1000)
    c.s.close()
    c = Client(sock)
    c.go("disk")
    for i in range(32):
        c.send_req(CMD_READ, i * 65536, 65536)
    c.s.close()


def io_error_checks(sock):
    """An I/O error is an error reply (never a reply header followed by a
    disconnect); the connection goes on serving."""
    c = Client(sock)
    c.go("faulty", meta=())
    err, chunks = c.req(CMD_READ, 1 << 20, 4096)
    assert err == 5, (err, chunks)
    assert all(t != 1 for t, _ in chunks), "data chunk sent for a failed read"
    assert c.req(CMD_READ, 0, 4096)[0] == 0
    c.send_req(CMD_DISC, 0, 0)
    assert c.closed()
    c = Client(sock)
    c.go("faulty", structured=False, meta=())
    cookie = c.send_req(CMD_READ, (1 << 20) - 4096, 8192)
    got, err, chunks = c.read_reply(8192)
    assert got == cookie and err == 5 and chunks[0][1] == b"", (err, chunks)
    err, chunks = c.req(CMD_READ, 0, 4096)      # still in sync
    assert err == 0 and len(chunks[0][1]) == 4096


def test(vdiskd):
    need("qemu-img", "qemu-io")
    with TempDir() as d:
        img = os.path.join(d, "disk.qcow2")
        size = 64 << 20
        run(["qemu-img", "create", "-f", "qcow2", img, str(size)])
        sock = os.path.join(d, "nbd.sock")
        dmn = Vdiskd(vdiskd, d, [
            "--object", "iothread,id=io0",
            "--blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={img}",
            "--blockdev", "driver=null-co,node-name=null0,size=64M,read-zeroes=on",
            "--blockdev", "driver=null-co,node-name=null1,size=64M,read-zeroes=off",
            # reads touching sector 2048 (1 MiB) fail with EIO
            "--blockdev", "driver=blkdebug,node-name=dbg,image.driver=null-co,image.size=64M,"
                          "image.read-zeroes=off,event=read_aio,errno=5,sector=2048,iotype=read",
            "--nbd-server", f"addr.type=unix,addr.path={sock},max-connections=12",
            "--export", "type=nbd,id=exp0,node-name=disk0,name=disk,writable=on,iothread=io0",
            "--export", "type=nbd,id=exp1,node-name=null0,name=ro,min-block-size=512",
            "--export", "type=nbd,id=exp2,node-name=null0,name=null2",
            "--export", "type=nbd,id=exp3,node-name=null1,name=junk",
            "--export", "type=nbd,id=exp4,node-name=dbg,name=faulty",
        ], wait_for=[sock])
        try:
            idle = Client(sock)          # says nothing: dropped by the 10 s timeout
            t0 = time.time()
            handshake_checks(sock)
            transmission_checks(sock, size)
            io_error_checks(sock)
            # connection cap: 12 in total (idle + 11); wait for the clients of
            # the checks above to be gone first
            for _ in range(200):
                if all(e["clients"] == 0 for e in dmn.qmp.ok("query-block-exports")):
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            held = [Client(sock) for _ in range(11)]
            for h in held:
                h.recvn(18)
            extra = Client(sock)
            assert extra.closed(5), "connection over the cap not closed"
            for h in held:
                h.s.close()
            # the server notices the closes asynchronously: wait for a free slot
            for _ in range(100):
                probe = Client(sock)
                try:
                    probe.recvn(18)
                    probe.s.close()
                    break
                except (EOFError, ConnectionResetError):
                    time.sleep(0.05)
            time.sleep(0.2)
            # a client that stops reading replies cannot stall an IOThread
            # move: after the grace period its connection is cut
            stuck = Client(sock)
            stuck.go("junk", meta=())
            for i in range(64):
                stuck.send_req(CMD_READ, i << 20, 1 << 20)
            time.sleep(0.3)
            dmn.qmp.ok("x-blockdev-set-iothread", **{"node-name": "null1", "iothread": "io0"})
            assert stuck.closed(5), "stuck client not disconnected"
            nodes = dmn.qmp.ok("query-named-block-nodes")
            assert [n["iothread"] for n in nodes if n["node-name"] == "null1"] == ["io0"]
            assert idle.closed(max(1, 20 - (time.time() - t0))), "handshake timeout not enforced"
            assert time.time() - t0 >= 9, "idle client dropped too early"
            # the server still serves well-behaved clients
            uri = f"nbd+unix:///disk?socket={sock}"
            run(["qemu-io", "-f", "raw", "-c", "read -P 0xab 4096 4096", "-c",
                 "write -P 0x42 1M 64k", "-c", "read -P 0x42 1M 64k", uri])
            st = dmn.qmp.ok("query-block-exports")
            assert len(st) == 5, st
            assert dmn.alive()
            # a client that never reads its replies cannot block shutdown:
            # in-flight requests stuck in send are cut after the grace period
            stuck = Client(sock)
            stuck.go("junk", meta=())
            for i in range(64):
                stuck.send_req(CMD_READ, i << 20, 1 << 20)
            time.sleep(0.5)
            t0 = time.time()
            dmn.stop()
            log(f"stopped {time.time() - t0:.1f}s after SIGTERM with a stuck client")
        finally:
            if dmn.alive():
                dmn.stop()
        qemu_img_check(img)


main(test)
