#!/usr/bin/env bash
# Pin the Docker image's dependencies to the versions this checkout's tests pass with: docker/constraints.txt
# (pip install -c). torch, torchvision and what they pin come from the image's base and are left out (a pin
# there would fight the base image's torch), as are
# test- and benchmark-only packages.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions the image installs (pip install -c): the set this repository's tests passed with."
  echo "# Regenerate: bash scripts/freeze_constraints.sh. torch/torchvision come from the base image and stay out."
  .venv/bin/python -m pip freeze 2>/dev/null | grep "==" | grep -v -i -E \
    "^(munet|torch|torchvision|triton|nvidia-|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing.extensions|setuptools|cuda-|pytest|ruff|hypothesis|pyte=|selenium|grpcio-tools|cryptography|ray=|matplotlib|scikit-learn|mlxtend|animal-shape|httpx2|trio|outcome|wsproto|sortedcontainers|pysocks|websocket-client|tritonclient|kserve)"
} > docker/constraints.txt
echo "docker/constraints.txt: $(grep -c '==' docker/constraints.txt) pins"
