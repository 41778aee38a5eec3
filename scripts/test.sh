#!/usr/bin/env bash
# Set up, then run the whole test suite (unit and integration; integration needs root).
# Skipped tests are listed and announced (tests/conftest.py); where the integration tests can
# run (root, dockerd) a skipped one fails the run, and so does a run that tested nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
export PATH="$PWD/.venv/bin:$PATH"
rc=0
.venv/bin/pytest -q -rs "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests: nothing was tested" >&2
    exit 1
fi
exit "$rc"
