#!/bin/bash
# Smoke test of `etcd-encrypt-proxy serve`: a real etcd on random loopback ports (data under
# /dev/shm), etcdctl through the proxy. Checks that values under an encrypted prefix are stored
# encrypted and read back in plaintext, that other keys pass through, that watch/txn/del work,
# that an unsupported method is refused without etcd, that oversized requests are refused, that
# the proxy survives an etcd restart and that SIGTERM drains and exits 0.
#
# Env: EP_BINARY (the proxy binary), EP_SMOKE_EXPECT_PREFIX (stored-value prefix to expect,
# default the aesgcm key of the config below; a prefix not starting with k8s:enc: marks a test
# build with fake crypto, where the plaintext checks are skipped).
set -u

BIN=${EP_BINARY:-}
EXPECT_PREFIX=${EP_SMOKE_EXPECT_PREFIX:-k8s:enc:aesgcm:v1:key1:}
export ETCDCTL_API=3

fail() {
    echo "FAIL: $*" >&2
    [ -n "${WORK:-}" ] && for f in "$WORK"/proxy.log "$WORK"/etcd.log; do
        [ -f "$f" ] && { echo "---- tail $f" >&2; tail -20 "$f" >&2; }
    done
    exit 1
}

[ -x "$BIN" ] || fail "EP_BINARY is not an executable: '$BIN'"
command -v etcd >/dev/null || fail "etcd not installed"
command -v etcdctl >/dev/null || fail "etcdctl not installed"
"$BIN" serve --help >/dev/null 2>&1 || fail "$BIN has no working 'serve' command"

WORK=$(mktemp -d /dev/shm/ep-smoke.XXXXXX)
ETCD_PID=
PROXY_PID=
cleanup() {
    for pid in $PROXY_PID $ETCD_PID; do
        kill "$pid" 2>/dev/null
    done
    for pid in $PROXY_PID $ETCD_PID; do
        wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
CLIENT_PORT=$(free_port)
PEER_PORT=$(free_port)
PROXY_PORT=$(free_port)

start_etcd() {
    etcd --name smoke --data-dir "$WORK/etcd" \
        --listen-client-urls "http://127.0.0.1:$CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "smoke=http://127.0.0.1:$PEER_PORT" >>"$WORK/etcd.log" 2>&1 &
    ETCD_PID=$!
    for _ in $(seq 1 50); do
        etcdctl --endpoints "127.0.0.1:$CLIENT_PORT" --dial-timeout 1s endpoint health \
            >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "etcd did not start"
}

KEY=$(head -c 32 /dev/urandom | base64)
cat >"$WORK/enc.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: $KEY
      - identity: {}
EOF

# A bad flag and a bad config exit 1 with a message.
"$BIN" serve --encryption-provider-config "$WORK/enc.yaml" --workers zero >/dev/null 2>"$WORK/err"
[ $? -eq 1 ] && grep -q workers "$WORK/err" || fail "bad --workers not refused with exit 1"
echo "kind: nonsense" >"$WORK/bad.yaml"
"$BIN" serve --encryption-provider-config "$WORK/bad.yaml" >/dev/null 2>"$WORK/err"
[ $? -eq 1 ] && grep -q "bad.yaml" "$WORK/err" || fail "bad config not refused with exit 1"

start_etcd
"$BIN" serve --listen-addr "127.0.0.1:$PROXY_PORT" --endpoints "http://127.0.0.1:$CLIENT_PORT" \
    --encryption-provider-config "$WORK/enc.yaml" --workers 2 >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!

P="etcdctl --endpoints 127.0.0.1:$PROXY_PORT --dial-timeout 3s --command-timeout 8s"
D="etcdctl --endpoints 127.0.0.1:$CLIENT_PORT --dial-timeout 3s --command-timeout 8s"
for _ in $(seq 1 50); do
    $P endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
$P endpoint health >/dev/null 2>&1 || fail "proxy does not serve"

# Encrypted prefix: ciphertext in etcd, plaintext through the proxy.
SECRET_KEY=/registry/secrets/default/smoke
$P put "$SECRET_KEY" "smoke-plaintext" >/dev/null || fail "put through proxy"
got=$($P get --print-value-only "$SECRET_KEY") || fail "get through proxy"
[ "$got" = "smoke-plaintext" ] || fail "get through proxy returned '$got'"
stored=$($D get --print-value-only "$SECRET_KEY")
case "$stored" in
"$EXPECT_PREFIX"*) ;;
*) fail "value in etcd does not start with $EXPECT_PREFIX" ;;
esac
REAL_CRYPTO=
case "$EXPECT_PREFIX" in k8s:enc:*) REAL_CRYPTO=1 ;; esac
[ -n "$REAL_CRYPTO" ] && echo "$stored" | grep -q smoke-plaintext && fail "plaintext visible in etcd"

