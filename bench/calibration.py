"""The judge's calibration: does a judgement predict what a publication does on unseen test images?

For each seed, the --before tasks are learned into a fresh system (their paths become seeds of the
search, as in a stream), then one search runs on --task for --seconds with a publish that only counts
versions. Afterwards every judgement it made is replayed against the task's test images: both recipes
retrained on each fold's training images exactly as the judge retrained them (its fold models), and
refitted on every labelled image (what a publication serves), each scored on the test images.

    .venv/bin/python -m bench.calibration --task fmnist_shirts100 --before fmnist_shirts10 --seeds 0
    .venv/bin/python -m bench.calibration --report

A judged gain that exceeds the test gains its task allows says the judge is noisy there; fold models
whose test accuracy differs from the refit's say the refit is not what was judged.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import machine
from bench.rows import append, done_rows, log, parse_seeds, spread
from bench.tasks import TaskData, load_task
from munet_server.data.dataset import ImageDataset
from munet_server.evolve.budget import Budget
from munet_server.evolve.clock import Clock
from munet_server.evolve.features import FeatureCache
from munet_server.evolve.judge import Decision
from munet_server.evolve.recipes import Recipe, RecipeFitter
from munet_server.evolve.search import CACHE_BYTES, Search, SearchConfig
from munet_server.learn import learn
from munet_server.model.root import RootConfig
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.system import MunetSystem

OUT = Path(__file__).resolve().parent / "out" / "calibration.jsonl"
BEFORE_BUDGET = Budget(seconds=60.0)  # AddTask's for each --before task


class JudgementReplay:
    """Recipes of one search retrained the way its judge retrains them, scored on the test images."""

    def __init__(self, system: MunetSystem, search: Search, data: TaskData) -> None:
        self.search = search
        both = ImageDataset(torch.cat([data.train.images, data.test.images]),
                            torch.cat([data.train.labels, data.test.labels]), data.class_names)  # fmt: skip
        self.test_idx = torch.arange(len(data.train), len(both))
        channels_last = system.arch.family == "cnn" and system.device.type == "cpu"
        cache = FeatureCache(both.images, system.device, max_bytes=CACHE_BYTES, channels_last=channels_last)
        self.fitter = RecipeFitter(system.arch, system.pool, cache, both.labels, both.num_classes, search.views,
                                   search.train_cfg, search.cfg.seed, None, Clock(float("inf")))  # fmt: skip
        self._scores: dict[int, tuple[float, float]] = {}  # member id -> (fold models, refit) on test

    def test_accuracy(self, recipe: Recipe, index: torch.Tensor) -> float:
        path = self.fitter.fit(recipe, index)
        return float(self.fitter.correct(path, self.test_idx).float().mean())

    def scores(self, member: int) -> tuple[float, float]:
        """The member's recipe on the test images: its fold models' mean, and its refit's."""
        if member not in self._scores:
            s = self.search
            recipe = s.recipe(s.population[member])
            folds = [self.test_accuracy(recipe, s.judge.trained_on(f)) for f in s.judge.folds]
            self._scores[member] = (float(np.mean(folds)), self.test_accuracy(recipe, s.all_idx))
        return self._scores[member]

    def row(self, d: Decision) -> dict[str, Any]:
        (cf, cr), (pf, pr) = self.scores(d.challenger), self.scores(d.champion)
        added = {k: sum(c.num_params for c in self.search.population[k].path.trainable()) for k in (d.challenger, d.champion)}
        return {"family": d.family, "published": d.publish, "wins": d.wins, "losses": d.losses, "judged_on": d.size,
                "p_value": d.p_value, "family_p_value": d.family_p_value, "tests": d.tests,
                "judged": [d.challenger_accuracy, d.champion_accuracy], "folds_test": [cf, pf],
                "refit_test": [cr, pr], "params_added": [added[d.challenger], added[d.champion]]}  # fmt: skip


