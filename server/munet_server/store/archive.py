"""Uncompressed tar streams of snapshots, written by hand and read defensively.

Writing never holds a file whole in memory. Reading accepts only regular files with the exact names
a snapshot has; links, devices, absolute or `..` paths, unknown names and duplicates are refused
before anything is written, and files are written by us (never `TarFile.extract`).
"""

from __future__ import annotations

import re
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from munet_server.errors import InvalidArgument, ResourceExhausted

MANIFEST = "manifest.json"
FILE_RE = re.compile(
    r"^(manifest\.json|meta\.lmdb/data\.mdb|meta\.lmdb/lock\.mdb|shards/[0-9a-f]{64}\.safetensors)$"
)
DIRS = {"meta.lmdb", "shards"}
_CHUNK = 1 << 20


def tar_blocks(sources: dict[str, Path], manifest: dict[str, Any]) -> Iterator[bytes]:
    """A plain ustar/pax stream of the manifest and its files (`sources`: member name -> the file to
    read), built by hand so that no file is ever held whole in memory."""
    mtime = int(manifest["created_at"])
    for rel in [MANIFEST, *manifest["files"]]:
        path = sources[rel]
        size = path.stat().st_size
        yield tar_header(rel, size, mtime)
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                yield block
        yield tar_padding(size)
    yield TAR_END


TAR_END = b"\0" * (2 * tarfile.BLOCKSIZE)  # two empty blocks end a tar


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A regular file's pax header; its `size` bytes follow, then tar_padding(size)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, mtime
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def rechunk(blocks: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    buf = bytearray()
    for b in blocks:
        buf += b
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    if buf:
        yield bytes(buf)


def _member_name(m: tarfile.TarInfo) -> str | None:
    """The member's path if it is a file we accept; None for a harmless directory entry."""
    name = m.name[2:] if m.name.startswith("./") else m.name
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
        raise InvalidArgument(f"archive member {m.name!r} points outside the snapshot; refusing it")
    if m.issym() or m.islnk() or m.isdev() or not (m.isreg() or m.isdir()):
        raise InvalidArgument(f"archive member {m.name!r} is a link, device or special file; refusing it")
    name = name.rstrip("/") if m.isdir() else name
    if m.isdir() and name in {"", ".", *DIRS}:
        return None
    if m.isdir() or not FILE_RE.match(name):
        raise InvalidArgument(f"archive member {m.name!r} is not part of a munet snapshot")
    return name


def extract_archive(chunks: Iterable[bytes], staging: Path, max_bytes: int) -> None:
    """Spool the stream (at most max_bytes) next to `staging`, then unpack only expected files."""
    staging.mkdir()
    tar_path = staging.with_name(staging.name + ".tar")
    try:
        total = 0
        with open(tar_path, "xb") as f:
            for chunk in chunks:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidArgument("snapshot archive chunks must be bytes")
                total += len(chunk)
                if total > max_bytes:
                    raise ResourceExhausted(
                        f"the snapshot archive is larger than the limit of {max_bytes} bytes; "
                        "raise the limit or restore from a directory"
                    )
                f.write(chunk)
        try:
            with tarfile.open(tar_path, mode="r:") as tf:
                seen: set[str] = set()
                for m in tf:
                    name = _member_name(m)
                    if name is None:
                        continue
                    if name in seen:
                        raise InvalidArgument(f"archive member {name!r} appears twice")
                    if m.size > max_bytes:
                        raise InvalidArgument(f"archive member {name!r} is larger than the limit")
                    seen.add(name)
                    out = staging / name
                    out.parent.mkdir(exist_ok=True)
                    src = tf.extractfile(m)
                    if src is None:
                        raise InvalidArgument(f"archive member {name!r} has no data")
                    with src, open(out, "xb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        except (tarfile.TarError, EOFError) as e:
            raise InvalidArgument(f"the snapshot archive is not a complete uncompressed tar ({e})") from None
    finally:
        tar_path.unlink(missing_ok=True)
