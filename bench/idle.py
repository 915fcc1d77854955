"""Idle improvement: what the server adds to its tasks when nobody asks it anything.

For each seed, a real `munet-server` (idle improvement on, its default rounds) learns the benchmark's
five tasks one after another through AddTask with the default budget (90 s), as a user would. Then
nobody calls it for --minutes; it runs its own ImproveTask rounds. Afterwards the server is stopped
and its store opened in-process: the version each task served when AddTask ended and the one it
serves now are scored on the task's test images (pinned, task@N), and every version of every task is
re-verified against its golden digest (nothing forgotten, by construction and checked).

    .venv/bin/python -m bench.idle --seeds 0 --minutes 20   # ~30 min a seed on 2 CPU cores
    .venv/bin/python -m bench.idle --report

The server's log of each seed (every judgement with its evidence) is kept beside the rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import machine
from bench.anytime import TASKS
from bench.process import free_port, wait_serving
from bench.rows import append, done_rows, log, parse_seeds, spread
from bench.tasks import TaskData, load_task
from munet_server.data import offline
from munet_server.model.root import RootConfig
from munet_server.store.store import Store
from munet_server.system import MunetSystem

OUT = Path(__file__).resolve().parent / "out" / "idle.jsonl"
HEAD = """## Idle improvement: what the server adds when nobody asks it anything

`.venv/bin/python -m bench.idle --seeds {seeds} --minutes 20`, then `--report`. A real `munet-server` (idle
improvement on, its default 120 s rounds) learns the five tasks through AddTask (90 s each), then is
left alone for 20 minutes; the version each task served when its AddTask ended and the one it serves
afterwards are scored on the test images (the judge of commit b00e3f4: the exact McNemar test at
Westfall-Young's level among the search's tests; the probes of commit b1e1d1c, which include the root
one and two blocks shallower).

"""


def run_seed(
    seed: int, stream: list[TaskData], minutes: float, add_seconds: float, tmp: Path, server_log: Path
) -> list[dict[str, Any]]:
    """`server_log`: the server's own log (every judgement and publication, at INFO)."""
    from munet_client import MunetClient

    folders = {}
    for data in stream:  # written before the server starts: no quiet gap between the AddTasks
        raw = offline.RawImages(data.train.images.permute(0, 2, 3, 1).numpy(), data.train.labels.numpy(), data.class_names)
        folders[data.name] = offline.write_image_folder(raw, tmp / data.name)
    port = free_port()
    cmd = [sys.executable, "-m", "munet_server", "--store", str(tmp / "store"), "--port", str(port),
           "--idle-improvement", "--log-level", "INFO"]  # fmt: skip
    server_log.parent.mkdir(parents=True, exist_ok=True)
    with server_log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_serving(f"127.0.0.1:{port}", proc, server_log)
        client = MunetClient(f"127.0.0.1:{port}", timeout=120)
        before = {}
        for data in stream:
            op = client.add_task_from_folder(data.name, folders[data.name], budget={"seconds": add_seconds}, seed=seed)
            before[data.name] = client.wait(op.name, timeout=add_seconds * 4 + 300).task_version
            log(f"  {data.name}: AddTask left version {before[data.name]}")
        idle_from = time.monotonic()
        time.sleep(minutes * 60)
        after = {d.name: client.describe_task(d.name).served_version for d in stream}
        rounds = [op for op in client.operations() if op.origin == "idle"]
        idle_seconds = time.monotonic() - idle_from
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    system = MunetSystem.open(Store(tmp / "store"), RootConfig(), device="cpu")
    verified = all(system.verify_task(f"{n}@{v.version}") for n in system.tasks for v in system.versions(n))
    rows = []
    for data in stream:
        n = data.name
        row = {"method": "idle", "task": n, "minutes": minutes, "idle_seconds": idle_seconds,
               "before_version": before[n], "after_version": after[n],
               "before_test": test_accuracy(system, f"{n}@{before[n]}", data),
               "after_test": test_accuracy(system, f"{n}@{after[n]}", data),
               "rounds": sum(op.task == n for op in rounds),
               "published": sum(op.progress.published for op in rounds if op.task == n),
               "all_versions_verified": verified}  # fmt: skip
        rows.append(row)
        log(f"  {n}: v{before[n]} {row['before_test']:.3f} -> v{after[n]} {row['after_test']:.3f} "
            f"({row['rounds']} rounds, {row['published']} published)")  # fmt: skip
    system.store.close()
    return rows


