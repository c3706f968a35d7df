#!/usr/bin/env python3
"""QED features through vdisk-img / vdisk-io with qemu-img / qemu-io as oracles:
create (byte-identical to qemu-img), info, check output and repair, need-check
after a crash and its idle timer, the sector-0 / sector-1 reordering case,
zero clusters over a backing file (where QEMU 7.2 is wrong), backing files
shorter than the image, header feature bits, resize, rebase, amend, commit,
convert, map and compare.

usage: test_features.py VDISK_IMG VDISK_IO
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

VI, VIO = sys.argv[1], sys.argv[2]
TMP = None


def run(args, ok=(0,)):
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if p.returncode not in ok:
        raise SystemExit('FAIL: %s exited %d:\n%s%s' % (' '.join(str(a) for a in args),
                                                       p.returncode, p.stdout, p.stderr))
    return p


def path(name):
    return os.path.join(TMP, name)


def vio(img, *cmds, extra=(), ok=(0,)):
    args = [VIO] + list(extra)
    for c in cmds:
        args += ['-c', c]
    p = run(args + [img], ok=ok)
    if ok == (0,) and ('fail' in p.stdout.lower() or 'error' in p.stdout.lower()):
        raise SystemExit('FAIL: vdisk-io %s:\n%s' % (cmds, p.stdout))
    return p


def qio(img, *cmds, fmt='qed'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    return run(args + [img]).stdout


def check_clean(img):
    run(['qemu-img', 'check', img])


def features_of(img):
    with open(img, 'rb') as f:
        f.seek(16)
        return struct.unpack('<Q', f.read(8))[0]


def norm(text):
    return text.replace('qemu-img', 'IMG').replace('vdisk-img', 'IMG')


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def create_identical():
    open(path('b.raw'), 'wb').truncate(1 << 20)
    run(['qemu-img', 'create', '-q', '-f', 'qed', path('bq.qed'), '4M'])
    cases = [
        ([], '4G'), ([], '1000'), ([], '0'), (['-o', 'cluster_size=4096,table_size=1'], '32M'),
        (['-o', 'cluster_size=1M,table_size=16'], '10G'), (['-o', 'table_size=2'], '1G'),
        (['-b', path('b.raw'), '-F', 'raw'], '1M'), (['-b', 'b.raw', '-F', 'raw'], None),
        (['-b', path('bq.qed'), '-F', 'qed'], '8M'),
        (['-o', 'cluster_size=4096,preallocation=falloc'], '1M'),
    ]
    for opts, size in cases:
        tail = [size] if size else []
        run(['qemu-img', 'create', '-q', '-f', 'qed'] + opts + [path('q.qed')] + tail)
        run([VI, 'create', '-q', '-f', 'qed'] + opts + [path('v.qed')] + tail)
        if open(path('q.qed'), 'rb').read() != open(path('v.qed'), 'rb').read():
            raise SystemExit('FAIL: create %s %s: not byte-identical to qemu-img' % (opts, size))
    # the same refusals as qemu-img
    for c in (['-o', 'cluster_size=3000'], ['-o', 'cluster_size=128M'], ['-o', 'table_size=32'],
              ['-o', 'table_size=3'], ['-o', 'cluster_size=4096,table_size=1']):
        size = '3G' if c[-1].endswith('table_size=1') else '1M'
        q = run(['qemu-img', 'create', '-q', '-f', 'qed'] + c + [path('e.qed'), size], ok=(1,))
        v = run([VI, 'create', '-q', '-f', 'qed'] + c + [path('e.qed'), size], ok=(1,))
        if norm(q.stderr).replace(path('e.qed') + ': ', '') != \
           norm(v.stderr).replace(path('e.qed') + ': ', ''):
            raise SystemExit('FAIL: create %s: message\n%s\nvs qemu-img\n%s' % (c, v.stderr, q.stderr))
    # QEMU refuses to reopen table_size=1 images; vdisk opens them (the spec allows them)
    run([VI, 'create', '-q', '-f', 'qed', '-o', 'cluster_size=4096,table_size=1', path('t1.qed'), '32M'])
    vio(path('t1.qed'), 'write -P 7 0 8k', 'read -P 7 0 8k')
    run([VI, 'check', path('t1.qed')])


@test
def info():
    img = path('i.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-b', path('b.raw'), '-F', 'raw', img, '2M'])
    v = json.loads(run([VI, 'info', '--output=json', img]).stdout)
    q = json.loads(run(['qemu-img', 'info', '--output=json', img]).stdout)
    for k in ('format', 'virtual-size', 'cluster-size', 'dirty-flag', 'backing-filename',
              'backing-filename-format'):
        if v.get(k) != q.get(k):
            raise SystemExit('FAIL: info %s: %r vs qemu-img %r' % (k, v.get(k), q.get(k)))
    if 'file format: qed' not in run([VI, 'info', img]).stdout:
        raise SystemExit('FAIL: info does not say "file format: qed"')


def corrupt_image():
    img = path('c.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-o', 'cluster_size=4096', img, '1M'])
    vio(img, 'write -P 1 0 8k', 'write -P 2 64k 4k')
    with open(img, 'r+b') as f:
        f.seek(4096)
        l2 = struct.unpack('<Q', f.read(8))[0]
        f.seek(l2 + 8 * 5)
        f.write(struct.pack('<Q', 0x100000))     # past the end of the file
        f.seek(l2 + 8 * 6)
        f.write(struct.pack('<Q', 0x3001))       # unaligned
        f.seek(0, 2)
        f.write(b'\0' * 8192)                     # two leaked clusters at the end
    return img


@test
def check_output():
    img = corrupt_image()
    for extra in ([], ['--output=json']):
        q = run(['qemu-img', 'check'] + extra + [img], ok=(2,))
        v = run([VI, 'check'] + extra + [img], ok=(2,))
        if norm(q.stdout) != norm(v.stdout) or norm(q.stderr) != norm(v.stderr):
            raise SystemExit('FAIL: check %s:\n%s%s\nvs qemu-img\n%s%s'
                             % (extra, v.stdout, v.stderr, q.stdout, q.stderr))
    # repair: the bad entries are cleared, the trailing leaks dropped
    v = run([VI, 'check', '-r', 'all', img])
    if '2 corruptions' not in v.stdout or '2 leaked clusters' not in v.stdout:
        raise SystemExit('FAIL: check -r all:\n%s' % v.stdout)
    check_clean(img)
    if 'verification failed' in qio(img, 'read -P 1 0 8k', 'read -P 2 64k 4k'):
        raise SystemExit('FAIL: repair lost data')


@test
def need_check_crash():
    img = path('n.qed')
    run([VI, 'create', '-q', '-f', 'qed', img, '64M'])
    vio(img, 'write -P 1 0 64k', 'flush', 'write -P 2 1M 64k', 'abort',
        extra=['-t', 'writeback'], ok=(134, -6))
    if not features_of(img) & 2:
        raise SystemExit('FAIL: need-check not set after a crash')
    # invariant 4: opened read-write, the image is checked and repaired first
    vio(img, 'read -P 1 0 64k', 'read -P 0 1M 64k')
    if features_of(img) & 2:
        raise SystemExit('FAIL: need-check still set after the repairing open')
    check_clean(img)


@test
def need_check_timer():
    img = path('tm.qed')
    run([VI, 'create', '-q', '-f', 'qed', img, '64M'])
    opts = 'driver=qed,file.filename=%s,x-need-check-delay-ms=%d'
    # short delay: the idle timer clears the flag while the image stays open
    vio(opts % (img, 50), 'write -P 1 0 64k', 'sleep 400', 'abort',
        extra=['--image-opts'], ok=(134, -6))
    if features_of(img) & 2:
        raise SystemExit('FAIL: need-check not cleared by the idle timer')
    vio(img, 'read -P 1 0 64k')
    # long delay: still set at the crash (the test above can fail)
    vio(opts % (img, 60000), 'write -P 1 1M 64k', 'sleep 400', 'abort',
        extra=['--image-opts'], ok=(134, -6))
    if not features_of(img) & 2:
        raise SystemExit('FAIL: need-check cleared too early')


@test
def reordering_sector0_sector1():
    """Guest writes sector 0 (allocation, COW of sectors 1-127 from the backing
    file), then sector 1 while the first is in flight: the second must not be
    overwritten by the first one's COW fill."""
    base = path('r.raw')
    open(base, 'wb').truncate(4 << 20)
    qio(base, 'write -P 0x70 0 4M', fmt='raw')
    img = path('r.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-b', base, '-F', 'raw', img, '4M'])
    cmds = []
    for c in range(16):
        o = c * 65536
        cmds += ['aio_write -P 0x%x %d 512' % (c + 1, o), 'aio_write -P 0x%x %d 512' % (c + 0x41, o + 512)]
    cmds.append('aio_flush')
    for c in range(16):
        o = c * 65536
        cmds += ['read -P 0x%x %d 512' % (c + 1, o), 'read -P 0x%x %d 512' % (c + 0x41, o + 512),
                 'read -P 0x70 %d %d' % (o + 1024, 65536 - 1024)]
    vio(img, *cmds)
    check_clean(img)


