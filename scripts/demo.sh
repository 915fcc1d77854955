#!/usr/bin/env bash
# The main job, from nothing: set up, start the server on the embedded default, add three real
# tasks, show accuracy and parameters added, predict, snapshot, and restore into a fresh server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
