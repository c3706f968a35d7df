#!/bin/sh
# Lines of every C function in src/ and tools/ (signature to closing brace,
# headers' static inline ones included), longest first.
# The rule (docs/README.md): none over ~150 lines except flat validators
# (qcow2_header_decode). Usage: scripts/function-lengths.sh [| head]
# Needs universal-ctags (install-deps.sh).
cd "$(dirname "$0")/.." || exit 1
ctags -R --languages=C --langmap=C:.c.h --c-kinds=f --fields=+ne -o - src tools |
awk -F'\t' '{
    line = ""; end = ""
    for (i = 4; i <= NF; i++) {
        if ($i ~ /^line:/) line = substr($i, 6)
        if ($i ~ /^end:/) end = substr($i, 5)
    }
    if (line != "" && end != "") printf "%5d %s:%s %s\n", end - line + 1, $2, line, $1
}' | sort -rn
