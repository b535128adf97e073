#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing, builds the
# release and the ASan+UBSan trees, and runs every test in both (in the ASan tree the
# integration tests drive the sanitized proxy binary against real etcd).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ep_install_deps

jobs=$(nproc)
shared="${EP_SHARED_DIR:-$top/../shared}"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEP_SHARED_DIR="$shared" >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEP_SANITIZE=ON -DEP_SHARED_DIR="$shared" \
    >/dev/null
cmake --build build-asan -j"$jobs"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
echo "== all tests, ASan+UBSan build"
ctest --test-dir build-asan --output-on-failure || status=1
echo "== all tests, release build"
ctest --test-dir build --output-on-failure || status=1
exit $status