@test
def zero_cluster_over_backing():
    """QEMU 7.2 fills a partial write into a zero cluster from the backing file;
    vdisk fills it with zeros."""
    base = path('z.raw')
    open(base, 'wb').truncate(1 << 20)
    qio(base, 'write -P 0x70 0 1M', fmt='raw')
    img = path('z.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-o', 'cluster_size=65536', '-b', base, '-F', 'raw',
         img, '1M'])
    vio(img, 'write -z 0 128k', 'write -P 0x11 65536 512', 'read -P 0 66048 512',
        'read -P 0 0 64k', 'read -P 0x70 128k 64k')
    check_clean(img)
    if 'verification failed' in qio(img, 'read -P 0 66048 512', 'read -P 0x11 65536 512'):
        raise SystemExit('FAIL: QEMU reads the zero-filled cluster differently')


@test
def short_backing():
    base = path('s.raw')
    open(base, 'wb').truncate(100 * 512)
    qio(base, 'write -P 0x33 0 51200', fmt='raw')
    img = path('s.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-o', 'cluster_size=4096', '-b', base, '-F', 'raw',
         img, '1M'])
    vio(img, 'read -P 0x33 0 51200', 'read -P 0 51200 4096', 'write -P 1 49152 1024',
        'read -P 0x33 47k 1024', 'read -P 0x1 49152 1024', 'read -P 0x33 50176 1024',
        'read -P 0 51200 1024')
    check_clean(img)


