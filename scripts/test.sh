#!/usr/bin/env bash
# Set up, then run the test suite (CPU only; GPU tests are marked and skipped without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
