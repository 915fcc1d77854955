"""Several paths' batches in one pass: the steps the paths share run once on their rows together.

muNet tasks reuse frozen components, so the paths of a system often start alike (the root's stem
and early blocks). The rows of every path that runs the same modules on inputs of the same shape
are concatenated and go through those modules once; where the paths diverge, the rows split. Every
op in a path is per-example (eval-mode BatchNorm, LayerNorm, attention within an example), so each
task's rows get the values its own path computes, up to the float rounding of a different batch size.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from server.model.arch import Step


@dataclass
class _Rows:
    """Hidden states of several tasks' rows, stacked; `spans[task]` = (start, count) in `h`."""

    tasks: list[str]
    h: torch.Tensor
    spans: dict[str, tuple[int, int]]

    def part(self, task: str) -> torch.Tensor:
        start, n = self.spans[task]
        return self.h[start : start + n]

    def select(self, tasks: list[str]) -> _Rows:
        if tasks == self.tasks:
            return self
        parts = [self.part(t) for t in tasks]
        return _Rows(tasks, torch.cat(parts), _spans(tasks, [len(p) for p in parts]))


def _spans(tasks: list[str], counts: list[int]) -> dict[str, tuple[int, int]]:
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return {t: (s, n) for t, s, n in zip(tasks, starts, counts)}


def forward_shared(chains: dict[str, list[Step]], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """chains[task]: the task's path as steps (`Architecture.steps`); inputs[task]: its batch.
    Returns each task's output. Steps are matched by module identity, position by position."""
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for task, x in inputs.items():
        by_shape[tuple(x.shape[1:])].append(task)
    todo = [
        (_Rows(ts, torch.cat([inputs[t] for t in ts]), _spans(ts, [len(inputs[t]) for t in ts])), 0)
        for ts in by_shape.values()
    ]
    out: dict[str, torch.Tensor] = {}
    while todo:
        rows, depth = todo.pop()
        live = []
        for t in rows.tasks:
            if depth == len(chains[t]):
                out[t] = rows.part(t)
            else:
                live.append(t)
        groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for t in live:
            groups[tuple(id(m) for m in chains[t][depth][0])].append(t)
        for tasks in groups.values():
            sub = rows.select(tasks)
            run = chains[tasks[0]][depth][1]
            todo.append((_Rows(tasks, run(sub.h), sub.spans), depth + 1))
    return out
