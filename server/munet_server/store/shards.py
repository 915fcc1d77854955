"""Content-addressed, immutable safetensors shards: `<root>/<sha256 of the file bytes>.safetensors`.

A shard is written once (temp file, fsync, rename, fsync dir) and never rewritten, so a digest
names the same bytes forever and a reader can check them. Loading goes through safetensors only:
nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from munet_server.errors import CorruptShard, DataLoss, InvalidArgument, NotFound
from munet_server.faults import disk_full_point
from munet_server.store.layout import write_atomic

SUFFIX = ".safetensors"
TEMP_PREFIX = ".tmp-"
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "F8_E8M0": 1, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def check_digest(digest: object) -> str:
    """A digest is exactly 64 lowercase hex chars; anything else could be a path trick."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidArgument(f"{digest!r} is not a shard digest (64 lowercase hex characters)")
    return digest


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Deterministic safetensors bytes: same tensors and metadata -> same bytes -> same digest."""
    if not isinstance(tensors, dict):
        raise InvalidArgument("shard tensors must be a dict of name -> tensor")
    clean: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not isinstance(key, str) or not key or not isinstance(t, torch.Tensor):
            raise InvalidArgument(f"shard entry {key!r} must map a non-empty name to a tensor")
        try:  # clone: de-aliases shared storage (safetensors refuses it) and makes it contiguous
            clean[key] = t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        except RuntimeError as e:  # sparse, meta or otherwise unstorable tensors
            raise InvalidArgument(f"tensor {key!r} cannot be stored: {e}") from None
    md = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
        raise InvalidArgument("shard metadata must map str to str")
    try:
        data = st_save(clean)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise InvalidArgument(f"tensors cannot be stored as safetensors: {e}") from None
    # safetensors writes __metadata__ from a Rust HashMap (random order): write it ourselves, sorted.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(md.items()))} if md else {}) | header
    raw = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def validate_shard_file(path: Path, max_tensors: int = 1_000_000) -> list[str]:
    """Check a (possibly hostile) safetensors file without loading it; return its tensor names.

    The header must describe exactly the bytes present: known dtypes, sane shapes whose sizes match
    their offsets, tensors packed back to back up to the end of the file.
    """
    name = path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > _MAX_HEADER or 8 + n > size:
            raise DataLoss(f"shard {name}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise DataLoss(f"shard {name}: safetensors header is not JSON") from None
    if not isinstance(header, dict) or len(header) > max_tensors + 1:
        raise DataLoss(f"shard {name}: safetensors header is not a table of tensors")
    md = header.pop("__metadata__", {})
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise DataLoss(f"shard {name}: bad __metadata__")
    spans = []
    for key, info in header.items():
        ok = isinstance(info, dict) and info.get("dtype") in _DTYPE_SIZES
        shape, offs = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and len(shape) <= 32
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= size for d in shape)
        ok = ok and isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
        if not ok:
            raise DataLoss(f"shard {name}: tensor {key!r} has a malformed or absurd header entry")
        numel = 1
        for d in shape:
            numel *= d
            if numel > size:  # refuse absurd shapes before the product explodes
                raise DataLoss(f"shard {name}: tensor {key!r} claims shape {shape}, larger than the file")
        begin, end = offs
        if not 0 <= begin <= end or end - begin != numel * _DTYPE_SIZES[info["dtype"]]:
            raise DataLoss(f"shard {name}: tensor {key!r} shape {shape} does not match its byte range")
        spans.append((begin, end))
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise DataLoss(f"shard {name}: tensor data overlaps or leaves gaps")
        pos = end
    if 8 + n + pos != size:
        raise DataLoss(f"shard {name}: file is {size} bytes but its header describes {8 + n + pos}")
    try:  # and safetensors' own parser must agree
        with safe_open(str(path), framework="pt") as st:
            keys = list(st.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise DataLoss(f"shard {name}: safetensors refuses it ({e})") from None
    if set(keys) != set(header):
        raise DataLoss(f"shard {name}: safetensors lists other tensors than its header")
    return keys


class ShardStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / f"{check_digest(digest)}{SUFFIX}"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> set[str]:
        return {
            p.name[: -len(SUFFIX)]
            for p in self.root.iterdir()
            if p.name.endswith(SUFFIX) and is_digest(p.name[: -len(SUFFIX)])
        }

    def put(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
        data = serialize(tensors, metadata)
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            # Never rewritten; only touched so a gc with a grace period sees it as fresh.
            with contextlib.suppress(OSError):
                os.utime(target)
            return digest
        disk_full_point("shard_write", target)
        write_atomic(target, data, tmp_prefix=TEMP_PREFIX)
        return digest

    def _damaged(self, digest: str, why: str) -> CorruptShard:
        return CorruptShard(
            f"shard file {self.path(digest)} {why}: the store is damaged; restore it from a snapshot"
        )

    def get(self, digest: str) -> dict[str, torch.Tensor]:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"shard {digest} is missing from {self.root}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise self._damaged(digest, "does not match its sha256 digest")
        try:
            return st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise self._damaged(digest, f"is not valid safetensors ({e})") from None

    def verify(self, digest: str) -> None:
        path = self.path(digest)
        try:
            actual, _ = sha256_file(path)
        except FileNotFoundError:
            raise NotFound(f"shard {digest} is missing from {self.root}") from None
        if actual != digest:
            raise self._damaged(digest, "does not match its sha256 digest")

    def metadata(self, digest: str) -> dict[str, str]:
        """The `metadata` given to `put` (read from the header only; {} if unreadable)."""
        try:
            with open(self.path(digest), "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(min(n, 1 << 20)))
            meta = header.get("__metadata__", {})
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def clean_temp(self) -> int:
        count = 0
        for p in self.root.iterdir():
            if p.name.startswith(TEMP_PREFIX):
                p.unlink(missing_ok=True)
                count += 1
        return count
