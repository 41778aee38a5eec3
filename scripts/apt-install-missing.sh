#!/bin/sh
# Install those of the named Debian packages that are not installed yet.  When all are, it
# does nothing and needs no network: an image built on a base that already holds them (the
# tests' offline build) never reaches for a mirror.
set -eu
missing=""
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
apt-get install -y -qq --no-install-recommends $missing
rm -rf /var/lib/apt/lists/*
