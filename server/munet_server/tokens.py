"""Which bearer tokens a call needs, for every front door (gRPC interceptor, HTTP routes).

Admin calls (add, cancel, delete, export, snapshot, restore) need the admin token, or the predict
token when it is the only one set; every other call needs the predict (or admin) token once a predict
token is set; with no tokens everything is open (loopback use)."""

from __future__ import annotations

import hmac


def accepted(admin: str, predict: str, admin_call: bool) -> list[str]:
    """The tokens accepted for a call; empty: the call is open."""
    if admin_call:
        return [admin or predict] if (admin or predict) else []
    return [t for t in (predict, admin) if t] if predict else []


def matches(token: str, accepted_tokens: list[str]) -> bool:
    """Constant-time against every accepted token (no early exit: timing says nothing about which)."""
    ok = False
    for t in accepted_tokens:
        ok |= hmac.compare_digest(token.encode(), t.encode())
    return ok


def from_header(value: str | None) -> str | None:
    """`Bearer <token>` (or a bare token) -> the token; None when the header is absent."""
    if value is None:
        return None
    return value[7:].strip() if value.lower().startswith("bearer ") else value.strip()
