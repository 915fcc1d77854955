"""The same images through several paths in one pass: the steps the paths share run once.

muNet tasks reuse frozen components, so the paths of a system often start alike (the root's stem
and early blocks). When several tasks classify the same images, their paths walk together while
they run the same modules and split where they diverge: the shared prefix is computed once, not
once per task. (Different images share no work, so their rows are never merged: a larger batch
is not cheaper per image on a CPU, measured in bench/serving.py.)
"""

from __future__ import annotations

from collections import defaultdict

import torch

from munet_server.model.arch import Step


def forward_shared(chains: dict[str, list[Step]], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """chains[task]: the task's path as steps (`Architecture.steps`); inputs[task]: its input batch.

    Tasks given the very same input tensor (the same object) share every leading step whose modules
    are the same objects; the outputs are exactly those of running each path alone on that batch.
    """
    starts: dict[int, list[str]] = defaultdict(list)
    for task, x in inputs.items():
        starts[id(x)].append(task)
    todo = [(tasks, inputs[tasks[0]], 0) for tasks in starts.values()]
    out: dict[str, torch.Tensor] = {}
    while todo:
        tasks, h, depth = todo.pop()
        branches: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for t in tasks:
            if depth == len(chains[t]):
                out[t] = h
            else:
                branches[tuple(id(m) for m in chains[t][depth][0])].append(t)
        for same in branches.values():
            todo.append((same, chains[same[0]][depth][1](h), depth + 1))
    return out
