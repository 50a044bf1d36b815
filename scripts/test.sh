#!/usr/bin/env bash
# The whole suite: unit tests, then the root datapath/e2e tests (skipped with a reason when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q -rs "$@"
