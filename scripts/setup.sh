#!/usr/bin/env bash
# Set up everything from nothing: a virtual environment with the server, data and dev extras, and the
# Debian Fashion-MNIST package used by the demo and the benchmark. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[server,data,dev,bench,ray]"

# Real offline data (Fashion-MNIST ships as a Debian package). Optional for the tests.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get install -y --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1 ||
      (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1)) ||
      echo "note: could not install dataset-fashion-mnist; the demo falls back to MNIST-5k and animal shapes" >&2
  else
    echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST tasks" >&2
  fi
fi
# A real browser for the dashboard test: Debian's chromium and its chromedriver. Optional: without
# them that one test is skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
      (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1)) ||
      echo "note: could not install chromium; the dashboard's browser test will be skipped" >&2
  else
    echo "note: run 'sudo apt-get install chromium chromium-driver' for the dashboard's browser test" >&2
  fi
fi
echo "setup done: $(.venv/bin/python -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)')"
