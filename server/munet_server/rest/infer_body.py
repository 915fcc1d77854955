"""An infer request's body and its answer over HTTP: JSON, or JSON followed by binary tensor data
(Triton's binary tensor data extension: the `Inference-Header-Content-Length` header gives the JSON's
length; each binary input names its byte count in `parameters.binary_data_size`, in input order).
An output goes back binary when it asks (`parameters.binary_data`) or the request does
(`parameters.binary_data_output`)."""

from __future__ import annotations

import json
from typing import Any

from munet_server.errors import InvalidArgument
from munet_server.oip import tensors
from munet_server.oip.infer import (
    InferRequest,
    InferResponse,
    Requested,
    parameter_bool,
    parameter_int,
    requested,
)
from munet_server.oip.model import OUTPUTS
from munet_server.oip.tensors import Datatype, Tensor
from munet_server.rest.bodies import json_object, parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_TYPES = (Datatype.BYTES, Datatype.UINT8)


def parse(body: bytes, header_length: str | None, model: str, version: str) -> InferRequest:
    header, binary = _split(body, header_length)
    req = json_object(parse_json(header), "the infer request")
    params = json_object(req.get("parameters", {}), "parameters")
    inputs, used = _inputs(req.get("inputs"), binary)
    if used != len(binary):
        raise InvalidArgument(f"{len(binary) - used} bytes of binary data follow the inputs that declare theirs")
    request_id = req.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("`id` must be a string")
    wanted = _outputs(req.get("outputs", []), parameter_bool(params, "binary_data_output"))
    return InferRequest(model, version, inputs, wanted, parameter_int(params, "top_k", 1, 1), request_id)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        header, binary = body, b""
    elif not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise InvalidArgument(f"{HEADER_LENGTH}: {header_length!r} is not a length within the body's {len(body)} bytes")
    else:
        header, binary = body[: int(header_length)], body[int(header_length) :]
    if not header.strip():
        raise InvalidArgument("the infer request needs a JSON body with `inputs`")
    return header, binary


def _outputs(value: Any, binary_out: bool) -> list[Requested]:
    """The outputs asked for (none named: every output)."""
    if not isinstance(value, list):
        raise InvalidArgument('`outputs` must be a list of {"name": ...} objects')
    wanted = []
    for i, o in enumerate(value):
        o = json_object(o, f"outputs[{i}]")
        wanted.append(requested(o.get("name"), json_object(o.get("parameters", {}), f"outputs[{i}].parameters"), binary_out))
    return wanted or [requested(name, {}, binary_out) for name in OUTPUTS]


def _inputs(value: Any, binary: bytes) -> tuple[list[Tensor], int]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument(
            'give `inputs`: [{"name": "image", "datatype": "BYTES", "shape": [N], "data": [...]}]'
        )
    out, at = [], 0
    for i, t in enumerate(value):
        t = json_object(t, f"inputs[{i}]")
        name = t.get("name", "")
        if not isinstance(name, str):
            raise InvalidArgument(f"inputs[{i}].name must be a string")
        dtype = tensors.datatype(t.get("datatype"), INPUT_TYPES)
        shape = tensors.shape_of(t.get("shape"), f"input {name!r}")
        params = json_object(t.get("parameters", {}), f"inputs[{i}].parameters")
        if "binary_data_size" in params:
            size = parameter_int(params, "binary_data_size", 0, 0)
            if at + size > len(binary):
                raise InvalidArgument(
                    f"input {name!r} declares {size} bytes of binary data; {len(binary) - at} are left"
                )
            out.append(tensors.from_bytes(name, dtype, shape, binary[at : at + size]))
            at += size
        elif "data" in t:
            out.append(tensors.from_json(name, dtype, shape, t["data"]))
        else:
            raise InvalidArgument(f"input {name!r} has neither `data` nor `parameters.binary_data_size`")
    return out, at


def encode(resp: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: JSON alone, or JSON then the binary outputs in order."""
    outputs, binary = [], []
    for want, t in resp.outputs:
        o: dict[str, Any] = {"name": t.name, "datatype": t.datatype.value, "shape": list(t.shape)}
        if want.binary:
            data = t.to_bytes()
            o["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            o["data"] = t.to_json()
        outputs.append(o)
    head: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version, "outputs": outputs}
    if resp.id:
        head["id"] = resp.id
    text = json.dumps(head, separators=(",", ":")).encode()
    if not binary:
        return text, {"content-type": "application/json"}
    return text + b"".join(binary), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(text)),
    }
