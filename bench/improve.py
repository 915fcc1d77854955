"""Improvement benchmark (issue 15): does muNet's next task iteration (ImproveTask) use what later
tasks added, and what does it cost?

For each seed, a stream of related tasks (`garments`: Split-Fashion-MNIST pairs of upper-body garments,
100 training images each; `digits`: the ten digits from 10 images each, then, as a later task, from
50 each, with 4x the budget; `animals`: the same shape on animal silhouettes, 10 then 100 images per
class) is learned into one system with AddTask's default budget (unless said);
then every task is visited once more with ImproveTask (muNet's outer loop, `munet improve --all`),
earliest first, with the same budget.
Reported per task position: test accuracy before and after the round, whether a new version was
published, the parameters it added, and how many of its layers came from tasks added after it (the
knowledge that flowed backwards). Every task's served version and every stored version are verified
against their golden digests after the round (no forgetting).

    .venv/bin/python -m bench.improve --seeds 0-2                    # ~13 min per seed on 2 CPU cores
    .venv/bin/python -m bench.improve --seeds 0-1 --stream digits    # ~11 min per seed
    .venv/bin/python -m bench.improve --seeds 0 --stream animals     # ~12 min per seed
    .venv/bin/python -m bench.improve --report [--stream digits]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import machine
from bench.quality import test_accuracy
from bench.rows import append, ci95, done_rows, parse_seeds
from bench.tasks import load_task
from munet_server.data.dataset import ImageDataset
from munet_server.evolve.budget import Budget
from munet_server.learn import champion_of, learn
from munet_server.model.root import RootConfig
from munet_server.spec import AddTaskSpec
from munet_server.store.store import Store
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "improve.jsonl"
STREAMS = {
    # Related Split-Fashion-MNIST pairs of upper-body garments, 100 training images each.
    "garments": ("tshirt_shirt", "pullover_coat", "pullover_shirt", "coat_shirt"),
    # The ten digits from 10 images each, then from 150 each (disjoint images): the later task has
    # the data to train layers, which the earlier one may reuse when it is visited again.
    "digits": ("digits_few", "digits_many"),
    # Animal silhouettes from 10 images per class, then from 100 (disjoint images): in the quality
    # benchmark muNet's trained paths beat the probe most often on this domain (animals10).
    "animals": ("animals_few", "animals_many"),
}
# AddTask budget of a task, in units of --seconds: the later digits task is given 4x, as a user would
# give the task with the data: on this CPU a 90 s search of MNIST keeps its probe (bench/RESULTS.md),
# and a probe adds no layer an earlier task could reuse.
ADD_BUDGET = {"digits_many": 4.0, "animals_many": 4.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_seed(seed: int, names: tuple[str, ...], budget: Budget, root: RootConfig, workdir: Path) -> list[dict[str, Any]]:
    stream = [load_task(t, seed) for t in names]
    system = MunetSystem.open(Store(workdir / "store"), root, device="cpu")
    rows: list[dict[str, Any]] = []
    data: dict[str, ImageDataset] = {}
    for i, d in enumerate(stream):
        add = dataclasses.replace(budget, seconds=budget.seconds * ADD_BUDGET.get(d.name, 1.0))
        spec = AddTaskSpec(name=d.name, class_names=d.class_names, budget=add, seed=seed)
        learned = learn(system, spec, d.train)
        data[d.name] = d.train
        acc = test_accuracy(system, d.name, d)
        v1 = TaskMetrics.of(learned.record)
        rows.append({"task": d.name, "position": i, "before": acc, "params_v1": v1.params_added,
                     "kind_v1": v1.kind, "train_images": len(d.train), "test_images": len(d.test)})  # fmt: skip
        log(f"  seed {seed} add {d.name}: test {acc:.3f}")
    order = {d.name: i for i, d in enumerate(stream)}
    for row, d in zip(rows, stream):
        t0 = time.perf_counter()
        spec = AddTaskSpec(name=d.name, class_names=d.class_names, budget=budget, seed=seed + 1000)
        improved = learn(system, spec, d.train, champion=champion_of(system, d.name))
        e = system.entry(d.name)
        later = [c for c in e.path.components if c.owner in order and order[c.owner] > order[d.name]]
        vs = improved.state.decisions[-1] if improved.state.decisions else None
        # Did the search try what later tasks committed? Candidates drawn directly from their paths.
        history = improved.state.history
        tried = [h for h in history if h.parent.startswith("task:") and order.get(h.parent.removeprefix("task:"), -1) > order[d.name]]
        row.update(
            after=test_accuracy(system, d.name, d),
            published=improved.record is not None,
            params_added=TaskMetrics.of(improved.record).params_added if improved.record else 0,
            layers_from_later_tasks=len(later),
            params_from_later_tasks=sum(c.num_params for c in later),
            versus=None if vs is None else {"new": vs.challenger_accuracy, "current": vs.champion_accuracy, "size": vs.size},
            seconds=time.perf_counter() - t0,
            candidates=len(history),
            candidates_from_later_tasks=len(tried),
            best_holdout_from_later_tasks=max((h.validation_accuracy for h in tried), default=None),
            best_holdout=max((h.validation_accuracy for h in history), default=None),
        )
        log(f"  seed {seed} improve {d.name}: {row['before']:.3f} -> {row['after']:.3f} "
            f"({'published' if row['published'] else 'kept'}; {len(later)} layers from later tasks; "
            f"{len(tried)} of {len(history)} candidates drawn from later tasks' paths)")  # fmt: skip
    verified = all(
        system.verify_task(f"{n}@{v.version}") for n in system.tasks for v in system.versions(n)
    ) and all(system.verify_task(n) for n in system.tasks)
    for row in rows:
        row["all_verified"] = verified
    system.store.close()
    return rows


def run(seeds: list[int], names: tuple[str, ...], budget: Budget, out: Path, root: RootConfig) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": machine.describe(), "budget_seconds": budget.seconds}
    have = {r["seed"] for r in done_rows(out)}
    for seed in seeds:
        if seed in have:
            continue
        log(f"seed {seed}: {', '.join(names)}")
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_seed(seed, names, budget, root, Path(tmp))
        append(out, [{**r, "seed": seed, **env} for r in rows])


def report(out: Path, results_md: Path, stream: str = "garments") -> str:
    names = STREAMS[stream]
    rows = done_rows(out)
    if not rows:
        return "no rows yet"
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"Machine: {rows[-1]['machine']}. Stream `{stream}` ({', '.join(names)}); {len(seeds)} seeds, each "
        f"drawing its own images ({_sizes(rows, names)}); budget {rows[-1]['budget_seconds']:.0f} s per AddTask and per ImproveTask{_more(names)}. "
        "Test accuracy in %, mean over seeds (95 % CI of the paired change).",
        "",
        "| position | task | AddTask committed trained layers | before | after | change | published | params added by the new version | layers from later tasks |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pos, name in enumerate(names):
        rs = [r for r in rows if r["task"] == name]
        if not rs:
            continue
        before = np.array([r["before"] for r in rs]) * 100
        after = np.array([r["after"] for r in rs]) * 100
        d = after - before
        pub = sum(r["published"] for r in rs)
        params = np.mean([r["params_added"] for r in rs if r["published"]]) if pub else 0.0
        later = np.mean([r["layers_from_later_tasks"] for r in rs])
        ci = f"± {ci95(d):.1f}" if len(d) > 1 else "(1 seed)"
        trained = sum(r.get("kind_v1") == "trained" for r in rs)
        lines.append(f"| {pos + 1} | {name} | {trained}/{len(rs)} | {before.mean():.1f} | {after.mean():.1f} | {d.mean():+.1f} {ci} | "
                     f"{pub}/{len(rs)} | {params / 1e3:,.0f} K | {later:.1f} |")  # fmt: skip
    all_d = np.array([(r["after"] - r["before"]) * 100 for r in rows])
    early = np.array([(r["after"] - r["before"]) * 100 for r in rows if r["position"] < len(names) - 1])
    ok = all(r["all_verified"] for r in rows)
    lines += [
        "",
        f"Mean change over every task: {all_d.mean():+.1f} pt; over the tasks that had later tasks to learn from "
        f"(positions 1-{len(names) - 1}): {early.mean():+.1f} pt. Golden digests of every served and stored "
        f"version verified after the round: {'all' if ok else 'NOT ALL'}.",
    ]
    body = "\n".join(lines)
    section, title = ("improve", "") if stream == "garments" else (f"improve_{stream}", f", stream `{stream}`")
    machine.update_section(str(results_md), section, f"## Improvement round (ImproveTask){title}\n\n" + body + "\n")
    return body


def _more(names: tuple[str, ...]) -> str:
    more = [f"{n}'s AddTask {ADD_BUDGET[n]:g}x" for n in names if n in ADD_BUDGET]
    return f" ({', '.join(more)})" if more else ""


def _sizes(rows: list[dict[str, Any]], names: tuple[str, ...]) -> str:
    sizes = []
    for n in names:
        r = next((r for r in rows if r["task"] == n and "train_images" in r), None)
        if r is not None:
            sizes.append(f"{n}: {r['train_images']:,} training / {r['test_images']:,} test images")
    return "; ".join(sizes) or "100 training / 1,000 test images each"


def main(argv: list[str] | None = None) -> int:
    machine.prepare_process()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--stream", choices=sorted(STREAMS), default="garments")
    p.add_argument("--seconds", type=float, default=Budget().seconds, help="budget of each AddTask and ImproveTask")
    p.add_argument("--out", type=Path, help="rows (default: bench/out/improve.jsonl, or improve_<stream>.jsonl)")
    p.add_argument("--report", action="store_true", help="only write the table from --out")
    a = p.parse_args(argv)
    out = a.out or (OUT if a.stream == "garments" else OUT.with_name(f"improve_{a.stream}.jsonl"))
    if not a.report:
        run(parse_seeds(a.seeds), STREAMS[a.stream], Budget(seconds=a.seconds), out, RootConfig())
    print(report(out, BENCH / "RESULTS.md", a.stream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
