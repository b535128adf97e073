#!/usr/bin/env bash
# Fuzzing in the tree (fuzz/README.md).
#   scripts/fuzz.sh [SECONDS]   builds build-fuzz (clang, libFuzzer, ASan+UBSan) and fuzzes every
#                               target SECONDS (default 60), two at a time; prints executions and
#                               crashes per target. Crash inputs land in build-fuzz/artifacts/.
#                               EP_FUZZ_RUNS=N runs N executions per target instead.
#   scripts/fuzz.sh --record    records fresh seeds from real traffic (fuzz/record_corpus.py,
#                               needs the release build) and merges those that add coverage into
#                               fuzz/corpus/ (libFuzzer -merge=1).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ep_install_deps
shared="${EP_SHARED_DIR:-$top/../shared}"
CC=clang cmake -S . -B build-fuzz -DEP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DEP_SHARED_DIR="$shared" >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
targets=$(cd fuzz && ls ./*_fuzz.c | sed 's|^\./||; s|_fuzz\.c$||')
export EP_SHARED_DIR="$shared"

if [ "${1:-}" = "--record" ]; then
    cmake -S . -B build -DEP_SHARED_DIR="$shared" >/dev/null
    cmake --build build -j"$(nproc)" >/dev/null
    raw=$(mktemp -d)
    EP_BINARY=build/etcd-encrypt-proxy EP_KMS_PLUGIN=build/etcd-encrypt-kms-plugin \
        /usr/bin/python3 fuzz/record_corpus.py "$raw"
    mkdir -p "$raw/stored_value"
    EP_FUZZ_WRITE_SEEDS="$raw/stored_value" build-fuzz/stored_value_fuzz -runs=0 \
        "$raw/stored_value" >/dev/null 2>&1
    for t in $targets; do
        mkdir -p "fuzz/corpus/$t" "$raw/$t"
        build-fuzz/${t}_fuzz -merge=1 -max_len=65536 "fuzz/corpus/$t" "$raw/$t" 2>&1 |
            grep -E "MERGE-OUTER: [0-9]+ new files" | sed "s/^/$t: /" || true
    done
    rm -rf "$raw"
    exit 0
fi

seconds=${1:-60}
mkdir -p build-fuzz/artifacts build-fuzz/work
export EP_FUZZ_ARTIFACTS=$top/build-fuzz/artifacts
status=0
run_one() {
    EP_FUZZ_WORK=$top/build-fuzz/work/$1 bash fuzz/run.sh run "build-fuzz/$1_fuzz" \
        "fuzz/corpus/$1" "fuzz/dict/$(dict_of "$1").dict" "$seconds"
}
dict_of() {
    case $1 in
    h2_session | grpc_client) echo http2 ;;
    config) echo yaml ;;
    *) echo protobuf ;;
    esac
}
pids=()
for t in $targets; do
    run_one "$t" >"build-fuzz/work/$t.summary" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge "$(nproc)" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in $targets; do head -1 "build-fuzz/work/$t.summary"; done
exit $status
