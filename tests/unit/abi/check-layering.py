#!/usr/bin/env python3
"""The tools use the block layer through its public API: no file under
tools/ includes the driver interface (block/driver.h), the core's private
header (block/block-int.h) or any driver's own header. They may include
vdisk/*.h, the export layer's API (export/export.h), config.h and headers
of their own folder or tools/common.

usage: check-layering.py SOURCE-ROOT
"""
import os
import re
import sys

ALLOWED_PREFIXES = ('vdisk/', 'export/export.h', 'config.h')


def main():
    root = sys.argv[1]
    tools = os.path.join(root, 'tools')
    local = set()
    for dirpath, _, files in os.walk(tools):
        local.update(f for f in files if f.endswith('.h'))
    bad = []
    for dirpath, _, files in os.walk(tools):
        for f in files:
            if not f.endswith(('.c', '.h')):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding='utf-8') as fh:
                for n, line in enumerate(fh, 1):
                    m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                    if not m:
                        continue
                    inc = m.group(1)
                    if inc.startswith(ALLOWED_PREFIXES) or inc in local:
                        continue
                    bad.append('%s:%d: includes "%s"' % (os.path.relpath(path, root), n, inc))
    for b in bad:
        print(b)
    print('%d private includes from tools/' % len(bad))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
