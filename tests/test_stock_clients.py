"""Issue 33: the stock Open Inference Protocol clients, unmodified, against a real server: Triton's
(`tritonclient.http` with binary tensor data on and off, `tritonclient.grpc`) and KServe's REST and
gRPC clients. Every answer equals gRPC Predict's, bit for bit."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

from munet_client import MunetClient
from munet_server.data.images import encode_png
from tests.helpers import image_folder, make_app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "pred"


def auth() -> dict[str, str]:
    """A fresh dict per call: tritonclient writes its own headers into the dict it is given."""
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("oip")
    app = make_app(tmp / "store", tiny_vit, http_port=0, admin_token="adm", predict_token=TOKEN)
    client = MunetClient(f"127.0.0.1:{app.port}", token="adm", timeout=60)
    folder, test = image_folder(tmp, classes=3, per_class=10)
    op = client.add_task_from_folder("digits", folder, budget={"generations": 0}, seed=0)
    assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
    pngs = [encode_png(i) for i in test.images[:6]]
    yield app, client, pngs, tmp
    client.close()
    app.stop(0)


def text(x: bytes | str) -> str:
    """A BYTES element as the client returns it: bytes from binary data, str from JSON."""
    return x.decode() if isinstance(x, bytes) else x


def predicted(client: MunetClient, pngs: list[bytes], k: int) -> tuple[list[str], list[int], np.ndarray]:
    preds = client.predict("digits", pngs, top_k=k)
    return ([x.name for p in preds for x in p], [x.index for p in preds for x in p],
            np.float32([x.probability for p in preds for x in p]))  # fmt: skip


def triton_image(module, pngs: list[bytes], binary: bool):
    image = module.InferInput("image", [len(pngs)], "BYTES")
    data = pngs if binary else [base64.b64encode(p) for p in pngs]  # JSON carries text: base64
    image.set_data_from_numpy(np.array(data, dtype=np.object_), **({"binary_data": binary} if module is triton_http else {}))
    return image


@pytest.mark.parametrize("binary", [True, False])
def test_triton_http_infer_equals_predict(served, binary):
    app, client, pngs, _ = served
    labels, indices, probs = predicted(client, pngs, 2)
    triton = triton_http.InferenceServerClient(f"127.0.0.1:{app.http_port}")
    outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probability", "index", "probabilities")]
    outputs.append(triton_http.InferRequestedOutput("probabilities", binary_data=binary, class_count=2))
    with pytest.raises(InferenceServerException, match="at most once"):  # the same output twice
        triton.infer("digits", [triton_image(triton_http, pngs, binary)], outputs=outputs, headers=auth())
    result = triton.infer("digits", [triton_image(triton_http, pngs, binary)], outputs=outputs[:4], headers=auth(),
                          request_id="r1", parameters={"top_k": 2})  # fmt: skip
    assert result.get_response()["id"] == "r1" and result.get_response()["model_version"] == "1"
    assert [text(x) for x in result.as_numpy("label").ravel()] == labels
    assert result.as_numpy("index").ravel().tolist() == indices
    assert result.as_numpy("probability").ravel().tobytes() == probs.tobytes()  # bit for bit
    full = result.as_numpy("probabilities")
    assert full.shape == (6, 3) and full.dtype == np.float32
    assert np.take_along_axis(full, np.int64(indices).reshape(6, 2), 1).ravel().tobytes() == probs.tobytes()
    # The classification extension: "score:index:label", most probable first.
    classified = triton.infer("digits", [triton_image(triton_http, pngs, binary)], outputs=outputs[4:], headers=auth())
    strings = [text(x).split(":") for x in classified.as_numpy("probabilities").ravel()]
    assert [s[2] for s in strings] == labels and [int(s[1]) for s in strings] == indices
    assert np.allclose([float(s[0]) for s in strings], probs, atol=1e-6)


def test_triton_http_defaults_metadata_and_errors(served):
    app, client, pngs, _ = served
    labels, _, _ = predicted(client, pngs, 1)
    triton = triton_http.InferenceServerClient(f"127.0.0.1:{app.http_port}")
    assert triton.is_server_live() and triton.is_server_ready()  # probes need no token
    assert triton.is_model_ready("digits", "1", headers=auth()) and not triton.is_model_ready("digits", "2", headers=auth())
    # No outputs named: every output, in binary (the client asks for binary_data_output).
    result = triton.infer("digits", [triton_image(triton_http, pngs, True)], headers=auth())
    assert [text(x) for x in result.as_numpy("label").ravel()] == labels
    assert result.as_numpy("probabilities").shape == (6, 3)
    # Raw pixels as UINT8 [N, H, W, C], in binary.
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    raw = triton_http.InferInput("image", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels, binary_data=True)
    assert [text(x) for x in triton.infer("digits", [raw], headers=auth()).as_numpy("label").ravel()] == labels
    meta = triton.get_model_metadata("digits", headers=auth())
    assert meta["versions"] == ["1"] and {o["name"] for o in meta["outputs"]} == {"label", "probability", "index", "probabilities"}
    config = triton.get_model_config("digits", headers=auth())
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert triton.get_model_repository_index(headers=auth()) == [{"name": "digits", "version": "1", "state": "READY", "reason": ""}]
    assert "binary_tensor_data" in triton.get_server_metadata(headers=auth())["extensions"]
    with pytest.raises(InferenceServerException, match="does not exist") as e:
        triton.infer("nope", [triton_image(triton_http, pngs, True)], headers=auth())
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException, match="needs a token"):
        triton.infer("digits", [triton_image(triton_http, pngs, True)])
    with pytest.raises(InferenceServerException, match="classification applies"):
        triton.infer("digits", [triton_image(triton_http, pngs, True)], headers=auth(),
                     outputs=[triton_http.InferRequestedOutput("label", class_count=2)])  # fmt: skip


def test_triton_grpc_infer_equals_predict(served):
    app, client, pngs, _ = served
    labels, indices, probs = predicted(client, pngs, 2)
    triton = triton_grpc.InferenceServerClient(f"127.0.0.1:{app.port}")
    meta = {"authorization": f"Bearer {TOKEN}"}
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits", "1", headers=meta)
    outputs = [triton_grpc.InferRequestedOutput(n) for n in ("label", "probability", "index", "probabilities")]
    result = triton.infer("digits", [triton_image(triton_grpc, pngs, True)], outputs=outputs, headers=meta,
                          request_id="g1", parameters={"top_k": 2})  # fmt: skip
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"
    assert [text(x) for x in result.as_numpy("label").ravel()] == labels
    assert result.as_numpy("index").ravel().tolist() == indices
    assert result.as_numpy("probability").ravel().tobytes() == probs.tobytes()
    classified = triton.infer("digits", [triton_image(triton_grpc, pngs, True)], headers=meta,
                              outputs=[triton_grpc.InferRequestedOutput("probabilities", class_count=2)])  # fmt: skip
    assert [text(x).split(":")[2] for x in classified.as_numpy("probabilities").ravel()] == labels
    assert triton.get_model_metadata("digits", headers=meta).versions == ["1"]
    assert triton.get_model_config("digits", headers=meta).config.input[0].name == "image"
    assert [m.name for m in triton.get_model_repository_index(headers=meta).models] == ["digits"]
    with pytest.raises(InferenceServerException, match="does not exist") as e:
        triton.infer("nope", [triton_image(triton_grpc, pngs, True)], headers=meta)
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        triton.infer("digits", [triton_image(triton_grpc, pngs, True)])
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"


def test_kserve_clients_equal_predict(served):
    app, client, pngs, tmp = served
    labels, indices, probs = predicted(client, pngs, 2)
    files = []
    for i, p in enumerate(pngs):
        files.append(tmp / f"k{i}.png")
        files[-1].write_bytes(p)
    run = subprocess.run(
        [sys.executable, "-m", "tests.stock_clients.kserve_calls", f"http://127.0.0.1:{app.http_port}",
         f"127.0.0.1:{app.port}", TOKEN, "digits", *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["rest_live"] and got["rest_ready"] and got["grpc_ready"]
    for door in ("rest_json", "rest_binary", "grpc"):
        a = got[door]
        assert a["id"] == "k1" and a["shape"] == [6, 3], door
        assert a["model_version"] == ("1" if door == "grpc" else None)  # KServe's REST client drops it
        assert a["label"] == labels and a["index"] == indices, door
        full = np.frombuffer(bytes.fromhex(a["probabilities"]), dtype=np.float32).reshape(6, 3)
        assert np.take_along_axis(full, np.int64(indices).reshape(6, 2), 1).ravel().tobytes() == probs.tobytes(), door
    assert got["grpc_missing"].startswith("NOT_FOUND") and "does not exist" in got["grpc_missing"]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_both_services(served, version):
    """grpcurl and Postman ask reflection v1 first: it answers, for munet.v1 and the inference protocol
    alike (v1's messages are v1alpha's, field for field)."""
    import grpc
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as r

    app = served[0]
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=r.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=r.ServerReflectionResponse.FromString)  # fmt: skip
        listed, described = call(iter([
            r.ServerReflectionRequest(list_services=""),
            r.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]), timeout=30)  # fmt: skip
    names = {s.name for s in listed.list_services_response.service}
    assert {"munet.v1.Munet", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    file = descriptor_pb2.FileDescriptorProto.FromString(described.file_descriptor_response.file_descriptor_proto[0])
    assert "ModelInfer" in [m.name for s in file.service for m in s.method]


def _binary_body(pngs: list[bytes], declared: int | None = None, lie: int = 0) -> tuple[bytes, dict[str, str]]:
    data = b"".join(len(p).to_bytes(4, "little") + p for p in pngs)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(pngs)],
                                   "parameters": {"binary_data_size": (declared or len(data))}}]}).encode()  # fmt: skip
    if lie:  # the first element claims more bytes than follow
        data = (len(pngs[0]) + lie).to_bytes(4, "little") + data[4:]
    return head + data, {**auth(), "Inference-Header-Content-Length": str(len(head))}


def test_malformed_tensor_data_is_refused_with_its_reason(served):
    import grpc

    from munet_proto import inference as pb

    app, client, pngs, _ = served
    url = f"http://127.0.0.1:{app.http_port}/v2/models/digits/infer"
    body, headers = _binary_body(pngs[:2])
    assert httpx.post(url, content=body, headers=headers, timeout=60).status_code == 200
    cases = [
        (body, {**headers, "Inference-Header-Content-Length": str(len(body) + 1)}, "within the body"),
        (body, {**headers, "Inference-Header-Content-Length": "x"}, "is not a length"),
        (body + b"junk", headers, "bytes of binary data follow"),
        (*_binary_body(pngs[:2], declared=10**6), "are left"),
        (*_binary_body(pngs[:2], lie=100), "only"),
        (body, {**headers, "Content-Encoding": "gzip"}, "Content-Encoding"),
    ]
    for content, h, message in cases:
        r = httpx.post(url, content=content, headers=h, timeout=60)
        assert r.status_code == 400 and message in r.json()["error"], (message, r.text)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
        meta = (("authorization", f"Bearer {TOKEN}"),)
        image = {"name": "image", "datatype": "BYTES", "shape": [2]}
        uint8 = {**image, "datatype": "UINT8", "shape": [1, 1, 1, 1], "contents": {"uint_contents": [300]}}
        two = {**image, "contents": {"bytes_contents": pngs[:2]}}
        # Typed contents (the clients above send raw_input_contents) answer as Predict does.
        answer = infer(pb.ModelInferRequest(model_name="digits", inputs=[two], outputs=[{"name": "label"}]),
                       metadata=meta, timeout=60)  # fmt: skip
        assert [o.name for o in answer.outputs] == ["label"]
        assert answer.raw_output_contents[0] == b"".join(
            len(lb.name).to_bytes(4, "little") + lb.name.encode() for p in client.predict("digits", pngs[:2]) for lb in p
        )
        bad = [
            (pb.ModelInferRequest(model_name="digits", inputs=[image], raw_input_contents=[b"", b""]), "raw_input_contents"),
            (pb.ModelInferRequest(model_name="digits", inputs=[uint8]), "each 0-255"),
            (pb.ModelInferRequest(model_name="digits", inputs=[image]), "needs 2 elements, got 0"),
            (pb.ModelInferRequest(model_name="digits", model_version="01", inputs=[two]), "must be a number"),
        ]
        for request, message in bad:
            with pytest.raises(grpc.RpcError) as e:
                infer(request, metadata=meta, timeout=60)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), message
