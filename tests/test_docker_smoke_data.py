"""scripts/docker_smoke.sh's Python part (scripts/smoke_data.py), run against a real server on the host:
it writes the shoes task, the CLI learns it and predicts the held-out images as JSON, and the check
reads that JSON as the smoke test does (issue 34 §6)."""

from __future__ import annotations

import json

import pytest

from munet_client import MunetClient
from munet_client.cli import main as cli
from munet_server.data import offline
from scripts.smoke_data import held_out_right, main, write_shoes
from tests.helpers import make_app


@pytest.mark.skipif(not offline.available().get("fashion_mnist"), reason="needs the Debian dataset-fashion-mnist package")
def test_smoke_data_through_the_cli(tmp_path, tiny_vit, capsys):
    write_shoes(tmp_path / "work", per_class=10, held_out=4)
    train = sorted((tmp_path / "work" / "train").rglob("*.png"))
    held = sorted((tmp_path / "work" / "held-out").rglob("*.png"))
    assert len(train) == 20 and len(held) == 8
    app = make_app(tmp_path / "store", tiny_vit)
    try:
        target = ["--target", f"127.0.0.1:{app.port}"]
        assert cli([*target, "-q", "add-task", "shoes", str(tmp_path / "work" / "train"), "--generations", "0"]) == 0
        capsys.readouterr()
        assert cli([*target, "--json", "predict", "shoes", *map(str, held)]) == 0
        out = tmp_path / "before.json"
        out.write_text(capsys.readouterr().out)
        rows = json.loads(out.read_text())
        with MunetClient(f"127.0.0.1:{app.port}") as c:
            preds = c.predict("shoes", [p.read_bytes() for p in held])
        assert held_out_right(rows) == sum(p.parent.name == pred[0].name for p, pred in zip(held, preds))
        assert main(["check", str(out)]) == (0 if held_out_right(rows) > len(rows) // 2 else 1)
        assert main(["nonsense"]) == 2
    finally:
        app.stop(0)
