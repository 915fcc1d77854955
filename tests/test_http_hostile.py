"""Hostile input at the HTTP door (issue 31 §1-4, 7): zip bombs and damaged zips, bodies sent without
a token, bodies that stall, malformed infer requests. Each gets a precise status naming what is wrong,
over real HTTP to a real server, and the served task answers as before."""

from __future__ import annotations

import base64
import io
import socket
import struct
import zipfile

import httpx
import numpy as np
import pytest

from munet_server.data.images import encode_png
from munet_server.ingest.limits import UploadLimits
from tests.helpers import image_folder, make_app

ADMIN = {"Authorization": "Bearer adm"}
LIMITS = UploadLimits(max_image_bytes=1 << 20, idle_seconds=2.0)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_vit):
    tmp = tmp_path_factory.mktemp("hostile")
    app = make_app(tmp / "store", tiny_vit, http_port=0, admin_token="adm", predict_token="pre", upload=LIMITS)
    folder, test = image_folder(tmp, classes=2, per_class=10)
    from munet_client import MunetClient

    client = MunetClient(f"127.0.0.1:{app.port}", timeout=60, token="adm")
    assert client.wait(client.add_task_from_folder("base", folder, budget={"generations": 0}).name, timeout=300).state == "SUCCEEDED"
    pngs = [encode_png(i) for i in test.images[:4]]
    golden = client.predict("base", pngs, top_k=2)
    with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=120, headers=ADMIN) as http:
        yield app, http, folder, pngs
    assert client.predict("base", pngs, top_k=2) == golden  # nothing here changed the served task
    client.close()
    app.stop(0)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _folder_zip(folder, extra: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    members = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    return _zip({**members, **extra}, method)


def _patch_headers(data: bytes, name: str, offset_local: int, offset_central: int, fmt: str, value: int) -> bytes:
    """Rewrite a field of one member in both its local header and its central directory entry."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    struct.pack_into(fmt, out, info.header_offset + offset_local, value)
    central = out.rfind(b"PK\x01\x02", 0, out.rfind(name.encode()))  # the entry that names the member
    struct.pack_into(fmt, out, central + offset_central, value)
    return bytes(out)


def _post_zip(http, name: str, data: bytes) -> httpx.Response:
    return http.post(f"/munet/v1/tasks/{name}", files={"images": (f"{name}.zip", data)})


def test_a_zip_bomb_is_refused_before_it_is_inflated(served):
    _, http, folder, _ = served
    bomb = b"\0" * (64 << 20)  # 64 MiB of zeros: ~64 KiB deflated, 64x the per-image limit
    r = _post_zip(http, "bomb", _folder_zip(folder, {"0/bomb.png": bomb}))
    assert r.status_code == 429 and "0/bomb.png" in r.json()["error"] and "limit" in r.json()["error"], r.text
    # A header that lies about the size: reading stops at the limit (or the CRC fails), never inflates it all.
    liar = _folder_zip(folder, {"0/liar.png": bomb})
    liar = _patch_headers(liar, "0/liar.png", 22, 24, "<I", 100)  # uncompressed size: 100 bytes
    r = _post_zip(http, "liar", liar)
    assert r.status_code in (400, 429) and "0/liar.png" in r.json()["error"], r.text
    assert "liar" not in [t["name"] for t in http.get("/munet/v1/tasks").json()["tasks"]]


def test_damaged_zip_members_are_named(served):
    _, http, folder, _ = served
    stored = _folder_zip(folder, {"1/odd.png": encode_png(np.zeros((8, 8), np.uint8))}, zipfile.ZIP_STORED)
    encrypted = _patch_headers(stored, "1/odd.png", 6, 8, "<H", 0x1)
    r = _post_zip(http, "enc", encrypted)
    assert r.status_code == 400 and "1/odd.png" in r.json()["error"] and "encrypted" in r.json()["error"], r.text
    method = _patch_headers(stored, "1/odd.png", 8, 10, "<H", 99)  # 99: AES, which zipfile can't read
    r = _post_zip(http, "meth", method)
    assert r.status_code == 400 and "1/odd.png" in r.json()["error"] and "method 99" in r.json()["error"], r.text
    with zipfile.ZipFile(io.BytesIO(stored)) as z:
        info = z.getinfo("1/odd.png")
    damaged = bytearray(stored)
    data_at = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged[data_at + 20] ^= 0xFF  # one flipped byte inside the stored PNG: its CRC no longer matches
    r = _post_zip(http, "crc", bytes(damaged))
    assert r.status_code == 400 and "1/odd.png" in r.json()["error"], r.text


def test_an_upload_lists_the_files_it_skipped(served):
    _, http, folder, _ = served
    r = _post_zip(http, "withnotes", _folder_zip(folder, {"0/notes.txt": b"hello", "1/labels.csv": b"a,b"}))
    assert r.status_code == 202, r.text
    assert r.json()["skipped_files"] == ["0/notes.txt", "1/labels.csv"] and r.json()["skipped_count"] == 2
    http.post(f"/munet/v1/operations/{r.json()['name']}:cancel")


def _raw_request(port: int, head: str, body: bytes, timeout: float) -> bytes:
    """Send a request's head and part of its body, then wait for the answer without sending the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_body_without_a_token_is_refused_before_it_is_read(served):
    app, *_ = served
    # 50 MB announced, 1 KB sent: the server answers 401 at once instead of waiting for the body.
    for path in ("/v2/models/base/infer", "/munet/v1/tasks/x", "/munet/v1/tasks/base:improve"):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {50 << 20}\r\n\r\n"
        answer = _raw_request(app.http_port, head, b"{" * 1024, timeout=60)
        assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:200])


