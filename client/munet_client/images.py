"""Reading images for upload and prediction on the client side (no torch, no decoding needed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation"})
SKIPPED = frozenset({"__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini"})


def skipped(part: str) -> bool:
    """A path segment that is hidden (.DS_Store, ._resource forks, .git) or an archiver's or OS's leftover."""
    return part.startswith(".") or part in SKIPPED


def visible(p: Path, root: Path) -> bool:
    return not any(map(skipped, p.relative_to(root).parts))


@dataclass(frozen=True)
class ImageFolder:
    """An ImageFolder tree: one sub-folder per class (sorted names = label order), images inside.

    A dataset laid out as splits (train/ and test/, each holding the class folders, as HF and TFDS
    ImageFolder exports are) is read from its train/ folder: `split` says so."""

    root: Path
    class_names: list[str]
    files: list[tuple[Path, int]]
    split: str = ""  # "train" when the tree was a split dataset's train/ folder
    skipped: tuple[Path, ...] = ()  # files in class folders that are not images (by suffix)

    @classmethod
    def scan(cls, root: Path | str) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root} is not a directory; give an ImageFolder tree (one folder per class)"
            )
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and visible(p, root))
        split = ""
        if len(classes) >= 2 and set(classes) <= SPLIT_NAMES:
            if "train" not in classes:
                raise ValueError(
                    f"{root} holds the splits {', '.join(classes)}, not class folders; give the folder "
                    "of the split to learn from (its sub-folders are the classes)"
                )
            root, split = root / "train", "train"
            classes = sorted(p.name for p in root.iterdir() if p.is_dir() and visible(p, root))
        if len(classes) < 2:
            raise ValueError(
                f"{root} has {len(classes)} class folders; a task needs at least 2 (one per class)"
            )
        files, skipped_files = [], []
        for label, name in enumerate(classes):
            inside = sorted(p for p in (root / name).rglob("*") if p.is_file() and visible(p, root))
            found = [p for p in inside if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped_files += [p for p in inside if p.suffix.lower() not in IMAGE_SUFFIXES]
            if not found:
                raise ValueError(
                    f"class folder {root / name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files.extend((p, label) for p in found)
        return cls(root, classes, files, split, tuple(skipped_files))

    @property
    def num_bytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self.files)

    def examples(self) -> Iterator[tuple[bytes, int]]:
        for path, label in self.files:
            yield path.read_bytes(), label
