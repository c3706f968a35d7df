#!/usr/bin/env python3
"""Crafted QED images: every header bound, bad table entries, tables that
overlap the header, huge table_size x cluster_size. vdisk must give a clear
error naming the file and the field (exit 1), never crash, and stay within a
memory bound (peak resident size of every run below MEM_LIMIT; measured, not
an address-space limit, so that sanitizer builds run it too).

usage: test_bad_images.py VDISK_IMG VDISK_IO
"""
import os
import resource
import struct
import subprocess
import sys
import tempfile

VI, VIO = sys.argv[1], sys.argv[2]
MEM_LIMIT = 512 << 20


def header(cs=65536, ts=4, hs=1, features=0, compat=0, autoclear=0, l1=None, size=1 << 20,
           boff=0, bsize=0):
    if l1 is None:
        l1 = cs * hs
    return struct.pack('<IIIIQQQQQII', 0x00444551, cs, ts, hs, features, compat, autoclear,
                       l1, size, boff, bsize)


def image(hdr, cs=65536, ts=4, extra=b'', total=None):
    """Header in cluster 0 and a zero L1 table at cluster 1 (or total bytes)."""
    data = bytearray(hdr)
    n = total if total is not None else cs + cs * ts
    data += b'\0' * (n - len(data))
    data[len(hdr):len(hdr) + len(extra)] = extra
    return bytes(data)


def run(args):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60)


# (name, bytes, words the error must contain)
def header_cases():
    c = []
    c.append(('short', b'QED\0' + b'\0' * 20, ['too short']))
    c.append(('cluster-small', image(header(cs=2048), cs=4096), ['cluster_size 2048']))
    c.append(('cluster-not-pow2', image(header(cs=65537)), ['cluster_size 65537']))
    c.append(('cluster-huge', image(header(cs=1 << 27), cs=4096, total=8192), ['cluster_size']))
    c.append(('table-zero', image(header(ts=0)), ['table_size 0']))
    c.append(('table-3', image(header(ts=3)), ['table_size 3']))
    c.append(('table-32', image(header(ts=32)), ['table_size 32']))
    c.append(('header-size-zero', image(header(hs=0, l1=65536)), ['header_size 0']))
    c.append(('header-size-huge', image(header(hs=0xffffffff, l1=65536)), ['header_size']))
    c.append(('features-unknown', image(header(features=0x10)), ['features']))
    c.append(('size-unaligned', image(header(size=1000)), ['image_size 1000']))
    c.append(('size-too-big', image(header(cs=4096, ts=1, size=2 << 30), cs=4096, ts=1),
              ['image_size']))
    c.append(('l1-unaligned', image(header(l1=65536 + 512)), ['l1_table_offset']))
    c.append(('l1-in-header', image(header(l1=0)), ['l1_table_offset', 'header']))
    c.append(('l1-past-eof', image(header(l1=1 << 40)), ['l1_table_offset']))
    c.append(('l1-truncated', image(header(), total=65536 + 4096), ['l1_table_offset']))
    c.append(('huge-tables', image(header(cs=64 << 20, ts=16, l1=64 << 20), cs=4096,
                                   total=8192), ['table_size']))
    c.append(('backing-name-outside', image(header(features=1, boff=65530, bsize=100)),
              ['backing file name']))
    c.append(('backing-name-long', image(header(features=1, boff=64, bsize=2000)),
              ['backing_filename_size 2000']))
    c.append(('backing-name-nul', image(header(features=1, boff=64, bsize=8),
                                        extra=b'ab\0cdefg'), ['NUL']))
    c.append(('backing-missing', image(header(features=1, boff=64, bsize=9),
                                       extra=b'nonexist9'), ['nonexist9']))
    return c


def l2_image(entry, l1_entry=None, cs=65536, ts=1, hs=1):
    """Header (hs clusters), L1 (1 cluster), L2 (1 cluster) with entry 0 = entry."""
    hdr = header(cs=cs, ts=ts, hs=hs, l1=hs * cs)
    data = bytearray(image(hdr, cs=cs, ts=ts, total=(hs + 2) * cs))
    struct.pack_into('<Q', data, hs * cs, (hs + 1) * cs if l1_entry is None else l1_entry)
    struct.pack_into('<Q', data, (hs + 1) * cs, entry)
    return bytes(data)


def table_cases():
    return [
        ('l2-entry-past-eof', l2_image(1 << 40)),
        ('l2-entry-unaligned', l2_image(2 * 65536 + 4096)),
        ('l2-entry-in-header', l2_image(65536, hs=2)),
        ('l1-entry-past-eof', l2_image(0, l1_entry=1 << 40)),
        ('l1-entry-unaligned', l2_image(0, l1_entry=2 * 65536 + 512)),
        ('l1-entry-in-header', l2_image(0, l1_entry=65536, hs=2)),
        ('l1-entry-table-past-eof', l2_image(0, l1_entry=2 * 65536, ts=2)),
    ]


def main():
    failures = 0
    with tempfile.TemporaryDirectory(prefix='vdisk-qed-bad-') as tmp:
        for name, data, words in header_cases():
            img = os.path.join(tmp, name + '.qed')
            with open(img, 'wb') as f:
                f.write(data)
            tools = [[VI, 'info', '-f', 'qed', img], [VIO, '-f', 'qed', '-c', 'read 0 4k', img]]
            if name == 'backing-missing':
                tools = tools[1:]     # info does not open the backing file (as qemu-img)
            for args in tools:
                p = run(args)
                msg = p.stderr.strip()
                ok = p.returncode == 1 and all(w in msg for w in words) and \
                    (name + '.qed') in msg
                print('%-22s %-9s rc=%d %s' % (name, os.path.basename(args[0]), p.returncode,
                                               msg.splitlines()[0] if msg else ''))
                if not ok:
                    print('FAIL: expected exit 1 and %s in the message' % words)
                    failures += 1
        for name, data in table_cases():
            img = os.path.join(tmp, name + '.qed')
            with open(img, 'wb') as f:
                f.write(data)
            p = run([VIO, '-f', 'qed', '-r', '-c', 'read 0 64k', img])
            msg = (p.stdout + p.stderr).strip()
            print('%-22s read      rc=%d %s' % (name, p.returncode,
                                                msg.splitlines()[-1] if msg else ''))
            if p.returncode != 1 or 'offset' not in msg:
                print('FAIL: expected an I/O error naming the bad offset')
                failures += 1
            p = run([VI, 'check', img])
            if p.returncode != 2 or 'errors were found' not in p.stdout:
                print('FAIL: check: rc=%d\n%s%s' % (p.returncode, p.stdout, p.stderr))
                failures += 1
            # repair clears the bad entry; the image then reads zeros there
            p = run([VI, 'check', '-r', 'all', img])
            if p.returncode not in (0, 3):
                print('FAIL: check -r all: rc=%d\n%s%s' % (p.returncode, p.stdout, p.stderr))
                failures += 1
            p = run([VIO, '-f', 'qed', '-c', 'read -P 0 0 64k', img])
            if p.returncode != 0 or 'failed' in p.stdout:
                print('FAIL: after repair: %s%s' % (p.stdout, p.stderr))
                failures += 1
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print('peak resident size of the runs: %d MiB' % (peak >> 20))
    if peak > MEM_LIMIT:
        print('FAIL: more than %d MiB' % (MEM_LIMIT >> 20))
        failures += 1
    if failures:
        print('%d failures' % failures)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
