"""A search's state as JSON plus tensors, derived from its dataclasses: every field is written and
read by its declared type, so a field added later round-trips without a hand-written list (and an
older checkpoint without it takes the field's default). Paths are the one special case: frozen
components are written by id, drafts as tensors under "<member>/<slot>/<tensor>"."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any, TypeVar

import torch

from munet_server.errors import InvalidArgument
from munet_server.model.arch import Architecture
from munet_server.model.components import Component, ComponentSpec
from munet_server.model.path import TaskPath

T = TypeVar("T")


def to_json(obj: Any) -> Any:
    """Dataclasses as dicts of their fields (those marked {"tensors": True} left out), enums as values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("tensors")}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def from_json(cls: type[T], data: Any) -> T:
    """The inverse of to_json for a dataclass type; missing fields take their defaults."""
    return _read(cls, data)


def _read(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if data is None else _read(args[0], data)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [_read(arg, v) for v in data]
    if origin is dict:
        _, arg = typing.get_args(tp) or (Any, Any)
        return {k: _read(arg, v) for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: _read(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.name in data and not f.metadata.get("tensors")
        }
        return tp(**kwargs)
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def path_to_state(path: TaskPath, prefix: str, pool: dict[str, Component], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    comps = []
    for c in path.components:
        if c.frozen and c.id in pool:
            comps.append({"spec": c.spec.to_dict(), "id": c.id})
            continue
        at = f"{prefix}/{c.spec.name}/"
        for k, v in c.module.state_dict().items():
            tensors[at + k] = v.detach().cpu().contiguous()
        comps.append({"spec": c.spec.to_dict(), "draft": at, "frozen": c.frozen, "id": c.id, "origin": c.origin})
    return {"task": path.task, "hparams": path.hparams, "components": comps}


def path_from_state(
    d: dict[str, Any], tensors: dict[str, torch.Tensor], pool: dict[str, Component], arch: Architecture, device: torch.device
) -> TaskPath:
    comps = []
    for cd in d["components"]:
        spec = ComponentSpec.from_dict(cd["spec"])
        if "draft" not in cd:
            if cd["id"] not in pool:
                raise InvalidArgument(f"the checkpoint references component {cd['id']}, which no longer exists")
            comps.append(pool[cd["id"]])
            continue
        module = arch.fresh(spec)
        at = cd["draft"]
        module.load_state_dict({k[len(at) :]: v for k, v in tensors.items() if k.startswith(at)})
        comps.append(Component(spec, module.to(device), frozen=bool(cd["frozen"]), id=cd["id"], origin=cd["origin"]))
    return TaskPath(task=d["task"], hparams=d["hparams"], components=comps)