@test
def header_features():
    img = path('h.qed')
    run([VI, 'create', '-q', '-f', 'qed', img, '1M'])
    with open(img, 'r+b') as f:
        f.seek(32)
        f.write(struct.pack('<Q', 0x80))          # unknown autoclear bit
    vio(img, 'write -P 1 0 4k')
    with open(img, 'rb') as f:
        f.seek(32)
        if struct.unpack('<Q', f.read(8))[0] != 0:
            raise SystemExit('FAIL: unknown autoclear bits not cleared on a read-write open')
    with open(img, 'r+b') as f:
        f.seek(16)
        f.write(struct.pack('<Q', 0x100))         # unknown feature bit
    p = run([VI, 'info', img], ok=(1,))
    if 'features' not in p.stderr or 'h.qed' not in p.stderr:
        raise SystemExit('FAIL: unknown feature: %s' % p.stderr)


@test
def resize():
    img = path('rs.qed')
    run([VI, 'create', '-q', '-f', 'qed', img, '1M'])
    vio(img, 'write -P 5 0 64k')
    run([VI, 'resize', img, '+3M'])
    if json.loads(run(['qemu-img', 'info', '--output=json', img]).stdout)['virtual-size'] != 4 << 20:
        raise SystemExit('FAIL: resize')
    vio(img, 'write -P 6 3M 64k', 'read -P 5 0 64k')
    run([VI, 'resize', '--shrink', img, '1M'], ok=(1,))
    check_clean(img)


