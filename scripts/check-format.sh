#!/usr/bin/env bash
# Fails when a tracked C file differs from what clang-format (the repo's .clang-format: LLVM
# base, 4 spaces, 100 columns) would make of it; prints the files to reformat.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format is not installed" >&2; exit 1; }
bad=0
while IFS= read -r f; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
        echo "not clang-formatted: $f (run: clang-format -i $f)"
        bad=1
    fi
done < <(git ls-files '*.c' '*.h')
[ "$bad" -eq 0 ] && echo "clang-format: every tracked C file is formatted"
exit "$bad"
