#!/usr/bin/python3
"""Check the coroutine rules over the whole tree with libclang.

A function marked coroutine_fn may yield, so it must only run inside a
coroutine. This script parses every C file of a build (compile_commands.json)
with clang, where coroutine_fn expands to annotate("coroutine_fn"), and
reports every call that breaks the rules:

  1. a function that is not coroutine_fn (nor coroutine_mixed_fn) calls a
     coroutine_fn function, directly or through a struct field or pointer
     declared coroutine_fn (a driver's co_preadv, a VdCoroutineEntry);
  2. a coroutine_fn function calls a no_coroutine_fn one (one that runs a
     nested event loop, such as the synchronous wrappers).

  3. the body of a coroutine_fn definition does not start with
     VD_CO_ASSERT(); (vdisk/coroutine.h: assert(vd_in_coroutine()) in debug
     builds, nothing with NDEBUG), so that a caller the call graph cannot
     see (a plain function pointer) is caught when it runs.

coroutine_mixed_fn marks the few functions that test vd_in_coroutine() and
take the coroutine path only when it is true; they may call both kinds and
carry no assertion.

usage: check-coroutine-fn.py BUILDDIR [SOURCE-PREFIX...]
       check-coroutine-fn.py --file FILE.c [CLANG-ARG...]   (one file)
       check-coroutine-fn.py --insert-asserts BUILDDIR [SOURCE-PREFIX...]
           (one-shot: put VD_CO_ASSERT(); first in every coroutine_fn body
           that lacks it, then check)
Exit status 1 if anything is reported. Needs python3-clang-14 (Debian).
"""
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

import clang.cindex as ci

MARKERS = ('coroutine_fn', 'no_coroutine_fn', 'coroutine_mixed_fn')
ASSERT = 'VD_CO_ASSERT();'
ASSERT_B = ASSERT.encode()
# White space, comments and preprocessor lines that may stand between the
# opening brace of a body and its first statement.
_SKIP = re.compile(rb'(?:\s+|/\*.*?\*/|//[^\n]*|#[^\n]*)*', re.S)


_LIBCLANG_SET = False


def setup_libclang():
    global _LIBCLANG_SET
    if _LIBCLANG_SET or ci.Config.loaded:
        return
    _LIBCLANG_SET = True
    for path in ('/usr/lib/llvm-14/lib/libclang.so.1', '/usr/lib/llvm-14/lib/libclang.so'):
        if os.path.exists(path):
            ci.Config.set_library_file(path)
            return


def markers_of(cursor):
    """The vdisk markers on a declaration (annotate attributes)."""
    found = set()
    for child in cursor.get_children():
        if child.kind == ci.CursorKind.ANNOTATE_ATTR and child.spelling in MARKERS:
            found.add(child.spelling)
    return found


def strip(cursor):
    """The callee expression under casts, parens and derefs."""
    while cursor is not None and cursor.kind in (
            ci.CursorKind.UNEXPOSED_EXPR, ci.CursorKind.PAREN_EXPR,
            ci.CursorKind.UNARY_OPERATOR):
        kids = list(cursor.get_children())
        if len(kids) != 1:
            break
        cursor = kids[0]
    return cursor


def callee_decl(call):
    """The declaration a call goes to: a function, or the field / variable /
    parameter holding the function pointer. None if unknown."""
    kids = list(call.get_children())
    if not kids:
        return None
    expr = strip(kids[0])
    if expr is None:
        return None
    if expr.kind in (ci.CursorKind.DECL_REF_EXPR, ci.CursorKind.MEMBER_REF_EXPR):
        return expr.referenced
    return call.referenced


def decl_markers(decl, table):
    """Markers of a declaration, also through its typedef'd type
    (VdCoroutineEntry *fn) and every redeclaration seen in the TU."""
    if decl is None:
        return set()
    usr = decl.get_usr()
    found = set(table.get(usr, ())) | markers_of(decl)
    if decl.kind in (ci.CursorKind.FIELD_DECL, ci.CursorKind.VAR_DECL, ci.CursorKind.PARM_DECL):
        t = decl.type
        while t.kind == ci.TypeKind.POINTER:
            t = t.get_pointee()
        td = t.get_declaration()
        if td is not None and td.kind == ci.CursorKind.TYPEDEF_DECL:
            found |= markers_of(td) | set(table.get(td.get_usr(), ()))
    return found


def body_of(fn):
    """The compound statement of a function definition."""
    for child in fn.get_children():
        if child.kind == ci.CursorKind.COMPOUND_STMT:
            return child
    return None


def starts_with_assert(text, brace):
    """True if the body whose '{' is at text[brace] starts with ASSERT."""
    i = _SKIP.match(text, brace + 1).end()
    return text.startswith(ASSERT_B, i)


_TEXT = {}


def source_text(name):
    if name not in _TEXT:
        with open(name, 'rb') as f:      # libclang offsets are in bytes
            _TEXT[name] = f.read()
    return _TEXT[name]


