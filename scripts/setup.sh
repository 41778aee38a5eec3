#!/usr/bin/env bash
# Install what weavepy, its tests and its demo need on a Debian 12 machine (as root),
# and weavepy itself into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in dockerd:docker.io busybox:busybox-static iptables:iptables ip:iproute2 nsenter:util-linux docker-compose:docker-compose; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need_pkgs+=(libc6-dev)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
# A regular install: an editable one adds an import hook that slows every CLI start.
.venv/bin/pip install -q '.[test]'

# weavewait: the static helper the proxy puts in front of containers' entrypoints (built, not downloaded).
mkdir -p .venv/lib/weavepy
gcc -static -Os -o .venv/lib/weavepy/weavewait proxy/weavewait.c
