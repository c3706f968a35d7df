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
VDISK_IO = None
if '--vdisk-io' in sys.argv:
    i = sys.argv.index('--vdisk-io')
    VDISK_IO = sys.argv[i + 1]
    del sys.argv[i:i + 2]
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
def compressed_large_clusters():
    # clusters >= 16 KiB are (de)compressed on the thread pool: images written
    # that way must be what QEMU reads, and read back through vdisk
    for ctype in ('zlib', 'zstd'):
        for cs in (64 << 10, 2 << 20):
            img = path('compl-%s-%d.qcow2' % (ctype, cs))
            ref = path('compl-%s-%d.raw' % (ctype, cs))
            size = 3 * cs + cs // 2
            run([QCOW2_IO, 'create', img, 'size=%d,cluster_size=%d,compression_type=%s'
                 % (size, cs, ctype)])
            run(['qemu-img', 'create', '-q', '-f', 'raw', ref, str(size)])
            cmds = ['write -c -P 0x%02x %d %d' % (0x21 + i, i * cs, cs) for i in range(3)]
            cmds.append('write -c -P 0x5a %d %d' % (3 * cs, cs // 2))
            cmds.append('write -P 0x7e %d 4k' % (cs + 512))
            vio(img, *cmds)
            qargs = ['qemu-io', '-f', 'raw']
            for c in cmds:
                qargs += ['-c', c.replace('-c ', '')]
            run(qargs + [ref])
            check_clean(img)
            assert 'compressed' in run(['qemu-img', 'check', img]).stdout
            run(['qemu-img', 'compare', '-q', '-f', 'qcow2', '-F', 'raw', img, ref])
            vio(img, 'read -P 0x21 0 %d' % cs, 'read -P 0x7e %d 4k' % (cs + 512),
                'read -P 0x22 %d 512' % cs, 'read -P 0x23 %d %d' % (2 * cs, cs),
                'read -P 0x5a %d %d' % (3 * cs, cs // 2), flags=['-r'])


def host_is_hole(img, off, length):
    """True when [off, off+length) of the file holds no data (SEEK_DATA)."""
    fd = os.open(img, os.O_RDONLY)
    try:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            return True   # ENXIO: only a hole up to the end
        return d >= off + length
    finally:
        os.close(fd)


def qmap(img):
    return json.loads(run(['qemu-img', 'map', '--output=json', '-U', img]).stdout)


def data_offset(img, guest):
    for e in qmap(img):
        if e['start'] <= guest < e['start'] + e['length'] and 'offset' in e:
            return e['offset'] + guest - e['start']
    return None


def l2_entry(img, guest_cluster):
    """Raw L2 entry (first L2 table) of a guest cluster."""
    with open(img, 'rb') as f:
        hdr = f.read(104)
        cb = struct.unpack('>I', hdr[20:24])[0]
        l1_off = struct.unpack('>Q', hdr[40:48])[0]
        f.seek(l1_off)
        l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
        f.seek(l2 + 8 * guest_cluster)
        return struct.unpack('>Q', f.read(8))[0], cb


def opt_error(img, opts, message):
    r = run([QCOW2_IO, '-o', opts, img, '-c', 'read 0 4k'], ok=(1,))
    assert message in r.stderr, (opts, r.stderr)
    if VDISK_IO:
        r = run([VDISK_IO, '--image-opts', 'driver=qcow2,file.filename=%s,%s' % (img, opts),
                 '-c', 'read 0 4k'], ok=(1,))
        assert message in r.stderr, (opts, r.stderr)


@test
def runtime_option_errors():
    img = path('opts.qcow2')
    run([QCOW2_IO, 'create', img, 'size=1M'])
    opt_error(img, 'overlap-check=bogus', "unsupported value 'bogus' for qcow2 option "
              "'overlap-check'. Allowed are any of the following: none, constant, cached, all")
    opt_error(img, 'overlap-check=all', 'overlap-check=all is not supported')
    opt_error(img, 'l2-cache-entry-size=1000', 'l2-cache-entry-size=1000: L2 cache entry size '
              'must be a power of two between 512 and the cluster size (65536)')
    opt_error(img, 'l2-cache-entry-size=128k', 'l2-cache-entry-size=131072: L2 cache entry')
    opt_error(img, 'l2-cache-entry-size=4k', 'l2-cache-entry-size=4096 is not supported')
    opt_error(img, 'cache-clean-interval=5000000000', 'cache-clean-interval=5000000000: cache '
              'clean interval too big')
    for bad in ('cache-clean-interval=soon', 'pass-discard-other=maybe',
                'pass-discard-request=2', 'discard-no-unref=x'):
        r = run([QCOW2_IO, '-o', bad, img, '-c', 'read 0 4k'], ok=(1,))
        assert bad.split('=')[0] in r.stderr, (bad, r.stderr)
    v2 = path('opts-v2.qcow2')
    run([QCOW2_IO, 'create', v2, 'size=1M,compat=0.10'])
    opt_error(v2, 'discard-no-unref=on', 'discard-no-unref is only supported since qcow2 '
              'version 3')
    # the accepted values
    for good in ('overlap-check=none', 'overlap-check=constant', 'overlap-check=cached',
                 'l2-cache-entry-size=64k', 'cache-clean-interval=0',
                 'pass-discard-request=off,pass-discard-snapshot=off,pass-discard-other=on',
                 'discard-no-unref=off'):
        run([QCOW2_IO, '-o', good, img, '-c', 'write -P 0x3c 0 8k', '-c', 'read -P 0x3c 0 8k'])
    check_clean(img)


@test
def pass_discard():
    cs = 65536
    # request: a guest discard gives the host cluster back unless turned off
    for opt, hole in (('pass-discard-request=on', True), ('pass-discard-request=off', False)):
        img = path('pdr.qcow2')
        run([QCOW2_IO, 'create', img, 'size=1M'])
        vio(img, 'write -P 0x11 0 64k')
        host = data_offset(img, 0)
        assert host and not host_is_hole(img, host, cs)
        vio(img, 'discard 0 64k', flags=['-o', opt])
        check_clean(img)
        assert host_is_hole(img, host, cs) == hole, opt
        run(['qemu-io', '-c', 'read -P 0 0 64k', img])
    # snapshot: clusters freed by deleting a snapshot (default on)
    for opt, hole in (('pass-discard-snapshot=on', True), ('pass-discard-snapshot=off', False)):
        img = path('pds.qcow2')
        run([QCOW2_IO, 'create', img, 'size=1M'])
        vio(img, 'write -P 0x21 0 64k', 'snapshot_create s1', 'write -P 0x22 0 64k')
        cur = data_offset(img, 0)
        # the snapshot keeps the first copy: the other cluster holding 0x21
        old = [o for o in range(cs, os.path.getsize(img), cs)
               if o != cur and first_byte(img, o) == 0x21 and not host_is_hole(img, o, cs)]
        assert len(old) == 1, old
        old = old[0]
        vio(img, 'snapshot_delete s1', flags=['-o', opt])
        check_clean(img)
        assert host_is_hole(img, old, cs) == hole, opt
        run(['qemu-io', '-c', 'read -P 0x22 0 64k', img])
    # other: a compressed cluster replaced by a normal write (default off)
    for opt, hole in (('pass-discard-other=off', False), ('pass-discard-other=on', True)):
        img = path('pdo.qcow2')
        run([QCOW2_IO, 'create', img, 'size=1M'])
        vio(img, 'write -c -P 0x31 0 64k')
        entry, cb = l2_entry(img, 0)
        assert entry & (1 << 62)
        host = (entry & ((1 << (62 - (cb - 8))) - 1)) & ~(cs - 1)
        assert not host_is_hole(img, host, cs)
        vio(img, 'write -P 0x32 0 64k', flags=['-o', opt])
        check_clean(img)
        assert host_is_hole(img, host, cs) == hole, opt
        run(['qemu-io', '-c', 'read -P 0x32 0 64k', img])


def first_byte(img, off):
    with open(img, 'rb') as f:
        f.seek(off)
        return f.read(1)[0]


@test
def discard_no_unref():
    cs = 65536
    img = path('dnu.qcow2')
    run([QCOW2_IO, 'create', img, 'size=1M'])
    vio(img, 'write -P 0x41 0 128k')
    host = data_offset(img, 0)
    vio(img, 'discard 0 64k', 'write -z -u 64k 64k', flags=['-o', 'discard-no-unref=on'])
    check_clean(img)
    for e in qmap(img):
        if e['start'] < 128 * 1024:
            # still allocated (offset kept), reads as zeros
            assert e['zero'] and not e['data'] and e.get('offset') == host + e['start'], e
    run(['qemu-io', '-c', 'read -P 0 0 128k', img])
    assert host_is_hole(img, host, cs)          # pass-discard-request (unmap) dropped the data
    vio(img, 'write -P 0x42 0 128k')
    assert data_offset(img, 0) == host and data_offset(img, cs) == host + cs  # reused in place
    check_clean(img)
    run(['qemu-io', '-c', 'read -P 0x42 0 128k', img])
    # without it the clusters are freed
    vio(img, 'discard 0 128k')
    check_clean(img)
    assert data_offset(img, 0) is None


@test
def cache_clean_interval():
    img = path('cci.qcow2')
    run([QCOW2_IO, 'create', img, 'size=64M,cluster_size=4k'])
    vio(img, 'write -P 0x51 0 4k', 'write -P 0x52 32M 4k')
    # interval 1 s: the first round marks, the second (2 s) drops the tables
    for opt, cleaned, ms in (('cache-clean-interval=1', True, 3500),
                             ('cache-clean-interval=0', False, 1200), ('', False, 1200)):
        flags = ['-o', opt] if opt else []
        r = vio(img, 'read -P 0x51 0 4k', 'read -P 0x52 32M 4k', 'sleep %d' % ms, 'qcow2_stats',
                'read -P 0x51 0 4k', flags=flags)
        n = int(r.stdout.split('cache_cleaned=')[1].split()[0])
        assert (n >= 2) == cleaned and (n == 0) != cleaned, (opt, n)
    check_clean(img)


@test
def overlap_check():
    # an L1 entry pointing at the refcount table: writing "the L2 table"
    # there must be refused unless overlap-check=none
    # (and at a refcount block: refcount block vs L2 table, which only
    # "cached" checks)
    for target, opt, ok in (('reftable', 'overlap-check=cached', False),
                            ('reftable', 'overlap-check=constant', False),
                            ('reftable', 'overlap-check=none', True),
                            ('refblock', '', False),
                            ('refblock', 'overlap-check=cached', False),
                            ('refblock', 'overlap-check=constant', True)):
        img = path('ol.qcow2')
        run(['qemu-img', 'create', '-q', '-f', 'qcow2', img, '1M'])
        run(['qemu-io', '-c', 'write -P 0x61 0 64k', img])
        with open(img, 'r+b') as f:
            hdr = f.read(104)
            l1_off = struct.unpack('>Q', hdr[40:48])[0]
            rt_off = struct.unpack('>Q', hdr[48:56])[0]
            f.seek(rt_off)
            rb_off = struct.unpack('>Q', f.read(8))[0]
            f.seek(l1_off)
            f.write(struct.pack('>Q', (rt_off if target == 'reftable' else rb_off) | (1 << 63)))
        # the L2 table is written back at the flush: the write itself succeeds
        flags = ['-o', opt] if opt else []
        r = run([QCOW2_IO] + flags + [img, '-c', 'write -P 0x62 0 4k', '-c', 'flush'],
                ok=(0, 1))
        refused = 'preventing a metadata write' in r.stderr
        assert refused != ok, (opt, r.stderr)
        if refused:
            assert qinfo(img)['format-specific']['data'].get('corrupt'), opt


@test
def lazy_refcounts_crash_repair():
    img = path('lazy.qcow2')
    run([QCOW2_IO, 'create', img, 'size=16M,lazy_refcounts=on'])
    vio(img, 'write -P 0x21 0 1M', 'flush', 'write -P 0x22 2M 3M', 'abort')
    info = qinfo(img)
    assert info['dirty-flag'] is True, info
    # Refcount blocks are written at clean/close/idle only (QEMU's lazy
    # refcounts), so a crashed image may hold references whose refcount is
    # still 0, exactly as QEMU leaves one: check reports those and nothing
    # else, and QEMU's repair fixes them.
    p = run(['qemu-img', 'check', img], ok=(0, 2, 3))
    for line in p.stdout.splitlines():
        if line.startswith('ERROR'):
            assert ('refcount=0 reference=1' in line or
                    ('OFLAG_COPIED data cluster' in line and line.endswith('refcount=0'))), line
    cp = path('lazy-copy.qcow2')
    shutil.copyfile(img, cp)
    run(['qemu-img', 'check', '-r', 'all', cp], ok=(0, 3))
    check_clean(cp)
    run(['qemu-io', '-c', 'read -P 0x21 0 1M', cp])
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


@test
def eviction_error_not_reported_to_reads():
    """A dirty L2 table whose write-back fails while evicting keeps its error
    for the next flush; a read that needed the cache slot still succeeds."""
    if not VDISK_IO:
        return
    img = path('evict.qcow2')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', img, '64M'])
    # five L2 tables on disk
    run(['qemu-io', '-f', 'qcow2', '-t', 'unsafe'] +
        sum([['-c', 'write -P %d %dM 4k' % (i + 1, 2 * i)] for i in range(5)], []) + [img])
    opts = ('driver=qcow2,l2-cache-size=16k,metadata-writeback-interval=0,'
            'file.driver=blkdebug,file.image.driver=file,file.image.filename=%s,'
            'file.inject-error.0.event=l2_update,file.inject-error.0.iotype=write' % img)
    # dirty the four cached L2 tables (allocating writes), then read through
    # the fifth table: every victim is dirty and cannot be written
    cmds = ['write -P 0x11 8k 4k', 'write -P 0x12 2060k 4k', 'write -P 0x13 4104k 4k',
            'write -P 0x14 6152k 4k', 'read -P 5 8M 4k', 'read -P 0x12 2060k 4k']
    args = [VDISK_IO, '-t', 'writeback', '--image-opts', opts]
    for c in cmds:
        args += ['-c', c]
    r = run(args)
    assert 'failed' not in r.stdout + r.stderr, r.stdout + r.stderr
    r = run(args + ['-c', 'flush'], ok=(1,))   # the kept error belongs to the flush
    assert 'flush failed' in (r.stdout + r.stderr).lower() or r.returncode == 1
    run(['qemu-img', 'check', img], ok=(0, 3))


@test
def small_cache_rewrites_in_place():
    """Rewrites in place with a two-table L2 cache over 32 tables: the entries
    of a table not cached are read without s->lock (write.c
    write_in_place_uncached), concurrently with each other, with cached
    look-ups and with allocating writes; everything reads back."""
    if not VDISK_IO:
        return
    img = path('smallcache.qcow2')
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
         'cluster_size=4k,preallocation=metadata', img, '64M'])
    mb2 = 2 * 1024 * 1024
    writes = []
    for i in range(192):
        off = ((i * 37) % 32) * mb2 + (i // 32) * 16384 + (i % 2) * 1024
        writes.append((off, 4096 + (i % 3) * 2048, i % 250 + 1))
    # and allocating writes into a fresh image region after a discard
    cmds = ['discard 0 64k']
    for n, (off, ln, pat) in enumerate(writes):
        cmds.append('aio_write -P %d %d %d' % (pat, off, ln))
        if n % 16 == 15:
            cmds.append('aio_flush')
    cmds += ['aio_write -P 7 0 8k', 'aio_flush']
    opts = 'driver=qcow2,l2-cache-size=8k,file.driver=file,file.filename=%s' % img
    args = [VDISK_IO, '-t', 'none', '--image-opts', opts]
    for c in cmds:
        args += ['-c', c]
    r = run(args)
    assert 'failed' not in r.stdout + r.stderr, r.stdout + r.stderr
    check_clean(img)
    reads = []
    for off, ln, pat in writes[1:]:   # the first lies in the discarded range
        reads += ['-c', 'read -P %d %d %d' % (pat, off, ln)]
    reads += ['-c', 'read -P 7 0 8k']
    r = run(['qemu-io', '-f', 'qcow2', '-r'] + reads + [img])
    assert 'verification failed' not in r.stdout, r.stdout


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
