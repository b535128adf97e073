#!/usr/bin/env bash
# Provider micro-benchmark beside `openssl speed -evp` for the same sizes, in the same run.
# Usage: bench/crypto_bench.sh [BUILD_DIR] [SECONDS]   (default build, 2 s per cell)
# Prints a markdown table: ops/s per core for each provider, and the ratio of our aesgcm
# encrypt (prefix + nonce + AES-256-GCM + output) to OpenSSL's raw AES-256-GCM at that size.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
secs=${2:-2}
bin="$build/crypto_bench"
[ -x "$bin" ] || { echo "build $bin first (cmake --build $build)" >&2; exit 1; }

declare -A ours openssl_ops
# Interleave: openssl and ours alternate per size, 3 rounds, medians.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for round in 1 2 3; do
    for size in 1024 8192; do
        # openssl speed prints "aes-256-gcm  <ops for size>k"; -bytes sets the one size.
        openssl speed -evp aes-256-gcm -bytes "$size" -seconds "$secs" 2>/dev/null |
            awk -v s="$size" 'tolower($1) == "aes-256-gcm" {gsub("k","",$2); printf "%.0f\n", $2*1000/s}' \
            >>"$tmp/openssl-$size"
    done
    "$bin" "$secs" >>"$tmp/ours"
done

printf '| provider | op | size | ops/s (median of 3) | openssl aes-256-gcm ops/s | ratio |\n'
printf '|---|---|---|---|---|---|\n'
for size in 1024 8192; do
    o=$(median <"$tmp/openssl-$size")
    for prov in aesgcm aescbc secretbox kmsv2; do
        for op in encrypt decrypt; do
            v=$(awk -v p=$prov -v o=$op -v s=$size '$1==p && $2==o && $3==s {print $4}' \
                "$tmp/ours" | median)
            ratio=$(awk -v a="$v" -v b="$o" 'BEGIN {printf "%.2f", a/b}')
            printf '| %s | %s | %s | %s | %s | %sx |\n' "$prov" "$op" "$size" "$v" "$o" "$ratio"
        done
    done
done
