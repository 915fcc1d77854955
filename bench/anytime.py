"""Anytime benchmark: the served version's test accuracy against wall-clock seconds, beside what a user
would do instead (a converged linear probe, full fine-tuning with its own sweep), on real tasks.

For each seed, the benchmark's tasks are learned one after another into one system (later tasks may
build on earlier ones), each by `learn` (exactly what AddTask runs) with a budget of --seconds. Every
version it publishes is timed and afterwards scored on the task's test images (pinned as task@N), so
one run gives the whole curve: the version serving at 5, 10, 30, 90, 360 s. After the stream every
version of every task is re-verified (golden digests: forgetting is 0 by construction, proven).

`--first-answer` measures what a user waits for through the real server: from the upload's
acknowledgement (AddTask returned) to the first Predict that answers.

    .venv/bin/python -m bench.anytime --seeds 0-1                 # ~35 min a seed on 2 CPU cores
    .venv/bin/python -m bench.anytime --seeds 0-1 --baselines     # the linear probe and fine-tuning
    .venv/bin/python -m bench.anytime --first-answer
    .venv/bin/python -m bench.anytime --report

Each seed's search log (every judgement with its evidence) is kept beside the rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import contextlib
import logging
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import machine
from bench.process import free_port, wait_serving
from bench.quality import run_baseline, test_accuracy
from bench.rows import append, done_rows, log, parse_seeds, spread
from bench.tasks import TaskData, load_task
from munet_server.evolve.budget import Budget
from munet_server.evolve.population import Kind
from munet_server.learn import learn
from munet_server.logs import TEXT_FORMAT
from munet_server.model.root import RootConfig
from munet_server.spec import AddTaskSpec
from munet_server.store.records import TaskRecord
from munet_server.store.store import Store
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import MunetSystem

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "anytime.jsonl"
TASKS = ("photos", "mnist40", "fmnist_shirts10", "fmnist_shirts100", "animals10")
CHECKPOINTS = (5, 10, 30, 90, 360, 1200)


def run_stream(seed: int, stream: list[TaskData], budget: Budget, root: RootConfig, workdir: Path) -> list[dict[str, Any]]:
    system = MunetSystem.open(Store(workdir / "store"), root, device="cpu")
    rows = []
    for data in stream:
        spec = AddTaskSpec(name=data.name, class_names=data.class_names, budget=budget, seed=seed)
        published: list[tuple[float, TaskRecord]] = []
        t0 = time.monotonic()

        def timed(record: TaskRecord, t0: float = t0, published: list = published) -> None:
            published.append((time.monotonic() - t0, record))

        state = learn(system, spec, data.train, on_publish=timed).state
        trained = [m for m in state.members if m.kind is Kind.TRAINED]
        wall = time.monotonic() - t0
        pubs = []
        for at, rec in published:
            m = TaskMetrics.of(rec)
            pubs.append({"seconds": at, "version": rec.version, "kind": m.kind, "estimate": m.validation_accuracy,
                         "judged_on": m.holdout_size, "params_added": m.params_added,
                         "test_accuracy": test_accuracy(system, f"{data.name}@{rec.version}", data)})  # fmt: skip
        rows.append({"method": "munet", "task": data.name, "budget": budget.seconds, "epochs": budget.epochs,
                     "wall_seconds": wall, "publications": pubs, "judged": len(state.decisions),
                     # trained members whose best holdout epoch was their last: a longer recipe might help them
                     "trained_members": len(trained), "best_at_last_epoch": sum(m.best_epoch == m.epochs_run for m in trained),
                     "train_images": len(data.train), "test_images": len(data.test)})  # fmt: skip
        first = pubs[0]
        log(f"  {data.name}: v1 at {first['seconds']:.1f} s (test {first['test_accuracy']:.3f}); "
            f"{len(pubs)} versions, last v{pubs[-1]['version']} at {pubs[-1]['seconds']:.0f} s "
            f"({pubs[-1]['kind']}, test {pubs[-1]['test_accuracy']:.3f}); {wall:.0f} s")  # fmt: skip
    ok = all(system.verify_task(f"{n}@{v.version}") for n in system.tasks for v in system.versions(n))
    for r in rows:
        r["all_versions_verified"] = ok
    system.store.close()
    return rows


def first_answer(tasks: tuple[str, ...], seed: int) -> list[dict[str, Any]]:
    """Through the real server on its default root: AddTask's acknowledgement to the first answered Predict."""
    from munet_client import MunetClient, MunetError
    from munet_server.data import offline
    from munet_server.data.images import encode_png

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = [sys.executable, "-m", "munet_server", "--store", f"{tmp}/store", "--port", str(port),
               "--no-idle-improvement", "--log-level", "WARNING"]  # fmt: skip
        proc = subprocess.Popen(cmd)
        try:
            wait_serving(f"127.0.0.1:{port}", proc)
            client = MunetClient(f"127.0.0.1:{port}", timeout=120)
            for name in tasks:
                data = load_task(name, seed)
                raw = offline.RawImages(data.train.images.permute(0, 2, 3, 1).numpy(), data.train.labels.numpy(),
                                        data.class_names)  # fmt: skip
                folder = offline.write_image_folder(raw, Path(tmp) / name)
                probe = [encode_png(data.test.images[0])]
                op = client.add_task_from_folder(name, folder, budget={"seconds": 90}, seed=seed)
                t0 = time.monotonic()  # the upload is acknowledged: AddTask returned its operation
                while True:
                    try:
                        client.predict(name, probe)
                        break
                    except MunetError as e:
                        if e.code != "NOT_FOUND":
                            raise
                        time.sleep(0.05)
                waited = time.monotonic() - t0
                client.cancel(op.name)  # version 1 stays; the next task needs the machine
                client.wait(op.name, timeout=120)
                rows.append({"method": "first_answer", "task": name, "images": len(data.train), "seconds": waited})
                log(f"  {name}: {len(data.train)} images, first answer {waited:.1f} s after the upload's acknowledgement")
            client.close()
        finally:
            proc.terminate()
            proc.wait(60)
    return rows