@test
def rebase_amend_commit_convert_map():
    base = path('cb.raw')
    open(base, 'wb').truncate(4 << 20)
    qio(base, 'write -P 0x21 0 4M', fmt='raw')
    base2 = path('cb2.qcow2')
    run(['qemu-img', 'convert', '-O', 'qcow2', base, base2])
    img = path('cm.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-b', base, '-F', 'raw', img, '4M'])
    vio(img, 'write -P 0x22 64k 64k', 'write -z 1M 64k')
    # rebase -u writes the same header bytes as qemu-img
    q = path('cm-q.qed')
    shutil.copyfile(img, q)
    run(['qemu-img', 'rebase', '-u', '-b', base2, '-F', 'qcow2', q])
    run([VI, 'rebase', '-u', '-b', base2, '-F', 'qcow2', img])
    if open(q, 'rb').read() != open(img, 'rb').read():
        raise SystemExit('FAIL: rebase -u differs from qemu-img')
    # amend the backing file back to raw (NO_PROBE set as create does)
    run([VI, 'amend', '-o', 'backing_file=%s,backing_fmt=raw' % base, img])
    if not features_of(img) & 4:
        raise SystemExit('FAIL: amend to a raw backing file did not set NO_PROBE')
    # map as qemu-img
    a = json.loads(run([VI, 'map', '--output=json', img]).stdout)
    b = json.loads(run(['qemu-img', 'map', '--output=json', img]).stdout)
    if a != b:
        raise SystemExit('FAIL: map:\n%s\nvs qemu-img\n%s' % (a, b))
    # convert both ways and compare
    run([VI, 'convert', '-f', 'qed', '-O', 'qcow2', img, path('cv.qcow2')])
    run([VI, 'convert', '-f', 'qcow2', '-O', 'qed', path('cv.qcow2'), path('cv.qed')])
    run(['qemu-img', 'compare', img, path('cv.qcow2')])
    run(['qemu-img', 'compare', img, path('cv.qed')])
    run([VI, 'compare', img, path('cv.qed')])
    check_clean(path('cv.qed'))
    # commit into the raw base
    run([VI, 'commit', img])
    qio(base, 'read -P 0x22 64k 64k', 'read -P 0 1M 64k', 'read -P 0x21 0 64k', fmt='raw')
    check_clean(img)


@test
def safe_rebase():
    """rebase onto another backing file keeps what the guest sees."""
    b1, b2 = path('sb1.raw'), path('sb2.raw')
    for b, cmd in ((b1, 'write -P 1 0 4M'), (b2, 'write -P 2 1M 1M')):
        open(b, 'wb').truncate(4 << 20)
        qio(b, cmd, fmt='raw')
    img, ref = path('sr.qed'), path('sr-q.qed')
    run([VI, 'create', '-q', '-f', 'qed', '-b', b1, '-F', 'raw', img])
    vio(img, 'write -P 9 64k 64k', 'write -z 2M 64k')
    shutil.copyfile(img, ref)
    before = path('sr-before.raw')
    run(['qemu-img', 'convert', '-O', 'raw', img, before])
    run([VI, 'rebase', '-b', b2, '-F', 'raw', img])
    run(['qemu-img', 'rebase', '-b', b2, '-F', 'raw', ref])
    run(['qemu-img', 'compare', '-F', 'raw', img, before])
    run(['qemu-img', 'compare', img, ref])
    check_clean(img)


def main():
    global TMP
    for tool in ('qemu-img', 'qemu-io'):
        if not shutil.which(tool):
            print('SKIP: %s not found' % tool)
            return 77
    with tempfile.TemporaryDirectory(prefix='vdisk-qed-feat-', dir=os.environ.get('TMPDIR', '/var/tmp')) as t:
        TMP = t
        for fn in TESTS:
            fn()
            print('ok:', fn.__name__, flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
