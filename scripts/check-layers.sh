#!/usr/bin/env bash
# Fails when a source file includes a layer its folder may not use (README: Architecture):
# common <- config <- crypto; common <- net; proxy and kmsplugin on top; kmsplugin never proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A allowed=(
    [common]="common"
    [config]="common config"
    [crypto]="common config crypto"
    [net]="common net"
    [proxy]="common config crypto net proxy"
    [kmsplugin]="common config crypto net kmsplugin"
)
bad=0
for layer in "${!allowed[@]}"; do
    while IFS= read -r line; do
        file=${line%%:*}
        used=$(sed -E 's/.*#include "([a-z0-9_]+)\/.*/\1/' <<<"$line")
        if ! grep -qw "$used" <<<"${allowed[$layer]}"; then
            echo "layering: $file includes $used/ (a $layer file may use: ${allowed[$layer]})"
            bad=1
        fi
    done < <(git grep -n -E '#include "[a-z0-9_]+/' -- "$layer/*.c" "$layer/*.h" || true)
done
[ "$bad" -eq 0 ] && echo "layers: every include stays within its layer's allowance"
exit "$bad"