def run_seed(
    data: TaskData, before: list[TaskData], seed: int, budget: Budget, root: Any, workdir: Path,
    before_budget: Budget = BEFORE_BUDGET,
) -> list[dict[str, Any]]:
    """One row per judgement of a search over `data`, after `before` were learned by AddTask's `learn`."""
    system = MunetSystem.open(Store(workdir / "store"), root, device="cpu")
    for d in before:
        learn(system, AddTaskSpec(name=d.name, class_names=d.class_names, budget=before_budget, seed=seed), d.train)
    config = SearchConfig(budget=budget, seed=seed)
    search = Search(system, data.name, data.train, config, publish=lambda *_: len(search.state.publications) + 1)
    search.run()
    replay = JudgementReplay(system, search, data)
    head = {"task": data.name, "before": [d.name for d in before], "seconds": budget.seconds, "test_images": len(data.test)}
    return [{**head, **replay.row(d)} for d in search.state.decisions]


def report(out: Path, results_md: Path | None = None) -> str:
    rows = done_rows(out)
    if not rows:
        return "no calibration rows yet"
    lines = ["| task | seeds | judgements | judged gain, pt | refits' test gain, pt | correlation | "
             "judged - fold models' test gain, pt | refit - fold models on test, pt | published (lower on test) |",
             "|---|---|---:|---|---|---:|---|---|---|"]  # fmt: skip
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        judged = np.array([100 * (r["judged"][0] - r["judged"][1]) for r in mine])
        refit = np.array([100 * (r["refit_test"][0] - r["refit_test"][1]) for r in mine])
        folds = np.array([100 * (r["folds_test"][0] - r["folds_test"][1]) for r in mine])
        drift = np.array([100 * (r["refit_test"][0] - r["folds_test"][0]) for r in mine])
        corr = np.corrcoef(judged, refit)[0, 1] if len(mine) > 1 and judged.std() and refit.std() else float("nan")
        pubs = [r for r in mine if r["published"]]
        lower = sum(r["refit_test"][0] < r["refit_test"][1] for r in pubs)
        seeds = ",".join(str(s) for s in sorted({r["seed"] for r in mine}))
        lines.append(f"| {task} | {seeds} | {len(mine)} | {judged.min():+.1f} to {judged.max():+.1f} | "
                     f"{refit.min():+.1f} to {refit.max():+.1f} | {corr:.2f} | {_mean_sd(judged - folds)} | "
                     f"{_mean_sd(drift)} | {len(pubs)} ({lower}) |")  # fmt: skip
    machines = sorted({f"{r.get('machine', '?')} ({r.get('date', '?')})" for r in rows})
    text = "\n".join([f"Machines: {'; '.join(machines)}. One row per judgement; gains are challenger minus "
                      "champion; the test images are the task's own, never labelled for the search.", "", *lines])  # fmt: skip
    if results_md is not None:
        head = "## The judge's calibration: judged gains against test gains\n\n"
        runs: dict[tuple[str, str, float], set[int]] = {}
        for r in rows:
            runs.setdefault((r["task"], ",".join(r.get("before", [])), r["seconds"]), set()).add(r["seed"])
        cmd = "; ".join(f"`.venv/bin/python -m bench.calibration --task {t} --before '{b}' --seconds {sec:g} --seeds "
                        f"{','.join(map(str, sorted(s)))}`" for (t, b, sec), s in sorted(runs.items()))  # fmt: skip
        cmd += ", then `--report`.\n\n"
        machine.update_section(str(results_md), "calibration", head + cmd + text)
    return text


def _mean_sd(x: np.ndarray) -> str:
    return f"{x.mean():+.1f}{spread(x)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="fmnist_shirts100")
    p.add_argument("--before", default="fmnist_shirts10", help="tasks learned first, comma-separated ('' for none)")
    p.add_argument("--seeds", default="0", help="e.g. 0-4 or 0,2")
    p.add_argument("--seconds", type=float, default=300.0, help="the search's budget")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    if a.report:
        print(report(a.out, Path(__file__).resolve().parent / "RESULTS.md"))
        return
    machine.prepare_process()
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": machine.describe(), "date": time.strftime("%Y-%m-%d")}
    for seed in parse_seeds(a.seeds):
        log(f"seed {seed}: {a.task} after {a.before or 'nothing'}, {a.seconds:.0f} s")
        before = [load_task(t, seed) for t in a.before.split(",") if t]
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_seed(load_task(a.task, seed), before, seed, Budget(seconds=a.seconds), RootConfig(), Path(tmp))
        append(a.out, [{**r, "seed": seed, **env} for r in rows])


if __name__ == "__main__":
    main()
