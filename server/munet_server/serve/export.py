"""Take a task out of the server: a standalone ONNX model, and a safetensors + JSON bundle.

    <dir>/model.onnx         input "image": float32 (N, 3, S, S) RGB in [0, 1], already resized to S;
                             outputs "logits" and "probabilities" (N, classes); metadata_props hold the
                             labels, image size, preprocessing, task, root and golden digest
    <dir>/model.safetensors  the task's path: "<component>.<tensor>" for every component it runs
    <dir>/model.json         the same metadata plus the root (timm name and kwargs) and the components'
                             specs: what `load_module` needs to rebuild the path as a plain nn.Module

gRPC's ExportTask streams the three files in checksummed pieces; the HTTP route serves them as one tar
with a SHA256SUMS file.

The normalisation ([0, 1] -> [-1, 1]) is inside both models; `munet_client.preprocess.prepare` makes
their input from an encoded image exactly as the server makes Predict's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from munet_server.data.transforms import normalize
from munet_server.errors import FailedPrecondition
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, ComponentSpec
from munet_server.model.path import PathModel
from munet_server.model.root import load_root
from munet_server.model.root_config import RootConfig
from munet_server.store.archive import TAR_END, tar_header, tar_padding

FORMAT = "munet-export/1"
ONNX_OPSET = 18  # onnxruntime >= 1.14 runs it
FILES = ("model.onnx", "model.safetensors", "model.json")
CHECKSUMS = "SHA256SUMS"  # in the HTTP export's tar, after FILES


class Standalone(nn.Module):
    """A task's path behind its input normalisation: RGB in [0, 1] at the task's size -> logits."""

    def __init__(self, path: PathModel) -> None:
        super().__init__()
        self.path = path

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.path(normalize(image))


class _WithProbabilities(nn.Module):
    def __init__(self, model: Standalone) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, logits.softmax(-1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) float in [0, 1], as the server prepares Predict's input."""
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def describe(task: str, record_labels: list[str], hparams: dict[str, Any], root: RootConfig,
             components: list[Component], golden_digest: str, version: int = 0) -> dict[str, Any]:  # fmt: skip
    """The bundle's metadata: what a user needs to feed the model and to know what it is."""
    return {
        "format": FORMAT,
        "task": task,
        "version": version,
        "labels": list(record_labels),
        "image_size": int(hparams["ds_image_size"]),
        "input": "float32 (N, 3, S, S) RGB in [0, 1], S = image_size: munet_client.preprocess.prepare(bytes, "
        "metadata) makes it as Predict does (alpha on white, centred square, Pillow bilinear to storage_size, "
        "then antialiased to S)",
        "storage_size": root.max_image_size,
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "inside_model": True},
        "root": {**root.to_dict(), "weights": "model.safetensors"},  # timm builds the skeleton; every tensor is in the bundle
        "components": [c.spec.to_dict() for c in components],
        "hparams": {k: v for k, v in hparams.items() if not k.startswith("_")},
        "golden_digest": golden_digest,
    }


def write_bundle(out: Path, meta: dict[str, Any], components: list[Component], arch: Architecture) -> None:
    """Write model.onnx, model.safetensors and model.json into `out` (created; files replaced)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{c.spec.name}.{k}": v.detach().cpu().contiguous()
        for c in components
        for k, v in c.module.state_dict().items()
    }
    _atomic(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    _atomic(out / "model.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    model = Standalone(PathModel(arch, components)).eval()
    _atomic(out / "model.onnx", lambda p: export_onnx(model, meta, p))


def export_onnx(model: Standalone, meta: dict[str, Any], path: Path) -> None:
    import onnx

    size = meta["image_size"]
    example = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(
            _WithProbabilities(model).eval(),
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits", "probabilities"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=4096)}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    check_onnx(path, model, example)
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    proto.producer_name = "munet-server"
    onnx.save(proto, str(path))


@dataclass(frozen=True)
class Piece:
    """One chunk of one exported file; the file's last piece carries its size and SHA-256."""

    file: str
    data: bytes
    last: bool = False
    sha256: str = ""
    size: int = 0


