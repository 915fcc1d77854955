"""Smoke test of the quality benchmark's core on a tiny pretrained ViT: structure and zero forgetting."""

from __future__ import annotations

import json

import pytest

from bench.quality import DataConfig, QualityConfig, load_stream, run_benchmark
from bench.quality_report import write_report
from munet_server.jobs.spec import Budget


@pytest.mark.timeout(120)
def test_quality_benchmark_core(tmp_path, tiny_vit):
    data = DataConfig(tasks=("fmnist_0_1", "digits"), train_per_class=20, test_per_class=10)
    budget = Budget(generations=1, candidates_per_generation=2, validations=1, steps_per_validation=3)
    methods = ("munet_s1.0", "linear_probe", "sequential")
    cfg = QualityConfig(setting="smoke", root=tiny_vit, data=data, budget=budget, methods=methods)
    stream = load_stream(data, tiny_vit.max_image_size)
    results = run_benchmark(cfg, tmp_path, stream)

    json.dumps(results)  # the raw results are JSON-able
    assert [t["name"] for t in results["tasks"]] == ["fmnist_0_1", "digits"]
    assert set(results["methods"]) == set(methods)
    for m, r in results["methods"].items():
        assert [t["task"] for t in r["tasks"]] == ["fmnist_0_1", "digits"], m
        for t in r["tasks"]:
            assert 0.0 <= t["test_acc"] <= 1.0 and 0.0 <= t["test_acc_end"] <= 1.0
            assert t["params_added"] > 0 and t["accounted_params"] > 0
        assert r["summary"]["system_params"] > 0
    munet = results["methods"]["munet_s1.0"]
    assert all(t["forgetting"] == 0.0 and t["verified"] for t in munet["tasks"])
    assert munet["summary"]["max_forgetting"] == 0.0

    # The report over two seed runs (here the same run twice, so the spread is exactly zero).
    second = json.loads(json.dumps(results))
    second["config"]["seed"] = 1
    paths = write_report(results, tmp_path, [results, second])
    text = paths[0].read_text()
    assert "### Across seeds" in text and "Seeds 0, 1" in text
    acc = 100 * munet["summary"]["test_acc_end"]
    assert f"| muNet s=1.0 | 2 | {acc:.1f} ± 0.0 | {acc:.1f} – {acc:.1f} |" in text
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
