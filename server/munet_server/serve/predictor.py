"""Predict: decode a request's images, run them through the task's path (batched), give each class's
probability; `ranked` orders them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from munet_server.data.images import decode_to_storage, to_storage
from munet_server.errors import Aborted, InvalidArgument, InvalidImage, ResourceExhausted
from munet_server.priority import GATE
from munet_server.serve.batcher import Batcher, Observe, OnAbandon
from munet_server.system import MunetSystem

SMALL_BATCH = 8  # below this many images a CPU forward pass runs on one thread
MAX_TASKS_PER_CALL = 64
TASKS_SEP = "\x00"  # joins a PredictMany's tasks into one batcher key (task names cannot hold it)


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
        on_pass: Callable[[int], None] | None = None,
        max_queued: int = 1024,
        observe: Observe | None = None,
    ) -> None:
        self.ref = system_ref
        self.observe = observe  # (stage, seconds) for "decode", "queue" and "forward": where time goes
        self.max_images = max_images
        self.on_pass = on_pass  # called with the number of tasks after every forward pass
        # On a CPU, batches below SMALL_BATCH run on one thread: two OpenMP teams (Predict's and a
        # search's) on the same cores slow each other (docs/ENGINE.md, "Serving next to a search").
        self.cpu = system_ref.system.device.type == "cpu"
        self.threads = threads or torch.get_num_threads()
        self._current = 0
        # One worker on a CPU (tasks would only contend for the same cores); on a GPU, tasks overlap.
        workers = 1 if self.cpu else 4
        self.batcher = Batcher(
            self._forward,
            max_batch=batcher_max,
            wait_ms=wait_ms,
            workers=workers,
            max_queued=max_queued,
            observe=observe,
        )

    def _forward(self, key: str, images: torch.Tensor) -> torch.Tensor:
        """key: one task, or several joined by TASKS_SEP (PredictMany): their logits side by side."""
        if self.cpu:  # per-thread setting: only the batcher thread runs this
            want = 1 if len(images) < SMALL_BATCH else self.threads
            if want != self._current:
                torch.set_num_threads(want)
                self._current = want
        tasks = key.split(TASKS_SEP)
        if len(tasks) == 1:
            out = self.ref.system.logits(key, images)
        else:
            many = self.ref.system.logits_many(tasks, images)
            out = torch.cat([many[t] for t in tasks], dim=1)
        if self.on_pass is not None:
            self.on_pass(len(tasks))
        return out

    def stop(self) -> None:
        self.batcher.stop()

    def decode(self, encoded: list[bytes], raw: list[RawPixels]) -> torch.Tensor:
        t0 = time.monotonic()
        images = self._decode(encoded, raw)
        if self.observe is not None:
            self.observe("decode", time.monotonic() - t0)
        return images

    def _decode(self, encoded: list[bytes], raw: list[RawPixels]) -> torch.Tensor:
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

    def probabilities(
        self,
        task: str,
        encoded: list[bytes],
        raw: list[RawPixels],
        timeout: float | None = None,
        on_abandon: OnAbandon | None = None,
    ) -> torch.Tensor:
        """Every class's probability, [images, classes] float32: what `ranked` ranks."""
        self.ref.system.entry(task)  # NotFound before any decoding work
        with GATE.serving(), self.batcher.announce(task) as coming:  # a search on these cores waits
            images = self.decode(encoded, raw)
            return torch.softmax(self.batcher(task, images, timeout, on_abandon, coming).float(), dim=-1)

    def predict_many(
        self,
        tasks: list[str],
        encoded: list[bytes],
        raw: list[RawPixels],
        top_k: int,
        timeout: float | None = None,
        on_abandon: OnAbandon | None = None,
    ) -> dict[str, list[list[LabelScore]]]:
        """The same images for several tasks in one pass; top_k is capped at each task's classes."""
        if not tasks:
            raise InvalidArgument("name at least one task (PredictManyRequest.tasks)")
        if len(tasks) > MAX_TASKS_PER_CALL:
            raise ResourceExhausted(f"{len(tasks)} tasks in one call; the limit is {MAX_TASKS_PER_CALL}")
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise InvalidArgument(f"each task at most once; repeated: {', '.join(repeated)}")
        if top_k < 0:
            raise InvalidArgument(f"top_k={top_k} must be 0 (one label) or more")
        names = {t: self.ref.system.entry(t).record.class_names for t in tasks}  # NotFound first
        key = TASKS_SEP.join(tasks)
        with GATE.serving(), self.batcher.announce(key) as coming:
            images = self.decode(encoded, raw)
            logits = self.batcher(key, images, timeout, on_abandon, coming)
        widths = [len(names[t]) for t in tasks]
        if logits.shape[1] != sum(widths):  # a task was deleted and re-added meanwhile
            raise Aborted("a task was deleted and added again during the call; retry it")
        parts = torch.split(logits, widths, dim=1)
        return {
            t: ranked(torch.softmax(part.float(), dim=-1), names[t], min(top_k or 1, len(names[t])))
            for t, part in zip(tasks, parts)
        }


def ranked(probabilities: torch.Tensor, names: list[str], k: int) -> list[list[LabelScore]]:
    """The k most probable classes of each image, most probable first."""
    p, idx = probabilities.topk(k, dim=-1)
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
