"""Candidates per second of the same search: locally, and on Ray with 1 and 2 concurrent workers
(the figures in docs/RAY.md). Setups alternate over two rounds and the faster round counts (the
machine may be shared).

    .venv/bin/python -m bench.ray_throughput
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

from munet_server.evolve.budget import Budget
from munet_server.evolve.executors import Executor, LocalExecutor
from munet_server.evolve.ray_executor import RayExecutor
from munet_server.evolve.search import Search, SearchConfig
from munet_server.model.pretrain import pretrain_root
from munet_server.model.root import tiny_vit_config
from munet_server.store.store import Store
from munet_server.system import MunetSystem
from tests.helpers import animal_shapes_at, digits_dataset


def _search(system: MunetSystem, data, executor: Executor, budget: Budget) -> Search:
    torch.manual_seed(0)
    versions = iter(range(1, 1000))
    return Search(system, "digits", data, SearchConfig(budget=budget, seed=0), executor=executor,
                  publish=lambda path, member, pub: next(versions))  # fmt: skip


def main() -> None:
    work = Path(tempfile.mkdtemp())
    weights = work / "root.safetensors"
    images, labels = animal_shapes_at(32, per_class=200)
    pretrain_root(tiny_vit_config(), images, labels, weights, steps=1000)
    system = MunetSystem.open(Store(work / "store"), tiny_vit_config(weights=str(weights)), device="cpu")
    data = digits_dataset(classes=3)  # ~540 images
    warm = Budget(seconds=600, generations=1, candidates_per_generation=2, epochs=20)
    measured = Budget(seconds=600, generations=2, candidates_per_generation=4, epochs=20)
    setups: list[tuple[str, Executor, int]] = [
        ("local, 1 thread", LocalExecutor(), 1),
        ("ray, 1 worker x 1 thread", RayExecutor(local_num_cpus=2, num_cpus_per_candidate=2, torch_threads=1), 1),
        ("ray, 2 workers x 1 thread", RayExecutor(local_num_cpus=2, num_cpus_per_candidate=1), 1),
    ]
    _search(system, data, setups[2][1], warm).run()  # warm workers
    best: dict[str, float] = {}
    for r in range(2):
        for name, ex, threads in setups if r == 0 else setups[::-1]:
            torch.set_num_threads(threads)
            search = _search(system, data, ex, measured)
            t0 = time.monotonic()
            search.run()
            best[name] = min(best.get(name, math.inf), time.monotonic() - t0)
            print(f"round {r}: {name}: {time.monotonic() - t0:.1f} s", flush=True)
    n = 8
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average after: {load}\n| setup | candidates | seconds | candidates/s |\n|---|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {n} | {v:.1f} | {n / v:.2f} |")


if __name__ == "__main__":
    main()
