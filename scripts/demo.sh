#!/usr/bin/env bash
# Set up, then run the demo on simulated hosts (network namespaces with their own dockerd).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python scripts/demo.py "$@"
