#!/usr/bin/env bash
# Runs one libFuzzer target for ctest and scripts/fuzz.sh.
#   run.sh corpus BIN CORPUS DICT 0     every file of CORPUS once (a regression test)
#   run.sh run BIN CORPUS DICT SECONDS  fuzz for SECONDS from CORPUS (left untouched: new
#                                       inputs go to a scratch directory), then print the totals
# A crash leaves its input in $EP_FUZZ_ARTIFACTS (default: a scratch directory) and fails.
set -euo pipefail
mode=$1 bin=$2 corpus=$3 dict=$4 seconds=$5
name=$(basename "$bin")
artifacts=${EP_FUZZ_ARTIFACTS:-$(mktemp -d)}
mkdir -p "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
max_len=65536
case $name in
config_fuzz) max_len=8192 ;;        # configs are small: long inputs only slow it
stored_value_fuzz) max_len=4096 ;; # every decoder branch is reached by short values
esac
opts=(-artifact_prefix="$artifacts/$name-" -max_len=$max_len -rss_limit_mb=2048 -timeout=20
    -close_fd_mask="${EP_FUZZ_CLOSE_FD_MASK:-0}")
[ -f "$dict" ] && opts+=(-dict="$dict")
if [ "$mode" = corpus ]; then
    [ -d "$corpus" ] && [ -n "$(ls -A "$corpus")" ] || { echo "$name: empty corpus $corpus" >&2; exit 1; }
    exec "$bin" "${opts[@]}" -runs=0 "$corpus"
fi
work=${EP_FUZZ_WORK:-$(mktemp -d)}
mkdir -p "$work"
log=$work/$name.log
status=0
limit=(-max_total_time="$seconds")
[ -n "${EP_FUZZ_RUNS:-}" ] && limit=(-runs="$EP_FUZZ_RUNS") # an execution count instead
"$bin" "${opts[@]}" "${limit[@]}" -print_final_stats=1 "$work" "$corpus" >"$log" 2>&1 ||
    status=$?
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
crashes=$(ls "$artifacts" | grep -c "^$name-" || true)
took=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
echo "$name: $execs executions ($took/s), $crashes crash/timeout/leak artifacts, exit $status"
if [ "$status" -ne 0 ]; then
    tail -60 "$log"
fi
exit "$status"
