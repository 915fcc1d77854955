"""AIP-158 paging for List calls: `page_size` (0: the maximum) and an opaque `page_token` that names
the last item of the previous page, so pages stay consistent when items come and go in between."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TypeVar

from munet_server.errors import InvalidArgument

T = TypeVar("T")
MAX_PAGE = 1000


def _encode(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server returned; start again without it") from None


def page(items: Sequence[T], key: Callable[[T], str], size: int, token: str) -> tuple[list[T], str]:
    """The page of `items` after `token`, and the next token ("" on the last page). `items` must be
    sorted in the order of their keys (strings)."""
    if size < 0:
        raise InvalidArgument(f"page_size must be >= 0 (0: up to {MAX_PAGE}), got {size}")
    size = min(size or MAX_PAGE, MAX_PAGE)
    start = 0
    if token:
        last = _decode(token)
        keys = [key(i) for i in items]
        start = next((i + 1 for i, k in enumerate(keys) if k == last), None)
        if start is None:  # the last item was deleted meanwhile: go on from where it sorted
            start = sum(1 for k in keys if k < last)
    out = list(items[start : start + size])
    more = start + size < len(items)
    return out, _encode(key(out[-1])) if more and out else ""
