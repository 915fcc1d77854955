"""Reading images for upload and prediction on the client side (no torch, no decoding needed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ImageFolder:
    """An ImageFolder tree: one sub-folder per class (sorted names = label order), images inside."""

    root: Path
    class_names: list[str]
    files: list[tuple[Path, int]]

    @classmethod
    def scan(cls, root: Path | str) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} is not a directory; give an ImageFolder tree (one folder per class)"
            )
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise ValueError(
                f"{root} has {len(classes)} class folders; a task needs at least 2 (one per class)"
            )
        files = []
        for label, name in enumerate(classes):
            found = sorted(
                p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"class folder {root / name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.extend((p, label) for p in found)
        return cls(root, classes, files)

    @property
    def num_bytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self.files)

    def examples(self) -> Iterator[tuple[bytes, int]]:
        for path, label in self.files:
            yield path.read_bytes(), label
