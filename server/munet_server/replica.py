"""A read-only replica: serve the newest complete snapshot under a directory, and switch to newer ones.

The primary writes snapshots with `Snapshot` (`munet snapshot --server-dir DIR/<name>`); each appears
whole (it is built in a hidden temporary directory and renamed). A follower looks every few seconds,
and when a snapshot newer than the one it serves has appeared, restores it through the same verified,
atomic restore as `Restore`: Predict keeps answering from the old system until the new one is in
place, and a damaged or partial snapshot is refused and logged while the old one keeps serving."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from munet_server import logs
from munet_server.errors import MunetError
from munet_server.service import MunetService
from munet_server.store.archive import MANIFEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    created_at: float
    name: str


def newest_snapshot(root: Path) -> tuple[Path, Seen] | None:
    """The complete snapshot under `root` with the latest manifest time (hidden dirs are unfinished)."""
    best: tuple[Path, Seen] | None = None
    if not root.is_dir():
        return None
    for d in root.iterdir():
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue
        try:
            created = float(json.loads((d / MANIFEST).read_text())["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: not a snapshot (restore would refuse it too)
        seen = Seen(created, d.name)
        if best is None or (seen.created_at, seen.name) > (best[1].created_at, best[1].name):
            best = (d, seen)
    return best


def _fingerprint(d: Path) -> tuple:
    """The files under a snapshot directory with their sizes and modification times."""
    out = []
    for p in sorted(d.rglob("*")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((str(p.relative_to(d)), st.st_size, st.st_mtime_ns))
    return tuple(out)


class Follower:
    def __init__(self, service: MunetService, root: Path, interval: float) -> None:
        self.service = service
        self.root = root
        self.interval = interval
        self.serving: Seen | None = None
        # Snapshots that failed to restore, with their files' sizes and times then: retried only once
        # those change (a snapshot copied in by hand may be refused while the copy is under way).
        self.refused: dict[Seen, tuple] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="munet-follow", daemon=True)

    def start(self) -> None:
        if not self.check() and self.serving is None:  # the first snapshot before the server answers
            log.warning("replica: no complete snapshot under %s yet; serving the store's %d tasks until one appears",
                        self.root, len(self.service.system.tasks))  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def check(self) -> bool:
        """Switch to the newest snapshot if it is newer than the one served; True if it switched."""
        found = newest_snapshot(self.root)
        if found is None:
            return False
        path, seen = found
        if seen == self.serving or self.refused.get(seen) == _fingerprint(path):
            return False
        if self.serving is not None and (seen.created_at, seen.name) < (self.serving.created_at, self.serving.name):
            return False
        try:
            manifest = self.service.restore_from_dir(path)
        except MunetError as e:
            self.refused[seen] = _fingerprint(path)
            log.error("replica: snapshot %s refused (%s: %s); still serving the previous one", path, e.code.name, e.message)
            return False
        self.serving = seen
        logs.event(log, "replica_switched", f"replica: now serving snapshot {path.name} ({len(manifest['tasks'])} tasks)",
                   snapshot=str(path), tasks=manifest["tasks"])  # fmt: skip
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the replica keeps serving what it has
                log.exception("replica: looking for a newer snapshot failed")