# Other keys pass through unchanged.
$P put /registry/configmaps/default/c plain-value >/dev/null || fail "put configmap"
[ "$($D get --print-value-only /registry/configmaps/default/c)" = plain-value ] ||
    fail "configmap not stored as plaintext"

# Watch (bidi stream) sees decrypted values, prev_kv included.
$P watch --prev-kv "$SECRET_KEY" >"$WORK/watch.out" 2>&1 &
WATCH_PID=$!
sleep 1
$P put "$SECRET_KEY" second >/dev/null || fail "second put"
sleep 1
kill "$WATCH_PID" 2>/dev/null
wait "$WATCH_PID" 2>/dev/null
grep -qx second "$WORK/watch.out" && grep -qx smoke-plaintext "$WORK/watch.out" ||
    fail "watch did not show decrypted value and prev_kv"

# Txn with a put in the success branch, then delete with prev_kv.
printf 'mod("%s") > "0"\n\nput %s third\n\n\n' "$SECRET_KEY" "$SECRET_KEY" | $P txn >/dev/null ||
    fail "txn"
[ "$($P get --print-value-only "$SECRET_KEY")" = third ] || fail "txn put not visible"
[ -n "$REAL_CRYPTO" ] && $D get --print-value-only "$SECRET_KEY" | grep -q third &&
    fail "txn stored plaintext"
$P del --prev-kv "$SECRET_KEY" | grep -qx third || fail "del --prev-kv"

# Larger values (several DATA frames each way).
head -c 600000 /dev/urandom | base64 -w0 >"$WORK/big"
$P put /registry/secrets/default/big <"$WORK/big" >/dev/null || fail "big put"
$P get --print-value-only /registry/secrets/default/big | tr -d '\n' | cmp -s - "$WORK/big" ||
    fail "big value did not round-trip"

# A request above --max-request-bytes is refused by the proxy.
head -c 1300000 /dev/urandom | base64 -w0 >"$WORK/huge"
$P put /registry/secrets/default/huge <"$WORK/huge" >/dev/null 2>"$WORK/err" &&
    fail "oversized request accepted"
grep -q ResourceExhausted "$WORK/err" || fail "oversized request: $(tail -1 "$WORK/err")"

# Passthrough services still work.
$P member list >/dev/null || fail "member list"
$P lease grant 60 >/dev/null || fail "lease grant"

# etcd restart: calls fail while it is down, then the proxy reconnects.
kill "$ETCD_PID"
wait "$ETCD_PID" 2>/dev/null
ETCD_PID=
$P --command-timeout 2s put /registry/configmaps/default/down x >/dev/null 2>&1 &&
    fail "put succeeded with etcd down"
start_etcd
ok=
for _ in $(seq 1 40); do
    if $P --command-timeout 2s put /registry/configmaps/default/up x >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.25
done
[ -n "$ok" ] || fail "proxy did not reconnect to etcd"
kill -0 "$PROXY_PID" 2>/dev/null || fail "proxy died"

# SIGTERM: drain and exit 0.
kill -TERM "$PROXY_PID"
wait "$PROXY_PID"
rc=$?
PROXY_PID=
[ $rc -eq 0 ] || fail "proxy exit status $rc after SIGTERM"
grep -q "stopped" "$WORK/proxy.log" || fail "no stop line in the log"
grep -q "smoke-plaintext\|third" "$WORK/proxy.log" && fail "plaintext value in the proxy log"

echo "PASS: smoke proxy"
