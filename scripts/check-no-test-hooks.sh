#!/usr/bin/env bash
# The shipped binaries carry no test hook: the failure-injection allocator lives only in the
# ep_alloc_hooks library that unit tests link. Exits 1 naming any hook symbol found.
set -euo pipefail
status=0
for bin in "$@"; do
    found=$(nm --defined-only "$bin" | awk '{print $3}' |
        grep -E '^(ep_alloc_fail_after|ep_alloc_fail_reset|ep_alloc_set_free_hook)$' || true)
    if [ -n "$found" ]; then
        echo "$bin: test hooks linked in: $found" >&2
        status=1
    fi
done
exit $status
