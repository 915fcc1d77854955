"""Tensors as the protocol carries them: JSON lists, the binary tensor data extension's bytes (HTTP)
and gRPC's typed contents or raw bytes. BYTES elements are raw bytes everywhere except in JSON, where
an image is a base64 string (JSON holds text only)."""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from munet_server.errors import InvalidArgument


class Datatype(str, Enum):
    BYTES = "BYTES"
    UINT8 = "UINT8"
    FP32 = "FP32"
    INT64 = "INT64"


NUMPY = {Datatype.UINT8: np.dtype("<u1"), Datatype.FP32: np.dtype("<f4"), Datatype.INT64: np.dtype("<i8")}


@dataclass(frozen=True)
class Tensor:
    """One tensor, flat: BYTES as one bytes object per element, numeric as a numpy array of its dtype."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    data: list[bytes] | np.ndarray

    def to_bytes(self) -> bytes:
        """Binary form: little-endian values, or each BYTES element as a 4-byte length and its bytes."""
        if self.datatype is Datatype.BYTES:
            return b"".join(struct.pack("<I", len(b)) + b for b in self.data)
        return np.ascontiguousarray(self.data, dtype=NUMPY[self.datatype]).tobytes()

    def to_json(self) -> list[Any]:
        if self.datatype is Datatype.BYTES:
            return [b.decode("utf-8", "replace") for b in self.data]
        return self.data.tolist()


def datatype(name: Any, allowed: tuple[Datatype, ...]) -> Datatype:
    for d in allowed:
        if name == d.value:
            return d
    names = " or ".join(d.value for d in allowed)
    raise InvalidArgument(f"datatype {name!r} is not accepted here; use {names}")


def shape_of(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(type(d) is int and d >= 0 for d in value):
        raise InvalidArgument(f"{where}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # Python ints: a shape of huge dimensions is refused by count, never overflows


def from_json(name: str, dtype: Datatype, shape: tuple[int, ...], data: Any) -> Tensor:
    """JSON data, flat or nested as the shape: BYTES as base64 strings, UINT8 as integers 0-255."""
    flat = _flatten(data, name)
    if len(flat) != elements(shape):
        raise InvalidArgument(
            f"input {name!r}: shape {list(shape)} needs {elements(shape)} values, got {len(flat)}"
        )
    if dtype is Datatype.BYTES:
        return Tensor(name, dtype, shape, [_base64(name, i, v) for i, v in enumerate(flat)])
    if not all(type(v) is int and 0 <= v <= 255 for v in flat):  # bool is an int subclass: type()
        raise InvalidArgument(f"input {name!r}: UINT8 data must be integers in [0, 255]")
    return Tensor(name, dtype, shape, np.asarray(flat, dtype=np.uint8))


def from_bytes(name: str, dtype: Datatype, shape: tuple[int, ...], raw: bytes) -> Tensor:
    """The binary form (HTTP's binary tensor data, gRPC's raw_input_contents)."""
    n = elements(shape)
    if dtype is Datatype.BYTES:
        items = split_bytes(raw, name)
        if len(items) != n:
            raise InvalidArgument(
                f"input {name!r}: shape {list(shape)} needs {n} elements, the data holds {len(items)}"
            )
        return Tensor(name, dtype, shape, items)
    want = n * NUMPY[dtype].itemsize
    if len(raw) != want:
        raise InvalidArgument(
            f"input {name!r}: shape {list(shape)} of {dtype.value} needs {want} bytes, got {len(raw)}"
        )
    return Tensor(name, dtype, shape, np.frombuffer(raw, dtype=NUMPY[dtype]))


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """BYTES elements in binary: each a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidArgument(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise InvalidArgument(
                f"input {name!r}: a BYTES element says {size} bytes, only {len(raw) - at} follow"
            )
        out.append(raw[at : at + size])
        at += size
    return out


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name!r}: `data` must be a list")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _base64(name: str, i: int, v: Any) -> bytes:
    if not isinstance(v, str):
        raise InvalidArgument(f"input {name!r}, element {i}: BYTES data in JSON are base64 strings")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"input {name!r}, element {i}: not valid base64") from None
