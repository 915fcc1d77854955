"""What every benchmark shares: its rows file (JSONL, appended as rows finish, so a re-run skips what
is there), its progress line, the --seeds argument, and how a spread over seeds is written."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def done_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2' -> [0, 2]."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def spread(values: np.ndarray) -> str:
    """The spread over seeds as " ± sd", or nothing for one seed."""
    return f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""


def ci95(x: np.ndarray) -> float:
    """Half the width of the 95 % confidence interval of the mean (Student's t); NaN for one value."""
    from scipy import stats

    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