def served_at(row: dict[str, Any], second: float) -> dict[str, Any] | None:
    """The publication serving `second` seconds into the search (None: nothing yet)."""
    live = [p for p in row["publications"] if p["seconds"] <= second]
    return live[-1] if live else None


# ---- report ----------------------------------------------------------------------------------------
def report(out: Path, results_md: Path | None = None) -> str:
    rows = done_rows(out)
    munet = defaultdict(dict)  # task -> seed -> row
    base = defaultdict(lambda: defaultdict(dict))  # method -> task -> seed -> row
    answers = [r for r in rows if r["method"] == "first_answer"]
    for r in rows:
        if r["method"] == "munet":
            munet[r["task"]][r["seed"]] = r
        elif r["method"] in ("linear_probe", "finetune"):
            base[r["method"]][r["task"]][r["seed"]] = r
    tasks = list(munet)  # the tasks the streams ran (--tasks), in their order
    if not tasks:
        return "no muNet rows yet"
    seeds = sorted(set.intersection(*(set(munet[t]) for t in tasks)))
    budget = max(r["budget"] for t in tasks for r in munet[t].values())
    marks = [c for c in CHECKPOINTS if c <= budget]

    def curve(t: str, c: float) -> np.ndarray:
        return np.array([(served_at(munet[t][s], c) or {"test_accuracy": np.nan})["test_accuracy"] for s in seeds])

    # A seed is paired only once both baselines have every task (a run in progress has some).
    base_seeds = [s for s in seeds if all(s in base[m][t] for m in ("linear_probe", "finetune") for t in tasks)]
    lines = [f"Machine: {rows[-1].get('machine', '?')}. muNet seeds {seeds}, baseline seeds {base_seeds}; test "
             f"accuracy in % of the version serving at each second of AddTask (mean over seeds; `-`: nothing "
             f"served yet); the baselines on the same splits.", "",
             "| task | " + " | ".join(f"{c} s" for c in marks) + " | linear probe | fine-tune |",
             "|---|" + "---:|" * (len(marks) + 2)]  # fmt: skip

    def cell(a: np.ndarray) -> str:
        return "-" if np.isnan(a).any() else f"{100 * a.mean():.1f}"

    def baseline(m: str, t: str) -> np.ndarray:
        have = base[m][t]
        return np.array([have[s]["test_accuracy"] for s in seeds if s in have]) if have else np.array([np.nan])

    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(cell(curve(t, c)) for c in marks)
                     + f" | {cell(baseline('linear_probe', t))} | {cell(baseline('finetune', t))} |")  # fmt: skip
    # The mean over tasks only where every task serves: a mean over those that do would flatter early seconds.
    mean_curve = {c: np.mean([curve(t, c) for t in tasks], axis=0) for c in marks}
    lp = _mean_or_nan([baseline("linear_probe", t).mean() for t in tasks])
    ft = _mean_or_nan([baseline("finetune", t).mean() for t in tasks])
    lines.append("| **mean** | " + " | ".join(cell(mean_curve[c]) for c in marks) + f" | {cell(np.array([lp]))} | {cell(np.array([ft]))} |")
    if base_seeds and 90 in marks:
        lines += ["", _paired(munet, base, tasks, base_seeds, max(marks))]
    if 90 in marks and max(marks) > 90:
        lines += ["", _per_seed(curve, tasks, seeds, max(marks))]
    pubs = [(t, s, p, q) for t in tasks for s in seeds for p, q in zip(munet[t][s]["publications"], munet[t][s]["publications"][1:])]
    worse = [x for x in pubs if x[3]["test_accuracy"] < x[2]["test_accuracy"]]
    params = [munet[t][s]["publications"][-1]["params_added"] for t in tasks for s in seeds]
    ft_params = [r["params_added"] for t in tasks for r in base["finetune"][t].values()]
    which = ", ".join(f"{t} s{s} v{q['version']}" for t, s, _, q in worse) or "none"
    lines += ["", f"Publications after version 1: {len(pubs)}; that lowered test accuracy: {len(worse)} ({which}). "
              f"Parameters added by the last version: mean {np.mean(params):,.0f} per task"
              + (f" ({100 * np.mean(params) / np.mean(ft_params):.1f} % of fine-tuning's)" if ft_params else "") + ". "
              f"Every version of every task re-verified after its stream: "
              f"{all(munet[t][s]['all_versions_verified'] for t in tasks for s in seeds)}."]  # fmt: skip
    if base_seeds:
        lines += ["", _continual(munet, base, tasks, base_seeds)]
    if answers:
        lines += ["", "First answer through the real server (AddTask acknowledged -> first Predict answered): "
                  + ", ".join(f"{a['task']} {a['seconds']:.1f} s ({a['images']} images)" for a in answers) + "."]
    text = "\n".join(lines)
    if results_md is not None:
        _plot(munet, tasks, seeds, marks, lp, ft)
        when = rows[-1].get("date", "")
        head = ("## Anytime learning: the served version's test accuracy against seconds of AddTask\n\n"
                f"`.venv/bin/python -m bench.anytime --seeds {','.join(map(str, seeds))}` (muNet), `--baselines`, "
                f"`--first-answer`, then `--report`{'; ' + when if when else ''}.\n\n")  # fmt: skip
        machine.update_section(str(results_md), "anytime", head + text + "\n\n![anytime](anytime.png)")
    return text