def check_file(args):
    path, argv, directory, prefixes = args
    setup_libclang()
    index = ci.Index.create()
    # VD_COROUTINE_ANALYSIS turns the markers into annotations (common.h).
    extra = ['-DVD_COROUTINE_ANALYSIS', '-Wno-unknown-warning-option', '-w']
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        tu = index.parse(path, args=argv + extra)
    finally:
        os.chdir(cwd)
    problems = []
    fatal = [d for d in tu.diagnostics if d.severity >= ci.Diagnostic.Error]
    if fatal:
        return ['%s: clang could not parse it: %s' % (path, fatal[0].spelling)]

    # Pass 1: markers of every declaration by USR (prototypes in headers
    # carry them; definitions may not repeat them).
    table = {}
    for c in tu.cursor.walk_preorder():
        if c.kind in (ci.CursorKind.FUNCTION_DECL, ci.CursorKind.FIELD_DECL,
                      ci.CursorKind.TYPEDEF_DECL, ci.CursorKind.VAR_DECL):
            m = markers_of(c)
            if m:
                table.setdefault(c.get_usr(), set()).update(m)

    # Pass 2: every call inside a function defined in this file (or, for
    # rule 3, in a header under one of the prefixes: static inline ones).
    for fn in tu.cursor.get_children():
        if fn.kind != ci.CursorKind.FUNCTION_DECL or not fn.is_definition():
            continue
        if fn.location.file is None:
            continue
        fname = os.path.abspath(os.path.join(directory, fn.location.file.name))
        in_main = fn.location.file.name == tu.spelling
        if not in_main and not (prefixes and any(fname.startswith(p) for p in prefixes)):
            continue
        caller = decl_markers(fn, table)
        if 'coroutine_fn' in caller and 'coroutine_mixed_fn' not in caller:
            body = body_of(fn)
            start = body.extent.start if body is not None else None
            text = source_text(fname) if start is not None else b''
            if start is None or start.file is None or text[start.offset:start.offset + 1] != b'{':
                problems.append('%s:%d: coroutine_fn %s(): cannot find its body'
                                % (os.path.relpath(fname), fn.location.line, fn.spelling))
            elif not starts_with_assert(text, start.offset):
                problems.append('%s:%d: coroutine_fn %s() does not start with %s @%d'
                                % (os.path.relpath(fname), fn.location.line, fn.spelling,
                                   ASSERT, start.offset))
        if not in_main:
            continue
        for c in fn.walk_preorder():
            if c.kind != ci.CursorKind.CALL_EXPR:
                continue
            decl = callee_decl(c)
            callee = decl_markers(decl, table)
            where = '%s:%d' % (os.path.relpath(c.location.file.name), c.location.line)
            name = decl.spelling if decl is not None else c.spelling
            if 'coroutine_fn' in callee and not caller & {'coroutine_fn', 'coroutine_mixed_fn'}:
                problems.append('%s: %s() is not coroutine_fn but calls coroutine_fn %s()'
                                % (where, fn.spelling, name))
            if 'no_coroutine_fn' in callee and 'coroutine_fn' in caller:
                problems.append('%s: coroutine_fn %s() calls no_coroutine_fn %s()'
                                % (where, fn.spelling, name))
    return problems


MISSING = re.compile(r'^(.*):\d+: coroutine_fn \S+ does not start with .* @(\d+)$')


def strip_offset(problem):
    """The report without the brace offset used by --insert-asserts."""
    m = MISSING.match(problem)
    return problem[:problem.rindex(' @')] if m else problem


def insert_asserts(problems):
    """Put ASSERT first in each body reported missing it. Returns how many."""
    edits = {}
    for p in problems:
        m = MISSING.match(p)
        if m:
            edits.setdefault(os.path.abspath(m.group(1)), set()).add(int(m.group(2)))
    for name, braces in edits.items():
        with open(name, 'rb') as f:
            text = f.read()
        for brace in sorted(braces, reverse=True):
            assert text[brace:brace + 1] == b'{', (name, brace)
            line_start = text.rfind(b'\n', 0, brace) + 1
            indent = re.match(rb'[ \t]*', text[line_start:]).group(0)
            after = text[brace + 1:]
            if after.startswith(b'\n'):
                new = b'\n' + indent + b'    ' + ASSERT_B
            else:                       # { stmt; } on one line
                new = b' ' + ASSERT_B
            text = text[:brace + 1] + new + after
        with open(name, 'wb') as f:
            f.write(text)
    return sum(len(b) for b in edits.values())


def main():
    if sys.argv[1] == '--file':
        path = os.path.abspath(sys.argv[2])
        problems = check_file((path, sys.argv[3:], os.getcwd(), None))
        for p in problems:
            print(strip_offset(p))
        return 1 if problems else 0
    insert = sys.argv[1] == '--insert-asserts'
    if insert:
        del sys.argv[1]
    builddir = sys.argv[1]
    prefixes = sys.argv[2:] or ['src/', 'tools/']
    with open(os.path.join(builddir, 'compile_commands.json'), encoding='utf-8') as f:
        commands = json.load(f)
    top = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
    abs_prefixes = [os.path.join(top, p) for p in prefixes]
    jobs = []
    seen = set()
    for cmd in commands:
        src = os.path.normpath(os.path.join(cmd['directory'], cmd['file']))
        rel = os.path.relpath(src, top)
        if not src.endswith('.c') or not any(rel.startswith(p) for p in prefixes) or src in seen:
            continue
        seen.add(src)
        argv = cmd['command'].split()[1:] if 'command' in cmd else cmd['arguments'][1:]
        # Keep only what affects parsing: -I, -D, -std, -include.
        keep = []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a in ('-I', '-D', '-include', '-isystem'):
                keep += [a, argv[i + 1]]
                i += 2
                continue
            if a.startswith(('-I', '-D', '-std=', '-isystem')):
                keep.append(a)
            i += 1
        jobs.append((src, keep, cmd['directory'], abs_prefixes))
    problems = []
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for result in pool.map(check_file, jobs):
            problems += result
    problems = set(problems)
    if insert:
        print('check-coroutine-fn: inserted %s in %d bodies' % (ASSERT, insert_asserts(problems)))
        problems = {p for p in problems if not MISSING.match(p)}
    problems = {strip_offset(p) for p in problems}
    for p in sorted(problems):
        print(p)
    print('check-coroutine-fn: %d files, %d problems' % (len(jobs), len(problems)))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
