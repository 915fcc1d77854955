"""The benchmark's tasks: real images that install offline, split per seed, decoded like an upload.

Every image goes through the server's own decoder (`build_dataset`: EXIF, bit depth, alpha on white,
stored at 112 px), so baselines and muNet see exactly what AddTask would store. A seed draws its own
train/test split (photos: a stratified re-split of all 152 images; the others: a fresh sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from munet_server.data import offline
from munet_server.data.dataset import ImageDataset, build_dataset
from munet_server.data.images import encode_png

STORAGE = 112  # the server's default storage size


@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: str  # photos | mnist5k | fmnist_A_B | animals | digits
    train_per_class: int  # photos: the test fraction's complement is used instead
    test_per_class: int
    half: int | None = None  # 0 or 1: only the source's even or odd images (two tasks, disjoint images)


TASKS = {
    t.name: t
    for t in (
        TaskSpec("photos", "photos", 0, 0),  # 6 classes of photo cut-outs, ~114 train / 38 test
        TaskSpec("mnist40", "mnist5k", 40, 100),  # 400 train, 1,000 test
        TaskSpec("fmnist_shirts10", "fmnist_0_6", 10, 500),  # T-shirt vs shirt, 20 train
        TaskSpec("fmnist_shirts100", "fmnist_0_6", 100, 500),  # the same task, 200 train
        TaskSpec("animals10", "animals", 10, 100),  # 10 silhouette classes, 100 train
        TaskSpec("animals100", "animals", 100, 100),  # 1,000 train
        # Related Split-Fashion-MNIST pairs of upper-body garments, for the improvement round
        # (bench/improve.py): what a later task learns may help an earlier one.
        TaskSpec("tshirt_shirt", "fmnist_0_6", 50, 500),
        TaskSpec("pullover_coat", "fmnist_2_4", 50, 500),
        TaskSpec("pullover_shirt", "fmnist_2_6", 50, 500),
        TaskSpec("coat_shirt", "fmnist_4_6", 50, 500),
        # A stream where a later, larger task can teach an earlier, smaller one (bench/improve.py
        # --stream digits): the ten digits from ten images each, then from 50 each, on disjoint
        # halves of MNIST-5k so that no test image of one is a training image of the other.
        TaskSpec("digits_few", "mnist5k", 10, 100, half=0),
        TaskSpec("digits_many", "mnist5k", 50, 100, half=1),
        # The same on animal silhouettes (bench/improve.py --stream animals), the domain where
        # muNet's trained paths beat the probe most often in the quality benchmark.
        TaskSpec("animals_few", "animals", 10, 100, half=0),
        TaskSpec("animals_many", "animals", 100, 100, half=1),
    )
}


@dataclass
class TaskData:
    name: str
    train: ImageDataset
    test: ImageDataset

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


def _encode_all(raw: offline.RawImages) -> list[tuple[int, bytes]]:
    return [(int(y), encode_png(x)) for x, y in zip(raw.images, raw.labels)]


def _split_encoded(e: offline.EncodedImages, test_fraction: float, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(e.class_names)):
        idx = rng.permutation(np.nonzero(e.labels == c)[0])
        k = max(1, round(len(idx) * test_fraction))
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return e.take(np.array(sorted(train))), e.take(np.array(sorted(test)))


def load_task(name: str, seed: int) -> TaskData:
    spec = TASKS[name]
    if spec.source == "photos":
        tr, te = _split_encoded(offline.tuxpaint_photos(), 0.25, seed)
        train = build_dataset(zip(tr.labels.tolist(), tr.files), tr.class_names, STORAGE)
        test = build_dataset(zip(te.labels.tolist(), te.files), te.class_names, STORAGE)
        return TaskData(name, train, test)
    if spec.source.startswith("fmnist_"):
        a, b = (int(x) for x in spec.source.split("_")[1:])
        (train_raw,) = offline.split_fashion_mnist(((a, b),), "train")
        (test_raw,) = offline.split_fashion_mnist(((a, b),), "test")
    else:
        loader = {"mnist5k": offline.mnist5k, "animals": offline.animal_shapes, "digits": offline.digits}
        raw = loader[spec.source]()
        if spec.half is not None:
            raw = raw.take(np.arange(len(raw))[spec.half :: 2])
        n = spec.train_per_class + spec.test_per_class
        raw = offline.sample_per_class(raw, n, seed)
        train_raw, test_raw = offline.train_test_split(raw, spec.test_per_class / n, seed)
    train_raw = offline.sample_per_class(train_raw, spec.train_per_class, seed)
    test_raw = offline.sample_per_class(test_raw, spec.test_per_class, seed + 1)
    train = build_dataset(_encode_all(train_raw), train_raw.class_names, STORAGE)
    test = build_dataset(_encode_all(test_raw), test_raw.class_names, STORAGE)
    return TaskData(name, train, test)
