#!/usr/bin/env python3
"""libvdisk.so exports the public API (every vd_* function declared in
include/vdisk/) and nothing else: no qcow2_/nbd_/aio_/file_ internals.

usage: check-exports.py LIBVDISK_SO SYMBOL_MAP [INCLUDE-DIR]
With INCLUDE-DIR, every public header there must have gone into the map.
"""
import os
import re
import subprocess
import sys


def main():
    lib, symmap = sys.argv[1], sys.argv[2]
    out = subprocess.run(['nm', '-D', '--defined-only', lib], check=True,
                         capture_output=True, text=True).stdout
    exported = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] not in ('A',):
            exported.add(parts[2].split('@')[0])
    with open(symmap, encoding='utf-8') as f:
        text = f.read()
    public = set(re.findall(r'^\s+(vd_\w+);', text, re.M))
    if len(sys.argv) > 3:
        mapped = set(re.findall(r'/\* header: (\S+) \*/', text))
        headers = {h for h in os.listdir(sys.argv[3]) if h.endswith('.h')}
        missing = sorted(headers - mapped)
        if missing:
            print('public headers not in the symbol map (add them to src/meson.build): %s'
                  % ', '.join(missing))
            return 1
    internal = sorted(n for n in exported if n not in public)
    if internal:
        print('exported but not in include/vdisk/: %s' % ', '.join(internal[:20]))
        return 1
    # Public names that are real functions must be there (macros are not).
    if len(exported) < 100:
        print('only %d symbols exported: the version script dropped the API' % len(exported))
        return 1
    if 'vd_json_parse' not in exported or 'vd_backend_flush' not in exported:
        print('vd_json_parse / vd_backend_flush missing from the exports')
        return 1
    print('%d public symbols exported, no internal ones' % len(exported))
    return 0


if __name__ == '__main__':
    sys.exit(main())
