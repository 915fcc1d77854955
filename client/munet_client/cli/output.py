"""What the CLI prints: tables and lines for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from munet_client.progress import progress

console = Console(soft_wrap=True)  # a message is one line, however long (logs and grep)
err = Console(stderr=True, soft_wrap=True)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def say(bar: Any, quiet: bool, line: str) -> None:
    """A line above a live bar (or after the last plain progress line)."""
    if quiet:
        return
    if hasattr(bar, "write"):
        bar.write(line, file=sys.stderr)
    else:
        err.print(line)


def bytes_bar(desc: str, quiet: bool, total: int = 0) -> tuple[Any, Callable[[int, int], None]]:
    bar = progress(desc, total or None, "B", disable=quiet, unit_scale=True)
    return bar, lambda done, _total: bar.update(done - bar.n)
