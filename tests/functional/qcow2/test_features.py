#!/usr/bin/env python3
"""qcow2 features beyond plain I/O, each checked against qemu-img:
create (byte-identical layout, info), preallocation, compressed writes
(zlib, zstd), lazy refcounts and crash repair (docs/qcow2.md invariants 3-4),
check and repair of leaks / refcount errors / OFLAG_COPIED, internal
snapshots in both directions, resize, amend, measure, change of the backing
file, make_empty.

usage: test_features.py QCOW2_IO"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

QCOW2_IO = sys.argv[1]
TMP = tempfile.mkdtemp(prefix='vd-qcow2-feat-')
passed = []
tests = []


def run(args, ok=(0,)):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode not in ok:
        raise RuntimeError('%s -> %d\n%s%s' % (' '.join(args), p.returncode, p.stdout[-3000:],
                                               p.stderr[-3000:]))
    return p


def path(name):
    return os.path.join(TMP, name)


def vio(img, *cmds, flags=(), ok=(0,)):
    args = [QCOW2_IO] + list(flags) + [img]
    for c in cmds:
        args += ['-c', c]
    return run(args, ok)


def check_clean(img):
    run(['qemu-img', 'check', '-q', img])


def qinfo(img):
    return json.loads(run(['qemu-img', 'info', '--output=json', '-U', img]).stdout)


def test(fn):
    tests.append(fn)
    return fn


@test
def create_identical():
    cases = ['size=1G', 'size=1G,compat=0.10', 'size=0', 'size=100M,cluster_size=512',
             'size=64M,cluster_size=2M,refcount_bits=1', 'size=64M,refcount_bits=64',
             'size=10M,lazy_refcounts=on', 'size=10M,compression_type=zstd',
             'size=1M,cluster_size=4k,refcount_bits=8,compat=1.1']
    for i, o in enumerate(cases):
        a, b = path('c%d-v.qcow2' % i), path('c%d-q.qcow2' % i)
        run([QCOW2_IO, 'create', a, o])
        run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', o, b])
        check_clean(a)
        ia, ib = qinfo(a), qinfo(b)
        for k in ('virtual-size', 'cluster-size', 'format-specific', 'dirty-flag'):
            assert ia.get(k) == ib.get(k), (o, k, ia.get(k), ib.get(k))
        if open(a, 'rb').read() != open(b, 'rb').read():
            raise AssertionError('create %s: image differs from qemu-img\'s' % o)
        # vdisk's own info agrees with qemu-img's
        mine = json.loads(vio(a, 'info', flags=['-r']).stdout)
        for k in ('virtual-size', 'cluster-size', 'format-specific', 'dirty-flag'):
            assert mine.get(k) == ib.get(k), (o, k, mine.get(k), ib.get(k))
    base = path('base.raw')
    with open(base, 'wb') as f:
        f.truncate(5 * 1024 * 1024)
    a, b = path('cb-v.qcow2'), path('cb-q.qcow2')
    run([QCOW2_IO, 'create', a, 'backing_file=%s,backing_fmt=raw' % base])
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', b])
    assert open(a, 'rb').read() == open(b, 'rb').read(), 'backing create differs'
    # bad options fail cleanly
    for o in ('size=1M,cluster_size=1000', 'size=1M,compat=0.10,refcount_bits=8',
              'size=1M,compat=0.10,lazy_refcounts=on', 'size=1M,refcount_bits=128',
              'size=1M,compression_type=lzo', 'size=1M,preallocation=foo', 'size=1M,bogus=1'):
        p = run([QCOW2_IO, 'create', path('bad.qcow2'), o], ok=(1,))
        assert 'qcow2-io:' in p.stderr, p.stderr


@test
def preallocation():
    for mode in ('metadata', 'falloc', 'full'):
        for cs in ('64k', '512'):
            img = path('pre-%s-%s.qcow2' % (mode, cs))
            run([QCOW2_IO, 'create', img, 'size=3M,preallocation=%s,cluster_size=%s' % (mode, cs)])
            check_clean(img)
            m = json.loads(run(['qemu-img', 'map', '--output=json', img]).stdout)
            assert all(e['data'] for e in m), (mode, m[:3])
            run(['qemu-io', '-c', 'read -P 0 0 3M', img])
            vio(img, 'write -P 0x42 100k 1M', 'read -P 0x42 100k 1M')
            check_clean(img)
            run(['qemu-io', '-c', 'read -P 0x42 100k 1M', img])


@test
def compressed_writes():
    for ctype in ('zlib', 'zstd'):
        img = path('comp-%s.qcow2' % ctype)
        run([QCOW2_IO, 'create', img, 'size=4M,compression_type=%s' % ctype])
        vio(img, 'write -c -P 0x33 0 64k', 'write -c -P 0x44 128k 64k', 'write -P 0x55 4k 1k',
            'write -c -P 0x66 192k 64k', 'write -z 192k 64k')
        check_clean(img)
        r = run(['qemu-img', 'check', img]).stdout
        assert 'compressed' in r
        run(['qemu-io', '-c', 'read -P 0x33 0 4k', '-c', 'read -P 0x55 4k 1k',
             '-c', 'read -P 0x33 5k 59k', '-c', 'read -P 0x44 128k 64k',
             '-c', 'read -P 0 192k 64k', img])
        # and qemu's compressed clusters read back through vdisk
        q = path('qcomp-%s.qcow2' % ctype)
        run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'compression_type=' + ctype, q, '4M'])
        run(['qemu-io', '-c', 'write -c -P 0x77 64k 64k', q])
        vio(q, 'read -P 0x77 64k 64k', 'read -P 0 0 64k', flags=['-r'])


@test
def lazy_refcounts_crash_repair():
    img = path('lazy.qcow2')
    run([QCOW2_IO, 'create', img, 'size=16M,lazy_refcounts=on'])
    vio(img, 'write -P 0x21 0 1M', 'flush', 'write -P 0x22 2M 3M', 'abort')
    info = qinfo(img)
    assert info['dirty-flag'] is True, info
    p = run(['qemu-img', 'check', img], ok=(0, 3))   # leaks allowed, no corruption
    # invariant 4: a read-write open repairs the image before use
    vio(img, 'read -P 0x21 0 1M')
    assert qinfo(img)['dirty-flag'] is False
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x21 0 1M', img])
    # invariant 3: after a quiet period the image is marked clean again
    vio(img, 'write -P 0x23 8M 64k', 'sleep 6500', 'abort')
    assert qinfo(img)['dirty-flag'] is False
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x23 8M 64k', img])
    # without lazy refcounts a crash leaves at most leaks
    img2 = path('nolazy.qcow2')
    run([QCOW2_IO, 'create', img2, 'size=16M'])
    vio(img2, 'write -P 0x31 0 1M', 'flush', 'write -P 0x32 2M 3M', 'discard 0 64k', 'abort')
    run(['qemu-img', 'check', img2], ok=(0, 3))
    assert qinfo(img2)['dirty-flag'] is False


def set_refcount(img, cluster, value):
    with open(img, 'r+b') as f:
        h = f.read(112)
        cbits = struct.unpack('>I', h[20:24])[0]
        rt = struct.unpack('>Q', h[48:56])[0]
        cs = 1 << cbits
        per = cs * 8 // 16
        f.seek(rt + 8 * (cluster // per))
        rb = struct.unpack('>Q', f.read(8))[0]
        f.seek(rb + 2 * (cluster % per))
        f.write(struct.pack('>H', value))


@test
def check_and_repair():
    img = path('chk.qcow2')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', img, '16M'])
    run(['qemu-io', '-c', 'write -P 0x12 0 256k', img])
    size = os.path.getsize(img)
    cs = 65536
    # a leak: one more cluster at the end with refcount 1
    with open(img, 'ab') as f:
        f.truncate(size + cs)
    set_refcount(img, size // cs, 1)
    p = vio(img, 'check', flags=['-r'], ok=(1,))
    assert 'leaks=1' in p.stdout, p.stdout
    run(['qemu-img', 'check', img], ok=(3,))
    vio(img, 'check -r leaks', flags=['--check'])
    check_clean(img)
    # a refcount error: a data cluster with refcount 0 (5th cluster = first data)
    set_refcount(img, 4, 0)
    run(['qemu-img', 'check', img], ok=(2,))
    p = vio(img, 'check', flags=['-r', '--check'], ok=(1,))
    assert 'corruptions=0' not in p.stdout, p.stdout
    vio(img, 'check -r all', flags=['--check'])
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x12 0 256k', img])
    # an OFLAG_COPIED error: refcount 2 on a cluster whose entry says COPIED
    set_refcount(img, 4, 2)
    run(['qemu-img', 'check', img], ok=(2, 3))
    vio(img, 'check -r all', flags=['--check'])
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x12 0 256k', img])


@test
def snapshots():
    img = path('snap.qcow2')
    run([QCOW2_IO, 'create', img, 'size=8M'])
    vio(img, 'write -P 0x11 0 1M', 'snapshot_create one', 'write -P 0x22 64k 64k',
        'write -P 0x23 4M 64k', 'snapshot_create two', 'write -z 0 64k')
    check_clean(img)
    lst = run(['qemu-img', 'snapshot', '-l', img]).stdout
    assert ' one ' in lst and ' two ' in lst, lst
    # qemu reads what vdisk wrote, and applies vdisk's snapshot
    run(['qemu-io', '-c', 'read -P 0 0 64k', '-c', 'read -P 0x22 64k 64k', img])
    q = path('snapq.qcow2')
    shutil.copy(img, q)
    run(['qemu-img', 'snapshot', '-a', 'one', q])
    run(['qemu-io', '-c', 'read -P 0x11 0 1M', '-c', 'read -P 0 4M 64k', q])
    vio(img, 'snapshot_apply one', 'read -P 0x11 0 1M', 'read -P 0 4M 64k')
    check_clean(img)
    vio(img, 'snapshot_apply two', 'read -P 0x22 64k 64k', 'read -P 0x23 4M 64k',
        'write -P 0x24 4M 4k')
    check_clean(img)
    vio(img, 'snapshot_delete one')
    check_clean(img)
    vio(img, 'snapshot_delete two', 'read -P 0x24 4M 4k')
    check_clean(img)
    assert 'snapshots' not in qinfo(img)
    # a snapshot made by qemu-img, applied by vdisk
    q2 = path('snapq2.qcow2')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', q2, '8M'])
    run(['qemu-io', '-c', 'write -P 0x55 0 128k', q2])
    run(['qemu-img', 'snapshot', '-c', 'qs', q2])
    run(['qemu-io', '-c', 'write -P 0x66 0 128k', q2])
    p = vio(q2, 'snapshot_list', 'snapshot_apply qs', 'read -P 0x55 0 128k')
    assert 'qs' in p.stdout
    check_clean(q2)


@test
def resize():
    img = path('rs.qcow2')
    run([QCOW2_IO, 'create', img, 'size=1M'])
    vio(img, 'write -P 0x5 0 1M', 'truncate 3G', 'write -P 0x6 2G 64k')
    check_clean(img)
    assert qinfo(img)['virtual-size'] == 3 * 1024 ** 3
    run(['qemu-io', '-c', 'read -P 0x6 2G 64k', '-c', 'read -P 0x5 0 1M', img])
    # shrink only over unallocated space
    vio(img, 'truncate 100M', ok=(1,))
    vio(img, 'discard 2G 64k', 'truncate 2G')
    assert qinfo(img)['virtual-size'] == 2 * 1024 ** 3
    check_clean(img)


@test
def amend():
    img = path('am.qcow2')
    run([QCOW2_IO, 'create', img, 'size=4M'])
    vio(img, 'write -P 0x7 0 256k', 'write -z 64k 64k', 'amend lazy_refcounts=on')
    assert qinfo(img)['format-specific']['data']['lazy-refcounts'] is True
    vio(img, 'amend compat=0.10', ok=(1,))           # lazy refcounts need v3
    vio(img, 'amend lazy_refcounts=off', 'amend compat=0.10')
    i = qinfo(img)
    assert i['format-specific']['data']['compat'] == '0.10', i
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x7 0 64k', '-c', 'read -P 0 64k 64k',
         '-c', 'read -P 0x7 128k 128k', img])
    vio(img, 'amend compat=1.1')
    assert qinfo(img)['format-specific']['data']['compat'] == '1.1'
    check_clean(img)
    # refcount widths: rewrite every refcount
    for bits in (1, 64, 8, 16):
        vio(img, 'amend refcount_bits=%d' % bits, 'write -P 0x%x %dk 64k' % (bits, 512 + bits))
        assert qinfo(img)['format-specific']['data']['refcount-bits'] == bits
        check_clean(img)
        run(['qemu-io', '-c', 'read -P 0x7 0 64k', '-c', 'read -P 0x%x %dk 64k' % (bits, 512 + bits),
             img])
    # a snapshot makes refcounts of 2: they do not fit into one bit
    vio(img, 'snapshot_create s', 'amend refcount_bits=1', ok=(1,))
    check_clean(img)
    vio(img, 'amend refcount_bits=16,compat=0.10')
    check_clean(img)


@test
def measure():
    img = path('ms.qcow2')
    run([QCOW2_IO, 'create', img, 'size=1M'])
    for o in ('size=1G', 'size=100G,cluster_size=2M', 'size=10G,refcount_bits=1',
              'size=1G,preallocation=full', 'size=1G,cluster_size=512,refcount_bits=64'):
        mine = vio(img, 'measure ' + o, flags=['-r']).stdout
        args = ['qemu-img', 'measure', '-O', 'qcow2']
        opts = [x for x in o.split(',') if not x.startswith('size=')]
        if opts:
            args += ['-o', ','.join(opts)]
        args += ['--size', o.split(',')[0][5:]]
        theirs = run(args).stdout
        assert mine.split() == theirs.split(), (o, mine, theirs)


@test
def backing_and_make_empty():
    base = path('be-base.qcow2')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', base, '4M'])
    run(['qemu-io', '-c', 'write -P 0x61 0 4M', base])
    img = path('be.qcow2')
    run([QCOW2_IO, 'create', img, 'backing_file=%s,backing_fmt=qcow2' % base])
    assert qinfo(img)['virtual-size'] == 4 * 1024 * 1024
    vio(img, 'write -P 0x62 1000 5000', 'read -P 0x61 0 1000', 'read -P 0x62 1000 5000',
        'read -P 0x61 6000 1M')
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x61 0 1000', '-c', 'read -P 0x62 1000 5000',
         '-c', 'read -P 0x61 6000 59536', img])
    vio(img, 'make_empty', 'read -P 0x61 0 4M')
    check_clean(img)
    other = path('be-other.raw')
    with open(other, 'wb') as f:
        f.truncate(4 * 1024 * 1024)
    vio(img, 'change_backing %s raw' % other)
    i = qinfo(img)
    assert i['backing-filename'] == other and i.get('backing-filename-format') == 'raw', i
    run(['qemu-io', '-c', 'read -P 0 0 4M', img])


def main():
    only = sys.argv[2:]
    try:
        for fn in tests:
            if only and fn.__name__ not in only:
                continue
            fn()
            passed.append(fn.__name__)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print('qcow2 features: %d groups passed: %s' % (len(passed), ', '.join(passed)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
