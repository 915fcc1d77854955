"""Quality benchmark: what AddTask learns against what a user would do instead, done well.

For each seed (its own train/test split of every task) and task:
- `linear_probe`, `finetune`, `finetune_bn_train`, `finetune_top`, `finetune_floor`: bench/baselines.py, independent of the
  server's machinery, each choosing its hyperparameters inside the training images and refitted;
- `adapters`: the server's `adapters` policy (an adapter before every block, its own learning-rate
  sweep on a holdout, refit) with a generous budget;
- `munet<S>`: `learn` - exactly what AddTask runs - with a budget of S wall-clock seconds; the
  tasks are learned as one stream into one system per budget (later tasks may build on earlier ones),
  and after the stream every earlier task is re-tested (forgetting must be exactly 0: golden digests).

Rows go to a JSONL file as they finish (re-running skips what is there); `--report` writes the tables
into RESULTS.md and the plot. CPU seconds are process CPU time, sweeps included.

    .venv/bin/python -m bench.quality --seeds 0-4            # ~1 h per seed on 2 CPU cores
    .venv/bin/python -m bench.quality --report
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (must be set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import baselines, machine
from bench.rows import append, ci95, done_rows, log, parse_seeds
from bench.tasks import TaskData, load_task
from munet_server.evolve.budget import Budget
from munet_server.evolve.scoring import DEFAULT_SCALE_FACTOR
from munet_server.learn import learn
from munet_server.model.root import RootConfig
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "quality.jsonl"
DEFAULT_TASKS = ("photos", "mnist40", "fmnist_shirts10", "fmnist_shirts100", "animals10")
BASELINES = ("linear_probe", "finetune", "finetune_bn_train", "finetune_top", "finetune_floor")
MUNET_BUDGETS = {"munet30": 30.0, "munet90": 90.0, "munet360": 360.0}
METHODS = (*BASELINES, "adapters", *MUNET_BUDGETS)
PROBE_SIZES = (64, 96, 112)


@torch.no_grad()
def test_accuracy(system: MunetSystem, task: str, data: TaskData) -> float:
    x = data.test.images
    logits = torch.cat([system.logits(task, x[i : i + 64]) for i in range(0, len(x), 64)])
    return float((logits.argmax(1) == data.test.labels).float().mean())


def run_learned(
    method: str,
    stream: list[TaskData],
    seed: int,
    root: RootConfig,
    workdir: Path,
    budget: Budget | None = None,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
) -> list[dict[str, Any]]:
    """muNet (or the adapters policy) through `learn`, task after task, into one system."""
    policy = "adapters" if method == "adapters" else "munet"
    if budget is None:
        budget = Budget(seconds=120.0, epochs=15) if method == "adapters" else Budget(seconds=MUNET_BUDGETS[method])
    system = MunetSystem.open(Store(workdir / method), root, device="cpu")
    rows = []
    for data in stream:
        spec = AddTaskSpec(
            name=data.name,
            class_names=data.class_names,
            budget=budget,
            seed=seed,
            policy=policy,
            scale_factor=scale_factor,
        )
        with baselines.Timer() as t:
            learned = learn(system, spec, data.train)
        m = TaskMetrics.of(learned.record)
        rows.append(
            {
                "method": method,
                "task": data.name,
                "scale_factor": scale_factor,
                "test_accuracy": test_accuracy(system, data.name, data),
                "cpu_seconds": t.cpu,
                "wall_seconds": t.wall,
                "params_added": m.params_added,
                "image_size": m.image_size,
                "validation_accuracy": m.validation_accuracy,
                "probe_validation_accuracy": m.probe_validation_accuracy,
                "versions": len(learned.records),
                "kind": m.kind,
                "candidates": m.candidates,
                "new_components": _new_names(system, data.name),
            }
        )
        log(f"  {method} {data.name}: test {rows[-1]['test_accuracy']:.3f} (val {m.validation_accuracy:.3f}, "
            f"probe {m.probe_validation_accuracy:.3f}) {t.wall:.0f} s, +{m.params_added:,} params")  # fmt: skip
    # After the whole stream: nothing learned later changed an earlier task.
    for row, data in zip(rows, stream):
        row["test_accuracy_end"] = test_accuracy(system, data.name, data)
        row["verified"] = system.verify_task(data.name)
        row["params_accounted_end"] = system.accounted_params(system.tasks[data.name].path, data.name)
    system.store.close()
    return rows


def _new_names(system: MunetSystem, task: str) -> list[str]:
    e = system.tasks[task]
    new = set(TaskMetrics.of(e.record).new_components)
    return [c.spec.name for c in e.path.components if c.id in new]


def run_baseline(method: str, data: TaskData, seed: int, root: RootConfig, lp_size: int) -> dict[str, Any]:
    if method == "linear_probe":
        out = baselines.linear_probe(data.train, data.test, root, PROBE_SIZES, seed)
    else:
        out = baselines.finetune(data.train, data.test, root, lp_size, baselines.RECIPES[method], seed)
    log(f"  {method} {data.name}: test {out.test_accuracy:.3f} at {out.image_size} px, {out.cpu_seconds:.0f} CPU s")
    return {
        "method": method,
        "task": data.name,
        "test_accuracy": out.test_accuracy,
        "cpu_seconds": out.cpu_seconds,
        "wall_seconds": out.wall_seconds,
        "params_added": out.params_added,
        "image_size": out.image_size,
        "chosen": out.chosen,
    }


def run(
    seeds: list[int],
    tasks: tuple[str, ...],
    methods: tuple[str, ...],
    out: Path,
    root: RootConfig,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": machine.describe(), "load": os.getloadavg()[0]}
    for seed in seeds:
        have = {(r["seed"], r["task"], r["method"]) for r in done_rows(out)}
        stream = [load_task(t, seed) for t in tasks]
        log(f"seed {seed}: " + ", ".join(f"{d.name} ({len(d.train)}/{len(d.test)})" for d in stream))
        lp_size = {}
        for r in done_rows(out):
            if r["seed"] == seed and r["method"] == "linear_probe":
                lp_size[r["task"]] = r["image_size"]
        for method in methods:
            if method in BASELINES:
                for data in stream:
                    if (seed, data.name, method) in have:
                        continue
                    row = run_baseline(method, data, seed, root, lp_size.get(data.name, 112))
                    if method == "linear_probe":
                        lp_size[data.name] = row["image_size"]
                    append(out, [{**row, "seed": seed, "tasks": list(tasks), **env}])
            elif not all((seed, d.name, method) in have for d in stream):
                with tempfile.TemporaryDirectory() as tmp:
                    rows = run_learned(method, stream, seed, root, Path(tmp), scale_factor=scale_factor)
                append(out, [{**r, "seed": seed, "tasks": list(tasks), **env} for r in rows])


# ---- report ----------------------------------------------------------------------------------------
LABELS = {
    "linear_probe": "linear probe (converged, CV)",
    "finetune": "fine-tune all, BN frozen (LP-FT, lr sweep)",
    "finetune_bn_train": "fine-tune all, BN train mode (LP-FT)",
    "finetune_top": "fine-tune top 2 blocks (LP-FT, lr sweep)",
    "finetune_floor": "fine-tune above the CPU clone floor (LP-FT, lr sweep)",
    "adapters": "adapters at every block (120 s, own lr sweep)",
    "munet30": "muNet, 30 s budget",
    "munet90": "muNet, 90 s budget (default)",
    "munet360": "muNet, 360 s budget (4x)",
}


def report(out: Path, results_md: Path) -> str:
    """Tables over the seeds each method has finished for every task; paired differences over the
    seeds two methods have in common."""
    rows = done_rows(out)
    by: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        by[(r["method"], r["task"])][r["seed"]] = r
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    seeds_of = {m: sorted(set.intersection(*(set(by[(m, t)]) for t in tasks))) for m in METHODS}
    methods = [m for m in METHODS if seeds_of[m]]
    if "linear_probe" not in methods:
        return "no complete seed yet"

    def acc(m: str, t: str, seeds: list[int]) -> np.ndarray:
        return np.array([by[(m, t)][s]["test_accuracy"] for s in seeds])

    def mean_of(m: str, key: str, seeds: list[int]) -> float:
        return float(np.mean([[by[(m, t)][s][key] for s in seeds] for t in tasks]))

    lines = [
        f"Machine: {rows[-1].get('machine', '?')}. Each seed draws its own train/test split of every task; "
        "test accuracy in %, mean ± sd over seeds; CPU s = process CPU time per task, hyperparameter sweeps "
        "included; n = seeds.",
        "",
        "| method | n | " + " | ".join(tasks) + " | mean | CPU s / task | wall s / task (max) | params added / task |",
        "|---|---:|" + "---:|" * (len(tasks) + 4),
    ]
    for m in methods:
        sd = seeds_of[m]
        per = [f"{100 * acc(m, t, sd).mean():.1f} ± {100 * acc(m, t, sd).std(ddof=1) if len(sd) > 1 else 0:.1f}" for t in tasks]
        mean_over = np.mean([acc(m, t, sd) for t in tasks], axis=0)
        lines.append(
            f"| {LABELS[m]} | {len(sd)} | " + " | ".join(per) + f" | **{100 * mean_over.mean():.1f}** | "
            f"{mean_of(m, 'cpu_seconds', sd):.0f} | {mean_of(m, 'wall_seconds', sd):.0f} "
            f"({max(by[(m, t)][s]['wall_seconds'] for t in tasks for s in sd):.0f}) | "
            f"{mean_of(m, 'params_added', sd) / 1e3:,.0f} K |"
        )
    # The target's baselines: the converged probe and full fine-tuning (the other recipes are in the
    # table above; requiring them here would drop the seeds they did not run).
    base = [b for b in ("linear_probe", "finetune") if b in methods]
    lines += [
        "",
        "Paired differences in percentage points (mean, 95 % CI over seeds); the strongest baseline of each "
        "task is the one with the best mean on the seeds compared:",
        "",
        "| muNet budget | n | vs linear probe, per task | mean vs linear probe | mean vs max(probe, fine-tune) | worst task vs probe |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for m in [m for m in methods if m.startswith("munet")]:
        common = sorted(set(seeds_of[m]).intersection(*(seeds_of[b] for b in base)))
        if not common:
            continue
        d_lp = {t: 100 * (acc(m, t, common) - acc("linear_probe", t, common)) for t in tasks}
        best = {t: max(base, key=lambda b: acc(b, t, common).mean()) for t in tasks}
        d_best = np.mean([100 * (acc(m, t, common) - acc(best[t], t, common)) for t in tasks], axis=0)
        d_lp_mean = np.mean(list(d_lp.values()), axis=0)
        per = ", ".join(f"{t} {d.mean():+.1f}" for t, d in d_lp.items())
        worst = min(d_lp, key=lambda t: d_lp[t].mean())
        lines.append(
            f"| {m} | {len(common)} | {per} | {d_lp_mean.mean():+.1f} ± {ci95(d_lp_mean):.1f} | "
            f"{d_best.mean():+.1f} ± {ci95(d_best):.1f} | {worst} {d_lp[worst].mean():+.1f} |"
        )
    lines += ["", "Parameters added per task as a share of full fine-tuning's, and forgetting after the stream:", ""]
    lines += ["| method | n | params / fine-tune | forgetting (pp) | golden digests verified |", "|---|---:|---:|---:|---:|"]
    ft = mean_of("finetune", "params_added", seeds_of["finetune"]) if "finetune" in methods else math.nan
    for m in [m for m in methods if m.startswith("munet") or m == "adapters"]:
        sd = seeds_of[m]
        forget = np.mean([[by[(m, t)][s]["test_accuracy"] - by[(m, t)][s]["test_accuracy_end"] for s in sd] for t in tasks])
        ok = all(by[(m, t)][s]["verified"] for s in sd for t in tasks)
        share = 100 * mean_of(m, "params_added", sd) / ft
        lines.append(f"| {m} | {len(sd)} | {share:.0f} % | {100 * forget:.2f} | {'all' if ok else 'NOT ALL'} |")
    body = "\n".join(lines)
    acc_all = {(m, t): acc(m, t, seeds_of[m]) for m in methods for t in tasks}
    cpu_all = {(m, t): np.array([by[(m, t)][s]["cpu_seconds"] for s in seeds_of[m]]) for m in methods for t in tasks}
    _plot(acc_all, cpu_all, methods, tasks, results_md.parent / "quality_acc_vs_cpu.png")
    machine.update_section(str(results_md), "quality", "## Quality: learning a task\n\n" + body
                           + "\n\n![accuracy vs CPU seconds](quality_acc_vs_cpu.png)\n")  # fmt: skip
    return body


def _plot(acc: dict, cpu: dict, methods: list[str], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        x = np.mean([cpu[(m, t)].mean() for t in tasks])
        y = 100 * np.mean([acc[(m, t)].mean() for t in tasks])
        ax.scatter(x, y, s=40, marker="o" if m.startswith("munet") else "s")
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per task (incl. sweeps)")
    ax.set_ylabel("mean test accuracy over tasks (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    machine.prepare_process()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true", help="only write the tables from --out")
    p.add_argument(
        "--scale-factor",
        type=float,
        default=DEFAULT_SCALE_FACTOR,
        help="s of muNet's score for the muNet methods (an experiment: write it to its own --out)",
    )
    p.add_argument("--no-report", action="store_true", help="leave RESULTS.md alone (experiments)")
    a = p.parse_args(argv)
    if not a.report:
        methods = tuple(a.methods.split(","))
        run(parse_seeds(a.seeds), tuple(a.tasks.split(",")), methods, a.out, RootConfig(), a.scale_factor)
    if not a.no_report:
        print(report(a.out, BENCH / "RESULTS.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
