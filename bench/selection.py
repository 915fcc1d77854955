"""Where muNet's accuracy is decided: the candidates it trained, or the choice among them?

Runs the quality benchmark's muNet methods (`bench.quality`, the same streams and splits) and, at the
end of every generation, scores every new member of the search's population on the task's test images
as the search holds it (trained on the training part, before the confirmation and the refit). The
scoring's time is left out of the search's clock (its start is moved forward by it), so the search
runs as it would without it. Per task-seed it writes: the test accuracy of the best probe on the
holdout, of the best trained candidate on the test set (an oracle's choice: the ceiling of selection),
of the trained candidate with the best score, of the finalist the search confirmed, and of what was
committed (refitted on every labelled image).

The engine holds no benchmark code: this script wraps `EvolutionSearch` from outside.

    .venv/bin/python -m bench.selection --seeds 0-1 --methods munet90 --out bench/out/selection90.jsonl
    .venv/bin/python -m bench.selection --table bench/out/selection90.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import quality
from bench.tasks import TaskData
from munet_server.data.transforms import preprocess
from munet_server.evolve import search
from munet_server.evolve.train import split_path

_tasks: dict[tuple[str, int], TaskData] = {}  # (task, seed) -> its data, as the benchmark loaded it
_state: dict[int, dict[str, Any]] = {}  # id(search) -> {"cache": prefix outputs, "members": scored}


@torch.no_grad()
def test_accuracy(s: search.EvolutionSearch, m: search.Member, cache: dict) -> float:
    """The member's path, as trained now, on the task's test images (frozen prefixes computed once)."""
    data = _tasks[(s.task, s.cfg.seed)]
    x, y = data.test.images, data.test.labels
    split = split_path(m.path, s.ctx.arch)
    for c in split.drafts:
        c.module.eval()
    size = int(m.path.hparams["ds_image_size"])
    key = (tuple(split.prefix_ids), size)
    if key not in cache:
        parts = []
        for i in range(0, len(x), 100):
            h = preprocess(x[i : i + 100], size)
            for _, fn in split.prefix:
                h = fn(h)
            parts.append(h)
        cache[key] = torch.cat(parts)
    right = 0
    for i in range(0, len(x), 200):
        h = cache[key][i : i + 200]
        for _, fn in split.suffix:
            h = fn(h)
        right += int((h.argmax(1) == y[i : i + 200]).sum())
    return right / len(y)


def install(out: Path) -> None:
    """Wrap the benchmark's task loading and the search's generation end and run."""
    load, end, run = quality.load_task, search.EvolutionSearch._end_generation, search.EvolutionSearch.run

    def load_task(name: str, seed: int) -> TaskData:
        _tasks[(name, seed)] = data = load(name, seed)
        return data

    def end_generation(self: search.EvolutionSearch) -> None:
        t0 = time.monotonic()
        st = _state.setdefault(id(self), {"cache": {}, "members": {}})
        for m in self.population:
            if id(m) not in st["members"]:
                st["members"][id(m)] = {
                    "generation": self.generation,
                    "kind": m.kind,
                    "holdout": m.evaluation.accuracy,
                    "nll": m.evaluation.nll,
                    "score": m.score,
                    "params": search.new_params(m.path),
                    "test": test_accuracy(self, m, st["cache"]),
                }
        self._t0 += time.monotonic() - t0  # the search's clock does not see the scoring
        end(self)

    def run_search(self: search.EvolutionSearch) -> search.SearchResult:
        seen: dict[str, Any] = {}
        finalist, confirm = self._finalist, self._confirm

        def last_finalist() -> search.Member | None:
            seen["finalist"] = m = finalist()
            return m

        def first_confirmation(trained: Any, probe: Any, ends_by: float | None = None) -> search.Confirmation:
            c = confirm(trained, probe, ends_by)
            seen.setdefault("confirmation", c)
            return c

        self._finalist, self._confirm = last_finalist, first_confirmation  # type: ignore[method-assign]
        result = run(self)
        members = _state.pop(id(self), {"members": {}})["members"]
        f, c = seen.get("finalist"), seen.get("confirmation")
        conf = (
            None if c is None else {"kept": c.kept, "trained": c.trained_accuracy, "probe": c.probe_accuracy}
        )
        row = {
            "task": self.task,
            "seed": self.cfg.seed,
            "budget": self.budget.seconds,
            "members": list(members.values()),
            "finalist": members.get(id(f)) if f is not None else None,
            "confirmation": conf if c is None else {**conf, "images": c.size},
            "committed_kind": result.member.kind,
        }
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return result

    quality.load_task = load_task
    search.EvolutionSearch._end_generation = end_generation  # type: ignore[method-assign]
    search.EvolutionSearch.run = run_search  # type: ignore[method-assign]


def table(path: Path, rows_path: Path | None = None) -> str:
    """Per task-seed and on average: what the candidates could give and what the search chose."""
    committed = {}
    if rows_path is not None and rows_path.exists():
        for r in quality.done_rows(rows_path):
            committed[(r["task"], r["seed"], r["method"])] = r["test_accuracy"]
    lines = [
        "| budget s | task | seed | candidates | best probe | oracle trained | best-score trained | finalist | confirmation | committed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    cols: list[list[float]] = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        ms = r["members"]
        trained = [m for m in ms if m["kind"] == "trained"]
        probe = max((m for m in ms if m["kind"] == "probe"), key=lambda m: (m["holdout"], -m["nll"]))
        oracle = max((m["test"] for m in trained), default=probe["test"])
        top = max(trained, key=lambda m: (m["score"], m["holdout"]))["test"] if trained else probe["test"]
        fin = r["finalist"]["test"] if r["finalist"] else None
        c = r["confirmation"]
        method = f"munet{int(r['budget'])}"
        done = committed.get((r["task"], r["seed"], method), float("nan"))
        cols.append([probe["test"], oracle, top, done])
        lines.append(
            f"| {r['budget']:.0f} | {r['task']} | {r['seed']} | {len(trained)} | {100 * probe['test']:.1f} | "
            f"{100 * oracle:.1f} | {100 * top:.1f} | {'-' if fin is None else f'{100 * fin:.1f}'} | "
            f"{'-' if c is None else ('kept' if c['kept'] else 'probe kept')} | {100 * done:.1f} |"
        )
    a = 100 * np.array(cols)
    lines.append(
        f"| | **mean** | | | **{a[:, 0].mean():.1f}** | **{a[:, 1].mean():.1f}** | **{a[:, 2].mean():.1f}** | | | "
        f"**{np.nanmean(a[:, 3]):.1f}** |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=quality.BENCH / "out" / "selection.jsonl")
    p.add_argument("--table", type=Path, help="only print the table of this file (rows: its .rows.jsonl)")
    a, rest = p.parse_known_args(argv)
    if a.table is not None:
        print(table(a.table, a.table.with_suffix(".rows.jsonl")))
        return 0
    install(a.out)
    rows = a.out.with_suffix(".rows.jsonl")
    quality.main([*rest, "--out", str(rows), "--no-report"])
    print(table(a.out, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
