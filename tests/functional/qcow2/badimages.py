#!/usr/bin/env python3
"""Crafted bad qcow2 images (QEMU iotests 080 cases and the CVE-2014-0143..0148
classes), generated in Python so that no binary image is committed.

make_corpus(dir) writes every case as <name>.qcow2 and returns
[(name, path, expect)] where expect is 'open' (opening must fail) or 'io'
(opening may succeed, reading the whole disk or a write must fail)."""
import os
import struct
import zlib

CS = 65536


def be64(v):
    return struct.pack('>Q', v)


def be32(v):
    return struct.pack('>I', v)


class Image:
    """A small valid v3 image: 16 MiB, one L2 table, two data clusters, one
    compressed cluster. Layout (clusters): 0 header, 1 reftable, 2 refblock,
    3 L1, 4 L2, 5-6 data, 7 compressed data."""

    def __init__(self, version=3):
        self.version = version
        self.size = 16 * 1024 * 1024
        self.f = {
            'backing_file_offset': 0, 'backing_file_size': 0, 'cluster_bits': 16,
            'crypt_method': 0, 'l1_size': 1, 'l1_table_offset': 3 * CS,
            'refcount_table_offset': 1 * CS, 'refcount_table_clusters': 1,
            'nb_snapshots': 0, 'snapshots_offset': 0, 'incompatible': 0, 'compatible': 0,
            'autoclear': 0, 'refcount_order': 4, 'header_length': 112 if version == 3 else 72,
            'compression_type': 0,
        }
        self.extensions = b''
        self.backing_name = b''
        self.clusters = 8
        self.reftable = [2 * CS]
        self.refcounts = [1] * 8
        self.l1 = [4 * CS | (1 << 63)]
        self.l2 = {0: 5 * CS | (1 << 63), 1: 6 * CS | (1 << 63)}
        comp = zlib.compressobj(6, zlib.DEFLATED, -12)
        data = comp.compress(b'\x5a' * CS) + comp.flush()
        self.compressed = data
        x = 62 - (16 - 8)
        nsect = ((7 * CS + len(data) - 1) >> 9) - ((7 * CS) >> 9)
        self.l2[2] = (1 << 62) | (nsect << x) | (7 * CS)
        self.tail = b''       # bytes appended after the last cluster
        self.truncate_to = None

    def header(self):
        f = self.f
        h = be32(0x514649fb) + be32(self.version) + be64(f['backing_file_offset'])
        h += be32(f['backing_file_size']) + be32(f['cluster_bits']) + be64(self.size)
        h += be32(f['crypt_method']) + be32(f['l1_size']) + be64(f['l1_table_offset'])
        h += be64(f['refcount_table_offset']) + be32(f['refcount_table_clusters'])
        h += be32(f['nb_snapshots']) + be64(f['snapshots_offset'])
        if self.version == 3:
            h += be64(f['incompatible']) + be64(f['compatible']) + be64(f['autoclear'])
            h += be32(f['refcount_order']) + be32(f['header_length'])
            h += bytes([f['compression_type']]) + b'\0' * 7
        h += self.extensions + b'\0' * 8
        if self.backing_name:
            h += self.backing_name
        return h

    def build(self):
        img = bytearray(self.clusters * CS)
        h = self.header()
        img[0:len(h)] = h[:CS]
        for i, e in enumerate(self.reftable):
            img[CS + 8 * i:CS + 8 * i + 8] = be64(e)
        for i, r in enumerate(self.refcounts):
            img[2 * CS + 2 * i:2 * CS + 2 * i + 2] = struct.pack('>H', r)
        for i, e in enumerate(self.l1):
            img[3 * CS + 8 * i:3 * CS + 8 * i + 8] = be64(e)
        for i, e in self.l2.items():
            img[4 * CS + 8 * i:4 * CS + 8 * i + 8] = be64(e)
        img[5 * CS:7 * CS] = b'\xa5' * (2 * CS)
        img[7 * CS:7 * CS + len(self.compressed)] = self.compressed
        img += self.tail
        if self.truncate_to is not None:
            del img[self.truncate_to:]
        return bytes(img)


