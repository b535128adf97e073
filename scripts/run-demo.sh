#!/usr/bin/env bash
# The README's "run" command. On a fresh Debian machine: installs the Debian packages that are
# missing (scripts/deps.sh: dpkg status check, then apt-get update + install of only those),
# builds the proxy, writes a fresh aesgcm EncryptionConfiguration for secrets and configmaps in
# a temp dir, starts a throwaway etcd on loopback (data on tmpfs when available) and the proxy
# in front of it, prints how to use them, and stops both, by PID, on Ctrl-C.
#
# Environment: BUILD_DIR (default build), PROXY_PORT / ETCD_PORT (default: random free ports).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
ep_install_deps

build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" >/dev/null
cmake --build "$build_dir" -j"$(nproc)" --target etcd-encrypt-proxy
binary="$top/$build_dir/etcd-encrypt-proxy"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tmp_base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && tmp_base=/dev/shm
demo=$(mktemp -d "$tmp_base/etcd-encrypt-proxy-demo.XXXXXX")
pids=()

stop_all() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$demo"
    echo "stopped; removed $demo"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

etcd_port=${ETCD_PORT:-$(free_port)}
peer_port=$(free_port)
proxy_port=${PROXY_PORT:-$(free_port)}
metrics_port=${METRICS_PORT:-$(free_port)}
config="$demo/encryption-config.yaml"

# The key exists only in this file (mode 0600) and is deleted on exit with the rest of $demo.
(
    umask 077
    cat >"$config" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: $(head -c 32 /dev/urandom | base64)
      - identity: {}
EOF
)

etcd_url="http://127.0.0.1:$etcd_port"
peer_url="http://127.0.0.1:$peer_port"
etcd --name demo --data-dir "$demo/etcd-data" --logger zap --log-outputs stderr \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "demo=$peer_url" --initial-cluster-state new >"$demo/etcd.log" 2>&1 &
pids+=($!)

export ETCDCTL_API=3
for _ in $(seq 100); do
    etcdctl --endpoints "$etcd_url" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
etcdctl --endpoints "$etcd_url" endpoint health >/dev/null 2>&1 ||
    { echo "etcd did not start; log:" >&2; tail -20 "$demo/etcd.log" >&2; exit 1; }

"$binary" serve --listen-addr "127.0.0.1:$proxy_port" --endpoints "$etcd_url" \
    --encryption-provider-config "$config" --etcd-prefix /registry --workers 2 \
    --listen-metrics-urls "http://127.0.0.1:$metrics_port" >"$demo/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && break
    kill -0 "${pids[1]}" 2>/dev/null || break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null ||
    { echo "the proxy did not start; log:" >&2; tail -20 "$demo/proxy.log" >&2; exit 1; }

proxy_url="http://127.0.0.1:$proxy_port"
cat <<EOF

etcd-encrypt-proxy is running.
  proxy  $proxy_url   (clients and kube-apiserver --etcd-servers go here)
  etcd   $etcd_url   (what is stored: ciphertext under secrets and configmaps)
  admin  http://127.0.0.1:$metrics_port   (/metrics, /readyz?verbose, /livez, /version)
  config $config   (edit it, or kill -HUP the proxy, to reload)
  logs   $demo/proxy.log, $demo/etcd.log

Through the proxy (values in clear):
  export ETCDCTL_API=3
  etcdctl --endpoints $proxy_url put /registry/secrets/default/db-pass hunter2
  etcdctl --endpoints $proxy_url get /registry/secrets/default/db-pass

Directly in etcd (the k8s:enc:aesgcm:v1:key1: prefix, then nonce, ciphertext and tag):
  etcdctl --endpoints $etcd_url get /registry/secrets/default/db-pass --print-value-only | hexdump -C | head

Decrypt a stored value offline, as kube-apiserver would:
  etcdctl --endpoints $etcd_url get /registry/secrets/default/db-pass --print-value-only |
    head -c -1 | $binary decrypt --encryption-provider-config $config --key /registry/secrets/default/db-pass

What kube-apiserver's dashboards would see:
  curl -s http://127.0.0.1:$metrics_port/metrics | grep apiserver_storage_transformation_operations_total

Keys outside secrets and configmaps (e.g. /registry/pods/...) are stored as they are.
Ctrl-C stops etcd and the proxy and deletes $demo.
EOF

# Returns when either process exits (then the EXIT trap stops the other) or on Ctrl-C.
wait -n "${pids[@]}" || true
echo "a process exited; last lines of the logs:" >&2
tail -5 "$demo/etcd.log" "$demo/proxy.log" >&2 || true
