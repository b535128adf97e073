#!/usr/bin/env bash
# Installs the Debian packages the project needs to build, test and run, only those missing.
# Sourced or run by scripts/test.sh and scripts/run-demo.sh; needs root (or sudo) on Debian.
set -euo pipefail

EP_DEBIAN_PACKAGES=(
    build-essential cmake pkg-config git openssl ca-certificates procps clang-format
    libevent-dev libnghttp2-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler libyaml-dev
    libjemalloc-dev libsodium-dev libcmocka-dev libcjson-dev
    etcd-server etcd-client python3 python3-etcd3 python3-grpcio python3-cryptography python3-hpack
    nghttp2-client nghttp2-proxy
    libp11-kit-dev softhsm2 opensc
    clang libclang-rt-14-dev valgrind util-linux
    podman buildah mmdebstrap runc systemd python3-yaml
    prometheus python3-prometheus-client
)

ep_missing_packages() {
    local p
    for p in "${EP_DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

ep_install_deps() {
    local missing
    missing=$(ep_missing_packages)
    [ -z "$missing" ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "Installing Debian packages: $(echo $missing | tr '\n' ' ')" >&2
    $sudo apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ep_install_deps
fi