def cases():
    """Yield (name, Image, expect)."""
    def mk(**kw):
        im = Image(kw.pop('version', 3))
        for k, v in kw.items():
            im.f[k] = v
        return im

    yield 'valid', Image(), 'ok'
    yield 'valid-v2', Image(2), 'ok'
    im = Image()
    im.f['cluster_bits'] = 8
    yield 'cluster-bits-small', im, 'open'
    yield 'cluster-bits-huge', mk(cluster_bits=31), 'open'
    im = Image()
    im.version = 4
    yield 'version-4', im, 'open'
    yield 'header-length-short', mk(header_length=96), 'open'
    yield 'header-length-huge', mk(header_length=0x20000), 'open'
    yield 'header-length-odd', mk(header_length=113), 'open'
    yield 'unknown-incompat-bit', mk(incompatible=1 << 13), 'open'
    yield 'extended-l2', mk(incompatible=1 << 4), 'open'
    yield 'external-data-file', mk(incompatible=1 << 2), 'open'
    yield 'bad-compression-type', mk(incompatible=1 << 3, compression_type=9), 'open'
    yield 'refcount-order-7', mk(refcount_order=7), 'open'
    yield 'encrypted', mk(crypt_method=1), 'open'
    # iotests 080 / CVE-2014-0143: L1 size and offsets
    yield 'l1-size-huge', mk(l1_size=0x7fffffff), 'open'
    yield 'l1-size-too-small', mk(l1_size=0), 'open'
    yield 'l1-offset-unaligned', mk(l1_table_offset=3 * CS + 0x1234), 'open'
    yield 'l1-past-eof', mk(l1_table_offset=0x7fff0000), 'open'
    yield 'l1-offset-overflow', mk(l1_table_offset=0xffffffffffff0000), 'open'
    im = Image()
    im.size = 1 << 63
    yield 'size-overflow', im, 'open'
    im = Image()
    im.size = (1 << 62)
    yield 'size-needs-huge-l1', im, 'open'
    # refcount table (CVE-2014-0144)
    yield 'reftable-unaligned', mk(refcount_table_offset=CS + 512), 'open'
    yield 'reftable-zero', mk(refcount_table_offset=0), 'open'
    yield 'reftable-past-eof', mk(refcount_table_offset=0x100000000), 'open'
    yield 'reftable-too-many-clusters', mk(refcount_table_clusters=0xffffff), 'open'
    yield 'reftable-no-clusters', mk(refcount_table_clusters=0), 'open'
    im = Image()
    im.reftable = [2 * CS + 7]
    yield 'refblock-unaligned', im, 'open'
    # snapshot table (CVE-2014-0145/0146)
    yield 'snapshots-too-many', mk(nb_snapshots=0x7fffffff, snapshots_offset=CS * 8), 'open'
    yield 'snapshots-unaligned', mk(nb_snapshots=1, snapshots_offset=CS + 1), 'open'
    yield 'snapshots-past-eof', mk(nb_snapshots=1000, snapshots_offset=CS * 7), 'open'
    im = mk(nb_snapshots=1, snapshots_offset=CS * 8)
    # one entry whose extra data and name overrun everything
    im.tail = be64(3 * CS) + be32(1) + struct.pack('>HH', 0xffff, 0xffff) + b'\0' * 16 + \
        be32(0) + be32(0x7fffffff) + b'\0' * (CS - 40)
    yield 'snapshot-extra-huge', im, 'open'
    im = mk(nb_snapshots=1, snapshots_offset=CS * 8)
    im.tail = be64(3 * CS) + be32(0x7fffffff) + struct.pack('>HH', 1, 1) + b'\0' * 16 + \
        be32(0) + be32(16) + b'\0' * 16 + b'1a' + b'\0' * (CS - 58)
    yield 'snapshot-l1-huge', im, 'open'
    im = mk(nb_snapshots=1, snapshots_offset=CS * 8)
    im.tail = be64(3 * CS + 5) + be32(1) + struct.pack('>HH', 1, 1) + b'\0' * 16 + \
        be32(0) + be32(16) + b'\0' * 16 + b'1a' + b'\0' * (CS - 58)
    yield 'snapshot-l1-unaligned', im, 'open'
    # backing file name (CVE-2014-0147 class)
    im = mk(backing_file_offset=0x200, backing_file_size=1024)
    yield 'backing-name-too-long', im, 'open'
    im = mk(backing_file_offset=CS - 10, backing_file_size=100)
    yield 'backing-name-outside-cluster', im, 'open'
    # header extensions
    im = Image()
    im.extensions = be32(0xe2792aca) + be32(0xfffffff0)
    yield 'extension-length-overflow', im, 'open'
    im = Image()
    im.extensions = be32(0xe2792aca) + be32(200) + b'x' * 200
    yield 'backing-format-too-long', im, 'open'
    # tables pointing to bad places: reads must fail cleanly (CVE-2014-0148 class)
    im = Image()
    im.l1 = [0x7fff0000 | (1 << 63)]
    yield 'l2-table-past-eof', im, 'io'
    im = Image()
    im.l1 = [4 * CS + 0x300 | (1 << 63)]
    yield 'l2-table-unaligned', im, 'io'
    im = Image()
    im.l2[0] = 0x7fff0000 | (1 << 63)
    yield 'l2-entry-past-eof', im, 'io'
    im = Image()
    im.l2[0] = 0 | (1 << 63)
    yield 'l2-entry-copied-at-zero', im, 'io'
    im = Image()
    im.l2[0] = 0x200 | (1 << 63)
    yield 'l2-entry-in-header', im, 'io'
    im = Image()
    im.l2[1] = 6 * CS + 0x1200 | (1 << 63)
    yield 'l2-entry-unaligned', im, 'io'
    im = Image()
    x = 62 - 8
    im.l2[2] = (1 << 62) | (5 << x) | 0x7fff0000
    yield 'compressed-past-eof', im, 'io'
    im = Image()
    im.compressed = b'\xff' * 200
    yield 'compressed-garbage', im, 'io'
    im = Image()
    im.l2[2] = (1 << 62) | (((1 << 8) - 1) << (62 - 8)) | (7 * CS)
    im.compressed = zlib.compress(b'x' * 100)[2:-4][:50]
    yield 'compressed-truncated', im, 'io'
    # no refcount block for the first clusters: allocation must not pick the
    # header cluster (the fuzzer found a hang there)
    im = Image()
    im.reftable = [0]
    yield 'refcount-block-missing', im, 'io'
    im = Image()
    im.truncate_to = 200
    yield 'file-truncated', im, 'open'
    im = Image()
    im.truncate_to = 40
    yield 'file-tiny', im, 'open'


def make_corpus(directory):
    out = []
    for name, im, expect in cases():
        path = os.path.join(directory, name + '.qcow2')
        with open(path, 'wb') as f:
            f.write(im.build())
        out.append((name, path, expect))
    return out


if __name__ == '__main__':
    import sys
    for name, path, expect in make_corpus(sys.argv[1] if len(sys.argv) > 1 else '.'):
        print(expect, path)
