"""`munet-server` that cannot start says why in one line and exits non-zero: no traceback to read."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.helpers import server_command


def _start(cmd: list[str], before_torch: bool = True) -> subprocess.CompletedProcess:
    """Run a server that must fail; `before_torch`: it says so before importing torch (preflight)."""
    if before_torch:
        cmd = [cmd[0], "-X", "importtime", *cmd[1:]]  # every import is listed on stderr
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    if before_torch:
        imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        assert "munet_server.preflight" in imported and "torch" not in imported
        r.stderr = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("import time:"))
    return r


def test_port_in_use(tmp_path, tiny_vit_weights):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _start(server_command(tmp_path / "store", port, tiny_vit_weights))
    assert f"munet-server: FAILED_PRECONDITION: could not bind 127.0.0.1:{port}" in r.stderr


def test_store_path_is_a_file(tmp_path, tiny_vit_weights):
    (tmp_path / "store").write_text("not a directory")
    r = _start(server_command(tmp_path / "store", 0, tiny_vit_weights))
    assert "exists but is not a directory" in r.stderr


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_missing_tls_file_is_named(tmp_path, tiny_vit_weights, missing):
    for name in ("cert", "key"):
        if name != missing:
            (tmp_path / f"{name}.pem").write_text("-----BEGIN-----")
    cmd = server_command(tmp_path / "store", 0, tiny_vit_weights)
    cmd += ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    r = _start(cmd)
    assert str(tmp_path / f"{missing}.pem") in r.stderr.strip().splitlines()[-1]


def test_metrics_port_in_use(tmp_path, tiny_vit_weights):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cmd = [*server_command(tmp_path / "store", 0, tiny_vit_weights), "--metrics-port", str(port)]
        r = _start(cmd)
    assert f"could not serve metrics on 127.0.0.1:{port}" in r.stderr


def test_http_port_in_use(tmp_path, tiny_vit_weights):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _start([*server_command(tmp_path / "store", 0, tiny_vit_weights), "--http-port", str(port)])
    assert f"munet-server: FAILED_PRECONDITION: could not serve HTTP on 127.0.0.1:{port}" in r.stderr


def test_unsupported_root(tmp_path):
    cmd = server_command(tmp_path / "store", 0, "random")
    cmd[cmd.index("--root") + 1] = "resnet18"
    cmd[cmd.index("--root-kwargs") + 1] = "{}"
    r = _start(cmd, before_torch=False)  # building the root is how it is found out
    assert "munet-server: INVALID_ARGUMENT: root 'resnet18': ResNet is not supported" in r.stderr


def test_follow_of_a_missing_directory(tmp_path, tiny_vit_weights):
    """A replica told to follow a directory that is not there refuses to start instead of serving
    nothing as SERVING (issue 31 §8)."""
    r = _start([*server_command(tmp_path / "store", 0, tiny_vit_weights), "--follow", str(tmp_path / "nope")])
    assert f"--follow {tmp_path / 'nope'} is not a directory" in r.stderr


def test_metrics_listen_on_their_own_address(tmp_path, tiny_vit):
    """--metrics-host keeps the token-less metrics port off a public --host (issue 31 §9)."""
    import urllib.error
    import urllib.request

    from tests.helpers import free_port, make_app

    port = free_port()
    app = make_app(tmp_path / "store", tiny_vit, host="127.0.0.1", metrics_port=port, metrics_host="127.0.0.2")
    try:
        assert b"munet_tasks" in urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10).read()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        app.stop(0)
