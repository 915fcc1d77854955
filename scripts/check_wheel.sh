#!/usr/bin/env bash
# The client installs and works alone: build the wheel, install it WITHOUT extras into a fresh venv,
# import the client and the generated protocol (torch must stay out), and run both CLIs' --help.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet "$WORK"/dist/munet_server-*.whl 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" - <<'PY'
import sys
from munet_client import MunetClient, MunetError  # noqa: F401
import munet_proto.v1.munet_pb2_grpc  # noqa: F401
heavy = sorted(m for m in ("torch", "timm", "numpy", "PIL", "lmdb") if m in sys.modules)
assert not heavy, f"the client imported {heavy}"
print("client imports alone:", MunetClient.__module__)
PY
"$WORK/venv/bin/munet" --help >/dev/null
echo "munet --help works without the server extra"
# The server's flags parse without torch (the engine is imported only when it starts).
"$WORK/venv/bin/python" -c "
import sys
from munet_server.config import parser
parser().parse_args([])
assert 'torch' not in sys.modules, 'munet_server.config imported torch'
print('munet-server flags parse without torch')"
