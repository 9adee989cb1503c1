#!/bin/sh
# Compile-time checks of the C++ layer, run by ctest.
#   check.sh CXX FILE [FLAGS...]
# A FILE whose first lines carry "// expect-error: TEXT" passes only if it
# fails to compile with TEXT in the diagnostics; any other FILE must compile.
cxx=$1
file=$2
shift 2
expect=$(sed -n 's|^// expect-error: ||p' "$file" | head -n 1)
out=$("$cxx" -std=c++17 -fsyntax-only "$@" "$file" 2>&1)
rc=$?
if [ -z "$expect" ]; then
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out"
    echo "FAIL: $file must compile"
    exit 1
  fi
  echo "ok: $file compiles"
  exit 0
fi
if [ "$rc" -eq 0 ]; then
  echo "FAIL: $file compiled, but must fail with: $expect"
  exit 1
fi
if printf '%s\n' "$out" | grep -F -q -- "$expect"; then
  echo "ok: $file fails with: $expect"
  exit 0
fi
printf '%s\n' "$out"
echo "FAIL: $file failed without the expected diagnostic: $expect"
exit 1
