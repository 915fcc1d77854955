#!/usr/bin/env bash
# The full test suite, from nothing: installs what it needs, then runs every test (slow ones too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/check_wheel.sh
# Two workers, a test file each at a time (its module fixtures built once): much of the suite waits on
# servers starting and on sockets, so two share two cores well. Idle OpenMP threads sleep rather than
# spin, so that neither worker's threads take the cores from the other's.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -n 2 --dist loadfile "$@"