def test_a_stalled_body_is_ended(served):
    app, *_ = served
    head = ("POST /v2/models/base/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer adm\r\n"
            "Content-Length: 1000\r\n\r\n")  # fmt: skip
    answer = _raw_request(app.http_port, head, b'{"inputs": ', timeout=60)  # then nothing (idle limit: 2 s)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"parameters": [1]}, "parameters must be a JSON object"),
        ({"parameters": "x"}, "parameters must be a JSON object"),
        ({"parameters": {"top_k": 0}}, "top_k"),
        ({"parameters": {"top_k": True}}, "top_k"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [True, 0, 0, 0]}]}, "integers"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [True, 2, 2, 1], "data": [0, 0, 0, 0]}]}, "shape"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 4], "data": [0, 0, 0, 0]}]}, "C 1 or 3"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [True], "data": ["AAAA"]}]}, "shape"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2**70], "data": ["AAAA"]}]}, "needs"),  # fuzz
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2**40, 2**40, 1, 1], "data": [0]}]}, "needs"),
    ],
)
def test_malformed_infer_requests_are_400(served, change, words):
    _, http, _, pngs = served
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(pngs[0]).decode()]}]}
    r = http.post("/v2/models/base/infer", json={**body, **change})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert r.json()["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("version", ["01", "١", "+1", "0"])
def test_versions_are_plain_numbers(served, version):
    _, http, _, pngs = served
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(pngs[0]).decode()]}]}
    r = http.post(f"/v2/models/base/versions/{version}/infer", json=body)
    assert r.status_code == 400 and "ASCII digits" in r.json()["error"], r.text
    assert http.post(f"/munet/v1/tasks/base/versions/{version}:serve").status_code == 400


def test_errors_have_one_shape_and_never_echo_the_request(served):
    _, http, _, _ = served
    secret = "do-not-echo-" + "x" * 40
    for r in (
        http.post("/v2/models/base/infer", content=f'{{"inputs": "{secret}"'),  # not JSON
        http.post("/v2/models/base/infer", content=f'["{secret}"]'),
        http.get("/no/such/route"),
        http.delete("/v2/health/live"),
        http.post("/munet/v1/tasks/x", data={"seconds": secret}, files={"images": ("a.zip", b"PK")}),
    ):
        assert 400 <= r.status_code < 500, r.text
        assert set(r.json()) == {"error", "code"} and secret not in r.text, r.text
