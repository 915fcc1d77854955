"""KServe's own clients, unmodified, against a running munet-server; run as a separate process,
because kserve and tritonclient.grpc register the same protobuf names and cannot share one.

    python -m tests.stock_clients.kserve_calls HTTP_URL GRPC_TARGET TOKEN MODEL PNG...

prints one JSON object: what each client got back."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def request(model: str, pngs: list[bytes], binary: bool) -> InferRequest:
    if binary:
        image = InferInput("image", [len(pngs)], "BYTES")
        image.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
    else:  # JSON carries text: the images as base64 strings
        image = InferInput("image", [len(pngs)], "BYTES", [base64.b64encode(p).decode() for p in pngs])
    outputs = [RequestedOutput(n, {"binary_data": binary}) for n in ("probabilities", "label", "index")]
    return InferRequest(model, [image], request_id="k1", parameters={"top_k": 2}, request_outputs=outputs)


def answer(resp) -> dict:
    out = {o.name: o.as_numpy() for o in resp.outputs}
    return {
        "model_version": resp.model_version,
        "id": resp.id,
        "probabilities": out["probabilities"].astype(np.float32).tobytes().hex(),
        "shape": list(out["probabilities"].shape),
        "label": [x.decode() if isinstance(x, bytes) else x for x in out["label"].ravel().tolist()],
        "index": out["index"].ravel().tolist(),
    }


async def main(http_url: str, grpc_target: str, token: str, model: str, pngs: list[bytes]) -> dict:
    auth = {"Authorization": f"Bearer {token}"}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    got = {
        "rest_live": await rest.is_server_live(http_url, headers=auth),
        "rest_ready": await rest.is_model_ready(http_url, model, headers=auth),
        "rest_json": answer(await rest.infer(http_url, request(model, pngs, False), model, headers=dict(auth))),
        "rest_binary": answer(await rest.infer(http_url, request(model, pngs, True), model, headers=dict(auth))),
    }
    await rest.close()
    grpc = InferenceGRPCClient(grpc_target, retries=0)
    meta = (("authorization", f"Bearer {token}"),)
    got["grpc_ready"] = await grpc.is_model_ready(model, headers=meta)
    got["grpc"] = answer(await grpc.infer(request(model, pngs, True), headers=meta))
    try:
        await grpc.infer(request("no-such-task", pngs, True), headers=meta)
        got["grpc_missing"] = "answered"
    except Exception as e:  # the client raises grpc's own error
        got["grpc_missing"] = f"{e.code().name}: {e.details()}"
    await grpc.close()
    return got


if __name__ == "__main__":
    http_url, grpc_target, token, model, *files = sys.argv[1:]
    print(json.dumps(asyncio.run(main(http_url, grpc_target, token, model, [Path(f).read_bytes() for f in files]))))
