#!/usr/bin/env bash
# Makes podman usable on these machines without a registry and without touching /etc/containers
# (see ../shared/containers.md): writes a containers.conf (runc, cgroupfs, file events logger,
# ulimits within this process's hard open-file limit) and, when podman has no
# docker.io/library/debian:bookworm-slim yet, builds one with mmdebstrap (minbase, no man
# pages / locales / docs, apt keeps no caches) and imports it under that name, so
# `FROM debian:bookworm-slim` with `podman build --pull=never` resolves locally.
#
#   scripts/container-setup.sh [DIR]     (default DIR: build/containers)
#   export CONTAINERS_CONF=DIR/containers.conf
#
# The base image tarball is kept in DIR (a later import takes seconds). Prints the
# CONTAINERS_CONF line last. Needs root and the packages podman buildah mmdebstrap runc.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$top/build/containers}
base=docker.io/library/debian:bookworm-slim
mirror=${EP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${EP_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

for tool in podman mmdebstrap runc; do
    if ! command -v "$tool" >/dev/null; then
        echo "container-setup: $tool is missing (scripts/deps.sh installs it)" >&2
        exit 1
    fi
done
mkdir -p "$dir"
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=1048576
conf="$dir/containers.conf"
cat >"$conf.tmp" <<CONF
# Written by scripts/container-setup.sh: crun fails on this host's hybrid cgroup layout, and
# podman's default nofile (1048576) is above the hard limit here ($hard).
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=$hard:$hard", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF=$conf

# One base-image build at a time on this machine (the release and ASan test trees, engineers).
exec 9>"$dir/.setup.lock"
flock 9
if ! podman image exists "$base"; then
    tar="$dir/debian-bookworm-slim.tar"
    if [ ! -s "$tar" ]; then
        start=$(date +%s)
        echo "container-setup: building $base with mmdebstrap (about a minute)" >&2
        # Inside the image: apt keeps no package caches (Docker's debian images do the same).
        apt_conf="$dir/90slim-no-caches"
        printf '%s\n' 'APT::Install-Recommends "false";' 'APT::Keep-Downloaded-Packages "false";' \
            'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$apt_conf"
        # shellcheck disable=SC2016 # $1 is the chroot, expanded by mmdebstrap's hook shell
        cleanup='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/apt/*'
        mmdebstrap --variant=minbase --quiet \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-include=/usr/share/locale/locale.alias' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/lintian/*' \
            --aptopt='Acquire::Check-Valid-Until "false"' \
            --aptopt='Acquire::Languages "none"' \
            --customize-hook="copy-in $apt_conf /etc/apt/apt.conf.d" \
            --customize-hook="$cleanup" \
            bookworm "$dir/partial-base.tar" \
            "deb $mirror bookworm main" \
            "deb $mirror bookworm-updates main" \
            "deb $security bookworm-security main"
        mv "$dir/partial-base.tar" "$tar"
        echo "container-setup: mmdebstrap took $(($(date +%s) - start)) s" >&2
    fi
    podman import --quiet "$tar" "$base" >/dev/null
    echo "container-setup: imported $base ($(du -m "$tar" | cut -f1) MB)" >&2
fi
echo "CONTAINERS_CONF=$conf"
