"""What the snapshot module needs of a store, as a protocol: store.py implements it and uses
snapshot.py for compaction, so snapshot.py must not import store.py (the import graph stays a tree)."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from munet_server.store.metadata import MetadataStore, MetaView
from munet_server.store.shards import ShardStore


class LiveGeneration(Protocol):
    """A store's live generation: its metadata and shards, and the locks that order writers."""

    root: Path
    map_size: int
    generation_dir: Path
    meta: MetadataStore
    shards: ShardStore

    def exclusive(self) -> threading.RLock: ...

    def pinned_shards(self) -> AbstractContextManager[None]: ...

    def staging_dir(self) -> AbstractContextManager[Path]: ...

    def switch_to(self, staging: Path) -> None: ...

    @staticmethod
    def shard_references(view: MetaView) -> tuple[set[str], set[str]]: ...