def test_accuracy(system: MunetSystem, ref: str, data: TaskData) -> float:
    """On the task's test images, with the labels in the order the upload gave them (the server numbers
    an ImageFolder's classes by their sorted folder names)."""
    names = system.entry(ref).record.class_names
    order = torch.tensor([names.index(offline.safe_dirname(n, i)) for i, n in enumerate(data.class_names)])
    x, y = data.test.images, order[data.test.labels]
    logits = torch.cat([system.logits(ref, x[i : i + 64]) for i in range(0, len(x), 64)])
    return float((logits.argmax(1) == y).float().mean())


def report(out: Path, results_md: Path | None = None) -> str:
    rows = [r for r in done_rows(out) if r["method"] == "idle"]
    if not rows:
        return "no rows yet"
    seeds = sorted({r["seed"] for r in rows})
    machines, dates = sorted({r["machine"] for r in rows}), sorted({r["date"] for r in rows})
    lines = [f"Seeds {', '.join(map(str, seeds))}; {rows[0]['minutes']:.0f} minutes idle after the stream; "
             f"{' / '.join(machines)}; {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}.", "",
             "| task | after AddTask (90 s) | after idle | gain (pt) | rounds | published |", "|---|---|---|---|---|---|"]  # fmt: skip
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        b, a = np.mean([r["before_test"] for r in rs]), np.mean([r["after_test"] for r in rs])
        lines.append(f"| {task} | {100 * b:.1f} % | {100 * a:.1f} % | {100 * (a - b):+.1f} | "
                     f"{sum(r['rounds'] for r in rs)} | {sum(r['published'] for r in rs)} |")  # fmt: skip
    b, a = np.mean([r["before_test"] for r in rows]), np.mean([r["after_test"] for r in rows])
    ok = all(r["all_versions_verified"] for r in rows)
    lines.append(f"| **mean** | {100 * b:.1f} % | {100 * a:.1f} % | **{100 * (a - b):+.1f}** | | |")
    lines += ["", _per_seed(rows, seeds), "", f"Every version of every task verified against its golden digest "
              f"afterwards: {'yes' if ok else 'NO'} (forgetting: 0)."]  # fmt: skip
    text = "\n".join(lines)
    if results_md is not None:
        machine.update_section(str(results_md), "idle", HEAD.format(seeds=",".join(map(str, seeds))) + text)
    return text


def _per_seed(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    """Each seed's mean gain over its tasks (backward transfer from idle improvement), its spread, and
    the tasks that idle improvement left lower on test."""
    gains = np.array([100 * np.mean([r["after_test"] - r["before_test"] for r in rows if r["seed"] == s]) for s in seeds])
    lower = [f"{r['task']} s{r['seed']}" for r in rows if r["after_test"] < r["before_test"]]
    each = ", ".join(f"seed {s} {g:+.1f}" for s, g in zip(seeds, gains, strict=True))
    return (f"Per seed (mean over tasks): {each}; backward transfer (what idle rounds added to the tasks already served) "
            f"{gains.mean():+.1f}{spread(gains)} pt (mean ± sd over seeds). "
            f"Publications: {sum(r['published'] for r in rows)} in {sum(r['rounds'] for r in rows)} rounds; "
            f"tasks lower on test after idle: {len(lower)} ({', '.join(lower) or 'none'}).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="e.g. 0-4 or 0,2")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--minutes", type=float, default=20.0, help="how long the server is left idle")
    p.add_argument("--add-seconds", type=float, default=90.0, help="each AddTask's budget")
    p.add_argument("--report", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    if a.report:  # RESULTS.md shows the default rows; another --out (an experiment) is only printed
        print(report(a.out, OUT.parent.parent / "RESULTS.md" if a.out == OUT else None))
        return
    machine.prepare_process()
    torch.set_num_threads(os.cpu_count() or 1)
    env = {"machine": machine.describe(), "date": time.strftime("%Y-%m-%d")}
    for seed in parse_seeds(a.seeds):
        if any(r["seed"] == seed for r in done_rows(a.out)):
            continue
        stream = [load_task(t, seed) for t in a.tasks.split(",")]
        log(f"seed {seed}: " + ", ".join(f"{d.name} ({len(d.train)}/{len(d.test)})" for d in stream))
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_seed(seed, stream, a.minutes, a.add_seconds, Path(tmp), a.out.with_name(f"idle-seed{seed}.log"))
        append(a.out, [{**r, "seed": seed, **env} for r in rows])


if __name__ == "__main__":
    main()
