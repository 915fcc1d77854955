"""Progress for a person: a live bar on a terminal, a plain line every few seconds anywhere else (a
pipe, a CI log), where a bar's carriage returns would pile thousands of updates into one line."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

LINE_EVERY_SECONDS = 5.0


class LineProgress:
    """The part of tqdm's interface the CLI uses, written as whole lines at most every few seconds."""

    def __init__(self, desc: str, total: float | None, unit: str, file: IO[str], disable: bool = False,
                 unit_scale: bool = False, **_: Any) -> None:  # fmt: skip
        self.desc, self.total, self.unit, self.file, self.disable = desc, total, unit, file, disable
        self.unit_scale = unit_scale
        self.n: float = 0
        self.leave = True
        self.postfix = ""
        self._last = time.monotonic()
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh(force=False)

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or (not force and now - self._last < LINE_EVERY_SECONDS):
            return
        self._last = now
        print(self._line(), file=self.file, flush=True)

    def _line(self) -> str:
        done = _amount(self.n, self.unit, self.unit_scale)
        of = f"/{_amount(self.total, self.unit, self.unit_scale)}" if self.total else ""
        tail = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {done}{of}{tail}"

    def close(self) -> None:
        if not self._closed and self.leave:
            self.refresh(force=True)
        self._closed = True


def _amount(v: float, unit: str, scale: bool) -> str:
    prefix = ""
    for bigger in ("k", "M", "G", "T"):
        if not scale or v < 1000:
            break
        v, prefix = v / 1000, bigger
    return f"{v:.1f} {prefix}{unit}" if prefix else f"{v:.0f} {unit}"


def progress(desc: str, total: float | None = None, unit: str = "it", disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a LineProgress otherwise; both on stderr."""
    if sys.stderr.isatty():
        return tqdm(total=total, unit=unit, desc=desc, disable=disable, file=sys.stderr, **kwargs)
    return LineProgress(desc, total, unit, sys.stderr, disable=disable, unit_scale=kwargs.get("unit_scale", False))
