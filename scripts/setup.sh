#!/usr/bin/env bash
# Install what weavepy and its demo need on a Debian 12 machine (as root), and weavepy
# itself into .venv; with --tests, also what only the tests use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=""
[ "${1:-}" = "--tests" ] && tests=1

need_pkgs=()
for pair in dockerd:docker.io busybox:busybox-static iptables:iptables ip:iproute2 nsenter:util-linux; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
if [ -n "$tests" ]; then
    command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)  # the Dockerfile's offline base
    command -v ethtool >/dev/null 2>&1 || need_pkgs+=(ethtool)          # reads a tap's offloads (test_tap)
    # run on the simulated hosts: ping in containers' namespaces, the proxy tests' curl, sysctl
    for pair in ping:iputils-ping curl:curl sysctl:procps; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
    done
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# The package build compiles weavewait, the proxy's static helper, from proxy/weavewait.c (setup.py).
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
# A regular install (its build compiles weavewait into the package): an editable one adds an
# import hook that slows every CLI start.
.venv/bin/pip install -q '.[test,bench]'

# docker-py 4.4.4's own integration suite, which the tests run through the proxy and directly
# (it is the last release whose source distribution ships its tests).  Its own venv: it needs
# the requests/urllib3 of its time.
if [ -n "$tests" ] && [ ! -f .venv-dockerpy/src/docker-4.4.4/tests/integration/conftest.py ]; then
    rm -rf .venv-dockerpy
    python3 -m venv .venv-dockerpy
    .venv-dockerpy/bin/pip install -q 'docker==4.4.4' 'requests<2.29' 'urllib3<2' 'pytest<8' \
        'websocket-client<1' 'paramiko<3'
    mkdir -p .venv-dockerpy/src
    .venv-dockerpy/bin/pip download -q --no-deps --no-binary :all: 'docker==4.4.4' -d .venv-dockerpy/src
    tar -C .venv-dockerpy/src -xzf .venv-dockerpy/src/docker-4.4.4.tar.gz
    # Its conftest turns every warning into an error; on Python 3.11 its own distutils use warns.
    sed -i "s/    warnings.simplefilter('error')/    pass  # weavepy: not what this run checks/" \
        .venv-dockerpy/src/docker-4.4.4/tests/integration/conftest.py
fi
