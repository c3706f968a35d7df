#!/usr/bin/env python3
"""Crafted bad qcow2 images (badimages.py): opening or reading each must fail
with a message and exit status 1 -- no crash, no sanitizer report, bounded
memory. The valid control images must read fine and pass qemu-img check.

usage: test_bad_images.py QCOW2_IO"""
import os
import resource
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import badimages  # noqa: E402

QCOW2_IO = sys.argv[1]
BAD_OUTPUT = ('AddressSanitizer', 'runtime error', 'LeakSanitizer', 'Assertion', 'core dumped')


def run(args):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=60)


def main():
    tmp = tempfile.mkdtemp(prefix='vd-qcow2-bad-')
    failures = 0
    checked = 0
    try:
        for name, path, expect in badimages.make_corpus(tmp):
            p = run([QCOW2_IO, '-r', path, '-c', 'read 0 16M'])
            out = p.stdout + p.stderr
            bad = [b for b in BAD_OUTPUT if b in out]
            if p.returncode < 0 or bad:
                print('FAIL %s: crashed (rc %d) %s' % (name, p.returncode, out[-1500:]))
                failures += 1
                continue
            if expect == 'io' and name == 'refcount-block-missing':
                # reads work (no refcounts needed); the write must fail cleanly
                w = run([QCOW2_IO, path, '-c', 'write -P 0x11 0 200k'])
                if w.returncode != 1 or 'qcow2-io:' not in w.stderr:
                    print('FAIL %s: write did not fail cleanly: %s' % (name, w.stdout + w.stderr))
                    failures += 1
                else:
                    print('ok %-32s %s' % (name, w.stderr.strip().splitlines()[0][:110]))
                    checked += 1
                continue
            if expect == 'ok':
                q = run(['qemu-img', 'check', '-q', path])
                if p.returncode != 0 or q.returncode != 0:
                    print('FAIL %s: valid image rejected: %s %s' % (name, out, q.stdout + q.stderr))
                    failures += 1
                checked += 1
                continue
            if p.returncode != 1 or 'qcow2-io:' not in p.stderr:
                print('FAIL %s: expected a clean failure, got rc %d: %s' % (name, p.returncode,
                                                                          out[-500:]))
                failures += 1
                continue
            if expect == 'open' and 'read' in p.stderr and 'command failed' in p.stderr:
                print('FAIL %s: open should have been refused: %s' % (name, p.stderr[-500:]))
                failures += 1
                continue
            # writing to an image whose tables are bad must not crash either
            if expect == 'io':
                w = run([QCOW2_IO, path, '-c', 'write -P 0x11 0 200k', '-c', 'read 0 16M'])
                wo = w.stdout + w.stderr
                if w.returncode < 0 or any(b in wo for b in BAD_OUTPUT):
                    print('FAIL %s: write crashed: %s' % (name, wo[-1500:]))
                    failures += 1
                    continue
            print('ok %-32s %s' % (name, p.stderr.strip().splitlines()[0][:110]))
            checked += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print('qcow2 bad images: %d checked, %d failures, max child RSS %.0f MiB' % (
        checked, failures, maxrss_mb))
    if maxrss_mb > 1024:
        print('FAIL: memory use is not bounded')
        return 1
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
