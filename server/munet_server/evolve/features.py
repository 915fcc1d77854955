"""Input views and the frozen-prefix activation cache: frozen layers run once per image, not per step.

A candidate's path up to its first trainable component is frozen, so its output on an image is a pure
function of (the prefix's component ids, the input view). `FeatureCache` keeps those activations for
every labelled image, shares them across candidates, seeds and generations, continues a longer prefix
from the longest one it already holds, and evicts the least recently used entries past a byte bound.

Views replace on-the-fly augmentation where a prefix is cached: view `clean` is exactly what Predict
feeds the model (the stored image resized to the path's size), `flip` its mirror image, and `crop<i>`
a seeded random-resized crop (plus colour jitter) drawn with the generation's `ds_*` values, resampled
with antialiasing like `clean`. Each image's crop parameters depend only on the view, never on the
batch, so a view is the same tensor whoever computes it.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from munet_server.data.transforms import DataHParams, color_jitter, normalize, preprocess
from munet_server.model.arch import Step
from munet_server.priority import GATE

EVAL_BATCH = 64  # images per forward pass when filling the cache


@dataclass(frozen=True)
class View:
    """One deterministic input transform of every image."""

    size: int
    kind: str = "clean"  # "clean" | "flip" | "crop"
    index: int = 0  # which crop (kind "crop")
    area_min: float = 1.0
    aspect_min: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    @property
    def key(self) -> str:
        if self.kind != "crop":
            return f"{self.size}/{self.kind}"
        p = (self.area_min, self.aspect_min, self.brightness, self.contrast, self.saturation, self.hue)
        return f"{self.size}/crop{self.index}/" + ",".join(f"{v:g}" for v in p)


def train_views(hp: DataHParams, count: int) -> list[View]:
    """The views a generation trains on: clean, its mirror (if `ds_flip_left_right`), then crops."""
    views = [View(hp.image_size)]
    if hp.flip and count > 1:
        views.append(View(hp.image_size, "flip"))
    jitter = dict(brightness=hp.brightness, contrast=hp.contrast, saturation=hp.saturation, hue=hp.hue)
    for i in range(count - len(views)):
        views.append(View(hp.image_size, "crop", i, hp.area_min, hp.aspect_min, **jitter))
    return views


def render(images: torch.Tensor, view: View, first: int = 0) -> torch.Tensor:
    """Images (B, 3, S, S) uint8, numbered from `first` in the dataset -> (B, 3, s, s) in [-1, 1]."""
    if view.kind == "clean":
        return preprocess(images, view.size)
    if view.kind == "flip":
        return preprocess(images, view.size).flip(-1)
    n = images.shape[0]
    params = _crop_params(view, first + n)[first:]
    out = []
    for img, (x0, y0, w, h, flip) in zip(images, params.tolist()):
        s = img.shape[-1]
        x = img[:, round(y0 * s) : round((y0 + h) * s), round(x0 * s) : round((x0 + w) * s)]
        x = x.float().div_(255.0)[None]
        x = F.interpolate(x, size=(view.size, view.size), mode="bilinear", align_corners=False, antialias=True)
        out.append(x.flip(-1) if flip > 0.5 else x)
    x = torch.cat(out)
    jitter = DataHParams(view.size, 1.0, 1.0, False, view.brightness, view.contrast, view.saturation, view.hue)
    gen = torch.Generator().manual_seed(_seed(view.key) + first)
    x = color_jitter(x, jitter, gen)
    return normalize(x.clamp_(0.0, 1.0))


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def _crop_params(view: View, n: int) -> torch.Tensor:
    """(n, 5): left, top, width, height (fractions of the image) and a flip flag, image by image."""
    gen = torch.Generator().manual_seed(_seed(view.key))
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    area = view.area_min + (1.0 - view.area_min) * u[:, 0]
    log_r = math.log(view.aspect_min) * (1.0 - 2.0 * u[:, 1])
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    x0 = (1.0 - w) * u[:, 2]
    y0 = (1.0 - h) * u[:, 3]
    return torch.stack([x0, y0, w, h, u[:, 4]], dim=1)


def pool(x: torch.Tensor) -> torch.Tensor:
    """What a head does before its linear layer: average a CNN feature map; ViT features pass through."""
    return x.mean(dim=(2, 3)) if x.ndim == 4 else x


@dataclass
class _Entry:
    tensor: torch.Tensor
    nbytes: int


class FeatureCache:
    """Activations of frozen prefixes for all images of one dataset, bounded in bytes (LRU).

    Keys are (view key, component ids of the prefix[, "pooled"]); an empty prefix is the view itself.
    Entries live on `device` in `dtype` (float32 by default: a cached forward then equals the uncached
    one up to the batch composition of the matrix kernels).
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device,
        max_bytes: int = 1 << 30,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.images = images
        self.device = device
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.channels_last = channels_last
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self.images)

    def _lookup(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return None
            self._entries.move_to_end(key)
            return e.tensor

    def _store(self, key: tuple, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = _Entry(t, n)
            self._bytes += n
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def view_input(self, view: View, index: torch.Tensor) -> torch.Tensor:
        """The rendered view of some images (not cached: used when nothing of the path is frozen)."""
        x = torch.cat([render(self.images[i : i + 1], view, int(i)) for i in index.tolist()]) if (
            view.kind == "crop"
        ) else render(self.images[index], view)
        return self._to_device(x)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @torch.no_grad()
    def get(
        self,
        steps: Sequence[Step],
        ids: Sequence[str],
        view: View,
        *,
        pooled: bool = False,
        keep: Sequence[int] = (),
    ) -> torch.Tensor:
        """Outputs of the frozen `steps` (identified by the component `ids` they run, one id tuple
        per step) on every image, in dataset order. `keep`: step counts whose intermediate outputs
        are stored too (cut points other candidates will ask for)."""
        if len(steps) != len(ids):
            raise ValueError(f"{len(steps)} steps but {len(ids)} ids")
        ids = tuple(ids)
        final = (view.key, ids, "pooled") if pooled else (view.key, ids)
        got = self._lookup(final)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        start = 0  # the longest prefix already held
        for j in range(len(ids), 0, -1):
            if self._lookup((view.key, ids[:j])) is not None:
                start = j
                break
        cuts = sorted({j for j in keep if start < j < len(ids)} | {len(ids)})
        outs: dict[int, list[torch.Tensor]] = {j: [] for j in cuts}
        held = self._lookup((view.key, ids[:start])) if start else None
        n = len(self.images)
        for i in range(0, n, EVAL_BATCH):
            GATE.yield_to_serving(self.device)
            if held is not None:
                x = held[i : i + EVAL_BATCH].to(torch.float32)
            else:
                x = self._to_device(render(self.images[i : i + EVAL_BATCH], view, i))
            depth = start
            for j in cuts:
                for _, run in steps[depth:j]:
                    x = run(x)
                depth = j
                outs[j].append(x.to(self.dtype))
        for j in cuts[:-1]:
            self._store((view.key, ids[:j]), torch.cat(outs[j]))
        result = torch.cat(outs[len(ids)])
        if pooled:  # a head's input: only the pooled features are kept, not the feature map
            result = pool(result.float()).to(self.dtype)
        self._store(final, result)
        return result
