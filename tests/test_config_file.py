"""`munet-server --config FILE` (issue 33 §4): every flag as a TOML setting; flags and environment
win over the file; a wrong setting stops the start with its name. A real server started from a file
names every port it listens on, and answers on each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import httpx
import pytest

from munet_server.config import from_args, parse
from tests.helpers import ServerProcess, free_port


def test_file_settings_yield_to_flags_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "server.toml"
    path.write_text('port = 8101\nhttp-port = 8100\nmetrics_port = 8102\nidle-improvement = false\n'
                    'read-only = true\nmax-batch = 16\nroot-kwargs = {img_size = 32}\n')  # fmt: skip
    monkeypatch.delenv("MUNET_HTTP_PORT", raising=False)
    monkeypatch.delenv("MUNET_METRICS_PORT", raising=False)
    cfg = from_args(parse(["--config", str(path), "--port", "9000"], {}), {})
    assert (cfg.port, cfg.http_port, cfg.metrics_port, cfg.max_batch) == (9000, 8100, 8102, 16)  # the flag wins
    assert cfg.read_only and not cfg.idle_improvement and cfg.root.model_kwargs == {"img_size": 32}
    monkeypatch.setenv("MUNET_HTTP_PORT", "7000")
    cfg = from_args(parse(["--config", str(path)], dict(os.environ)), dict(os.environ))
    assert (cfg.port, cfg.http_port) == (8101, 7000)  # the environment wins over the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("read-only = 1\n", "read-only is true or false"),
        ("port = [1, 2]\n", "port takes one value"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_a_wrong_setting_stops_the_start(tmp_path, text, message):
    path = tmp_path / "server.toml"
    path.write_text(text)
    run = subprocess.run([sys.executable, "-m", "munet_server", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0 and message in run.stderr, run.stderr
    assert not (tmp_path / "munet-store").exists()


def test_server_from_a_file_names_and_serves_every_port(tmp_path, tiny_vit_weights):
    http_port, metrics_port = free_port(), free_port()
    path = tmp_path / "server.toml"
    path.write_text(f'http-port = {http_port}\nmetrics-port = {metrics_port}\nmetrics-host = "127.0.0.1"\n')
    server = ServerProcess(tmp_path / "store", tiny_vit_weights, extra=("--config", str(path)))
    try:
        log_file, want = tmp_path / f"server-{server.port}.log", f"metrics 127.0.0.1:{metrics_port}"
        deadline = time.monotonic() + 60  # the lines are printed just after health turns SERVING
        while want not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = log_file.read_text()
        assert f"munet-server listening on 127.0.0.1:{server.port}" in log
        assert f"HTTP 127.0.0.1:{http_port}" in log and f"metrics 127.0.0.1:{metrics_port}" in log
        assert httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=30).json() == {"ready": True}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
        assert "munet_tasks " in metrics
    finally:
        server.stop()