def _paired(munet: dict, base: dict, tasks: list[str], seeds: list[int], last: int) -> str:
    """The served version at 90 s and at `last` s against the better baseline on each task (the method
    with the higher mean over `seeds`), seed by seed on the same splits, and the differences' spread."""
    pick = {t: max(("linear_probe", "finetune"), key=lambda m: np.mean([base[m][t][s]["test_accuracy"]
                                                                        for s in seeds if s in base[m][t]] or [0.0]))
            for t in tasks}  # fmt: skip
    best = np.array([np.mean([base[pick[t]][t][s]["test_accuracy"] for t in tasks]) for s in seeds])

    def on(c: float) -> np.ndarray:
        return np.array([np.mean([(served_at(munet[t][s], c) or {"test_accuracy": np.nan})["test_accuracy"]
                                  for t in tasks]) for s in seeds])  # fmt: skip

    at90, at_last = on(90), on(last)
    early, late = 100 * (at90 - best), 100 * (at_last - best)
    each = ", ".join(f"seed {s} {a:+.1f} / {b:+.1f}" for s, a, b in zip(seeds, early, late, strict=True))
    return (f"Paired on the baseline seeds {seeds}: the served version {100 * at90.mean():.1f} % at 90 s and "
            f"{100 * at_last.mean():.1f} % at {last} s, against {100 * best.mean():.1f} % for the better of the "
            f"linear probe and fine-tuning on each task ({early.mean():+.1f}{spread(early)} and {late.mean():+.1f}"
            f"{spread(late)} pt, mean ± sd over seeds; per seed, 90 s / {last} s: {each}).")


def _continual(munet: dict, base: dict, tasks: list[str], seeds: list[int]) -> str:
    """The stream in the figures continual-learning benchmarks (Avalanche, Mammoth) report, per seed."""
    end = np.array([np.mean([munet[t][s]["publications"][-1]["test_accuracy"] for t in tasks]) for s in seeds])
    probe = np.array([np.mean([base["linear_probe"][t][s]["test_accuracy"] for t in tasks]) for s in seeds])
    acc, fwt = 100 * end, 100 * (end - probe)
    return (f"As a continual-learning stream (seeds {seeds}, mean ± sd over seeds): average accuracy at the end "
            f"of the stream {acc.mean():.1f}{spread(acc)} %; forward transfer against a linear probe on the root "
            f"{fwt.mean():+.1f}{spread(fwt)} pt; backward transfer 0 within the stream (a task changes only by its "
            "own publications; idle improvement's: the idle section) and forgetting 0 (every version re-verified).")


