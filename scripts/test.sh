#!/usr/bin/env bash
# Set up, then run the whole test suite (unit and integration; integration needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/pytest -q "$@"
