#!/usr/bin/env bash
# The full test suite, from nothing: installs what it needs, then runs every test (slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/check_wheel.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
