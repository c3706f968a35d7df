#!/usr/bin/env bash
# Run every test: the normal build (unit, functional, fuzz-smoke suites) and an
# ASan+UBSan build (unit and functional). Installs what it needs first.
# Ends with one line "N passed, N failed". Exit status 0 only if all passed.
set -u
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }

pass=0; fail=0
# run_meson BUILDDIR SETUP-ARGS... -- TEST-ARGS...
run_meson() {
  local dir=$1; shift
  local setup=() targs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do setup+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  targs=("$@")
  echo "check: $dir: configure and build"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "${setup[@]}" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; fail=$((fail+1)); return; }
  fi
  if ! ninja -C "$dir" >"$dir.build.log" 2>&1; then
    tail -60 "$dir.build.log"; fail=$((fail+1)); return
  fi
  local log=$dir/check.log
  echo "check: $dir: meson test ${targs[*]}"
  # Every test's line is shown as it finishes, so a long run shows progress.
  meson test -C "$dir" --print-errorlogs "${targs[@]}" 2>&1 | tee "$log" || true
  local ok f t up
  # meson's summary lines: "Ok:   12", "Unexpected Pass:    0", ...
  count() { awk -F: -v k="$1" '$1 == k { gsub(/[^0-9]/, "", $2); print $2 }' "$log"; }
  ok=$(count Ok); f=$(count Fail); t=$(count Timeout); up=$(count "Unexpected Pass")
  if [ -z "$ok" ]; then echo "check: $dir: no test summary"; fail=$((fail+1)); return; fi
  pass=$((pass+ok)); fail=$((fail+${f:-0}+${t:-0}+${up:-0}))
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
run_meson build -- --no-suite slow
run_meson build-asan -Db_sanitize=address,undefined -Db_lundef=false -- --suite unit --suite functional
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
