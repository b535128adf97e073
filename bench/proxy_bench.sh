#!/usr/bin/env bash
# Proxy benchmark: etcd direct vs the proxy (identity and aesgcm configs) vs nghttpx (h2c
# pass-through), driven by h2load with gRPC requests; prints a markdown table (progress goes to
# stderr). See bench/README.md for what is measured and how success is verified.
# Usage: bench/proxy_bench.sh [BUILD_DIR] [SECONDS] [ROUNDS]   (default build, 3 s, 3 rounds)
# Bounded: 5 workloads x 4 paths x ROUNDS x SECONDS of load, about 4 minutes by default.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
secs=${2:-3}
rounds=${3:-3}
for tool in etcd h2load nghttpx nghttp; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/deps.sh installs it)" >&2; exit 1; }
done
cmake --build "$build" -j2 --target etcd-encrypt-proxy >&2
EP_BINARY="$build/etcd-encrypt-proxy" exec /usr/bin/python3 "$top/bench/proxy_bench.py" \
    --seconds "$secs" --rounds "$rounds"
