"""What can be checked before the model stack is imported: a server that cannot start says why in a
fraction of a second instead of after importing torch and timm (seconds on a small machine).

The same conditions are checked again where they matter (the store opens, gRPC binds, the metrics and
HTTP servers listen): these checks only move the common mistakes to the front, with the same words.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from munet_server.config import ServerConfig
from munet_server.errors import FailedPrecondition


def check(config: ServerConfig) -> None:
    """Raise FailedPrecondition (or OSError naming the file) for a configuration that cannot start."""
    store = Path(config.store)
    if store.exists() and not store.is_dir():
        raise FailedPrecondition(f"the store path {store} exists but is not a directory")
    if config.follow is not None and not Path(config.follow).is_dir():
        raise FailedPrecondition(
            f"--follow {config.follow} is not a directory; give the directory the primary writes its snapshots into"
        )
    for path in (config.tls_cert, config.tls_key):
        if path is not None:
            with open(path, "rb"):  # missing or unreadable: OSError with the file's name
                pass
    if _bind_error(config.host, config.port):
        raise FailedPrecondition(cannot_bind(f"{config.host}:{config.port}"))
    for host, port, what in ((config.metrics_host or config.host, config.metrics_port, "metrics"),
                             (config.host, config.http_port, "HTTP")):  # fmt: skip
        if port and (error := _bind_error(host, port)):
            raise FailedPrecondition(cannot_serve(what, host, port, error))


def cannot_bind(address: str) -> str:
    """The gRPC port's message, here and where the server binds (app.py)."""
    return f"could not bind {address}: the port is in use or the address is not local"


def cannot_serve(what: str, host: str, port: int | None, reason: str) -> str:
    """The metrics and HTTP ports' message, here and where those servers listen (app.py)."""
    return f"could not serve {what} on {host}:{port}: {reason}"


def _bind_error(host: str, port: int) -> str | None:
    """Why host:port cannot be bound (None: it can, or port 0, any free port). Bound and released
    with SO_REUSEADDR, as the servers set it: a port in TIME_WAIT passes, one in use does not."""
    if not port:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return None  # an unresolvable host: the server's own bind reports it
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                return e.strerror or str(e)
            raise
    return None
