"""What the protocol says about the server and its models: metadata (KServe v2), Triton's model
configuration and repository index. A model is a task; its versions are the task's stored versions,
and an unversioned request goes to the version the task serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from munet_server import __version__
from munet_server.errors import InvalidArgument, NotFound
from munet_server.service import MunetService

PLATFORM = "munet"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "munet"]
INPUT = "image"
# Outputs: the top_k most probable classes (parameter top_k, default 1), and every class's probability.
LABEL, PROBABILITY, INDEX, PROBABILITIES = "label", "probability", "index", "probabilities"
OUTPUTS = (LABEL, PROBABILITY, INDEX, PROBABILITIES)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: list[int]


def server_metadata() -> dict[str, Any]:
    return {"name": "munet-server", "version": __version__, "extensions": EXTENSIONS}


def task_ref(model: str, version: str) -> str:
    """A model name and version ("" or a number) -> the engine's "task" or "task@N"."""
    if not model:
        raise InvalidArgument("name the model (the task) to use")
    return f"{model}@{version_number(version)}" if version else model


def version_number(version: str) -> int:
    """A version as the protocol names it: ASCII digits from 1, no sign, no leading zero."""
    if not (version.isascii() and version.isdigit()) or version.startswith("0"):
        raise InvalidArgument(f"version {version!r} must be a number from 1, in ASCII digits")
    return int(version)


def versions(svc: MunetService, model: str) -> list[str]:
    return [str(r.version) for r in svc.system.versions(model)]


def ready(svc: MunetService, model: str, version: str = "") -> bool:
    """Whether the model (at that version) answers: NotFound for a model that does not exist."""
    s = svc.system
    if model not in s.tasks and model not in s.damaged:
        raise NotFound(f"model {model!r} does not exist (a model is a task; list them at /v2/models)")
    if model in s.damaged:
        return False
    return not version or str(version_number(version)) in versions(svc, model)


def inputs() -> list[TensorInfo]:
    return [TensorInfo(INPUT, "BYTES", [-1])]


def outputs(classes: int) -> list[TensorInfo]:
    return [
        TensorInfo(LABEL, "BYTES", [-1, -1]),
        TensorInfo(PROBABILITY, "FP32", [-1, -1]),
        TensorInfo(INDEX, "INT64", [-1, -1]),
        TensorInfo(PROBABILITIES, "FP32", [-1, classes]),
    ]


def metadata(svc: MunetService, model: str, version: str = "") -> dict[str, Any]:
    """Model metadata; `parameters` (a munet extension) holds the labels, image size and limit."""
    s = svc.system
    e = s.entry(task_ref(model, version))
    classes = len(e.record.class_names)
    return {
        "name": model,
        "versions": versions(svc, model),
        "platform": PLATFORM,
        "inputs": [vars(t) for t in inputs()],
        "outputs": [vars(t) for t in outputs(classes)],
        "parameters": {
            "served_version": str(s.entry(model).record.version),
            "labels": e.record.class_names,
            "image_size": int(e.path.hparams["ds_image_size"]),
            "max_images": svc.config.max_predict_images,
        },
    }


def config(svc: MunetService, model: str, version: str = "") -> dict[str, Any]:
    """Triton's model configuration (JSON form): shapes include the batch, so max_batch_size is 0."""
    e = svc.system.entry(task_ref(model, version))
    classes = len(e.record.class_names)
    return {
        "name": model,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": 0,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
        "output": [
            {
                "name": t.name,
                "data_type": "TYPE_" + ("STRING" if t.datatype == "BYTES" else t.datatype),
                "dims": t.shape,
            }
            for t in outputs(classes)
        ],
    }


def repository_index(svc: MunetService, ready_only: bool = False) -> list[dict[str, str]]:
    """Triton's repository index: each task at the version it serves, READY or UNAVAILABLE."""
    s = svc.system
    out = [
        {"name": n, "version": str(s.entry(n).record.version), "state": "READY", "reason": ""}
        for n in s.tasks
    ]
    if not ready_only:
        out += [
            {"name": n, "version": "", "state": "UNAVAILABLE", "reason": d.reason}
            for n, d in s.damaged.items()
        ]
    return sorted(out, key=lambda m: m["name"])