def write_task_bundle(system: Any, task: str) -> Path:
    """Write the task's bundle into a new private temporary directory (the caller removes it). The
    task's entry is taken once: a concurrent delete or restore does not change what is exported."""
    e = system.entry(task)  # "task@2": that stored version
    meta = describe(e.record.name, e.record.class_names, e.path.hparams, system.root.config, e.path.components,
                    e.record.golden_digest, e.record.version)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="munet-export-"))
    try:
        with system.residency.use(e.path.components):  # layers on disk come back for the export
            write_bundle(tmp, meta, e.path.components, system.arch)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def export_task(system: Any, task: str, chunk_size: int = 1 << 20) -> Iterator[Piece]:
    """The task's bundle, file by file, in pieces (what ExportTask streams)."""
    tmp = write_task_bundle(system, task)
    try:
        for name in FILES:
            digest, size = hashlib.sha256(), 0
            with open(tmp / name, "rb") as f:
                while block := f.read(chunk_size):
                    digest.update(block)
                    size += len(block)
                    yield Piece(name, block)
            yield Piece(name, b"", last=True, sha256=digest.hexdigest(), size=size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_archive(system: Any, task: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The task's bundle as one uncompressed tar (what the HTTP export serves): the three files, then
    SHA256SUMS, which `sha256sum -c SHA256SUMS` checks after `tar xf`. The bundle is written before
    this returns, so that an unknown task or a failed export is an error status, not a cut stream."""
    tmp = write_task_bundle(system, task)

    def blocks() -> Iterator[bytes]:
        try:
            sums, mtime = [], int(time.time())
            for name in FILES:
                digest, size = hashlib.sha256(), (tmp / name).stat().st_size
                yield tar_header(name, size, mtime)
                with open(tmp / name, "rb") as f:
                    while block := f.read(chunk_size):
                        digest.update(block)
                        yield block
                yield tar_padding(size)
                sums.append(f"{digest.hexdigest()}  {name}\n")
            text = "".join(sums).encode()
            yield tar_header(CHECKSUMS, len(text), mtime) + text + tar_padding(len(text))
            yield TAR_END
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    stream = blocks()
    # A stream never started (the client went away first) never runs its `finally`: remove the
    # bundle when the stream is collected, whichever way it ends.
    weakref.finalize(stream, shutil.rmtree, tmp, True)
    return stream


def check_onnx(path: Path, model: Standalone, example: torch.Tensor, atol: float = 1e-3) -> None:
    """The written ONNX file must run in onnxruntime and give the module's probabilities: a wrong
    export fails here, on the server, not later in a user's deployment."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": example.numpy()})[0]
    with torch.no_grad():
        want = model(example).softmax(-1).numpy()
    if got.shape != want.shape or abs(got - want).max() > atol:
        raise RuntimeError(f"the ONNX export of this task disagrees with the model (max difference "
                       f"{abs(got - want).max() if got.shape == want.shape else got.shape}); please report it")  # fmt: skip


def load_module(directory: str | os.PathLike[str]) -> tuple[Standalone, dict[str, Any]]:
    """Rebuild an exported task as a plain nn.Module (eval mode) and its metadata, without a server or
    store: timm builds the root's skeleton, the bundle's tensors fill it."""
    d = Path(directory)
    meta = json.loads((d / "model.json").read_text())
    if meta.get("format") != FORMAT:
        raise FailedPrecondition(f"{d / 'model.json'} is not a {FORMAT} bundle (format {meta.get('format')!r})")
    arch = load_root(RootConfig.from_dict({**meta["root"], "weights": "random"})).arch  # filled from the bundle below
    tensors = load_file(str(d / "model.safetensors"))
    components = []
    for sd in meta["components"]:
        spec = ComponentSpec.from_dict(sd)
        module = arch.fresh(spec)
        prefix = f"{spec.name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        components.append(Component(spec, module.requires_grad_(False).eval(), frozen=True))
    return Standalone(PathModel(arch, components)).eval(), meta


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
