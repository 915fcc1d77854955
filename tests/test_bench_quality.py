"""Smoke test of the quality benchmark's parts on a tiny pretrained ViT: baselines, the muNet stream
(exactly learn_task), zero forgetting, and the report."""

from __future__ import annotations

import json

import pytest
import torch

from bench import baselines
from bench.quality import report, run_baseline, run_learned
from bench.tasks import TaskData
from munet_server.evolve.budget import Budget
from tests.helpers import digits_dataset


def _task(name: str, classes: int) -> TaskData:
    ds = digits_dataset(classes=classes, per_class=30)
    idx = list(range(len(ds)))
    test = [i for i in idx if i % 3 == 0]
    train = [i for i in idx if i % 3]
    return TaskData(name, ds.subset(torch.tensor(train)), ds.subset(torch.tensor(test)))


@pytest.mark.timeout(600)
def test_quality_benchmark_parts(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.setattr("bench.quality.PROBE_SIZES", (32,))
    stream = [_task("digits3", 3), _task("digits5", 5)]
    out = tmp_path / "q.jsonl"
    rows = []
    for seed in (0, 1):
        for data in stream:
            lp = run_baseline("linear_probe", data, seed, tiny_vit, 32)
            quick = baselines.Recipe("finetune", lrs=(0.01,), epochs=2)
            ft = baselines.finetune(data.train, data.test, tiny_vit, 32, quick, seed)
            assert 0.0 <= lp["test_accuracy"] <= 1.0 and 0.0 <= ft.test_accuracy <= 1.0
            assert ft.params_added > lp["params_added"] > 0
            rows.append({**lp, "seed": seed})
            rows.append({**lp, "method": "finetune", "test_accuracy": ft.test_accuracy, "params_added": ft.params_added, "seed": seed})
        learned = run_learned("munet30", stream, seed, tiny_vit, tmp_path / f"s{seed}", Budget(seconds=10, generations=1, epochs=2))
        for r in learned:
            # A later task never changes an earlier one: bit-identical outputs, same accuracy.
            assert r["verified"] and r["test_accuracy_end"] == r["test_accuracy"]
            # Estimates on images the served version was not selected on (a won judgement's, or v1's CV).
            assert 0.0 < r["validation_accuracy"] <= 1.0 and 0.0 < r["probe_validation_accuracy"] <= 1.0
            assert r["kind"] in ("probe", "trained")
            rows.append({**r, "seed": seed})
    out.write_text("".join(json.dumps({**r, "machine": "test"}) + "\n" for r in rows))
    text = report(out, tmp_path / "RESULTS.md")
    assert "| muNet, 30 s budget | 2 |" in text and "| munet30 | 2 |" in text  # both seeds counted
    assert (tmp_path / "RESULTS.md").read_text().count("## Quality") == 1


@pytest.mark.timeout(600)
def test_anytime_benchmark_parts(tmp_path, tiny_vit, monkeypatch):
    """The anytime stream is `learn` itself, every version timed and scored on test images, every
    version verified after the stream; the report reads the curve off those publications."""
    from bench import anytime

    monkeypatch.setattr(anytime, "TASKS", ("digits3", "digits5"))
    stream = [_task("digits3", 3), _task("digits5", 5)]
    rows = []
    for seed in (0, 1):
        with anytime.search_log(tmp_path / f"s{seed}.log"):
            streamed = anytime.run_stream(seed, stream, Budget(seconds=10.0), tiny_vit, tmp_path / f"s{seed}")
        kept = (tmp_path / f"s{seed}.log").read_text()  # the seed's search log: each task's publications
        assert "task digits3: version 1 serves (probe" in kept and "task digits5: version 1 serves (probe" in kept
        for r in streamed:
            pubs = r["publications"]
            assert r["all_versions_verified"] and pubs[0]["version"] == 1 and pubs[0]["kind"] == "probe"
            assert r["epochs"] == Budget.epochs and 0 <= r["best_at_last_epoch"] <= r["trained_members"]
            assert [p["version"] for p in pubs] == list(range(1, len(pubs) + 1))
            assert all(0.0 <= p["test_accuracy"] <= 1.0 for p in pubs)
            assert anytime.served_at(r, pubs[0]["seconds"]) == pubs[0] and anytime.served_at(r, -1.0) is None
            rows.append({**r, "seed": seed, "machine": "test"})
    out = tmp_path / "a.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = anytime.report(out)
    assert "muNet seeds [0, 1]" in text and "| digits3 |" in text and "| digits5 |" in text
    assert "Every version of every task re-verified after its stream: True." in text


def test_idle_report_reads_gains_per_seed(tmp_path):
    """The idle report's table and its per-seed line come from the rows: the mean gain of each seed,
    its spread, and every task left lower on test named."""
    from bench import idle

    def row(seed: int, task: str, before: float, after: float, published: int) -> dict:
        return {"method": "idle", "task": task, "minutes": 20.0, "before_test": before, "after_test": after,
                "rounds": 2, "published": published, "all_versions_verified": True, "seed": seed,
                "machine": "test", "date": "2026-12-07"}  # fmt: skip

    rows = [row(0, "a", 0.50, 0.60, 1), row(0, "b", 0.80, 0.80, 0), row(1, "a", 0.50, 0.50, 0), row(1, "b", 0.80, 0.78, 1)]
    out = tmp_path / "idle.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = idle.report(out)
    assert "| a | 50.0 % | 55.0 % | +5.0 | 4 | 1 |" in text and "| b | 80.0 % | 79.0 % | -1.0 | 4 | 1 |" in text
    assert "seed 0 +5.0, seed 1 -1.0; backward transfer (what idle rounds added to the tasks already served) +2.0 ± 4.2 pt" in text
    assert "Publications: 2 in 8 rounds; tasks lower on test after idle: 1 (b s1)." in text
    assert "(forgetting: 0)" in text


def test_anytime_report_pairs_seeds_with_the_better_baseline(tmp_path):
    """Per task the baseline with the higher mean over seeds is the one compared against, seed by seed:
    the headline difference is the mean of the seeds' differences, and their spread is given."""
    from bench import anytime

    def munet(seed: int, task: str, v1: float, v2: float) -> dict:
        pubs = [{"seconds": 2.0, "version": 1, "kind": "probe", "test_accuracy": v1, "params_added": 10},
                {"seconds": 200.0, "version": 2, "kind": "trained", "test_accuracy": v2, "params_added": 30}]  # fmt: skip
        return {"method": "munet", "task": task, "budget": 360.0, "publications": pubs, "all_versions_verified": True, "seed": seed}

    def base(method: str, seed: int, task: str, acc: float) -> dict:
        return {"method": method, "task": task, "seed": seed, "test_accuracy": acc, "params_added": 1000 if method == "finetune" else 10}

    task = "animals100"  # not in the default stream: a stream run with --tasks is reported too
    rows = [munet(0, task, 0.80, 0.84), munet(1, task, 0.70, 0.70),
            base("linear_probe", 0, task, 0.78), base("linear_probe", 1, task, 0.70),
            base("finetune", 0, task, 0.70), base("finetune", 1, task, 0.72)]  # fmt: skip
    out = tmp_path / "a.jsonl"
    out.write_text("".join(json.dumps({**r, "machine": "test"}) + "\n" for r in rows))
    text = anytime.report(out)
    # The probe (mean 74 %) is the better baseline; against it: seed 0 +2 / +6, seed 1 +0 / +0.
    assert "75.0 % at 90 s and 77.0 % at 360 s, against 74.0 %" in text
    assert "(+1.0 ± 1.4 and +3.0 ± 4.2 pt" in text and "seed 0 +2.0 / +6.0, seed 1 +0.0 / +0.0" in text
    assert "Publications after version 1: 2; that lowered test accuracy: 0 (none)" in text
    # The stream as continual learning: the end of each seed's stream (84 %, 70 %) against its probe (78 %, 70 %).
    assert "average accuracy at the end of the stream 77.0 ± 9.9 %; forward transfer against a linear probe on the root +3.0 ± 4.2 pt" in text


def test_calibration_replays_every_judgement_on_test_images(tmp_path, tiny_vit):
    """Each judgement of a real search is replayed: both recipes retrained on the judge's folds and
    refitted on every labelled image, each scored on the test images the search never saw."""
    from bench import calibration

    data = _task("digits5", 5)
    budget = Budget(seconds=600.0, generations=0)  # the probes and their judgements: no clock decides
    rows = calibration.run_seed(data, [], 0, budget, tiny_vit, tmp_path)
    assert rows and all(r["family"] == "probe" for r in rows)
    for r in rows:
        assert all(0.0 <= x <= 1.0 for x in r["judged"] + r["folds_test"] + r["refit_test"])
        assert r["wins"] + r["losses"] <= r["judged_on"] and r["test_images"] == len(data.test)
    out = tmp_path / "c.jsonl"
    out.write_text("".join(json.dumps({**r, "seed": 0, "machine": "test"}) + "\n" for r in rows))
    assert f"| digits5 | 0 | {len(rows)} |" in calibration.report(out)


def test_calibration_report_reads_gains_from_the_rows(tmp_path):
    """The report's columns are the rows' gains in points: their range, their correlation, the judged
    gain's error against the fold models' test gain, the refit's drift from its fold models."""
    from bench import calibration

    def row(judged: tuple, folds: tuple, refit: tuple, published: bool) -> dict:
        return {"task": "t", "seed": 0, "family": "trained", "published": published, "wins": 3, "losses": 1,
                "judged_on": 40, "p_value": 0.3, "judged": judged, "folds_test": folds, "refit_test": refit,
                "params_added": [10, 5], "machine": "test", "date": "2026-12-07"}  # fmt: skip

    rows = [row((0.90, 0.80), (0.82, 0.80), (0.83, 0.80), True), row((0.70, 0.80), (0.78, 0.80), (0.77, 0.80), False),
            row((0.85, 0.80), (0.80, 0.80), (0.79, 0.80), True)]  # fmt: skip
    out = tmp_path / "c.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = calibration.report(out)
    # judged gains +10, -10, +5; refits' test gains +3, -3, -1; judged minus folds' gains: +8, -8, +5
    assert "| t | 0 | 3 | -10.0 to +10.0 | -3.0 to +3.0 |" in text
    assert "| +1.7 ± 8.5 | -0.3 ± 1.2 |" in text and "| 2 (1) |" in text
