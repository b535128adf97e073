#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing, builds the
# release, the ASan+UBSan and the libFuzzer trees, and runs every test: all of them in the ASan
# tree (the integration tests then drive the sanitized proxy against real etcd) and the release
# tree (unit tests also under valgrind), then the fuzz corpora and a short run of each target.
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
CC=clang cmake -S . -B build-fuzz -DEP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEP_SHARED_DIR="$shared" -DEP_FUZZ_SECONDS="${EP_FUZZ_SECONDS:-15}" >/dev/null
cmake --build build-fuzz -j"$jobs"

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
echo "== all tests, ASan+UBSan build"
ctest --test-dir build-asan --output-on-failure || status=1
echo "== all tests, release build (unit tests also under valgrind memcheck)"
ctest --test-dir build --output-on-failure -j2 -L "unit|valgrind|style" || status=1
ctest --test-dir build --output-on-failure -L integration || status=1
echo "== fuzz targets: seed corpora as regression tests, then a short run of each"
ctest --test-dir build-fuzz --output-on-failure -L fuzz-corpus || status=1
ctest --test-dir build-fuzz --output-on-failure -j"$jobs" -L fuzz-run || status=1
exit $status
