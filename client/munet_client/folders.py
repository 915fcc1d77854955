"""Whole folders against a task: predict every image (`munet predict TASK DIR --csv`), or evaluate a
labelled ImageFolder (`munet eval TASK DIR`). A bad image is reported by name; the others still count."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from munet_client.client import MunetClient
from munet_client.errors import MunetError
from munet_client.images import IMAGE_SUFFIXES, ImageFolder, visible
from munet_client.types import Label

CHUNK = 64  # images per Predict call: small enough that one bad file costs little to isolate


@dataclass(frozen=True)
class FilePrediction:
    path: Path
    labels: list[Label]  # most probable first; empty when the image could not be classified
    error: str = ""


def image_files(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given, folders searched recursively for images (hidden files and __MACOSX skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and visible(f, p))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    return out


def predict_files(
    client: MunetClient,
    task: str,
    files: list[Path],
    top_k: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> list[FilePrediction]:
    """Every file through the task, CHUNK at a time. A chunk the server refuses as invalid is retried
    image by image, so one unreadable file fails only itself."""
    out: list[FilePrediction] = []
    for i in range(0, len(files), CHUNK):
        part = files[i : i + CHUNK]
        try:
            preds = client.predict(task, [p.read_bytes() for p in part], top_k=top_k)
            out += [FilePrediction(p, labels) for p, labels in zip(part, preds)]
        except MunetError as e:
            if e.code != "INVALID_ARGUMENT":
                raise
            for p in part:
                try:
                    out.append(FilePrediction(p, client.predict(task, [p.read_bytes()], top_k=top_k)[0]))
                except MunetError as one:
                    if one.code != "INVALID_ARGUMENT":
                        raise
                    out.append(FilePrediction(p, [], one.message.removeprefix("example 0: ")))
        if on_progress is not None:
            on_progress(len(out))
    return out


@dataclass
class FolderEvaluation:
    """A task on a labelled ImageFolder: rows of `confusion` are true classes, columns predicted ones."""

    class_names: list[str]  # the task's
    confusion: list[list[int]]
    errors: list[FilePrediction] = field(default_factory=list)  # images that could not be classified

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.confusion))) / max(1, self.total)

    def precision(self, k: int) -> float:
        col = sum(row[k] for row in self.confusion)
        return self.confusion[k][k] / col if col else 0.0

    def recall(self, k: int) -> float:
        row = sum(self.confusion[k])
        return self.confusion[k][k] / row if row else 0.0

    def support(self, k: int) -> int:
        return sum(self.confusion[k])


def evaluate_folder(
    client: MunetClient, task: str, folder: Path | str, on_progress: Callable[[int], None] | None = None
) -> FolderEvaluation:
    """Class folders are matched to the task's classes by name; a folder the task does not know is an
    error that lists the task's classes."""
    tree = ImageFolder.scan(folder)
    names = client.describe_task(task).class_names
    unknown = [c for c in tree.class_names if c not in names]
    if unknown:
        raise ValueError(
            f"{tree.root} has class folders the task {task!r} does not know: {', '.join(unknown)} "
            f"(its classes: {', '.join(names)})"
        )
    truth = {p: names.index(tree.class_names[label]) for p, label in tree.files}
    preds = predict_files(client, task, [p for p, _ in tree.files], on_progress=on_progress)
    confusion = [[0] * len(names) for _ in names]
    errors = []
    for fp in preds:
        if fp.error:
            errors.append(fp)
            continue
        confusion[truth[fp.path]][fp.labels[0].index] += 1
    return FolderEvaluation(names, confusion, errors)


def plot_confusion(ev: FolderEvaluation, path: Path | str, title: str = "") -> None:
    """The confusion matrix as an image (needs matplotlib: pip install matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    n = len(ev.class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(ev.confusion, cmap="Blues")
    ax.set_xticks(range(n), ev.class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), ev.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in ev.confusion) or 1
    for i in range(n):
        for j in range(n):
            v = ev.confusion[i][j]
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_title(title or f"accuracy {ev.accuracy:.3f} on {ev.total} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
