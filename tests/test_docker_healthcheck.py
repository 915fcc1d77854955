"""The Dockerfile's HEALTHCHECK, run exactly as Docker runs it (exec form: argv; shell form: `sh -c`),
against real servers: it must pass for a plaintext server and for a TLS one (a TLS container used to
stay unhealthy forever), fail when nothing serves, and stay light (no rich/tqdm CLI start-up)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_app, self_signed_cert

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def healthcheck_command() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK .*?\bCMD (.+)$", text, re.M)
    assert m, "no HEALTHCHECK ... CMD in the Dockerfile"
    cmd = m.group(1).strip()
    return json.loads(cmd) if cmd.startswith("[") else ["sh", "-c", cmd]


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `munet` from this install
    base = {k: v for k, v in os.environ.items() if not k.startswith("MUNET_")}
    return subprocess.run(
        healthcheck_command(),
        env={**base, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_healthcheck_plaintext(tmp_path, tiny_vit):
    app = make_app(tmp_path / "s", tiny_vit)
    try:
        r = run_check({"MUNET_PORT": str(app.port)})
        assert r.returncode == 0, r.stderr
    finally:
        app.stop(0)
    r = run_check({"MUNET_PORT": str(app.port)})
    assert r.returncode != 0  # the check does fail when nothing serves


def test_healthcheck_tls(tmp_path, tiny_vit):
    cert, key = self_signed_cert(tmp_path, host="munet.example")
    app = make_app(tmp_path / "s", tiny_vit, tls_cert=cert, tls_key=key)
    try:
        env = {"MUNET_PORT": str(app.port), "MUNET_TLS_CERT": str(cert), "MUNET_TLS_KEY": str(key)}
        r = run_check({**env, "MUNET_TLS_SERVER_NAME": "munet.example"})
        assert r.returncode == 0, r.stderr
        r = run_check(env)  # the certificate does not name localhost: verification must fail
        assert r.returncode != 0
    finally:
        app.stop(0)


def test_healthcheck_is_light():
    """The probe runs every 10 s in every container: it must not import rich, tqdm or torch."""
    (exe, *_) = healthcheck_command()
    assert exe == "munet-health"
    code = "import sys, munet_client.probe; print(sorted(m for m in ('rich', 'tqdm', 'torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_image_dependencies_are_pinned():
    """The image installs pyproject's server dependencies under docker/constraints.txt: every one is
    pinned there (torch and torchvision excepted: the base image's are kept) and the pin satisfies it."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = DOCKERFILE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (root / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    text = DOCKERFILE.read_text()
    assert "-c /tmp/constraints.txt" in text and "COPY docker/constraints.txt" in text
    for spec in project["dependencies"] + project["optional-dependencies"]["server"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
            continue  # for older Pythons than the image's (tomli before tomllib)
        if name in ("torch", "torchvision"):
            assert name not in pins
            continue
        assert name in pins, f"{req.name} is not pinned in docker/constraints.txt (bash scripts/freeze_constraints.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