def _per_seed(curve: Any, tasks: list[str], seeds: list[int], last: int) -> str:
    """The mean over tasks at 90 s and at `last` s, seed by seed, and the gain's spread over seeds."""
    early = 100 * np.nanmean([curve(t, 90) for t in tasks], axis=0)
    late = 100 * np.nanmean([curve(t, last) for t in tasks], axis=0)
    gain = late - early
    each = ", ".join(f"seed {s} {a:.1f} -> {b:.1f} ({b - a:+.1f})" for s, a, b in zip(seeds, early, late, strict=True))
    return f"Per seed (mean over tasks), 90 s -> {last} s: {each}; gain {gain.mean():+.1f}{spread(gain)} pt (mean ± sd over seeds)."


def _plot(munet: dict, tasks: list[str], seeds: list[int], marks: list[int], lp: float, ft: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.geomspace(1, max(marks), 200)
    fig, ax = plt.subplots(figsize=(8.5, 4))
    for t in tasks:
        # From the second every seed serves, as in the table: a mean over the seeds serving so far would
        # step down as slower seeds join, a change of sample, not of accuracy.
        ys = [np.mean([(served_at(munet[t][s], g) or {"test_accuracy": np.nan})["test_accuracy"] for s in seeds]) for g in grid]
        ax.step(grid, 100 * np.array(ys), where="post", label=t, alpha=0.8)
    ax.axhline(100 * lp, color="grey", ls="--", lw=1, label="linear probe (mean)")
    ax.axhline(100 * ft, color="black", ls=":", lw=1, label="fine-tuning (mean)")
    ax.set_xscale("log")
    ax.set_xlabel("seconds into AddTask (2-core CPU)")
    ax.set_ylabel("test accuracy of the serving version, %")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(BENCH / "anytime.png", dpi=110)


def _mean_or_nan(values: list[float]) -> float:
    """The mean of what is known (nan before anything served)."""
    known = [v for v in values if not np.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="e.g. 0-4 or 0,2")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seconds", type=float, default=360.0, help="the AddTask budget of each task")
    p.add_argument("--epochs", type=int, default=Budget.epochs, help="per trained candidate (the budget's)")
    p.add_argument("--baselines", action="store_true", help="run the linear probe and fine-tuning instead")
    p.add_argument("--first-answer", action="store_true", help="measure the first answer through the real server")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", type=Path, default=OUT, help="rows file (default: %(default)s)")
    a = p.parse_args()
    if a.report:  # RESULTS.md shows the default rows; another --out (an experiment) is only printed
        print(report(a.out, BENCH / "RESULTS.md" if a.out == OUT else None))
        return
    machine.prepare_process()
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": machine.describe(), "date": time.strftime("%Y-%m-%d")}
    seeds = parse_seeds(a.seeds)
    tasks = tuple(a.tasks.split(","))
    root = RootConfig()
    if a.first_answer:
        append(a.out, [{**r, "seed": seeds[0], **env} for r in first_answer(tasks, seeds[0])])
        return
    for seed in seeds:
        have = {(r["seed"], r["task"], r["method"]) for r in done_rows(a.out)}
        stream = [load_task(t, seed) for t in tasks]
        if a.baselines:
            for data in stream:
                for method in ("linear_probe", "finetune"):
                    if (seed, data.name, method) not in have:
                        append(a.out, [{**run_baseline(method, data, seed, root, 112), "seed": seed, **env}])
            continue
        if all((seed, d.name, "munet") in have for d in stream):
            continue
        log(f"seed {seed}: " + ", ".join(f"{d.name} ({len(d.train)}/{len(d.test)})" for d in stream))
        with tempfile.TemporaryDirectory() as tmp, search_log(a.out.with_name(f"{a.out.stem}-seed{seed}.log")):
            rows = run_stream(seed, stream, Budget(seconds=a.seconds, epochs=a.epochs), root, Path(tmp))
        append(a.out, [{**r, "seed": seed, **env} for r in rows])


@contextlib.contextmanager
def search_log(path: Path) -> Iterator[None]:
    """The server's log (every judgement with its evidence, every publication) into `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logger = logging.getLogger("munet_server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


if __name__ == "__main__":
    main()
