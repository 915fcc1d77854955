"""One inference request, as either door received it, run through the service's Predict.

The outputs: `probabilities` (FP32 [N, classes]), and the `top_k` most probable classes as `label`
(BYTES), `probability` (FP32) and `index` (INT64), each [N, top_k]. The classification extension
(an output's parameter `classification: k`) turns `probabilities` into k strings per image,
"score:index:label", as Triton writes them. Unrequested outputs are not computed or sent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from munet_server.errors import InvalidArgument
from munet_server.oip.model import INDEX, INPUT, LABEL, OUTPUTS, PROBABILITIES, PROBABILITY, task_ref
from munet_server.oip.tensors import Datatype, Tensor
from munet_server.serve.batcher import OnAbandon
from munet_server.serve.predictor import LabelScore, RawPixels
from munet_server.service import MunetService, Prediction, check_top_k


@dataclass(frozen=True)
class Requested:
    """An output the client asked for; `binary` is the HTTP binary tensor extension's choice."""

    name: str
    classification: int = 0  # > 0: that many "score:index:label" strings per image
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str  # "" : the version the task serves
    inputs: list[Tensor]
    outputs: list[Requested] = field(default_factory=list)  # empty: every output
    top_k: int = 1
    id: str = ""


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str  # the version that answered
    id: str
    outputs: list[tuple[Requested, Tensor]]


def parameter_int(params: dict[str, Any], key: str, default: int, least: int) -> int:
    v = params.get(key, default)
    if type(v) is not int or v < least:
        raise InvalidArgument(f"parameter {key} must be an integer from {least}, got {v!r}")
    return v


def parameter_bool(params: dict[str, Any], key: str) -> bool:
    v = params.get(key, False)
    if type(v) is not bool:
        raise InvalidArgument(f"parameter {key} must be true or false, got {v!r}")
    return v


def requested(name: Any, params: dict[str, Any], binary_default: bool = False) -> Requested:
    if name not in OUTPUTS:
        raise InvalidArgument(f"no output {name!r}; the outputs are {', '.join(OUTPUTS)}")
    k = parameter_int(params, "classification", 0, 0)
    if k and name != PROBABILITIES:
        raise InvalidArgument(f"classification applies to the {PROBABILITIES!r} output, not {name!r}")
    binary = parameter_bool(params, "binary_data") if "binary_data" in params else binary_default
    return Requested(name, k, binary)


def infer(
    svc: MunetService, req: InferRequest, timeout: float | None = None, on_abandon: OnAbandon | None = None
) -> InferResponse:
    encoded, raw = images(req.inputs)
    wanted = req.outputs or [Requested(n) for n in OUTPUTS]
    repeated = sorted({o.name for o in wanted if [w.name for w in wanted].count(o.name) > 1})
    if repeated:
        raise InvalidArgument(f"each output at most once; repeated: {', '.join(repeated)}")
    ref = task_ref(req.model, req.version)
    classes = len(svc.system.entry(ref).record.class_names)  # ranks are checked before any image is decoded
    for o in wanted:
        if o.classification > classes:
            raise InvalidArgument(f"classification={o.classification}: the task has {classes} classes")
    if any(not o.classification and o.name != PROBABILITIES for o in wanted):
        check_top_k(req.top_k, classes)
    p = svc.predict(ref, encoded, raw, timeout, on_abandon)
    ranked = functools.cache(p.ranked)  # label, probability and index share one ranking
    return InferResponse(req.model, str(p.version), req.id, [(o, _output(p, ranked, o, req.top_k)) for o in wanted])


def _output(p: Prediction, ranked: Callable[[int], list[list[LabelScore]]], o: Requested, top_k: int) -> Tensor:
    n, classes = p.probabilities.shape
    if o.classification:
        rows = ranked(o.classification)
        data = [f"{s.probability:f}:{s.index}:{s.name}".encode() for row in rows for s in row]
        return Tensor(o.name, Datatype.BYTES, (n, o.classification), data)
    if o.name == PROBABILITIES:
        return Tensor(o.name, Datatype.FP32, (n, classes), p.probabilities.numpy().reshape(-1))
    rows = ranked(top_k)
    shape = (n, len(rows[0]))
    if o.name == LABEL:
        return Tensor(o.name, Datatype.BYTES, shape, [s.name.encode() for row in rows for s in row])
    if o.name == PROBABILITY:
        return Tensor(o.name, Datatype.FP32, shape, np.float32([s.probability for row in rows for s in row]))
    assert o.name == INDEX
    return Tensor(o.name, Datatype.INT64, shape, np.int64([s.index for row in rows for s in row]))


def images(inputs: list[Tensor]) -> tuple[list[bytes], list[RawPixels]]:
    """The one input: encoded images as BYTES [N] (or [N, 1]), or pixels as UINT8 [N, H, W, C]."""
    if len(inputs) != 1:
        raise InvalidArgument(
            f"give one input, {INPUT!r}: encoded images as BYTES [N], or pixels as UINT8 [N, H, W, C] with C 1 or 3"
        )
    t = inputs[0]
    if t.datatype is Datatype.BYTES:
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise InvalidArgument(f"a BYTES input of N images has shape [N] (or [N, 1]), not {list(t.shape)}")
        return list(t.data), []
    if t.datatype is Datatype.UINT8:
        if len(t.shape) != 4 or not all(d > 0 for d in t.shape) or t.shape[3] not in (1, 3):
            raise InvalidArgument(f"a UINT8 input has shape [N, H, W, C] with C 1 or 3; got {list(t.shape)}")
        n, h, w, c = t.shape
        flat = np.asarray(t.data, dtype=np.uint8).tobytes()
        step = h * w * c
        return [], [RawPixels(h, w, c, flat[i * step : (i + 1) * step]) for i in range(n)]
    raise InvalidArgument(f"datatype {t.datatype.value}: send encoded images as BYTES or pixels as UINT8")
