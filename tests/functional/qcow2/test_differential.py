#!/usr/bin/env python3
"""Differential test of the qcow2 driver against QEMU.

Seeded random workloads (writes with patterns, zero writes, cluster-aligned
discards, concurrent aio_write bursts, flushes) are applied through vdisk to a
qcow2 image and through qemu-io to a raw reference; then `qemu-img check`
must be clean and `qemu-img compare` must report identical contents. The
other direction too: qcow2 images written by qemu-io are read back through
vdisk and compared with the raw reference.

usage: test_differential.py QCOW2_IO [--long] [--seed N]
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

QCOW2_IO = sys.argv[1]
LONG = '--long' in sys.argv
SEED = int(sys.argv[sys.argv.index('--seed') + 1]) if '--seed' in sys.argv else 20261121
# the tools, when built: some workloads then run through vdisk-img create + vdisk-io
VDISK_IO = sys.argv[sys.argv.index('--vdisk-io') + 1] if '--vdisk-io' in sys.argv else None
VDISK_IMG = sys.argv[sys.argv.index('--vdisk-img') + 1] if '--vdisk-img' in sys.argv else None

DISK = 32 * 1024 * 1024   # set per configuration: disk_for()


def disk_for(cs):
    return max(32 * 1024 * 1024, 128 * cs)


def run(args, **kw):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError('%s failed (%d):\n%s%s' % (' '.join(args[:3]), p.returncode,
                                                      p.stdout[-2000:], p.stderr[-2000:]))
    return p.stdout


def workload(rng, cs, allow_discard, burst=True):
    """A list of (qemu-io command, is_aio) over DISK bytes."""
    cmds = []
    if burst:
        # start with a burst into the empty image: parallel first allocations of
        # L2 tables and clusters, several requests sharing a cluster
        pos = rng.randrange(0, 4) * cs
        for _ in range(rng.randint(8, 24)):
            ln = rng.choice([512, 1024, cs // 2 if cs >= 1024 else 512, cs, 2 * cs])
            if pos + ln > DISK:
                break
            cmds.append('aio_write -P 0x%x %d %d' % (rng.randrange(1, 256), pos, ln))
            pos += ln + rng.choice([0, 512, cs, 7 * cs])
        cmds.append('aio_flush')
    n = rng.randint(15, 35)
    for _ in range(n):
        kind = rng.random()
        if kind < 0.08:
            cmds.append('flush')
            continue
        if burst and kind < 0.25:
            # a burst of non-overlapping concurrent writes, some in the same cluster
            base = rng.randrange(0, DISK - 64 * cs) // 512 * 512
            pos = base
            for _ in range(rng.randint(2, 8)):
                ln = rng.choice([512, 1024, 4096, cs, 2 * cs, 3 * cs // 2 + 512])
                ln = max(512, ln // 512 * 512)
                if pos + ln > DISK:
                    break
                pat = rng.randrange(1, 256)
                if rng.random() < 0.15:
                    cmds.append('aio_write -z %d %d' % (pos, ln))
                else:
                    cmds.append('aio_write -P 0x%x %d %d' % (pat, pos, ln))
                pos += ln + rng.choice([0, 0, 512, cs])
            cmds.append('aio_flush')
            continue
        # any offset and length, sometimes large
        if rng.random() < 0.5:
            off = rng.randrange(0, DISK - 1)
            ln = rng.randint(1, min(DISK - off, rng.choice([700, 5000, 3 * cs, 1 << 20])))
        else:
            off = rng.randrange(0, DISK // cs) * cs
            ln = min(DISK - off, cs * rng.randint(1, 20), 4 << 20)
        if allow_discard and kind < 0.35:
            off = off // cs * cs
            ln = max(cs, ln // cs * cs)
            ln = min(ln, DISK - off)
            cmds.append('discard %d %d' % (off, ln))
        elif kind < 0.45:
            cmds.append('write -z %d %d' % (off, ln))
        else:
            cmds.append('write -P 0x%x %d %d' % (rng.randrange(0, 256), off, ln))
    return cmds


def qemu_io(img, fmt, cmds, extra=()):
    args = ['qemu-io', '-f', fmt] + list(extra)
    for c in cmds:
        args += ['-c', c]
    args.append(img)
    out = run(args)
    if 'error' in out.lower() or 'failed' in out.lower():
        raise RuntimeError('qemu-io reported: ' + out[-1000:])


def reference_cmds(cmds):
    # the reference applies bursts one by one (they never overlap)
    out = []
    for c in cmds:
        if c == 'aio_flush':
            continue
        out.append(c.replace('aio_write', 'write'))
    return out


def make_backing(tmp, rng, name):
    """A raw backing file with some data, returned with its contents path."""
    path = os.path.join(tmp, name)
    with open(path, 'wb') as f:
        f.truncate(DISK)
    cmds = []
    for _ in range(8):
        off = rng.randrange(0, DISK - 300000)
        cmds.append('write -P 0x%x %d %d' % (rng.randrange(1, 256), off, rng.randint(1, 300000)))
    qemu_io(path, 'raw', cmds)
    return path


def vdisk_writes(tmp, rng, cfg, creator):
    global DISK
    cs = cfg['cluster_size']
    DISK = disk_for(cs)
    img = os.path.join(tmp, 'img.qcow2')
    ref = os.path.join(tmp, 'ref.raw')
    opts = 'size=%d,cluster_size=%d,compat=%s,refcount_bits=%d' % (
        DISK, cs, cfg['compat'], cfg['refcount_bits'])
    if cfg.get('lazy'):
        opts += ',lazy_refcounts=on'
    backing = None
    if cfg.get('backing'):
        backing = make_backing(tmp, rng, 'base.raw')
        opts += ',backing_file=%s,backing_fmt=raw' % backing
        shutil.copyfile(backing, ref)
    else:
        with open(ref, 'wb') as f:
            f.truncate(DISK)
    for p in (img,):
        if os.path.exists(p):
            os.unlink(p)
    if creator == 'vdisk-tools':
        run([VDISK_IMG, 'create', '-q', '-f', 'qcow2', '-o', opts, img])
    elif creator == 'vdisk':
        run([QCOW2_IO, 'create', img, opts])
    else:
        run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts, img])
    allow_discard = not (backing and cfg['compat'] == '0.10')
    cmds = workload(rng, cs, allow_discard)
    with open(os.path.join(tmp, 'cmds.txt'), 'w') as f:
        f.write(opts + '\n' + '\n'.join(cmds) + '\n')
    # split into two sessions so that a reopen is part of the test
    half = len(cmds) // 2
    for part in (cmds[:half], cmds[half:]):
        args = []
        for c in part:
            args += ['-c', c]
        if creator == 'vdisk-tools':
            args = [VDISK_IO, '-f', 'qcow2', '-d', 'unmap', '-t', 'writeback'] + args + [img]
        else:
            args = [QCOW2_IO, img] + args
        out = run(args).lower()
        if creator == 'vdisk-tools' and ('error' in out or 'failed' in out):
            raise RuntimeError('vdisk-io reported: ' + out[-1000:])
    qemu_io(ref, 'raw', reference_cmds(cmds))
    run(['qemu-img', 'check', '-q', img])
    run(['qemu-img', 'compare', '-q', '-f', 'qcow2', '-F', 'raw', img, ref])
    # and vdisk reads its own image back identically
    run([QCOW2_IO, '-r', img, '-c', 'compare ' + ref])


def qemu_writes(tmp, rng, cfg):
    global DISK
    cs = cfg['cluster_size']
    DISK = disk_for(cs)
    img = os.path.join(tmp, 'q.qcow2')
    ref = os.path.join(tmp, 'qref.raw')
    opts = 'size=%d,cluster_size=%d,compat=%s,refcount_bits=%d' % (
        DISK, cs, cfg['compat'], cfg['refcount_bits'])
    if cfg.get('backing'):
        backing = make_backing(tmp, rng, 'qbase.raw')
        opts += ',backing_file=%s,backing_fmt=raw' % backing
        shutil.copyfile(backing, ref)
    else:
        with open(ref, 'wb') as f:
            f.truncate(DISK)
    run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', opts, img])
    allow_discard = not (cfg.get('backing') and cfg['compat'] == '0.10')
    cmds = reference_cmds(workload(rng, cs, allow_discard, burst=False))
    # a few compressed clusters written by qemu
    # a few compressed clusters first (qemu only compresses into unallocated clusters)
    comp = []
    for off in sorted(set(rng.randrange(0, DISK // cs) * cs for _ in range(3 if cs >= 4096 else 0))):
        comp.append('write -c -P 0x%x %d %d' % (rng.randrange(0, 256), off, cs))
    cmds = comp + cmds
    qemu_io(img, 'qcow2', cmds)
    qemu_io(ref, 'raw', [c.replace('write -c ', 'write ') for c in cmds])
    run([QCOW2_IO, '-r', img, '-c', 'compare ' + ref])


def main():
    rng = random.Random(SEED)
    configs = []
    for cs in (512, 4096, 65536, 2 * 1024 * 1024):
        for rb in (1, 16, 64):
            for compat in ('1.1', '0.10'):
                if compat == '0.10' and rb != 16:
                    continue
                configs.append({'cluster_size': cs, 'refcount_bits': rb, 'compat': compat})
    extra = []
    for cfg in configs:
        extra.append(dict(cfg, backing=True))
        if cfg['compat'] == '1.1':
            extra.append(dict(cfg, lazy=True))
    configs += extra
    rounds = 3 if LONG else 1
    if not LONG:
        # the default run: 30 workloads picked across the matrix
        rng.shuffle(configs)
        configs = configs[:22]
    counts = {'vdisk-created': 0, 'qemu-created': 0, 'vdisk-tools': 0, 'qemu-written': 0}
    tmp = tempfile.mkdtemp(prefix='vd-qcow2-diff-')
    try:
        for r in range(rounds):
            for i, cfg in enumerate(configs):
                creator = 'vdisk' if (i + r) % 3 else 'qemu'
                if VDISK_IO and VDISK_IMG and (i + r) % 3 == 2:
                    creator = 'vdisk-tools'
                try:
                    vdisk_writes(tmp, rng, cfg, creator)
                except Exception as e:
                    print('FAIL (%s-created) %s: %s' % (creator, cfg, e))
                    return 1
                counts[{'vdisk': 'vdisk-created', 'qemu': 'qemu-created',
                        'vdisk-tools': 'vdisk-tools'}[creator]] += 1
                if i % 3 == 0:
                    try:
                        qemu_writes(tmp, rng, cfg)
                    except Exception as e:
                        print('FAIL (qemu-written, vdisk-read) %s: %s' % (cfg, e))
                        return 1
                    counts['qemu-written'] += 1
    finally:
        if os.environ.get('VD_KEEP'):
            print('kept', tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = sum(counts.values())
    print('qcow2 differential: %d workloads checked (vdisk writes into vdisk-created: %d, '
          'into qemu-img-created: %d; vdisk-img create + vdisk-io: %d; qemu-io writes read '
          'by vdisk: %d)' % (total, counts['vdisk-created'], counts['qemu-created'],
                             counts['vdisk-tools'], counts['qemu-written']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
