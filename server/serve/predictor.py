"""Predict: decode a request's images, run them through the task's path (batched), return top-k."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from server.data.images import decode_to_storage, to_storage
from server.errors import InvalidArgument, InvalidImage, ResourceExhausted
from server.serve.batcher import Batcher
from server.system import MunetSystem

SMALL_BATCH = 8  # below this, one CPU thread is faster than two contending OpenMP teams


@dataclass(frozen=True)
class RawPixels:
    height: int
    width: int
    channels: int
    data: bytes


@dataclass(frozen=True)
class LabelScore:
    name: str
    index: int
    probability: float


class Predictor:
    def __init__(
        self,
        system_ref: SystemRef,
        batcher_max: int,
        wait_ms: float,
        max_images: int,
        threads: int = 1,
        share_across_tasks: bool = True,
        on_pass: Callable[[int], None] | None = None,
    ) -> None:
        self.ref = system_ref
        self.max_images = max_images
        # On a CPU, small batches run single-threaded. Measured (bench/serving.py, 2 cores): once
        # another thread (the search) owns an OpenMP team, two teams contend and a batch-1 forward
        # takes 3x longer than single-threaded; large batches still gain from every core.
        self.cpu = system_ref.system.device.type == "cpu"
        self.threads = threads or torch.get_num_threads()
        self._current = 0
        # One worker on a CPU (tasks would only contend for the same cores); on a GPU, tasks overlap.
        workers = 1 if self.cpu else 4
        # Requests for different tasks whose paths start with the same frozen components share
        # one pass through those components (muNet's reuse, turned into serving throughput).
        self.batcher = Batcher(
            self._forward,
            max_batch=batcher_max,
            wait_ms=wait_ms,
            workers=workers,
            forward_many=self._forward_many if share_across_tasks else None,
            joinable=lambda a, b: self.ref.system.shares_stem(a, b),
            on_pass=on_pass,
        )

    def _threads_for(self, images: int) -> None:
        if self.cpu:  # per-thread setting: only the batcher thread runs this
            want = 1 if images < SMALL_BATCH else self.threads
            if want != self._current:
                torch.set_num_threads(want)
                self._current = want

    def _forward(self, task: str, images: torch.Tensor) -> torch.Tensor:
        self._threads_for(len(images))
        return self.ref.system.logits(task, images)

    def _forward_many(self, batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._threads_for(sum(len(x) for x in batches.values()))
        return self.ref.system.logits_many(batches)

    def stop(self) -> None:
        self.batcher.stop()

    def decode(self, encoded: list[bytes], raw: list[RawPixels]) -> torch.Tensor:
        size = self.ref.system.storage_size
        if encoded and raw:
            raise InvalidArgument("send either encoded images or raw images in one request, not both")
        n = len(encoded) + len(raw)
        if n == 0:
            raise InvalidArgument("the request has no images; send at least one")
        if n > self.max_images:
            raise ResourceExhausted(f"{n} images in one request; the limit is {self.max_images}: split it")
        out = []
        for i, data in enumerate(encoded):
            try:
                out.append(decode_to_storage(data, size))
            except InvalidImage as e:
                raise InvalidImage(f"image {i}: {e.message}") from None
        for i, r in enumerate(raw):
            out.append(to_storage(_raw_to_pil(i, r), size))
        return torch.stack(out)

    def predict(
        self, task: str, encoded: list[bytes], raw: list[RawPixels], top_k: int, timeout: float | None = None
    ) -> list[list[LabelScore]]:
        system = self.ref.system
        entry = system.entry(task)  # NotFound before any decoding work
        names = entry.record.class_names
        k = top_k or 1
        if not 1 <= k <= len(names):
            raise InvalidArgument(f"top_k={top_k} must be between 1 and the task's {len(names)} classes")
        images = self.decode(encoded, raw)
        logits = self.batcher(task, images, timeout)
        probs = torch.softmax(logits.float(), dim=-1)
        p, idx = probs.topk(k, dim=-1)
        return [
            [LabelScore(names[j], j, float(q)) for q, j in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(p, idx)
        ]


class SystemRef:
    """The live system; Restore swaps it, readers always go through `.system`."""

    def __init__(self, system: MunetSystem) -> None:
        self.system = system


def _raw_to_pil(i: int, r: RawPixels) -> Image.Image:
    if r.channels not in (1, 3):
        raise InvalidImage(f"raw image {i}: channels must be 1 or 3, got {r.channels}")
    if not (1 <= r.height <= 8192 and 1 <= r.width <= 8192):
        raise InvalidImage(f"raw image {i}: {r.height}x{r.width} is out of range (1..8192 per side)")
    want = r.height * r.width * r.channels
    if len(r.data) != want:
        raise InvalidImage(
            f"raw image {i}: {len(r.data)} bytes, but {r.height}x{r.width}x{r.channels} needs {want}"
        )
    arr = np.frombuffer(r.data, dtype=np.uint8).reshape(r.height, r.width, r.channels)
    return Image.fromarray(arr[..., 0] if r.channels == 1 else arr).convert("RGB")
