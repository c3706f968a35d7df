#!/usr/bin/python3
"""The coroutine rules hold in the tree, and the checker really catches
breaks of them: every call marked BAD in cofn-fixture.c is reported, and
nothing else.

usage: test_coroutine_fn_rules.py SOURCE-ROOT BUILD-ROOT
"""
import os
import re
import subprocess
import sys


def main():
    src, build = sys.argv[1], sys.argv[2]
    checker = os.path.join(src, 'scripts', 'check-coroutine-fn.py')
    fixture = os.path.join(src, 'tests', 'unit', 'coroutine', 'cofn-fixture.c')
    with open(fixture, encoding='utf-8') as f:
        want = {i + 1 for i, line in enumerate(f) if '/* BAD' in line}
    out = subprocess.run(['/usr/bin/python3', checker, '--file', fixture,
                          '-I' + os.path.join(src, 'include'),
                          '-I' + os.path.join(build, 'include')],
                         capture_output=True, text=True)
    got = {int(m.group(1)) for m in re.finditer(r'cofn-fixture\.c:(\d+):', out.stdout)}
    if got != want or out.returncode != 1:
        print('checker on the fixture: want lines %s, got %s (exit %d)\n%s%s'
              % (sorted(want), sorted(got), out.returncode, out.stdout, out.stderr))
        return 1
    print('fixture: all %d breaks reported' % len(want))
    tree = subprocess.run(['/usr/bin/python3', checker, build], capture_output=True, text=True)
    sys.stdout.write(tree.stdout + tree.stderr)
    return tree.returncode


if __name__ == '__main__':
    sys.exit(main())
