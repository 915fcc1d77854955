"""HTTP/REST beside gRPC (issue 16 §1): the Open Inference Protocol and /munet/v1, over real HTTP to
a real server (`--http-port`), answering exactly as gRPC does."""

from __future__ import annotations

import base64
import io
import tarfile
import time
import zipfile

import httpx
import numpy as np
import pytest

from munet_client import MunetClient
from munet_server.data.images import encode_png
from tests.helpers import image_folder, make_app


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("http")
    app = make_app(tmp / "store", tiny_vit, http_port=0)
    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60)
    folder, test = image_folder(tmp, classes=3, per_class=10)
    op = client.add_task_from_folder("digits", folder, budget={"generations": 0}, seed=0)
    assert client.wait(op.name, timeout=300).state == "SUCCEEDED"
    with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=120) as http:
        yield app, client, http, folder, test
    client.close()
    app.stop(0)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def test_health_and_model_metadata(served):
    _, client, http, _, _ = served
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json()["name"] == "munet-server"
    assert http.get("/v2/models").json()["models"] == [
        {"name": "digits", "versions": ["1"], "platform": "munet", "ready": True}
    ]
    meta = http.get("/v2/models/digits").json()
    assert meta["parameters"]["labels"] == client.describe_task("digits").class_names
    assert meta["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
    assert http.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert http.get("/openapi.json").json()["info"]["title"] == "munet-server"
    page = http.get("/docs").text  # the OpenAPI page, its assets from this server (it runs offline)
    assert "/static/swagger-ui/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert http.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_infer_equals_grpc_predict_bit_for_bit(served):
    _, client, http, _, test = served
    pngs = [encode_png(i) for i in test.images[:12]]
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [12], "data": [_b64(p) for p in pngs]}],
            "parameters": {"top_k": 2}}  # fmt: skip
    r = http.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert r.json()["id"] == "r1" and r.json()["model_name"] == "digits"
    assert out["label"]["shape"] == out["probability"]["shape"] == out["index"]["shape"] == [12, 2]
    grpc_preds = client.predict("digits", pngs, top_k=2)
    assert out["label"]["data"] == [lb.name for p in grpc_preds for lb in p]
    assert out["index"]["data"] == [lb.index for p in grpc_preds for lb in p]
    assert np.array_equal(  # gRPC carries float32: the same numbers, bit for bit
        np.float32(out["probability"]["data"]), np.float32([lb.probability for p in grpc_preds for lb in p])
    )
    # Raw pixels as a UINT8 tensor [N, H, W, C] answer as gRPC's raw images do.
    pixels = np.stack([np.asarray(i) for i in test.images[:3]]).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]}
    r = http.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    raw = client.predict_raw("digits", [p if p.shape[2] > 1 else p[..., 0] for p in pixels])
    assert r.json()["outputs"][0]["data"] == [p[0].name for p in raw]


def test_errors_keep_their_meaning(served):
    _, _, http, _, test = served
    png = _b64(encode_png(test.images[0]))
    one = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}]}
    r = http.post("/v2/models/nope/infer", json=one)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and "nope" in r.json()["error"]
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}
    r = http.post("/v2/models/digits/infer", json=bad)
    assert r.status_code == 400 and "base64" in r.json()["error"]
    junk = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(b"not an image")]}]}
    r = http.post("/v2/models/digits/infer", json=junk)
    assert r.status_code == 400 and r.json()["code"] == "INVALID_ARGUMENT"
    r = http.post("/v2/models/digits/infer", json={**one, "parameters": {"top_k": 9}})
    assert r.status_code == 400 and "top_k" in r.json()["error"]
    assert http.get("/v2/models/nope/ready").status_code == 404
    # Bodies are bounded like gRPC messages (--max-message-mb, 64 MiB): refused before they are read.
    r = http.post("/v2/models/digits/infer", content=b"x" * (65 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "RESOURCE_EXHAUSTED"


def test_add_a_task_from_a_zip_then_snapshot(served):
    _, client, http, folder, _ = served
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*.png")):
            z.write(p, f"wrapped/{p.relative_to(folder)}")  # one wrapping folder, as zips often have
        z.writestr("__MACOSX/wrapped/._junk.png", b"resource fork")
    r = http.post("/munet/v1/tasks/zipped", files={"images": ("digits.zip", buf.getvalue())},
                  data={"seconds": "20"})  # fmt: skip
    assert r.status_code == 202, r.text
    name = r.json()["name"]
    deadline = time.monotonic() + 300
    while (op := http.get(f"/munet/v1/operations/{name}").json())["state"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert op["state"] == "SUCCEEDED", op
    assert client.describe_task("zipped").class_names == client.describe_task("digits").class_names
    assert [t["name"] for t in http.get("/munet/v1/tasks").json()["tasks"]] == ["digits", "zipped"]
    r = http.post("/munet/v1/tasks/zipped", files={"images": ("x.zip", b"not a zip")})
    assert r.status_code in (400, 409)
    with http.stream("GET", "/munet/v1/snapshot") as s:
        data = b"".join(s.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert any(n.endswith("manifest.json") for n in tar.getnames())
    r = http.delete("/munet/v1/tasks/zipped")
    assert r.status_code == 200 and "freed_components" in r.json()
    assert [t["name"] for t in http.get("/munet/v1/tasks").json()["tasks"]] == ["digits"]


def test_tokens_protect_http_as_they_protect_grpc(tmp_path, tiny_vit):
    app = make_app(tmp_path / "s", tiny_vit, http_port=0, admin_token="adm", predict_token="pre")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}") as http:
            assert http.get("/v2/health/ready").status_code == 200  # health stays open
            r = http.get("/v2/models")
            assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED"
            assert http.get("/v2/models", headers={"Authorization": "Bearer pre"}).status_code == 200
            r = http.get("/munet/v1/snapshot", headers={"Authorization": "Bearer pre"})
            assert r.status_code == 403 and "admin" in r.json()["error"]
            assert http.get("/munet/v1/snapshot", headers={"Authorization": "Bearer adm"}).status_code == 200
    finally:
        app.stop(0)
